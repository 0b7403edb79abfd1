//! Talking to haproxy: the configuration check (`haproxy -c`), the master's command socket
//! (reloads, `show proc`) and the worker's runtime API (weights, server state). Every call is
//! bounded in time, and haproxy's own words come back on failure.

use super::render::Paths;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::Command;

/// Longest a `haproxy -c` may take (500 listeners take ~0.1 s).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one socket command may take.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a reload may take until the new worker serves.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read back from one socket command at most (a server state of 500 listeners is
/// ~150 kB).
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// Why haproxy did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    /// `haproxy -c` refused the configuration (its messages).
    #[error("haproxy refused the configuration: {0}")]
    Refused(String),
    /// haproxy could not be run.
    #[error("cannot run {bin}: {source}")]
    Run {
        /// The binary.
        bin: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A socket command failed.
    #[error("{socket}: {what}")]
    Socket {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// A reload did not bring up a new worker.
    #[error("the reload failed: {0}")]
    Reload(String),
}

/// haproxy's alerts from `stderr`, on one line (the notices and warnings are left out).
fn alerts(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("[ALERT]"))
        .take(6)
        .collect();
    let text = if lines.is_empty() {
        stderr
            .trim()
            .lines()
            .take(6)
            .collect::<Vec<_>>()
            .join(" | ")
    } else {
        lines.join(" | ")
    };
    crate::protocol::fields::bounded_text(&text)
}

/// Checks the configuration at `conf` with `haproxy -c`.
pub async fn check(bin: &Path, conf: &Path) -> Result<(), HaproxyError> {
    let run = Command::new(bin)
        .arg("-c")
        .arg("-f")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(CHECK_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => {
            return Err(HaproxyError::Run {
                bin: bin.display().to_string(),
                source,
            });
        }
        Err(_) => {
            return Err(HaproxyError::Refused(format!(
                "haproxy -c did not finish within {} s",
                CHECK_TIMEOUT.as_secs()
            )));
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    Err(HaproxyError::Refused(alerts(&text)))
}

/// Sends one command to a haproxy socket and returns the whole answer.
pub async fn command(socket: &Path, cmd: &str) -> Result<String, HaproxyError> {
    let fail = |what: String| HaproxyError::Socket {
        socket: socket.to_path_buf(),
        what,
    };
    let talk = async {
        let mut s = UnixStream::connect(socket)
            .await
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        s.write_all(format!("{cmd}\n").as_bytes())
            .await
            .map_err(|e| fail(format!("cannot send {cmd:?}: {e}")))?;
        // the master's socket answers only once our side is closed
        s.shutdown()
            .await
            .map_err(|e| fail(format!("cannot send {cmd:?}: {e}")))?;
        let mut answer = String::new();
        s.take(MAX_ANSWER)
            .read_to_string(&mut answer)
            .await
            .map_err(|e| fail(format!("no answer to {cmd:?}: {e}")))?;
        Ok(answer)
    };
    tokio::time::timeout(SOCKET_TIMEOUT, talk)
        .await
        .unwrap_or_else(|_| {
            Err(fail(format!(
                "no answer to {cmd:?} within {SOCKET_TIMEOUT:?}"
            )))
        })
}

/// A runtime API command that answers nothing on success (`set weight`, ...).
pub async fn runtime(paths: &Paths, cmd: &str) -> Result<(), HaproxyError> {
    let answer = command(&paths.runtime_socket(), cmd).await?;
    if answer.trim().is_empty() {
        Ok(())
    } else {
        Err(HaproxyError::Socket {
            socket: paths.runtime_socket(),
            what: format!("{cmd:?}: {}", answer.trim()),
        })
    }
}

/// The master's view of its processes (`show proc`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Procs {
    /// Reloads the master has done.
    pub reloads: u64,
    /// Reloads that failed.
    pub failed: u64,
    /// Pid of the current worker.
    pub worker: Option<u32>,
}

/// Parses `show proc` of haproxy 2.6:
/// `<pid> master <reloads> [failed: <n>] ...`, then `# workers` and `<pid> worker ...` lines.
pub fn parse_procs(text: &str) -> Procs {
    let mut procs = Procs::default();
    let mut section = "";
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("# ") {
            section = s.trim();
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [_, "master", reloads, rest @ ..] => {
                procs.reloads = reloads.parse().unwrap_or(0);
                if let [_, n, ..] = rest {
                    procs.failed = n.trim_end_matches(']').parse().unwrap_or(0);
                }
            }
            [pid, "worker", ..] if section == "workers" && procs.worker.is_none() => {
                procs.worker = pid.parse().ok();
            }
            _ => {}
        }
    }
    procs
}

/// The master's processes now.
pub async fn procs(paths: &Paths) -> Result<Procs, HaproxyError> {
    command(&paths.master_socket(), "show proc")
        .await
        .map(|t| parse_procs(&t))
}

/// Saves the backends' health and weights for the next worker (best effort: a reload without
/// it only re-checks the backends from scratch).
pub async fn save_server_state(paths: &Paths) {
    match command(&paths.runtime_socket(), "show servers state").await {
        Ok(state) if state.starts_with('1') => {
            if let Err(e) = crate::files::replace_if_changed(
                &paths.server_state(),
                state.as_bytes(),
                0o644,
                crate::files::Durability::Derived,
            ) {
                tracing::warn!(error = %e, "server state not saved");
            }
        }
        Ok(other) => tracing::warn!(answer = %other.trim(), "server state not saved"),
        Err(e) => tracing::warn!(error = %e, "server state not saved"),
    }
}

/// Reloads through the master (it re-executes itself with the file on disk, and the new
/// worker takes over the listening sockets) and waits until a new worker serves.
pub async fn reload(paths: &Paths) -> Result<(), HaproxyError> {
    let before = procs(paths).await?;
    save_server_state(paths).await;
    // The master answers nothing to `reload` and closes the connection when it re-executes.
    let _ = command(&paths.master_socket(), "reload").await;
    let deadline = tokio::time::Instant::now() + RELOAD_TIMEOUT;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The socket is away while the master re-executes.
        if let Ok(now) = procs(paths).await
            && now.reloads > before.reloads
        {
            if now.failed > before.failed {
                return Err(HaproxyError::Reload(
                    "haproxy did not start a worker with the new configuration; the old one keeps serving"
                        .into(),
                ));
            }
            if now.worker.is_some() && now.worker != before.worker {
                // the new worker's runtime socket answers once it serves
                if command(&paths.runtime_socket(), "show info").await.is_ok() {
                    return Ok(());
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(HaproxyError::Reload(format!(
                "no new worker within {} s",
                RELOAD_TIMEOUT.as_secs()
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_proc_of_2_6_parses() {
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
            1162            master          5 [failed: 1]   0d00h02m02s     2.6.12-1+deb12u4\n\
            # workers\n\
            1271            worker          0               0d00h00m00s     2.6.12-1+deb12u4\n\
            # old workers\n\
            1233            worker          1               0d00h00m05s     2.6.12-1+deb12u4\n\
            # programs\n";
        assert_eq!(
            parse_procs(text),
            Procs {
                reloads: 5,
                failed: 1,
                worker: Some(1271)
            }
        );
    }

    #[tokio::test]
    async fn a_file_haproxy_refuses_fails_with_its_alert() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("haproxy.cfg");
        std::fs::write(
            &conf,
            "global\n\tmaster-worker\nfrontend f\n\tbind 127.0.0.1:1\n\tbogus-keyword on\n",
        )
        .unwrap();
        let e = check(Path::new("haproxy"), &conf).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("haproxy refused the configuration: [ALERT]"),
            "{text}"
        );
        assert!(text.contains("bogus-keyword"), "{text}");
        std::fs::write(&conf, "global\n\tmaster-worker\n").unwrap();
        check(Path::new("haproxy"), &conf).await.unwrap();
    }

    #[test]
    fn only_alerts_are_kept() {
        let err = "[NOTICE]   (1) : haproxy version is 2.6.12\n[ALERT]    (1) : config : parsing [x.cfg:3] : unknown keyword 'bogus'.\n[ALERT]    (1) : config : Fatal errors found in configuration.\n";
        assert_eq!(
            alerts(err),
            "[ALERT]    (1) : config : parsing [x.cfg:3] : unknown keyword 'bogus'. | [ALERT]    (1) : config : Fatal errors found in configuration."
        );
    }
}
