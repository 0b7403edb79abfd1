//! nftables notifications (`NFNLGRP_NFTABLES`): each committed transaction sends one message
//! per changed object (table, chain, rule, set, element), then `NFT_MSG_NEWGEN` naming the
//! process that committed it. A transaction that touched `ip vr_nat` or `inet vr_filter` and
//! was committed by anyone but us is drift.

use super::Signal;
use super::own;
use rtnetlink::sys::{Socket, protocols::NETLINK_NETFILTER};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc::UnboundedSender;

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
/// Receive buffer: a sync of 100k elements notifies ~100k small messages at once.
const RCVBUF: usize = 64 * 1024 * 1024;

/// The tables this agent owns, by (family, name).
const OURS: [(u8, &str); 2] = [(NFPROTO_IPV4, "vr_nat"), (NFPROTO_INET, "vr_filter")];

/// One nftables notification, reduced to what drift needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An object of a table changed: the message name and the table.
    Touched {
        /// What changed (`delete table`, `new rule`, `delete element`, ...).
        what: &'static str,
        /// The family of the table.
        family: u8,
        /// The table.
        table: String,
    },
    /// A transaction was committed by this process (thread) id, with its command name.
    Committed {
        /// The thread id the kernel reports.
        pid: u32,
        /// The process name.
        name: String,
    },
}

fn message_name(msg: u8) -> Option<&'static str> {
    Some(match msg {
        0 => "new table",
        2 => "delete table",
        3 => "new chain",
        5 => "delete chain",
        6 => "new rule",
        8 => "delete rule",
        9 => "new set",
        11 => "delete set",
        12 => "new element",
        14 => "delete element",
        26 => "destroy table",
        27 => "destroy chain",
        28 => "destroy rule",
        29 => "destroy set",
        30 => "destroy element",
        _ => return None,
    })
}

/// Attributes of one message body as (type, value).
fn attributes(mut body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if body.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([body[0], body[1]]) as usize;
        let kind = u16::from_ne_bytes([body[2], body[3]]) & 0x3fff;
        if len < 4 || len > body.len() {
            return None;
        }
        let value = &body[4..len];
        let next = (len + 3) & !3;
        body = body.get(next..).unwrap_or(&[]);
        Some((kind, value))
    })
}

fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// Parses one datagram of notifications.
pub fn parse(mut buf: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let msg = &buf[NLMSG_HDRLEN..len];
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        if kind >> 8 != NFNL_SUBSYS_NFTABLES || msg.len() < NFGENMSG_LEN {
            continue;
        }
        let family = msg[0];
        let attrs = attributes(&msg[NFGENMSG_LEN..]);
        let sub = (kind & 0xff) as u8;
        if sub == 15 {
            // NFT_MSG_NEWGEN: NFTA_GEN_PROC_PID (2, big endian), NFTA_GEN_PROC_NAME (3)
            let mut pid = 0;
            let mut name = String::new();
            for (t, v) in attrs {
                match (t, v) {
                    (2, [a, b, c, d]) => pid = u32::from_be_bytes([*a, *b, *c, *d]),
                    (3, v) => name = c_string(v),
                    _ => {}
                }
            }
            out.push(Event::Committed { pid, name });
        } else if let Some(what) = message_name(sub) {
            // the table name is attribute 1 in every per-object message
            if let Some((_, v)) = attrs.into_iter().find(|(t, _)| *t == 1) {
                out.push(Event::Touched {
                    what,
                    family,
                    table: c_string(v),
                });
            }
        }
    }
    out
}

/// Folds events into transactions: the changes to our tables seen since the last commit.
#[derive(Debug, Default)]
pub struct Folder {
    pending: Vec<String>,
}

impl Folder {
    /// Feeds one event; returns a description when a foreign transaction touched our tables.
    pub fn feed(&mut self, e: Event, ours: impl Fn(u32) -> bool) -> Option<String> {
        match e {
            Event::Touched {
                what,
                family,
                table,
            } => {
                if OURS.iter().any(|(f, t)| *f == family && *t == table) {
                    let d = format!("{what} in {table}");
                    if !self.pending.contains(&d) && self.pending.len() < 8 {
                        self.pending.push(d);
                    }
                }
                None
            }
            Event::Committed { pid, name } => {
                let touched = std::mem::take(&mut self.pending);
                if touched.is_empty() || ours(pid) {
                    return None;
                }
                Some(format!(
                    "nftables changed by {name}[{pid}]: {}",
                    touched.join(", ")
                ))
            }
        }
    }
}

fn open() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_NETFILTER)?;
    s.bind_auto()?;
    s.add_membership(NFNLGRP_NFTABLES)?;
    if s.set_rx_buf_sz(RCVBUF).is_err() {
        tracing::debug!("could not raise the nftables notification buffer");
    }
    Ok(s)
}

/// Foreign transactions on our tables (and overruns, which may hide some) seen so far.
static FOREIGN: AtomicU64 = AtomicU64::new(0);
/// The reader runs.
static WATCHING: AtomicBool = AtomicBool::new(false);

/// How many transactions of other processes on our tables (or notification overruns) the
/// reader has seen so far; `None` while no reader runs (then nothing can be known about
/// changes behind the agent's back). While the number stays the same, our tables hold what
/// the agent last wrote, give or take a transaction still in the socket (repaired as soon as
/// it is read).
pub fn foreign_generation() -> Option<u64> {
    WATCHING
        .load(Ordering::Acquire)
        .then(|| FOREIGN.load(Ordering::Acquire))
}

/// The reader's socket and where its findings go, shared with [`mute`] and [`missed`].
static READER: Mutex<Option<(Arc<Socket>, UnboundedSender<Signal>)>> = Mutex::new(None);

/// The reader's notifications stopped while this lives (see [`mute`]); dropping it joins
/// the group again.
pub struct Muted(Arc<Socket>);

impl Drop for Muted {
    fn drop(&mut self) {
        if let Err(e) = self.0.add_membership(NFNLGRP_NFTABLES) {
            missed(format!(
                "nftables notifications could not be resumed after the agent's own transaction: {e}"
            ));
        }
    }
}

/// Stops the notifications of the reader until the returned guard is dropped: the agent's
/// own transaction of hundreds of thousands of elements then costs the kernel no message per
/// element (a third to two thirds of a 100,000-EIP re-apply), when nobody else listens. A
/// foreign change made meanwhile is not notified: the caller compares the ruleset generation
/// before and after and reports one through [`missed`]. `None` when no reader runs. For the
/// single writer only (one guard at a time).
pub fn mute() -> Option<Muted> {
    let socket = READER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|(s, _)| Arc::clone(s))?;
    socket.drop_membership(NFNLGRP_NFTABLES).ok()?;
    Some(Muted(socket))
}

/// A change to nftables the reader could not see (made while it was muted): counted as a
/// foreign one (the next command reads the sets again) and sent to drift for a verify.
pub fn missed(what: String) {
    FOREIGN.fetch_add(1, Ordering::AcqRel);
    if let Some((_, tx)) = READER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        let _ = tx.send(Signal::Lost(what));
    }
}

/// Starts the reader thread (it lives as long as the process).
pub fn spawn(tx: UnboundedSender<Signal>) -> io::Result<()> {
    let socket = Arc::new(open()?);
    *READER.lock().unwrap_or_else(PoisonError::into_inner) =
        Some((Arc::clone(&socket), tx.clone()));
    WATCHING.store(true, Ordering::Release);
    let started = std::thread::Builder::new()
        .name("nft-events".into())
        .spawn(move || {
            read_loop(&socket, tx);
            WATCHING.store(false, Ordering::Release);
            *READER.lock().unwrap_or_else(PoisonError::into_inner) = None;
        });
    if let Err(e) = started {
        WATCHING.store(false, Ordering::Release);
        *READER.lock().unwrap_or_else(PoisonError::into_inner) = None;
        return Err(e);
    }
    Ok(())
}

fn read_loop(socket: &Socket, tx: UnboundedSender<Signal>) {
    let mut folder = Folder::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => {
                for e in parse(&buf[..n.min(buf.len())]) {
                    if let Some(what) = folder.feed(e, own::is_our_pid) {
                        FOREIGN.fetch_add(1, Ordering::AcqRel);
                        if tx.send(Signal::Nft(what)).is_err() {
                            return;
                        }
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                FOREIGN.fetch_add(1, Ordering::AcqRel);
                folder = Folder::default();
                if tx
                    .send(Signal::Lost("nftables notifications overran".into()))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "nftables notifications stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(sub: u8, family: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, v) in attrs {
            let len = 4 + v.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | sub as u16).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn a_foreign_transaction_on_our_table_is_drift_and_ours_is_not() {
        let mut dgram = nlmsg(14, NFPROTO_IPV4, &[(1, b"vr_nat\0".to_vec())]);
        dgram.extend(nlmsg(2, NFPROTO_INET, &[(1, b"other\0".to_vec())]));
        dgram.extend(nlmsg(
            15,
            0,
            &[
                (1, 7u32.to_be_bytes().to_vec()),
                (2, 4242u32.to_be_bytes().to_vec()),
                (3, b"nft\0".to_vec()),
            ],
        ));
        let events = parse(&dgram);
        assert_eq!(events.len(), 3);
        let mut f = Folder::default();
        let out: Vec<String> = events
            .iter()
            .cloned()
            .filter_map(|e| f.feed(e, |_| false))
            .collect();
        assert_eq!(
            out,
            ["nftables changed by nft[4242]: delete element in vr_nat"]
        );
        let mut f = Folder::default();
        assert!(
            events
                .into_iter()
                .all(|e| f.feed(e, |pid| pid == 4242).is_none())
        );
        // a table of the same name in another family is not ours
        let other = parse(&nlmsg(2, NFPROTO_INET, &[(1, b"vr_nat\0".to_vec())]));
        let mut f = Folder::default();
        assert!(f.feed(other[0].clone(), |_| false).is_none());
        assert!(
            f.feed(
                Event::Committed {
                    pid: 1,
                    name: "nft".into()
                },
                |_| false
            )
            .is_none()
        );
    }

    #[test]
    fn truncated_input_is_ignored() {
        let m = nlmsg(14, NFPROTO_IPV4, &[(1, b"vr_nat\0".to_vec())]);
        for cut in 0..m.len() {
            let _ = parse(&m[..cut]);
        }
    }
}
