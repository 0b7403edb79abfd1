//! Bounds on client connections: how long a connection may sit idle or dribble a request head,
//! and how many may be open at once, while `/ping` and `/echo` stay answerable at the cap.
//!
//! Every accepted connection gets a [`Conn`] record (shared by its read wrapper, its service
//! and its watchdog) and a place in the [`Conns`] table:
//! - **Idle** (no request running, no byte of a next request read): closed `idle` after the
//!   accept or the last reply. This is the keep-alive timeout.
//! - **Head started** (bytes read, no request dispatched yet): closed `header` after its
//!   first byte. hyper's own `header_read_timeout` is armed as a backstop at `idle + header`.
//! - **Request running**: never closed by the watchdog; the body read has its own timeout
//!   (`body`, in the handler) and commands answer within their own limits.
//!
//! The cap: at `max` open connections a new one first evicts the idle connection that has
//! been idle longest (idle ones cost a file descriptor and ~16 KB and do nothing; a client
//! that wants to keep them reconnects). When none is idle (every connection has a request
//! running) the new connection is taken as an *overflow* connection, up to `reserve` more:
//! it is served one request, `Connection: close`, and only `/ping` and `/echo` (any other
//! path is answered 503). Beyond `max + reserve` a connection is closed at once, so the
//! kernel's accept queue never fills up behind us.

use super::inflight::{Guard, InFlight};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Descriptors kept aside for everything but client connections (state files, netlink
/// sockets, dnsmasq and nft pipes, callbacks in flight).
const FD_HEADROOM: u64 = 256;

/// The connection bounds (from the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A started request head must be complete within this.
    pub header: Duration,
    /// A connection without a request is closed after this.
    pub idle: Duration,
    /// A request body must be read completely within this.
    pub body: Duration,
    /// Connections served normally.
    pub max: usize,
    /// Extra connections served `/ping` and `/echo` only, once `max` are busy.
    pub reserve: usize,
}

impl Limits {
    /// The reserve that goes with a cap of `max`.
    pub fn reserve_for(max: usize) -> usize {
        (max / 4).clamp(8, 256)
    }
}

/// How a new connection is to be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Every path, keep-alive.
    Normal,
    /// One request, `/ping` and `/echo` only.
    Overflow,
    /// Closed at once.
    Refused,
}

/// State of one connection, shared by its reader, its service and its watchdog.
pub struct Conn {
    id: u64,
    born: Instant,
    /// Requests dispatched and not answered yet.
    active: AtomicUsize,
    /// Milliseconds since `born` of the last reply (or the accept).
    idle_since: AtomicU64,
    /// Milliseconds since `born` of the first byte read after `idle_since`; `u64::MAX` if none.
    head_since: AtomicU64,
    /// Wakes the watchdog to close the connection (eviction).
    evict: Notify,
    evicted: std::sync::atomic::AtomicBool,
}

const NONE: u64 = u64::MAX;

impl Conn {
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.born + Duration::from_millis(ms)
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        if self.active.load(Ordering::SeqCst) == 0 && self.head_since.load(Ordering::SeqCst) == NONE
        {
            let _ = self.head_since.compare_exchange(
                NONE,
                self.now_ms(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// A request was dispatched; the returned guard marks its reply.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        RequestGuard(Arc::clone(self))
    }

    fn is_idle(&self) -> bool {
        self.active.load(Ordering::SeqCst) == 0 && self.head_since.load(Ordering::SeqCst) == NONE
    }

    /// When the watchdog should close the connection, if nothing happens meanwhile; `None`
    /// while a request runs.
    pub fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::SeqCst) {
            NONE => Some(self.at(self.idle_since.load(Ordering::SeqCst)) + limits.idle),
            head => Some(self.at(head) + limits.header),
        }
    }

    /// Resolves when the connection was chosen for eviction.
    pub async fn evicted(&self) {
        let notified = self.evict.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.evicted.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// Held while a request runs on its connection.
pub struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let c = &self.0;
        c.idle_since.store(c.now_ms(), Ordering::SeqCst);
        c.head_since.store(NONE, Ordering::SeqCst);
        c.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The table of open connections.
pub struct Conns {
    /// The bounds.
    pub limits: Limits,
    next: AtomicU64,
    table: Mutex<HashMap<u64, Arc<Conn>>>,
    overflow: AtomicUsize,
    open: InFlight,
}

/// A connection's place in the table; dropping it removes the connection.
pub struct Slot {
    conns: Arc<Conns>,
    /// The connection.
    pub conn: Arc<Conn>,
    /// How it is served.
    pub admission: Admission,
    _open: Guard,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.admission == Admission::Overflow {
            self.conns.overflow.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.conns
                .table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.conn.id);
        }
    }
}

impl Conns {
    /// An empty table.
    pub fn new(limits: Limits) -> Arc<Conns> {
        Arc::new(Conns {
            limits,
            next: AtomicU64::new(1),
            table: Mutex::new(HashMap::new()),
            overflow: AtomicUsize::new(0),
            open: InFlight::default(),
        })
    }

    /// Connections open now (normal and overflow).
    pub fn open(&self) -> usize {
        self.open.count()
    }

    /// Resolves once every connection is closed.
    pub async fn closed(&self) {
        self.open.idle().await;
    }

    /// Admits a just-accepted connection (evicting the longest-idle one at the cap).
    pub fn admit(self: &Arc<Self>) -> Slot {
        let conn = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::SeqCst),
            born: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            evict: Notify::new(),
            evicted: std::sync::atomic::AtomicBool::new(false),
        });
        let admission = {
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            // evicted connections leave the table only when their task ends: count the rest
            let live = table
                .values()
                .filter(|c| !c.evicted.load(Ordering::SeqCst))
                .count();
            if live < self.limits.max {
                table.insert(conn.id, Arc::clone(&conn));
                Admission::Normal
            } else if let Some(victim) = table
                .values()
                .filter(|c| !c.evicted.load(Ordering::SeqCst) && c.is_idle())
                .min_by_key(|c| c.at(c.idle_since.load(Ordering::SeqCst)))
            {
                victim.evicted.store(true, Ordering::SeqCst);
                victim.evict.notify_one();
                table.insert(conn.id, Arc::clone(&conn));
                Admission::Normal
            } else if self.overflow.fetch_add(1, Ordering::SeqCst) < self.limits.reserve {
                Admission::Overflow
            } else {
                self.overflow.fetch_sub(1, Ordering::SeqCst);
                Admission::Refused
            }
        };
        Slot {
            conns: Arc::clone(self),
            conn,
            admission,
            _open: self.open.enter(),
        }
    }
}

/// The client stream with read activity reported to its [`Conn`].
pub struct Watched<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Watched<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, conn: Arc<Conn>) -> Watched<S> {
        Watched { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises the soft limit of open files to the hard limit and returns the cap of normal
/// connections that fits under it with the reserve and [`FD_HEADROOM`] (at most `wanted`).
pub fn fit_fd_limit(wanted: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return wanted;
        }
    };
    let mut limit = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => limit = hard,
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        }
    }
    let budget = limit.saturating_sub(FD_HEADROOM) as usize;
    let mut max = wanted;
    while max > 1 && max + Limits::reserve_for(max) > budget {
        max -= 1;
    }
    if max < wanted {
        tracing::warn!(
            wanted,
            max,
            open_files = limit,
            "connection cap lowered to fit the open-file limit"
        );
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, reserve: usize) -> Limits {
        Limits {
            header: Duration::from_secs(1),
            idle: Duration::from_secs(2),
            body: Duration::from_secs(3),
            max,
            reserve,
        }
    }

    #[test]
    fn the_cap_evicts_the_longest_idle_then_overflows_then_refuses() {
        let conns = Conns::new(limits(2, 1));
        let a = conns.admit();
        let b = conns.admit();
        assert_eq!(a.admission, Admission::Normal);
        assert_eq!(b.admission, Admission::Normal);
        // b is busy; a is idle and goes first
        let _req_b = b.conn.request();
        let c = conns.admit();
        assert_eq!(c.admission, Admission::Normal);
        assert!(a.conn.evicted.load(Ordering::SeqCst));
        drop(a);
        // b busy, c has started a head: nothing idle, so overflow, then refusal
        c.conn.on_read();
        let d = conns.admit();
        assert_eq!(d.admission, Admission::Overflow);
        let e = conns.admit();
        assert_eq!(e.admission, Admission::Refused);
        drop(e);
        drop(d);
        assert_eq!(conns.admit().admission, Admission::Overflow);
        assert_eq!(conns.open(), 2);
    }

    #[test]
    fn deadlines_follow_idle_head_and_request() {
        let conns = Conns::new(limits(4, 1));
        let s = conns.admit();
        let l = conns.limits;
        let idle = s.conn.deadline(&l).unwrap();
        assert!(idle <= Instant::now() + l.idle && idle > Instant::now());
        s.conn.on_read();
        let head = s.conn.deadline(&l).unwrap();
        assert!(head <= Instant::now() + l.header);
        let req = s.conn.request();
        assert_eq!(s.conn.deadline(&l), None);
        drop(req);
        assert!(s.conn.is_idle());
        assert!(s.conn.deadline(&l).unwrap() > Instant::now() + l.header);
    }
}
