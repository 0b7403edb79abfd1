//! keepalived and conntrackd under the agent's supervisor, and the reader of keepalived's
//! `notify_fifo`: every transition keepalived writes there (and a keepalived that died,
//! which makes this node a backup) goes to the writer as one event, in order.

use super::render::{self, Paths};
use crate::state::ha::Role;
use std::path::PathBuf;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Where role events go: (what keepalived decided, the line or reason, for the log).
pub type Events = mpsc::UnboundedSender<(Role, String)>;

/// keepalived, VRRP only, in the foreground, logging to stderr (read by the supervisor).
pub struct Keepalived {
    /// Its files.
    pub paths: Paths,
    /// The binary.
    pub bin: PathBuf,
    /// Told when keepalived dies: the node is no longer master.
    pub events: Events,
}

impl crate::supervisor::Engine for Keepalived {
    fn name(&self) -> &'static str {
        "keepalived"
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--dont-fork")
            .arg("--log-console")
            .arg("--log-detail")
            .arg("--vrrp")
            .arg("--use-file")
            .arg(self.paths.keepalived_conf())
            .arg("--pid")
            .arg(self.paths.keepalived_pid())
            .arg("--vrrp_pid")
            .arg(self.paths.vrrp_pid());
        c
    }

    fn pid_file(&self) -> PathBuf {
        self.paths.keepalived_pid()
    }

    fn marker(&self) -> String {
        self.paths.keepalived_conf().display().to_string()
    }

    fn exited(&self) {
        let _ = self
            .events
            .send((Role::Backup, "keepalived exited".to_string()));
    }

    fn before_start(&mut self) {
        // keepalived refuses to start ("daemon is already running") while a pid file names a
        // live process, and a VRRP child of a killed keepalived stays a zombie until init
        // reaps it. A VRRP child of ours still running alone is stopped: two would both
        // advertise.
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let marker = self.marker();
        for file in [self.paths.vrrp_pid(), self.paths.keepalived_pid()] {
            let Some(pid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
                .filter(|p| *p > 0)
            else {
                continue;
            };
            let pid = Pid::from_raw(pid);
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker));
            if ours && crate::supervisor::alive(pid) {
                let _ = kill(pid, Signal::SIGKILL);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while crate::supervisor::alive(pid) && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            if !crate::supervisor::alive(pid) || !ours {
                let _ = std::fs::remove_file(&file);
            }
        }
    }
}

/// conntrackd in the foreground. It writes no pid file: the agent writes one once the
/// control socket answers (so a conntrackd left by an earlier agent is found and stopped).
pub struct Conntrackd {
    /// Its files.
    pub paths: Paths,
    /// The binary.
    pub bin: PathBuf,
}

impl crate::supervisor::Engine for Conntrackd {
    fn name(&self) -> &'static str {
        "conntrackd"
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("-C").arg(self.paths.conntrackd_conf());
        c
    }

    fn pid_file(&self) -> PathBuf {
        self.paths.conntrackd_pid()
    }

    fn marker(&self) -> String {
        self.paths.conntrackd_conf().display().to_string()
    }

    fn before_start(&mut self) {
        // Left by a conntrackd that was killed: a new one refuses to start while they exist.
        let _ = std::fs::remove_file(self.paths.conntrackd_lock());
        let _ = std::fs::remove_file(self.paths.conntrackd_ctl());
    }

    fn ready(&self, pid: u32) -> bool {
        if !self.paths.conntrackd_ctl().exists() {
            return false;
        }
        crate::files::replace(
            &self.paths.conntrackd_pid(),
            pid.to_string().as_bytes(),
            0o644,
            crate::files::Durability::Derived,
        )
        .is_ok()
    }
}

/// Creates keepalived's fifo (if it is not one already) and reads it until the task is
/// aborted. Opened read-write, so it never sees an end of file when keepalived restarts.
pub fn read_fifo(paths: &Paths, events: Events) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::FileTypeExt;
    let path = paths.fifo();
    match std::fs::metadata(&path) {
        Ok(m) if m.file_type().is_fifo() => {}
        Ok(_) => {
            std::fs::remove_file(&path)?;
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        }
        Err(_) => {
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        }
    }
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)?;
    // Lines buffered before this reader (a keepalived of a crashed agent wrote them) are
    // history: the keepalived about to start decides anew.
    let mut stale = [0u8; 4096];
    let mut dropped = 0;
    while let Ok(n) = rx.try_read(&mut stale) {
        if n == 0 {
            break;
        }
        dropped += n;
    }
    if dropped > 0 {
        tracing::info!(bytes = dropped, "dropped old lines of keepalived's fifo");
    }
    Ok(tokio::spawn(async move {
        let mut lines = BufReader::new(rx).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    tracing::info!(%line, "keepalived");
                    if let Some(role) = render::parse_fifo_line(&line)
                        && events.send((role, line)).is_err()
                    {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "reading keepalived's fifo failed");
                    return;
                }
            }
        }
    }))
}

/// Runs `conntrackd -C <conf> <args>` (a control request to the running daemon), bounded in
/// time, and returns its own words on a failure.
pub async fn conntrackd_ctl(bin: &PathBuf, paths: &Paths, args: &[&str]) -> Result<(), String> {
    let mut c = Command::new(bin);
    c.arg("-C")
        .arg(paths.conntrackd_conf())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), c.output())
        .await
        .map_err(|_| format!("conntrackd {} did not answer within 10 s", args.join(" ")))?
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "conntrackd {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
