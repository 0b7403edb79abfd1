//! Element updates over nfnetlink, without an `nft` process: one batch (one transaction) of
//! set flushes and element deletes and adds on a NETLINK_NETFILTER socket. Used for the
//! single-entry commands, the sync commands and every full re-apply's set contents; rules and
//! chains go through `nft`.
//!
//! [`batch`] builds the messages with `netlink-packet-netfilter`; [`keys`] is our part of the
//! encoding (the bytes of each key and value); [`Nfnl`] sends a batch and reads the kernel's
//! acknowledgements back through the crate's types.

pub mod batch;
pub mod contents;
pub mod keys;

pub use batch::{Batch, Encoded, UnknownSet, batch, describe};

use super::model::Elem;
use super::sets::SetSpec;
use batch::{Builder, Op};
use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::NetfilterMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use std::collections::HashSet;

/// Bytes read per `recv` (a dump's messages are at most 32 kB each).
const READ_BUF: usize = 1 << 18;
/// Receive buffer for acknowledgements (one per message of up to 256 elements).
const RCVBUF: usize = 1 << 20;
/// A batch larger than the default send buffer raises it to its size (one batch is one
/// datagram, and the kernel refuses a datagram larger than the buffer).
const DEFAULT_SNDBUF: usize = 100_000;
/// Longest wait for the kernel's answer to a batch.
const ANSWER_TIMEOUT_S: i64 = 30;

/// Why an element transaction did not go through.
#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    /// The socket could not be opened, written or read: nothing is known to have changed
    /// (callers fall back to `nft`).
    #[error("nfnetlink {what}")]
    Socket {
        /// The operation.
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// An element names a set we do not declare; nothing was sent.
    #[error("nothing was sent")]
    UnknownSet(#[from] UnknownSet),
    /// An answer could not be decoded.
    #[error("undecodable nfnetlink answer")]
    Decode(#[source] netlink_packet_core::DecodeError),
    /// The kernel refused the transaction: nothing of it was applied.
    #[error("{what} in a transaction of {flushes} set flushes, {deletes} deletes and {adds} adds")]
    Refused {
        /// What the error number means for an element transaction.
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
        /// Sets flushed by the transaction.
        flushes: usize,
        /// Elements deleted.
        deletes: usize,
        /// Elements added.
        adds: usize,
    },
}

impl NfnlError {
    /// True when the kernel's sets are as they were: the transaction was refused or never
    /// sent. A socket or decoding failure may come after the kernel took the batch.
    pub fn left_unchanged(&self) -> bool {
        matches!(self, NfnlError::Refused { .. } | NfnlError::UnknownSet(_))
    }
}

/// Hash sets of at least this many elements are refilled rather than dumped and compared
/// (measured: 10,000 EIPs re-applied in ~100 ms by dump and diff, ~150 ms by refills; at
/// 100,000 the dumps take ~0.8 s more than the refills).
const FLUSH_FROM: usize = 25_000;

/// Element changes from which a transaction goes with the drift reader muted
/// ([`Nfnl::send`]): below it the notifications cost less than the generation reads.
const MUTE_FROM: usize = 10_000;

fn generation_text(g: &Result<u32, NfnlError>) -> String {
    match g {
        Ok(g) => g.to_string(),
        Err(e) => format!("unreadable ({e})"),
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> NfnlError {
    move |source| NfnlError::Socket { what, source }
}

/// The message a frame holds, decoded.
fn message(frame: NetlinkBuffer<&[u8]>) -> Result<NetlinkMessage<NetfilterMessage>, NfnlError> {
    NetlinkMessage::<NetfilterMessage>::deserialize(frame.into_inner()).map_err(NfnlError::Decode)
}

/// The kernel refused with `errno` a request of `counts` (flushes, deletes, adds).
fn refused(errno: i32, counts: (usize, usize, usize)) -> NfnlError {
    NfnlError::Refused {
        what: refusal(errno),
        source: std::io::Error::from_raw_os_error(errno),
        flushes: counts.0,
        deletes: counts.1,
        adds: counts.2,
    }
}

fn refusal(errno: i32) -> &'static str {
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::EEXIST => "an element exists with another value",
        nix::errno::Errno::ENOENT => "an element or set to change is missing",
        _ => "the kernel refused the element update",
    }
}

/// Whether a convergence deletes what is not desired.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deletes {
    Send,
    Skip,
}

/// A NETLINK_NETFILTER socket, opened once and kept.
pub struct Nfnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
    sndbuf: usize,
    /// Hash sets of at least this many elements are refilled, not dumped ([`FLUSH_FROM`]).
    flush_from: usize,
}

impl Nfnl {
    /// Opens the socket in the current network namespace.
    pub fn open() -> Result<Nfnl, NfnlError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io("socket"))?;
        sock.bind_auto().map_err(io("bind"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(io("connect"))?;
        setsockopt(
            &sock,
            sockopt::ReceiveTimeout,
            &TimeVal::new(ANSWER_TIMEOUT_S, 0),
        )
        .map_err(|e| io("receive timeout")(e.into()))?;
        // errors echo only the failed message's header, not its thousands of elements
        sock.set_cap_ack(true).map_err(io("cap ack"))?;
        // best effort: the default still holds the answers of small batches
        let _ = setsockopt(&sock, sockopt::RcvBufForce, &RCVBUF);
        Ok(Nfnl {
            sock,
            seq: 1,
            buf: vec![0; READ_BUF],
            sndbuf: DEFAULT_SNDBUF,
            flush_from: FLUSH_FROM,
        })
    }

    /// Refills hash sets of at least `elements` elements instead of dumping them (tests use
    /// 0 and `usize::MAX` to take each path whatever the size).
    pub fn refill_from(&mut self, elements: usize) {
        self.flush_from = elements;
    }

    /// Applies the element changes as one transaction (all or nothing); the error carries the
    /// kernel's reason.
    #[tracing::instrument(name = "nfnetlink", skip_all, fields(flushes = flush.len(), deletes = deletes.len(), adds = adds.len()))]
    pub fn apply(
        &mut self,
        flush: &[(&str, &str)],
        deletes: &[Elem],
        adds: &[Elem],
    ) -> Result<(), NfnlError> {
        if flush.is_empty() && deletes.is_empty() && adds.is_empty() {
            return Ok(());
        }
        let b = batch(flush, deletes, adds, self.seq)?;
        self.send(&b, (flush.len(), deletes.len(), adds.len()))
    }

    /// Every element the set of `spec` holds now.
    pub fn dump(&mut self, spec: &SetSpec) -> Result<Vec<Encoded>, NfnlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.sock
            .send(&contents::dump_request(spec, seq), 0)
            .map_err(io("send"))?;
        let mut out = Vec::new();
        self.read_until(|frame| {
            if frame.sequence_number() != seq {
                return Ok(None);
            }
            if frame.message_type() == contents::new_set_element_type() {
                out.extend(contents::elements_in(frame.payload()).map_err(NfnlError::Decode)?);
                return Ok(None);
            }
            match message(frame)?.payload {
                NetlinkPayload::Done(_) => Ok(Some(())),
                NetlinkPayload::Error(e) if e.raw_code() != 0 => {
                    Err(refused(-e.raw_code(), (0, 0, 0)))
                }
                _ => Ok(None),
            }
        })?;
        Ok(out)
    }

    /// Makes the sets of `specs` hold exactly `desired` (elements of those sets) in one
    /// transaction: a large hash set is flushed and refilled (linear in the kernel; a dump of
    /// one is quadratic: the kernel walks the set from its start for every message of the
    /// dump), the others are dumped and only the difference is sent (flushing a set of
    /// ranges is quadratic; a small set is dumped faster than refilled). Returns (deleted,
    /// added); the elements of a flushed set count as added, not as deleted.
    pub fn replace_contents(
        &mut self,
        specs: &[&'static SetSpec],
        desired: &[Elem],
    ) -> Result<(usize, usize), NfnlError> {
        self.converge(specs, desired, Deletes::Send)
    }

    /// Adds the elements of `desired` the sets of `specs` lack, in one transaction, and
    /// deletes nothing; an element there with another value makes the kernel refuse the whole
    /// transaction. Returns the number added.
    pub fn add_missing(
        &mut self,
        specs: &[&'static SetSpec],
        desired: &[Elem],
    ) -> Result<usize, NfnlError> {
        self.converge(specs, desired, Deletes::Skip)
            .map(|(_, added)| added)
    }

    #[tracing::instrument(name = "set contents", skip_all, fields(sets = specs.len(), desired = desired.len()))]
    fn converge(
        &mut self,
        specs: &[&'static SetSpec],
        desired: &[Elem],
        deletes: Deletes,
    ) -> Result<(usize, usize), NfnlError> {
        let mut changes = Vec::with_capacity(specs.len());
        let mut flushed = Vec::new();
        for spec in specs {
            let want: Vec<Encoded> = desired
                .iter()
                .filter(|e| e.table == spec.table && e.set == spec.name)
                .map(|e| Encoded::of(spec, e))
                .collect();
            if deletes == Deletes::Send && !spec.interval && want.len() >= self.flush_from {
                flushed.push((*spec, want));
                continue;
            }
            let started = std::time::Instant::now();
            let now = self.dump(spec)?;
            let dumped = now.len();
            let dump_ms = started.elapsed().as_millis() as u64;
            let (mut gone, new) = contents::diff(now, want);
            tracing::trace!(
                set = spec.name,
                dumped,
                dump_ms,
                diff_ms = started.elapsed().as_millis() as u64 - dump_ms,
                "set dumped and compared"
            );
            if deletes == Deletes::Skip {
                gone.clear();
            }
            changes.push((*spec, (gone, new)));
        }
        let deleted: usize = changes.iter().map(|(_, (d, _))| d.len()).sum();
        let added: usize = changes.iter().map(|(_, (_, a))| a.len()).sum::<usize>()
            + flushed.iter().map(|(_, a)| a.len()).sum::<usize>();
        if deleted + added == 0 && flushed.is_empty() {
            return Ok((0, 0));
        }
        let mut b = Builder::new(self.seq.wrapping_add(1));
        for (spec, _) in &flushed {
            b.flush(spec);
        }
        for (spec, (deletes, _)) in &changes {
            b.elements(Op::Delete, spec, deletes);
        }
        for (spec, adds) in &flushed {
            b.elements(Op::Add, spec, adds);
        }
        for (spec, (_, adds)) in &changes {
            b.elements(Op::Add, spec, adds);
        }
        self.send(&b.finish(), (flushed.len(), deleted, added))?;
        Ok((deleted, added))
    }

    /// Sends one batch and waits for its acknowledgements; a batch of [`MUTE_FROM`] element
    /// changes or more goes with the drift reader muted.
    fn send(&mut self, b: &Batch, counts: (usize, usize, usize)) -> Result<(), NfnlError> {
        if counts.1 + counts.2 < MUTE_FROM {
            return self.send_watched(b, counts);
        }
        self.send_muted(b, counts)
    }

    /// [`Self::send`] with the drift reader's notifications stopped: the kernel builds no
    /// message per element (with a listener, a 100,000-EIP re-apply took 3.3-4.5 s instead of
    /// 1.2-1.5 s). The ruleset generation read before, after, and once notifications are back
    /// must step exactly by our commit; anything else means another process committed while
    /// the reader could not see it, which is reported as missed (drift then verifies).
    fn send_muted(&mut self, b: &Batch, counts: (usize, usize, usize)) -> Result<(), NfnlError> {
        if crate::drift::nft_events::foreign_generation().is_none() {
            // no drift reader runs: nothing to mute
            return self.send_watched(b, counts);
        }
        // read before muting: a commit of another process until then is still notified
        let Ok(before) = self.generation() else {
            return self.send_watched(b, counts);
        };
        let Some(muted) = crate::drift::nft_events::mute() else {
            return self.send_watched(b, counts);
        };
        let sent = self.send_watched(b, counts);
        let after = self.generation();
        drop(muted);
        let now = self.generation();
        let ours = if sent.is_ok() {
            before.wrapping_add(1)
        } else {
            before
        };
        match (after, now) {
            (Ok(after), Ok(now)) if after == ours && now == ours => tracing::debug!(
                elements = counts.1 + counts.2,
                generation = now,
                "element batch sent with the drift reader muted"
            ),
            (after, now) => crate::drift::nft_events::missed(format!(
                "nftables changed while the agent's own transaction of {} element(s) ran \
                 without notifications (generation {before}, then {}, then {})",
                counts.1 + counts.2,
                generation_text(&after),
                generation_text(&now)
            )),
        }
        sent
    }

    /// The ruleset generation: every committed nftables transaction of the namespace steps
    /// it by one.
    pub fn generation(&mut self) -> Result<u32, NfnlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.sock
            .send(&contents::generation_request(seq), 0)
            .map_err(io("send"))?;
        self.read_until(|frame| {
            if frame.sequence_number() != seq {
                return Ok(None);
            }
            match message(frame)?.payload {
                NetlinkPayload::InnerMessage(inner) => Ok(contents::generation_in(inner)),
                NetlinkPayload::Error(e) if e.raw_code() != 0 => {
                    Err(refused(-e.raw_code(), (0, 0, 0)))
                }
                _ => Ok(None),
            }
        })
    }

    /// Reads datagrams and hands `each` every message in them, as its raw frame, until
    /// `each` returns a value (or an error).
    fn read_until<R>(
        &mut self,
        mut each: impl FnMut(NetlinkBuffer<&[u8]>) -> Result<Option<R>, NfnlError>,
    ) -> Result<R, NfnlError> {
        loop {
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(io("receive"))?;
            let mut rest = &self.buf[..n];
            while !rest.is_empty() {
                let frame = NetlinkBuffer::new_checked(rest).map_err(NfnlError::Decode)?;
                let len = (frame.length() as usize).next_multiple_of(4);
                if let Some(r) = each(frame)? {
                    return Ok(r);
                }
                rest = rest.get(len..).unwrap_or_default();
            }
        }
    }

    /// Sends one batch and waits for its acknowledgements.
    fn send_watched(&mut self, b: &Batch, counts: (usize, usize, usize)) -> Result<(), NfnlError> {
        self.seq = b.last_seq().wrapping_add(1);
        let bytes = b.bytes();
        if bytes.len() > self.sndbuf {
            setsockopt(&self.sock, sockopt::SndBufForce, &(bytes.len() + 65536))
                .map_err(|e| io("send buffer")(e.into()))?;
            self.sndbuf = bytes.len();
        }
        self.sock.send(&bytes, 0).map_err(io("send"))?;
        self.answers(b, counts)
    }

    /// Reads one acknowledgement per message; an error on the batch's begin or end (the
    /// whole batch refused) ends the wait at once.
    fn answers(&mut self, b: &Batch, counts: (usize, usize, usize)) -> Result<(), NfnlError> {
        let mut waiting: HashSet<u32> = b.acked.iter().copied().collect();
        let bounds = [b.first_seq(), b.last_seq()];
        let mut failure = None;
        if !waiting.is_empty() {
            self.read_until(|frame| {
                let seq = frame.sequence_number();
                let NetlinkPayload::Error(e) = message(frame)?.payload else {
                    return Ok(None);
                };
                let code = e.raw_code();
                if code != 0 && failure.is_none() {
                    failure = Some(refused(-code, counts));
                }
                waiting.remove(&seq);
                if code != 0 && bounds.contains(&seq) {
                    waiting.clear();
                }
                Ok(waiting.is_empty().then_some(()))
            })?;
        }
        failure.map_or(Ok(()), Err)
    }
}
