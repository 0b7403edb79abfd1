//! The real `vr-agent` binary, started as a child of the current thread (so inside whatever
//! namespace that thread entered), with its own temporary directories.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running agent. Killed on drop.
pub struct AgentProc {
    child: Option<Child>,
    /// Root of its directories (state/, run/, agent.log, ...).
    pub dir: PathBuf,
    /// The virtual router listener.
    pub vr: SocketAddr,
    /// The appliance listener.
    pub appliance: SocketAddr,
    extra: Vec<String>,
    /// A program (and its arguments) the binary runs under, e.g. `unshare -m ...`.
    wrapper: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

/// Path of the agent binary under test.
pub fn binary() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_vr-agent") {
        Some(p) => PathBuf::from(p),
        // examples get no CARGO_BIN_EXE_*: use the release build next to them
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/vr-agent"),
    }
}

impl AgentProc {
    /// Starts an agent in a fresh temporary directory with `extra` arguments after `serve`.
    pub fn start(extra: &[&str]) -> AgentProc {
        let tmp = tempfile::Builder::new()
            .prefix("vr-agent-test-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut a = Self::spawn(&dir, extra.iter().map(|s| s.to_string()).collect());
        a._tmp = Some(tmp);
        a
    }

    /// Starts an agent whose directories live under `dir` (kept after it stops).
    pub fn start_in(dir: &Path, extra: &[&str]) -> AgentProc {
        Self::spawn(dir, extra.iter().map(|s| s.to_string()).collect())
    }

    /// Stops this agent and starts it again on the same directories, run by `wrapper` (the
    /// binary and its arguments are appended to it; an empty wrapper runs it directly).
    pub fn restart_wrapped(&mut self, wrapper: &[String]) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let tmp = self._tmp.take();
        let extra = self.extra.clone();
        *self = Self::spawn_wrapped(&self.dir.clone(), extra, wrapper.to_vec());
        self._tmp = tmp;
    }

    fn spawn(dir: &Path, extra: Vec<String>) -> AgentProc {
        Self::spawn_wrapped(dir, extra, Vec::new())
    }

    fn spawn_wrapped(dir: &Path, extra: Vec<String>, wrapper: Vec<String>) -> AgentProc {
        let mut a = Self::launch(dir, extra, wrapper);
        a.wait_listening();
        a
    }

    /// Starts an agent whose directories live under `dir` and returns at once, before it
    /// listens (see [`AgentProc::wait_listening`]).
    pub fn launch_in(dir: &Path, extra: &[&str]) -> AgentProc {
        Self::launch(
            dir,
            extra.iter().map(|s| s.to_string()).collect(),
            Vec::new(),
        )
    }

    fn launch(dir: &Path, extra: Vec<String>, wrapper: Vec<String>) -> AgentProc {
        let run = dir.join("run");
        let _ = std::fs::remove_file(run.join("listeners.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .expect("agent.log");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let child = cmd
            .arg("serve")
            .arg("--vr-listen=127.0.0.1:0")
            .arg("--appliance-listen=127.0.0.1:0")
            .arg(format!("--state-dir={}", dir.join("state").display()))
            .arg(format!("--run-dir={}", run.display()))
            .args(default_mgmt_nic(&extra))
            .args(&extra)
            .env("VR_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn vr-agent");
        AgentProc {
            child: Some(child),
            dir: dir.to_path_buf(),
            vr: "0.0.0.0:0".parse().expect("addr"),
            appliance: "0.0.0.0:0".parse().expect("addr"),
            extra,
            wrapper,
            _tmp: None,
        }
    }

    /// Waits until the agent listens and has re-applied its stored state.
    pub fn wait_listening(&mut self) {
        let deadline = self.wait_bound(Duration::from_secs(30));
        self.wait_reapplied(deadline + Duration::from_secs(60));
    }

    /// Waits until the agent has bound its listeners (known from `run/listeners.json`);
    /// returns the deadline used.
    pub fn wait_bound(&mut self, limit: Duration) -> Instant {
        let path = self.dir.join("run/listeners.json");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let v: serde_json::Value = serde_json::from_str(&text).expect("listeners.json");
                self.vr = v["vr"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("vr addr");
                self.appliance = v["appliance"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("appliance addr");
                return deadline;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "vr-agent exited with {status} before listening:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "vr-agent did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `/ping` no longer reports the start-up re-apply (the agent serves first and
    /// re-applies its stored state behind the listeners).
    pub fn wait_reapplied(&mut self, deadline: Instant) {
        loop {
            let detail = raw_ping(self.vr).unwrap_or_else(|| "startup: no answer".into());
            if !detail.contains("startup:") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "vr-agent did not finish its start-up re-apply:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vr-agent ignored SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the agent (SIGTERM) and starts it again on the same directories.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "agent exited with {status}:\n{}",
            self.log()
        );
        let tmp = self._tmp.take();
        *self = Self::spawn_wrapped(&self.dir.clone(), self.extra.clone(), self.wrapper.clone());
        self._tmp = tmp;
    }

    /// Stops the agent (SIGTERM), runs `between` while it is down (a running agent repairs
    /// changes made behind its back), and starts it again on the same directories.
    pub fn restart_after(&mut self, between: impl FnOnce()) {
        let status = self.stop();
        assert!(
            status.success(),
            "agent exited with {status}:\n{}",
            self.log()
        );
        between();
        let tmp = self._tmp.take();
        *self = Self::spawn_wrapped(&self.dir.clone(), self.extra.clone(), self.wrapper.clone());
        self._tmp = tmp;
    }

    /// Kills the agent with SIGKILL (a crash) and starts it again on the same directories.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let tmp = self._tmp.take();
        *self = Self::spawn_wrapped(&self.dir.clone(), self.extra.clone(), self.wrapper.clone());
        self._tmp = tmp;
    }
}

/// Without `--mgmt-nic` in `extra` and without an `eth0` in the namespace, the tests reach
/// the agent over loopback: `lo` is then its management nic (else the agent, rightly, refuses
/// its drop-policy firewall and reports itself unhealthy for want of a management nic).
fn default_mgmt_nic(extra: &[String]) -> Option<&'static str> {
    if extra.iter().any(|a| a.starts_with("--mgmt-nic")) {
        return None;
    }
    let eth0 = Command::new("ip")
        .args(["link", "show", "eth0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!eth0).then_some("--mgmt-nic=lo")
}

/// A synchronous `/ping` (no runtime needed): the reply body, or `None` if nothing answered.
pub fn raw_ping(addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        b"POST /ping HTTP/1.1\r\nHost: agent\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- vr-agent log ----\n{}", self.log());
        }
    }
}
