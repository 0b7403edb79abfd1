//! Adopting an engine an earlier agent process started: after a crash, a restart or an
//! upgrade of the agent, the engine may still serve (its start can take seconds at scale:
//! dnsmasq reads every address of the namespace). It is taken over instead of restarted when
//! it is provably ours and runs the configuration the agent would start it with now.
//!
//! Each start leaves a record next to the pid file: the pid and the sha256 of the config file
//! the process was started from. A running process is adopted only if the pid file, the
//! record and the process agree: same pid, a config file byte for byte what it started from,
//! our marker in its command line, and its binary not replaced since. It is then watched and
//! signalled through a pidfd, so a pid reused later can never be mistaken for it. (Its exit is
//! polled every [`EXIT_POLL`]: registering the pidfd with tokio's reactor takes `unsafe`,
//! which this crate keeps to one audited module.)

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustix::fd::{AsFd, OwnedFd};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often an adopted engine is checked for its exit.
pub const EXIT_POLL: Duration = Duration::from_millis(100);

/// A running engine process this agent did not start.
pub struct Adopted {
    /// Its pid (for logs and reloads).
    pub pid: u32,
    pidfd: OwnedFd,
}

impl Adopted {
    /// Resolves once the process has exited (within [`EXIT_POLL`]).
    pub async fn exited(&self) {
        let mut tick = tokio::time::interval(EXIT_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.has_exited() {
            tick.tick().await;
        }
    }

    /// A pidfd turns readable when its process exits, and stays so.
    fn has_exited(&self) -> bool {
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) => n > 0,
            Err(nix::errno::Errno::EINTR) => false,
            // cannot be watched any more: counted as gone (the supervisor starts a new one)
            Err(_) => true,
        }
    }

    /// Sends `signal` to the process (not to whatever may later reuse its pid); false when it
    /// could not be sent (the process is gone).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> bool {
        Signal::from_named_raw(signal as i32)
            .is_some_and(|s| pidfd_send_signal(&self.pidfd, s).is_ok())
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it has exited (or after a second
    /// more).
    pub async fn stop(self, grace: Duration) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            self.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(1), self.exited()).await;
        }
    }
}

/// Where the start record of an engine whose pid file is `pid_file` lives.
pub fn record_path(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("started")
}

/// The sha256 of `config` in hex, or `None` when it cannot be read.
pub fn config_digest(config: &Path) -> Option<String> {
    let bytes = std::fs::read(config).ok()?;
    Some(
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Which file `program` names now (found on `PATH` when it has no slash): device, inode and
/// modification time. A package upgrade renames a new file over the old one (a new inode).
/// The agent cannot read `/proc/<pid>/exe` of an engine that dropped to another user (that
/// takes `CAP_SYS_PTRACE`), so the file is identified at the start and compared at adoption.
pub fn program_identity(program: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let path = if program.components().count() > 1 {
        program.to_path_buf()
    } else {
        let paths = std::env::var_os("PATH")?;
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())?
    };
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{}:{}:{}.{:09}",
        m.dev(),
        m.ino(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

/// What an engine was started as: written once it serves, read at adoption.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its pid.
    pub pid: u32,
    /// The sha256 of its start-only config, in hex.
    pub config_sha256: &'a str,
    /// [`program_identity`] of the program run.
    pub program: &'a str,
}

impl Record<'_> {
    /// The record as written to disk.
    pub fn text(&self) -> String {
        format!(
            "pid {}\nconfig-sha256 {}\nprogram {}\n",
            self.pid, self.config_sha256, self.program
        )
    }
}

fn parse_record(text: &str) -> Option<Record<'_>> {
    let (mut pid, mut config_sha256, mut program) = (None, None, None);
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("pid", v)) => pid = v.parse().ok(),
            Some(("config-sha256", v)) => config_sha256 = Some(v),
            Some(("program", v)) => program = Some(v),
            _ => {}
        }
    }
    Some(Record {
        pid: pid?,
        config_sha256: config_sha256?,
        program: program?,
    })
}

/// What the supervisor knows of the engine to adopt.
pub struct Candidate<'a> {
    /// The engine's pid file.
    pub pid_file: &'a Path,
    /// The config file it reads only when it starts.
    pub config: &'a Path,
    /// A string in our engine's command line.
    pub marker: &'a str,
    /// The program the agent would run now.
    pub program: &'a Path,
}

/// Why a process found was not adopted (for the log).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No pid file, or no process of that pid: nothing to adopt.
    NothingRunning,
    /// The start record is missing or names another pid (a start cut short).
    NoRecord,
    /// The config file changed since the process started.
    ConfigChanged,
    /// The pid runs something that is not our engine.
    NotOurs,
    /// The engine's binary was replaced (an upgrade): the process runs the old one.
    BinaryReplaced,
    /// The pidfd could not be opened or watched.
    Pidfd(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NothingRunning => f.write_str("nothing runs"),
            Refusal::NoRecord => f.write_str("no start record for its pid"),
            Refusal::ConfigChanged => f.write_str("its config changed since it started"),
            Refusal::NotOurs => f.write_str("the pid is not our engine"),
            Refusal::BinaryReplaced => {
                f.write_str("its binary was replaced or removed since it started")
            }
            Refusal::Pidfd(e) => write!(f, "cannot watch it: {e}"),
        }
    }
}

/// The running engine `c` describes, if it may be adopted.
pub fn find(c: &Candidate<'_>) -> Result<Adopted, Refusal> {
    let pid: i32 = std::fs::read_to_string(c.pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .filter(|p| *p > 0)
        .ok_or(Refusal::NothingRunning)?;
    let raw = Pid::from_raw(pid).ok_or(Refusal::NothingRunning)?;
    // opened first, then checked: a pid reused after the checks cannot be the one watched
    let fd = match pidfd_open(raw, PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Err(Refusal::NothingRunning),
        Err(e) => return Err(Refusal::Pidfd(e.to_string())),
    };
    if !super::alive(nix::unistd::Pid::from_raw(pid)) {
        return Err(Refusal::NothingRunning);
    }
    let record_text =
        std::fs::read_to_string(record_path(c.pid_file)).map_err(|_| Refusal::NoRecord)?;
    let record = parse_record(&record_text).ok_or(Refusal::NoRecord)?;
    if record.pid != pid as u32 {
        return Err(Refusal::NoRecord);
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|_| Refusal::NotOurs)?;
    if !String::from_utf8_lossy(&cmdline).contains(c.marker) {
        return Err(Refusal::NotOurs);
    }
    if config_digest(c.config).as_deref() != Some(record.config_sha256) {
        return Err(Refusal::ConfigChanged);
    }
    if program_identity(c.program).as_deref() != Some(record.program) || binary_deleted(pid) {
        return Err(Refusal::BinaryReplaced);
    }
    Ok(Adopted {
        pid: pid as u32,
        pidfd: fd,
    })
}

/// True when the file process `pid` runs is known to be gone since it started (the kernel
/// shows it as deleted). Unknown (no `CAP_SYS_PTRACE` for another user's process): false.
fn binary_deleted(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe.to_string_lossy().ends_with(" (deleted)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_junk_is_no_record() {
        let record = Record {
            pid: 4242,
            config_sha256: "ab12",
            program: "2049:77:1.000000000",
        };
        assert_eq!(parse_record(&record.text()), Some(record));
        assert_eq!(
            parse_record("pid x\nconfig-sha256 ab\nprogram 1:2:3.0\n"),
            None
        );
        assert_eq!(parse_record("pid 7\nconfig-sha256 ab\n"), None);
        assert_eq!(parse_record(""), None);
    }

    #[tokio::test]
    async fn only_the_process_started_from_the_same_config_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("engine.conf");
        let pid_file = dir.path().join("engine.pid");
        std::fs::write(&config, "a = 1\n").unwrap();
        let marker = config.display().to_string();
        // a stand-in engine: a copy of the shell, with the config path in its command line
        let binary = dir.path().join("engine");
        std::fs::copy("/bin/sh", &binary).unwrap();
        // (another test's fork may hold the copy open for writing until its exec: retry)
        let child = loop {
            match std::process::Command::new(&binary)
                .args(["-c", "while :; do sleep 0.1; done", &marker])
                .spawn()
            {
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other.unwrap(),
            }
        };
        // killed and reaped however the test ends (a failed assertion leaves nothing behind)
        struct Reaped(std::process::Child);
        impl Drop for Reaped {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = Reaped(child);
        let pid = child.0.id();
        let candidate = Candidate {
            pid_file: &pid_file,
            config: &config,
            marker: &marker,
            program: &binary,
        };
        assert_eq!(find(&candidate).err(), Some(Refusal::NothingRunning));
        std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
        assert_eq!(find(&candidate).err(), Some(Refusal::NoRecord));
        let digest = config_digest(&config).unwrap();
        let program = program_identity(&binary).unwrap();
        let record = |pid| Record {
            pid,
            config_sha256: &digest,
            program: &program,
        };
        std::fs::write(record_path(&pid_file), record(pid + 1).text()).unwrap();
        assert_eq!(find(&candidate).err(), Some(Refusal::NoRecord));
        std::fs::write(record_path(&pid_file), record(pid).text()).unwrap();
        let other = Candidate {
            marker: "another-engine.conf",
            ..candidate
        };
        assert_eq!(find(&other).err(), Some(Refusal::NotOurs));
        std::fs::write(&config, "a = 2\n").unwrap();
        assert_eq!(find(&candidate).err(), Some(Refusal::ConfigChanged));
        std::fs::write(&config, "a = 1\n").unwrap();

        let adopted = find(&candidate).expect("adopted");
        assert_eq!(adopted.pid, pid);
        // an upgrade renames a new binary over the old one: the process runs the old one
        let new = dir.path().join("engine.new");
        std::fs::copy("/bin/sh", &new).unwrap();
        std::fs::rename(&new, &binary).unwrap();
        assert_eq!(find(&candidate).err(), Some(Refusal::BinaryReplaced));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), adopted.exited())
                .await
                .is_err(),
            "exited while running"
        );
        adopted.stop(Duration::from_secs(3)).await;
        let status = child.0.wait().unwrap();
        assert!(!status.success(), "{status}");
    }
}
