//! An index of the tracked flows of our VIPs, fed by conntrack events, so deleting an EIP's or
//! port forward's flows costs a few direct deletes instead of a walk of the conntrack table.
//!
//! Why: a dump, even one the kernel filters (`CTA_FILTER`), walks every bucket of the
//! conntrack hash table, which is global and sized by the host's memory (262,144 buckets on
//! the CI machine kind: ~7 ms per dump with the table empty, two dumps per EIP). The index
//! makes a removal independent of the table's size.
//!
//! How: a thread subscribes to the NEW and DESTROY conntrack event groups of the agent's
//! namespace, then seeds the index with one full dump (events that arrive meanwhile queue in
//! the socket and are applied after it). Only flows whose original or reply destination is a
//! *watched* address (a VIP of an EIP or port forward, set by the NAT backend before each
//! change) are kept, keyed by their original tuple. If events were lost (`ENOBUFS`) or the
//! socket fails, the index is marked out of sync, and [`Tracker::take`] answers `None` (the
//! caller falls back to filtered dumps) until a new seed completes.
//!
//! Events are read only under the index lock, by the thread (after `poll` says some are
//! queued) and by [`Tracker::take`] itself, which drains the queue first: the kernel queues a
//! flow's event when the flow is confirmed, so a flow that exists when `take` starts is in the
//! index when it looks.

use super::conntrack::{ConntrackError, Ct, Entry, Flush, entry, matches};
use netlink_packet_core::{Emitable, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::conntrack::{ConntrackMessage, Tuple};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// Event socket buffer (forced past `rmem_max` when root): bursts of new flows must not
/// overflow it while the seed dump runs.
const EVENT_RCVBUF: usize = 16 << 20;

/// Flows of watched addresses, by address, then by original tuple.
#[derive(Default)]
struct Index {
    by_ip: HashMap<Ipv4Addr, HashMap<Vec<u8>, Entry>>,
    /// Receive buffer of the event socket.
    buf: Vec<u8>,
}

fn key(orig: &[Tuple]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in orig {
        let start = out.len();
        out.resize(start + t.buffer_len(), 0);
        t.emit(&mut out[start..]);
    }
    out
}

fn addresses(e: &Entry) -> impl Iterator<Item = Ipv4Addr> {
    let o = e.orig_dst;
    let r = e.reply_dst.filter(|r| Some(*r) != o);
    o.into_iter().chain(r)
}

impl Index {
    fn insert(&mut self, e: Entry, watched: &HashSet<Ipv4Addr>) {
        let ips: Vec<Ipv4Addr> = addresses(&e).filter(|ip| watched.contains(ip)).collect();
        if ips.is_empty() {
            return;
        }
        let k = key(&e.orig);
        for ip in ips {
            self.by_ip
                .entry(ip)
                .or_default()
                .insert(k.clone(), e.clone());
        }
    }

    fn remove(&mut self, e: &Entry) {
        let k = key(&e.orig);
        for ip in addresses(e) {
            if let Some(m) = self.by_ip.get_mut(&ip) {
                m.remove(&k);
                if m.is_empty() {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }

    fn take(&mut self, flush: &[Flush]) -> Vec<Entry> {
        let mut out = Vec::new();
        for f in flush {
            let ip = match f {
                Flush::Address(ip) => *ip,
                Flush::Ports { vip, .. } => *vip,
            };
            let Some(m) = self.by_ip.get_mut(&ip) else {
                continue;
            };
            let hit: Vec<Vec<u8>> = m
                .iter()
                .filter(|(_, e)| matches(e, std::slice::from_ref(f)))
                .map(|(k, _)| k.clone())
                .collect();
            for k in hit {
                if let Some(e) = m.remove(&k) {
                    out.push(e);
                }
            }
            if m.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.by_ip.values().map(HashMap::len).sum()
    }
}

/// The flow index and its event thread.
pub struct Tracker {
    watched: RwLock<HashSet<Ipv4Addr>>,
    index: Mutex<Index>,
    synced: AtomicBool,
    events: Socket,
    /// The socket of deletes, kept open.
    deleter: Mutex<Option<Ct>>,
}

impl Tracker {
    /// Subscribes to conntrack events and starts the thread that seeds and maintains the
    /// index for `watched`.
    pub fn start(watched: HashSet<Ipv4Addr>) -> Result<Arc<Tracker>, ConntrackError> {
        let events = event_socket()?;
        let t = Arc::new(Tracker {
            watched: RwLock::new(watched),
            index: Mutex::new(Index {
                by_ip: HashMap::new(),
                buf: vec![0; 1 << 16],
            }),
            synced: AtomicBool::new(false),
            events,
            deleter: Mutex::new(None),
        });
        let t2 = Arc::clone(&t);
        let span = tracing::info_span!("conntrack events");
        std::thread::Builder::new()
            .name("ct-events".into())
            .spawn(move || {
                let _e = span.enter();
                event_loop(&t2);
            })
            .map_err(ConntrackError::Socket)?;
        Ok(t)
    }

    /// Sets the watched addresses; flows of addresses no longer watched are forgotten.
    pub fn watch(&self, now: HashSet<Ipv4Addr>) {
        // Lock order everywhere: the index, then the watched set (the event thread drains
        // under the index lock and reads the watched set).
        let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let mut w = self.watched.write().unwrap_or_else(|e| e.into_inner());
        if *w == now {
            return;
        }
        idx.by_ip.retain(|ip, _| now.contains(ip));
        *w = now;
    }

    /// Adds `more` to the watched addresses (a command's new VIPs: cheap whatever the number
    /// already watched; [`Tracker::watch`] with the whole set prunes at syncs and re-applies).
    pub fn watch_also(&self, more: &[Ipv4Addr]) {
        let _idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let mut w = self.watched.write().unwrap_or_else(|e| e.into_inner());
        w.extend(more.iter().copied());
    }

    /// Takes the indexed flows of `flush` out of the index; `None` while the index is out of
    /// sync (seeding, or events were lost).
    pub(super) fn take(&self, flush: &[Flush]) -> Option<Vec<Entry>> {
        if !self.synced.load(Ordering::SeqCst) {
            return None;
        }
        let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
        self.drain(&mut idx);
        // re-checked after the drain: lost events mark the index out of sync
        if !self.synced.load(Ordering::SeqCst) {
            return None;
        }
        Some(idx.take(flush))
    }

    /// Deletes `entries` (from [`Tracker::take`]) on the kept socket.
    pub(super) fn delete(&self, entries: Vec<Entry>) -> Result<usize, ConntrackError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut sock = self.deleter.lock().unwrap_or_else(|e| e.into_inner());
        let ct = match sock.as_mut() {
            Some(c) => c,
            None => sock.insert(Ct::open()?),
        };
        let r = ct.delete(entries);
        if matches!(r, Err(ConntrackError::Socket(_))) {
            *sock = None;
        }
        r
    }

    /// True once the index reflects the table.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    fn seed(&self) -> Result<usize, ConntrackError> {
        {
            let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
            self.synced.store(false, Ordering::SeqCst);
            idx.by_ip.clear();
        }
        let mut found = Vec::new();
        Ct::open()?.dump(None, |e| found.push(e))?;
        let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let watched = self.watched.read().unwrap_or_else(|e| e.into_inner());
        for e in found {
            idx.insert(e, &watched);
        }
        self.synced.store(true, Ordering::SeqCst);
        Ok(idx.len())
    }

    /// Applies every queued event (the caller holds the index lock). Lost events mark the
    /// index out of sync.
    fn drain(&self, idx: &mut Index) {
        let mut buf = std::mem::take(&mut idx.buf);
        loop {
            let n = match self.events.recv(
                &mut &mut buf[..],
                nix::sys::socket::MsgFlags::MSG_DONTWAIT.bits(),
            ) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if self.synced.swap(false, Ordering::SeqCst) {
                        if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) {
                            tracing::info!("conntrack events lost; re-seeding the flow index");
                        } else {
                            tracing::warn!(error = %e, "conntrack event socket; re-seeding");
                        }
                    }
                    break;
                }
            };
            let watched = self.watched.read().unwrap_or_else(|e| e.into_inner());
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                if len < 16 || off + len > n {
                    break;
                }
                if let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..off + len])
                    && let NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ct),
                        ..
                    }) = m.payload
                {
                    match ct {
                        ConntrackMessage::New(attrs) => {
                            if let Some(e) = entry(attrs) {
                                idx.insert(e, &watched);
                            }
                        }
                        ConntrackMessage::Delete(attrs) => {
                            if let Some(e) = entry(attrs) {
                                idx.remove(&e);
                            }
                        }
                        _ => {}
                    }
                }
                off += (len + 3) & !3;
            }
        }
        idx.buf = buf;
    }
}

fn event_socket() -> Result<Socket, ConntrackError> {
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
    sock.bind(&SocketAddr::new(0, 0))
        .map_err(ConntrackError::Socket)?;
    if nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &EVENT_RCVBUF)
        .is_err()
    {
        let _ = sock.set_rx_buf_sz(EVENT_RCVBUF);
    }
    for g in [NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY] {
        sock.add_membership(g).map_err(ConntrackError::Socket)?;
    }
    Ok(sock)
}

fn event_loop(t: &Tracker) {
    use std::os::fd::AsFd;
    loop {
        if !t.synced.load(Ordering::SeqCst) {
            match t.seed() {
                Ok(n) => tracing::debug!(flows = n, "flow index seeded"),
                Err(e) => {
                    tracing::warn!(error = %e, "flow index not seeded; deletions use dumps");
                    std::thread::sleep(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let mut fds = [nix::poll::PollFd::new(
            t.events.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if let Err(e) = nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            if e != nix::errno::Errno::EINTR {
                tracing::warn!(error = %e, "poll of the conntrack event socket");
                std::thread::sleep(Duration::from_secs(1));
            }
            continue;
        }
        let mut idx = t.index.lock().unwrap_or_else(|e| e.into_inner());
        t.drain(&mut idx);
        drop(idx);
        if !t.synced.load(Ordering::SeqCst) {
            // events lost: re-seed, but never in a tight loop
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
