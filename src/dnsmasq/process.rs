//! The dnsmasq process, run by the shared [`Supervisor`] (start, restart when it dies, health
//! until it is back, stop). On top of it this task folds reload requests into one SIGHUP per
//! batch window, releases the leases of forgotten hosts after the reload, and restarts instead
//! of reloading after the configured number of reloads, or while a host whose `dhcp-host` line
//! sets tags holds a lease (dnsmasq 2.90 dies with SIGSEGV in that reload).

use super::leases::{self, Release};
use super::render::Paths;
use crate::health::Health;
use crate::state::types::MacAddr;
use crate::supervisor::{Engine, StartError, Started, Supervisor as EngineSupervisor};
use nix::sys::signal::Signal;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Health source of the process (the supervisor reports under the engine's name).
pub const HEALTH_SOURCE: &str = "dnsmasq";

/// A reload waits for this long a pause in the requests, so a burst shares one SIGHUP...
pub const RELOAD_QUIET: Duration = Duration::from_millis(100);
/// ...but never longer than this after the first request, so a removed host stops being
/// served within a second (dnsmasq's own re-read takes ~90 ms at 10,000 hosts).
pub const RELOAD_MAX_DELAY: Duration = Duration::from_millis(600);

/// `(mac, ip)` pairs of the leases to keep when the lease file is pruned before a start.
pub type LeaseSet = HashSet<(MacAddr, Ipv4Addr)>;

/// What the lease file is pruned to before the next start.
#[derive(Default)]
struct Prune {
    /// Keep only these (an explicit start); `None`: keep all but `pending`.
    keep: Option<LeaseSet>,
    /// Leases whose release was waiting for a reload that did not come.
    pending: LeaseSet,
}

/// dnsmasq as the supervisor runs it.
struct Dnsmasq {
    bin: PathBuf,
    paths: Paths,
    prune: Arc<Mutex<Prune>>,
}

impl Engine for Dnsmasq {
    fn name(&self) -> &'static str {
        HEALTH_SOURCE
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.arg(format!("--conf-file={}", self.paths.conf().display()));
        c
    }

    fn pid_file(&self) -> PathBuf {
        self.paths.pid()
    }

    fn marker(&self) -> String {
        self.paths.conf().display().to_string()
    }

    /// dnsmasq reads its main config only when it starts (a SIGHUP re-reads the hosts,
    /// options and additional-hosts files).
    fn start_config(&self) -> Option<PathBuf> {
        Some(self.paths.conf())
    }

    fn before_start(&mut self) {
        let Prune { keep, pending } =
            std::mem::take(&mut *self.prune.lock().unwrap_or_else(|e| e.into_inner()));
        let path = self.paths.leases();
        if let Err(e) = leases::prune(&path, |mac, ip| {
            !pending.contains(&(mac, ip)) && keep.as_ref().is_none_or(|k| k.contains(&(mac, ip)))
        }) {
            tracing::warn!(error = %e, path = %path.display(), "cannot prune the lease file");
        }
    }
}

enum Msg {
    Start {
        keep: LeaseSet,
        /// A dnsmasq an earlier agent left running may serve on.
        adopt: bool,
        reply: oneshot::Sender<Result<Started, StartError>>,
    },
    Reload {
        releases: Vec<Release>,
        restart_after: u32,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
    Detach {
        reply: oneshot::Sender<()>,
    },
}

/// Handle of the dnsmasq task.
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Supervisor {
    /// Spawns the task (on the current tokio runtime); nothing runs until `start`.
    pub fn spawn(
        bin: PathBuf,
        paths: Paths,
        health: Arc<Health>,
        tagged: Arc<Mutex<HashSet<MacAddr>>>,
        metrics: crate::metrics::Metrics,
    ) -> Supervisor {
        let (tx, rx) = mpsc::unbounded_channel();
        let prune = Arc::new(Mutex::new(Prune::default()));
        let engine = EngineSupervisor::spawn(
            Dnsmasq {
                bin,
                paths: paths.clone(),
                prune: Arc::clone(&prune),
            },
            health,
        );
        let task = Task {
            metrics,
            paths,
            engine,
            prune,
            seen_starts: 0,
            reloads: 0,
            restart_after: 0,
            tagged,
            reload_at: None,
            reload_first: None,
            releases: Vec::new(),
        };
        tokio::spawn(task.run(rx));
        Supervisor { tx }
    }

    /// (Re)starts dnsmasq now, with the lease file pruned to `keep`; returns once it serves,
    /// or dnsmasq's own error.
    pub async fn start(&self, keep: LeaseSet) -> Result<(), StartError> {
        self.start_with(keep, false).await.map(|_| ())
    }

    /// Like [`Supervisor::start`], but a dnsmasq an earlier agent left running serves on when
    /// it was started from the config file there is now (its lease file is then not pruned:
    /// the caller reloads it, with the releases of hosts gone).
    pub async fn start_or_adopt(&self, keep: LeaseSet) -> Result<Started, StartError> {
        self.start_with(keep, true).await
    }

    async fn start_with(&self, keep: LeaseSet, adopt: bool) -> Result<Started, StartError> {
        let gone = || StartError::Gone { name: "dnsmasq" };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Start { keep, adopt, reply })
            .map_err(|_| gone())?;
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Asks for a reload (folded with others, within [`RELOAD_MAX_DELAY`]), then the release
    /// of `releases`.
    pub fn reload(&self, releases: Vec<Release>, restart_after: u32) {
        let _ = self.tx.send(Msg::Reload {
            releases,
            restart_after,
        });
    }

    /// Stops dnsmasq and waits for it to exit.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Stop { reply }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Leaves dnsmasq serving for the next agent process to adopt (a reload still waiting is
    /// sent first).
    pub async fn detach(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Detach { reply }).is_ok() {
            let _ = rx.await;
        }
    }
}

struct Task {
    /// Counts starts and reloads.
    metrics: crate::metrics::Metrics,
    paths: Paths,
    engine: EngineSupervisor,
    prune: Arc<Mutex<Prune>>,
    /// The engine's start count when `reloads` was last reset.
    seen_starts: u64,
    reloads: u32,
    restart_after: u32,
    /// Hosts whose `dhcp-host` sets tags, as dnsmasq may hold them now.
    tagged: Arc<Mutex<HashSet<MacAddr>>>,
    reload_at: Option<Instant>,
    /// When the oldest reload request still waiting came.
    reload_first: Option<Instant>,
    releases: Vec<Release>,
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Start { keep, adopt, reply }) => {
                        let _ = reply.send(self.start_now(Some(keep), false, adopt).await);
                    }
                    Some(Msg::Reload { releases, restart_after }) => {
                        self.releases.extend(releases);
                        self.restart_after = restart_after;
                        let now = Instant::now();
                        let first = *self.reload_first.get_or_insert(now);
                        self.reload_at = Some((now + RELOAD_QUIET).min(first + RELOAD_MAX_DELAY));
                    }
                    Some(Msg::Stop { reply }) => {
                        self.reload_at = None;
                        self.reload_first = None;
                        self.engine.stop().await;
                        let _ = reply.send(());
                    }
                    Some(Msg::Detach { reply }) => {
                        if self.reload_at.take().is_some() {
                            // The files changed: dnsmasq serves on with them when a SIGHUP is
                            // safe (never a restart here: it could not finish before the
                            // agent exits); the next agent reloads it after adopting it anyway.
                            self.reload_first = None;
                            if !self.reload_needs_restart() {
                                self.engine.signal(Signal::SIGHUP).await;
                            }
                        }
                        self.engine.detach().await;
                        let _ = reply.send(());
                        // nothing is left to supervise; the handle goes next
                        return;
                    }
                    None => {
                        self.engine.stop().await;
                        return;
                    }
                },
                _ = sleep_opt(self.reload_at) => {
                    self.reload_at = None;
                    self.reload_first = None;
                    self.reload_now().await;
                }
            }
        }
    }

    async fn reload_now(&mut self) {
        let Some(pid) = self.engine.pid() else {
            return;
        };
        if self.engine.starts() != self.seen_starts {
            // restarted by the supervisor since: a fresh process read everything
            self.seen_starts = self.engine.starts();
            self.reloads = 0;
        }
        let held = leases::read(&self.paths.leases());
        if self.reload_needs_restart() {
            tracing::info!(
                reloads = self.reloads,
                restart_after = self.restart_after,
                "restarting dnsmasq instead of reloading"
            );
            if let Err(e) = self.start_now(None, true, false).await {
                tracing::warn!(error = %crate::error::chain(&e), "dnsmasq did not restart; retrying");
            }
            return;
        }
        if !self.engine.signal(Signal::SIGHUP).await {
            tracing::warn!(pid, "cannot signal dnsmasq");
            return;
        }
        self.reloads += 1;
        self.metrics.dnsmasq_reloaded();
        tracing::debug!(reloads = self.reloads, "dnsmasq reloaded");
        let releases = std::mem::take(&mut self.releases);
        if releases.is_empty() {
            return;
        }
        for r in releases.iter().filter(|r| held.contains(&(r.mac, r.ip))) {
            if let Err(e) = leases::send(r) {
                tracing::warn!(mac = %r.mac, ip = %r.ip, error = %e, "cannot release the lease");
            } else {
                tracing::debug!(mac = %r.mac, ip = %r.ip, nic = %r.nic, "lease released");
            }
        }
    }

    /// True when a reload must be a restart: the reload limit is reached, or a host whose
    /// dhcp-host line sets a tag holds a lease (dnsmasq 2.90 dies with SIGSEGV in that
    /// SIGHUP).
    fn reload_needs_restart(&self) -> bool {
        let limit = self.restart_after > 0 && self.reloads >= self.restart_after;
        limit || {
            let held = leases::read(&self.paths.leases());
            let tagged = self.tagged.lock().unwrap_or_else(|e| e.into_inner());
            held.iter().any(|(mac, _)| tagged.contains(mac))
        }
    }

    /// (Re)starts dnsmasq through the supervisor and waits until it serves. `keep`: prune the
    /// lease file to these; pending releases are dropped from it either way. `retry`: keep
    /// trying when it does not come up (else the caller reports and undoes). `adopt`: a
    /// dnsmasq an earlier agent left running may serve on (not pruned, not restarted).
    async fn start_now(
        &mut self,
        keep: Option<LeaseSet>,
        retry: bool,
        adopt: bool,
    ) -> Result<Started, StartError> {
        self.reload_at = None;
        self.reload_first = None;
        {
            let mut p = self.prune.lock().unwrap_or_else(|e| e.into_inner());
            p.keep = keep;
            p.pending = self.releases.drain(..).map(|r| (r.mac, r.ip)).collect();
        }
        let r = if retry {
            self.engine.restart().await.map(|()| Started::Fresh)
        } else if adopt {
            self.engine.start_or_adopt().await
        } else {
            self.engine.start().await.map(|()| Started::Fresh)
        };
        if matches!(r, Ok(Started::Adopted)) {
            // nothing was pruned: the next start keeps all but the releases still pending
            self.prune.lock().unwrap_or_else(|e| e.into_inner()).keep = None;
        } else {
            // an adoption starts no process: not counted
            self.metrics.dnsmasq_started();
        }
        self.seen_starts = self.engine.starts();
        self.reloads = 0;
        r
    }
}
