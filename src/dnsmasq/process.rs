//! The dnsmasq process: one supervisor task owns it. It starts it (waiting until dnsmasq has
//! bound its sockets and written its pid file), restarts it when it dies (reporting in health
//! until it is back), folds reload requests into one SIGHUP per batch window, releases the
//! leases of forgotten hosts after the reload, and restarts instead of reloading after the
//! configured number of reloads, or while a host whose `dhcp-host` line sets tags holds a lease
//! (dnsmasq 2.90 dies with SIGSEGV in that reload).

use super::leases::{self, Release};
use super::render::Paths;
use crate::health::Health;
use crate::state::types::MacAddr;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::{HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Health source of the process.
pub const HEALTH_SOURCE: &str = "dnsmasq";

/// A reload waits for this long a pause in the requests, so a burst shares one SIGHUP...
pub const RELOAD_QUIET: Duration = Duration::from_millis(100);
/// ...but never longer than this after the first request, so a removed host stops being
/// served within a second (dnsmasq's own re-read takes ~90 ms at 10,000 hosts).
pub const RELOAD_MAX_DELAY: Duration = Duration::from_millis(600);

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `(mac, ip)` pairs of the leases to keep when the lease file is pruned before a start.
pub type LeaseSet = HashSet<(MacAddr, Ipv4Addr)>;

enum Msg {
    Start {
        keep: LeaseSet,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Reload {
        releases: Vec<Release>,
        restart_after: u32,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// Handle of the supervisor task.
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Supervisor {
    /// Spawns the supervisor (on the current tokio runtime); nothing runs until `start`.
    pub fn spawn(
        bin: PathBuf,
        paths: Paths,
        health: Arc<Health>,
        tagged: Arc<Mutex<HashSet<MacAddr>>>,
        metrics: crate::metrics::Metrics,
    ) -> Supervisor {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            metrics,
            bin,
            paths,
            health,
            child: None,
            wanted: false,
            reloads: 0,
            restart_after: 0,
            tagged,
            reload_at: None,
            reload_first: None,
            releases: Vec::new(),
            retry_at: None,
            backoff: Duration::from_millis(100),
            tail: Arc::default(),
        };
        tokio::spawn(task.run(rx));
        Supervisor { tx }
    }

    /// (Re)starts dnsmasq now, with the lease file pruned to `keep`; returns once it serves,
    /// or dnsmasq's own error.
    pub async fn start(&self, keep: LeaseSet) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Start { keep, reply })
            .map_err(|_| "the dnsmasq supervisor has stopped".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the dnsmasq supervisor has stopped".into()))
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
}

struct Task {
    /// Counts restarts and reloads.
    metrics: crate::metrics::Metrics,
    bin: PathBuf,
    paths: Paths,
    health: Arc<Health>,
    child: Option<Child>,
    /// dnsmasq should be running (restart it when it dies).
    wanted: bool,
    reloads: u32,
    restart_after: u32,
    /// Hosts whose `dhcp-host` sets tags, as dnsmasq may hold them now.
    tagged: Arc<Mutex<HashSet<MacAddr>>>,
    reload_at: Option<Instant>,
    /// When the oldest reload request still waiting came.
    reload_first: Option<Instant>,
    releases: Vec<Release>,
    retry_at: Option<Instant>,
    backoff: Duration,
    tail: Arc<Mutex<VecDeque<String>>>,
}

async fn wait_child(child: &mut Option<Child>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
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
                    Some(Msg::Start { keep, reply }) => {
                        self.wanted = true;
                        self.retry_at = None;
                        let r = self.start_now(Some(&keep)).await;
                        match &r {
                            Ok(()) => self.health.clear(HEALTH_SOURCE),
                            // A config dnsmasq refuses is the caller's to report and undo.
                            Err(_) => self.wanted = false,
                        }
                        let _ = reply.send(r);
                    }
                    Some(Msg::Reload { releases, restart_after }) => {
                        self.releases.extend(releases);
                        self.restart_after = restart_after;
                        let now = Instant::now();
                        let first = *self.reload_first.get_or_insert(now);
                        self.reload_at = Some((now + RELOAD_QUIET).min(first + RELOAD_MAX_DELAY));
                    }
                    Some(Msg::Stop { reply }) => {
                        self.wanted = false;
                        self.retry_at = None;
                        self.reload_at = None;
                        self.reload_first = None;
                        self.stop_child().await;
                        self.health.clear(HEALTH_SOURCE);
                        let _ = reply.send(());
                    }
                    None => {
                        self.stop_child().await;
                        return;
                    }
                },
                status = wait_child(&mut self.child) => {
                    self.child = None;
                    let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    tracing::warn!(%status, tail = %self.tail_text(), "dnsmasq exited; restarting");
                    if self.wanted {
                        self.health.set(HEALTH_SOURCE, format!("dnsmasq exited ({status}); restarting it"));
                        self.retry_at = Some(Instant::now());
                    }
                }
                _ = sleep_opt(self.retry_at) => {
                    self.retry_at = None;
                    self.restart_after_death().await;
                }
                _ = sleep_opt(self.reload_at) => {
                    self.reload_at = None;
                    self.reload_first = None;
                    self.reload_now().await;
                }
            }
        }
    }

    async fn restart_after_death(&mut self) {
        if !self.wanted || self.child.is_some() {
            return;
        }
        match self.start_now(None).await {
            Ok(()) => {
                tracing::info!("dnsmasq is back");
                self.health.clear(HEALTH_SOURCE);
                self.backoff = Duration::from_millis(100);
            }
            Err(e) => {
                self.health.set(
                    HEALTH_SOURCE,
                    format!("dnsmasq is down and does not start: {e}"),
                );
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    async fn reload_now(&mut self) {
        let Some(pid) = self.child.as_ref().and_then(Child::id) else {
            return;
        };
        // dnsmasq 2.90 dies (SIGSEGV) in a SIGHUP while a host whose dhcp-host line sets a
        // tag holds a lease: restart it instead then.
        let held = leases::read(&self.paths.leases());
        let tagged_lease = {
            let tagged = self.tagged.lock().unwrap_or_else(|e| e.into_inner());
            held.iter().any(|(mac, _)| tagged.contains(mac))
        };
        let limit = self.restart_after > 0 && self.reloads >= self.restart_after;
        if limit || tagged_lease {
            tracing::info!(
                reloads = self.reloads,
                limit,
                tagged_lease,
                "restarting dnsmasq instead of reloading"
            );
            if let Err(e) = self.start_now(None).await {
                self.health
                    .set(HEALTH_SOURCE, format!("dnsmasq did not restart: {e}"));
                self.retry_at = Some(Instant::now() + self.backoff);
            }
            return;
        }
        let pid = Pid::from_raw(pid as i32);
        if let Err(e) = kill(pid, Signal::SIGHUP) {
            tracing::warn!(error = %e, "cannot signal dnsmasq");
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

    fn tail_text(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("; ")
    }

    async fn stop_child(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    /// Stops a dnsmasq of ours left behind by an earlier agent process (one that was killed).
    async fn stop_stale(&self) {
        let Ok(text) = std::fs::read_to_string(self.paths.pid()) else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return;
        };
        let conf = self.paths.conf().display().to_string();
        let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&conf))
            .unwrap_or(false);
        if !ours {
            return;
        }
        tracing::warn!(pid, "stopping a dnsmasq left by an earlier agent");
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while kill(pid, None).is_ok() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = kill(pid, Signal::SIGKILL);
        while kill(pid, None).is_ok() && Instant::now() < deadline + STOP_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// (Re)starts dnsmasq and waits until it serves. `keep`: prune the lease file to these.
    async fn start_now(&mut self, keep: Option<&LeaseSet>) -> Result<(), String> {
        self.metrics.dnsmasq_started();
        self.stop_child().await;
        self.stop_stale().await;
        self.reload_at = None;
        self.reload_first = None;
        let pending: LeaseSet = self.releases.drain(..).map(|r| (r.mac, r.ip)).collect();
        let leases = self.paths.leases();
        if let Err(e) = leases::prune(&leases, |mac, ip| {
            !pending.contains(&(mac, ip)) && keep.is_none_or(|k| k.contains(&(mac, ip)))
        }) {
            tracing::warn!(error = %e, path = %leases.display(), "cannot prune the lease file");
        }
        let _ = std::fs::remove_file(self.paths.pid());
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let mut child = Command::new(&self.bin)
            .arg(format!("--conf-file={}", self.paths.conf().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if let Some(stderr) = child.stderr.take() {
            let tail = Arc::clone(&self.tail);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "dnsmasq", "{line}");
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if t.len() == 5 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        let pid = child.id().unwrap_or(0);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                // Let the stderr reader catch up with dnsmasq's last words.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(format!(
                    "dnsmasq exited with {status}: {}",
                    self.tail_text()
                ));
            }
            let written = std::fs::read_to_string(self.paths.pid()).unwrap_or_default();
            if written.trim().parse::<u32>().ok() == Some(pid) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(format!(
                    "dnsmasq did not come up within {}s: {}",
                    READY_TIMEOUT.as_secs(),
                    self.tail_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::info!(pid, "dnsmasq started");
        self.child = Some(child);
        self.reloads = 0;
        Ok(())
    }
}
