//! One supervisor for the engines the agent runs (dnsmasq, haproxy, later keepalived): a task
//! owns the child process. It starts it and waits until the engine says it serves; when the
//! child dies it starts it again at once, then with a doubling backoff, and reports in health
//! (under the engine's name) until it is back; it stops it on request or when every handle is
//! gone. An engine of ours left by an earlier agent process (found by its pid file and command
//! line) is stopped before a start, or adopted (see [`adopt`]) when the caller asks for it and
//! it runs the configuration of now.

mod adopt;

use crate::health::Health;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long a start may take until the engine serves.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopping engine gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// First wait before another start after a failed one...
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// ...doubling up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Lines of the engine's stderr kept for error messages.
const TAIL_LINES: usize = 5;

/// Why an engine did not start (its own last words included when it said any).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The program could not be run.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The child could not be waited for.
    #[error("cannot wait for {name}")]
    Wait {
        /// The engine.
        name: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The engine exited while starting.
    #[error("{name} exited with {status}: {tail}")]
    Exited {
        /// The engine.
        name: &'static str,
        /// How it exited.
        status: ExitStatus,
        /// The last lines it wrote to stderr.
        tail: String,
    },
    /// The engine did not say it serves in time (it was killed).
    #[error("{name} did not come up within {secs}s: {tail}")]
    NotReady {
        /// The engine.
        name: &'static str,
        /// The limit.
        secs: u64,
        /// The last lines it wrote to stderr.
        tail: String,
    },
    /// The supervisor task is gone (the agent is stopping).
    #[error("the {name} supervisor has stopped")]
    Gone {
        /// The engine.
        name: &'static str,
    },
}

/// What the supervisor needs to know about one engine.
pub trait Engine: Send + Sync + 'static {
    /// Its name, for logs and as the health source.
    fn name(&self) -> &'static str;
    /// The command that runs it in the foreground (stderr is read by the supervisor).
    fn command(&self) -> Command;
    /// The pid file it writes (its readiness signal by default, and how a child left by an
    /// earlier agent is found).
    fn pid_file(&self) -> PathBuf;
    /// A string in the command line of our engine (so a reused pid is never signalled).
    fn marker(&self) -> String;
    /// The config file the engine reads only when it starts, if a running engine an earlier
    /// agent started may be adopted (see [`adopt`]). Default: never adopted.
    fn start_config(&self) -> Option<PathBuf> {
        None
    }
    /// Called before every start, the restarts after a death included.
    fn before_start(&mut self) {}
    /// Called when the child died without being asked to stop (before it is restarted).
    fn exited(&self) {}
    /// True once the child with `pid` serves. Default: its pid file holds `pid`.
    fn ready(&self, pid: u32) -> bool {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            == Some(pid)
    }
}

/// How a start ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// A new process serves.
    Fresh,
    /// The process an earlier agent started serves on: it was started from the same config.
    /// It has not read the other files the agent may have rewritten since (the caller
    /// reloads it).
    Adopted,
}

/// The engine process being supervised.
enum Running {
    /// Started by this agent.
    Child(Child),
    /// Started by an earlier agent and adopted: watched and signalled through its pidfd.
    Adopted(adopt::Adopted),
}

enum Msg {
    Start {
        /// Keep trying (with the backoff) when this start fails.
        retry: bool,
        /// Adopt an engine an earlier agent left running, if it may be (else start one).
        adopt: bool,
        reply: oneshot::Sender<Result<Started, StartError>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
    Detach {
        reply: oneshot::Sender<()>,
    },
    Signal {
        signal: Signal,
        reply: oneshot::Sender<bool>,
    },
}

/// Handle of a supervisor task. Dropping every handle stops the engine.
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Msg>,
    name: &'static str,
    pid: Arc<AtomicU32>,
    starts: Arc<AtomicU64>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Supervisor {
    /// Spawns the supervisor of `engine` on the current tokio runtime; nothing runs until
    /// [`Supervisor::start`].
    pub fn spawn<E: Engine>(engine: E, health: Arc<Health>) -> Supervisor {
        let (tx, rx) = mpsc::unbounded_channel();
        let pid = Arc::new(AtomicU32::new(0));
        let starts = Arc::new(AtomicU64::new(0));
        let name = engine.name();
        let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let task = Task {
            engine,
            health,
            child: None,
            wanted: false,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            tail: Arc::clone(&tail),
            pid: Arc::clone(&pid),
            starts: Arc::clone(&starts),
        };
        tokio::spawn(task.run(rx));
        Supervisor {
            tx,
            name,
            pid,
            starts,
            tail,
        }
    }

    /// (Re)starts the engine now; returns once it serves, or with the engine's own error (it
    /// is then not restarted: a configuration it refuses is the caller's to report and undo).
    pub async fn start(&self) -> Result<(), StartError> {
        self.start_with(false, false).await.map(|_| ())
    }

    /// Like [`Supervisor::start`], but an engine an earlier agent left running is adopted
    /// instead when it was started from the config file there is now (see [`adopt`]).
    pub async fn start_or_adopt(&self) -> Result<Started, StartError> {
        self.start_with(false, true).await
    }

    /// Restarts the engine now (a fresh process); if it does not come up, keeps trying with
    /// the backoff and reports in health meanwhile. Returns the first attempt's outcome.
    pub async fn restart(&self) -> Result<(), StartError> {
        self.start_with(true, false).await.map(|_| ())
    }

    async fn start_with(&self, retry: bool, adopt: bool) -> Result<Started, StartError> {
        let gone = || StartError::Gone { name: self.name };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Start {
                retry,
                adopt,
                reply,
            })
            .map_err(|_| gone())?;
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Sends `signal` to the running engine (an adopted one through its pidfd); false when none
    /// runs or it could not be signalled.
    pub async fn signal(&self, signal: Signal) -> bool {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Signal { signal, reply }).is_ok() && rx.await.unwrap_or(false)
    }

    /// Stops supervising and leaves the engine running, for the next agent process to adopt
    /// (the agent is stopping; the engine serves on meanwhile).
    pub async fn detach(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Detach { reply }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops the engine (and one left by an earlier agent) and waits for it to exit; it stays
    /// down until the next start.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Stop { reply }).is_ok() {
            let _ = rx.await;
        }
    }

    /// The running child's pid, if one runs.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }

    /// The last lines the engine wrote to stderr, joined (its own words on a failure).
    pub fn tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("; ")
    }

    /// How many times the engine was started (a change means a new process).
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::SeqCst)
    }
}

/// True while `pid` runs. A process left by an earlier agent is nobody's child of ours: once
/// it exits it stays a zombie until init reaps it, which counts as gone.
pub fn alive(pid: Pid) -> bool {
    kill(pid, None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
}

/// Stops the engine `name` an earlier agent process left running (it crashed, or was killed
/// after its stop timed out): the process of the pid in `pid_file` if `marker` is in its
/// command line (so a reused pid is never signalled). SIGTERM, then SIGKILL after
/// [`STOP_TIMEOUT`].
pub async fn stop_leftover(name: &str, pid_file: &std::path::Path, marker: &str) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false);
    if !ours || !alive(Pid::from_raw(pid)) {
        return;
    }
    tracing::warn!(
        engine = name,
        pid,
        "stopping an engine left by an earlier agent"
    );
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = kill(pid, Signal::SIGKILL);
    while alive(pid) && Instant::now() < deadline + STOP_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Task<E: Engine> {
    engine: E,
    health: Arc<Health>,
    child: Option<Running>,
    /// The engine should be running (start it again when it dies).
    wanted: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    tail: Arc<Mutex<VecDeque<String>>>,
    pid: Arc<AtomicU32>,
    starts: Arc<AtomicU64>,
}

/// Resolves when the running engine exits, with how it exited.
async fn wait_child(child: &mut Option<Running>) -> String {
    match child {
        Some(Running::Child(c)) => c
            .wait()
            .await
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string()),
        Some(Running::Adopted(a)) => {
            a.exited().await;
            "an unknown status (adopted, not our child)".to_string()
        }
        None => std::future::pending().await,
    }
}

impl<E: Engine> Drop for Task<E> {
    /// The task is dropped without a stop or a detach (the runtime shuts down: the agent's
    /// stop ran out of time). An engine the next agent may adopt serves on; any other goes
    /// with the agent.
    fn drop(&mut self) {
        let adoptable = self.engine.start_config().is_some();
        match self.child.take() {
            // the only way to let go of a tokio child without its kill on drop
            Some(Running::Child(c)) if adoptable => std::mem::forget(c),
            Some(Running::Child(mut c)) => {
                let _ = c.start_kill();
            }
            Some(Running::Adopted(a)) if !adoptable => {
                a.signal(Signal::SIGKILL);
            }
            Some(Running::Adopted(_)) | None => {}
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<E: Engine> Task<E> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let name = self.engine.name();
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Start { retry, adopt, reply }) => {
                        self.wanted = true;
                        self.retry_at = None;
                        let r = self.start_now(adopt).await;
                        match &r {
                            Ok(_) => {
                                self.health.clear(name);
                                self.backoff = FIRST_BACKOFF;
                            }
                            Err(e) if retry => {
                                self.health.set(
                                    name,
                                    format!("{name} did not restart: {}", crate::error::chain(e)),
                                );
                                self.retry_at = Some(Instant::now() + self.backoff);
                            }
                            Err(_) => self.wanted = false,
                        }
                        let _ = reply.send(r);
                    }
                    Some(Msg::Stop { reply }) => {
                        self.wanted = false;
                        self.retry_at = None;
                        self.stop_child().await;
                        self.stop_stale().await;
                        self.health.clear(name);
                        let _ = reply.send(());
                    }
                    Some(Msg::Signal { signal, reply }) => {
                        let sent = match &self.child {
                            Some(Running::Child(c)) => c
                                .id()
                                .is_some_and(|pid| kill(Pid::from_raw(pid as i32), signal).is_ok()),
                            Some(Running::Adopted(a)) => a.signal(signal),
                            None => false,
                        };
                        let _ = reply.send(sent);
                    }
                    Some(Msg::Detach { reply }) => {
                        self.wanted = false;
                        self.retry_at = None;
                        self.pid.store(0, Ordering::SeqCst);
                        match self.child.take() {
                            Some(Running::Child(c)) => {
                                tracing::info!(engine = name, pid = c.id(), "leaving the engine running for the next agent");
                                // The only way to let go of a tokio child without the kill on
                                // drop that guards every other path (one handle, at shutdown).
                                std::mem::forget(c);
                            }
                            Some(Running::Adopted(a)) => {
                                tracing::info!(engine = name, pid = a.pid, "leaving the engine running for the next agent");
                            }
                            None => {}
                        }
                        self.health.clear(name);
                        let _ = reply.send(());
                    }
                    None => {
                        self.stop_child().await;
                        return;
                    }
                },
                status = wait_child(&mut self.child) => {
                    self.child = None;
                    self.pid.store(0, Ordering::SeqCst);
                    tracing::warn!(engine = name, %status, tail = %self.tail_text(), "engine exited; restarting");
                    self.engine.exited();
                    if self.wanted {
                        self.health.set(name, format!("{name} exited ({status}); restarting it"));
                        self.retry_at = Some(Instant::now());
                    }
                }
                _ = sleep_opt(self.retry_at) => {
                    self.retry_at = None;
                    self.restart_after_death().await;
                }
            }
        }
    }

    async fn restart_after_death(&mut self) {
        if !self.wanted || self.child.is_some() {
            return;
        }
        let name = self.engine.name();
        match self.start_now(false).await {
            Ok(_) => {
                tracing::info!(engine = name, "engine is back");
                self.health.clear(name);
                self.backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                self.health.set(
                    name,
                    format!(
                        "{name} is down and does not start: {}",
                        crate::error::chain(&e)
                    ),
                );
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn tail_text(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("; ")
    }

    async fn stop_child(&mut self) {
        let mut child = match self.child.take() {
            None => return,
            Some(Running::Adopted(a)) => {
                self.pid.store(0, Ordering::SeqCst);
                a.stop(STOP_TIMEOUT).await;
                return;
            }
            Some(Running::Child(c)) => c,
        };
        self.pid.store(0, Ordering::SeqCst);
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

    /// Stops an engine of ours left behind by an earlier agent process (one that was killed).
    async fn stop_stale(&self) {
        stop_leftover(
            self.engine.name(),
            &self.engine.pid_file(),
            &self.engine.marker(),
        )
        .await;
    }

    /// The engine an earlier agent left running, if it may be adopted.
    fn adoptable(&self) -> Option<adopt::Adopted> {
        let config = self.engine.start_config()?;
        let (pid_file, marker) = (self.engine.pid_file(), self.engine.marker());
        let command = self.engine.command();
        let candidate = adopt::Candidate {
            pid_file: &pid_file,
            config: &config,
            marker: &marker,
            program: std::path::Path::new(command.as_std().get_program()),
        };
        match adopt::find(&candidate) {
            Ok(a) => Some(a),
            Err(adopt::Refusal::NothingRunning) => None,
            Err(why) => {
                tracing::info!(engine = self.engine.name(), %why, "not adopting the engine left running; restarting it");
                None
            }
        }
    }

    /// (Re)starts the engine and waits until it serves; with `adopt`, an engine an earlier
    /// agent left running serves on when it may (see [`adopt`]).
    async fn start_now(&mut self, adopt: bool) -> Result<Started, StartError> {
        let name = self.engine.name();
        if adopt
            && self.child.is_none()
            && let Some(a) = self.adoptable()
        {
            tracing::info!(
                engine = name,
                pid = a.pid,
                "adopted the engine an earlier agent started"
            );
            self.pid.store(a.pid, Ordering::SeqCst);
            self.child = Some(Running::Adopted(a));
            self.starts.fetch_add(1, Ordering::SeqCst);
            return Ok(Started::Adopted);
        }
        self.stop_child().await;
        self.stop_stale().await;
        self.engine.before_start();
        let record = adopt::record_path(&self.engine.pid_file());
        let _ = std::fs::remove_file(&record);
        let _ = std::fs::remove_file(self.engine.pid_file());
        let config_digest = self
            .engine
            .start_config()
            .and_then(|c| adopt::config_digest(&c));
        let mut cmd = self.engine.command();
        let program_identity =
            adopt::program_identity(std::path::Path::new(cmd.as_std().get_program()));
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let program = cmd.as_std().get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| StartError::Spawn { program, source })?;
        if let Some(stderr) = child.stderr.take() {
            let tail = Arc::clone(&self.tail);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "engine", engine = name, "{line}");
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        let pid = child.id().unwrap_or(0);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|source| StartError::Wait { name, source })?
            {
                // Let the stderr reader catch up with the engine's last words.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(StartError::Exited {
                    name,
                    status,
                    tail: self.tail_text(),
                });
            }
            if self.engine.ready(pid) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(StartError::NotReady {
                    name,
                    secs: READY_TIMEOUT.as_secs(),
                    tail: self.tail_text(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::info!(engine = name, pid, "engine started");
        if let (Some(config_sha256), Some(program)) = (config_digest, program_identity) {
            let text = adopt::Record {
                pid,
                config_sha256: &config_sha256,
                program: &program,
            }
            .text();
            if let Err(e) = crate::files::replace(
                &record,
                text.as_bytes(),
                0o644,
                crate::files::Durability::Derived,
            ) {
                tracing::warn!(engine = name, error = %crate::error::chain(&e), "cannot record the start; the next agent restarts the engine");
            }
        }
        self.child = Some(Running::Child(child));
        self.pid.store(pid, Ordering::SeqCst);
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(Started::Fresh)
    }
}
