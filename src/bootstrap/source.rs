//! Where the bootstrap information comes from: a file, or the virtio-serial port the
//! management node writes it to (waiting for the port to appear and for a whole JSON value).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The port the hypervisor exposes inside the router.
pub const PORT: &str = "/dev/virtio-ports/applianceVm.vport";

/// Why no bootstrap information could be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file or port could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The port did not appear, or sent no complete JSON value, in time.
    #[error("no bootstrap info from {path} within {secs} s{detail}")]
    Timeout {
        /// The port.
        path: String,
        /// The timeout.
        secs: u64,
        /// What was seen so far.
        detail: String,
    },
}

/// Reads a file whole.
pub fn read_file(path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|source| SourceError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// True once `bytes` holds one complete JSON value (or text that can never become one).
fn complete(bytes: &[u8]) -> bool {
    match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        Ok(_) => true,
        Err(e) => !e.is_eof(),
    }
}

/// Waits up to `timeout` for `port` to exist and to deliver one whole JSON value.
pub fn read_port(port: &Path, timeout: Duration) -> Result<Vec<u8>, SourceError> {
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    let path: PathBuf = port.to_path_buf();
    // Reads block on a character device; the thread is abandoned on timeout.
    std::thread::spawn(move || {
        let _ = tx.send(read_until_complete(&path, deadline));
    });
    let timed_out = |detail: String| SourceError::Timeout {
        path: port.display().to_string(),
        secs: timeout.as_secs(),
        detail,
    };
    // A little past the deadline, so a reader that saw the deadline can say what it saw.
    let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(500);
    match rx.recv_timeout(wait) {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(ReadFail::Io(e))) => Err(SourceError::Read {
            path: port.display().to_string(),
            source: e,
        }),
        Ok(Err(ReadFail::Late(detail))) => Err(timed_out(detail)),
        Err(_) => Err(timed_out(String::new())),
    }
}

enum ReadFail {
    Io(std::io::Error),
    Late(String),
}

fn read_until_complete(path: &Path, deadline: Instant) -> Result<Vec<u8>, ReadFail> {
    let mut file = loop {
        match std::fs::File::open(path) {
            Ok(f) => break f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if Instant::now() >= deadline {
                    return Err(ReadFail::Late(": the port does not exist".into()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(ReadFail::Io(e)),
        }
    };
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match file.read(&mut buf) {
            Ok(0) => {
                // Nobody on the host side yet, or the writer closed early: wait for more.
                if Instant::now() >= deadline {
                    return Err(ReadFail::Late(format!(
                        ": {} bytes of incomplete JSON",
                        data.len()
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                if complete(&data) {
                    return Ok(data);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFail::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completeness_waits_for_the_whole_value() {
        assert!(!complete(b""));
        assert!(!complete(b"{\"managementNic\":{\"ip\":"));
        assert!(complete(b"{\"a\":1}"));
        assert!(complete(b"  {\"a\":1}\n"));
        assert!(complete(b"}garbage"));
    }

    #[test]
    fn reads_a_value_written_in_pieces_through_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("port");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let writer_path = fifo.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(&writer_path)
                .unwrap();
            w.write_all(b"{\"publicKey\":\"ssh-rsa AAAA\",").unwrap();
            w.flush().unwrap();
            std::thread::sleep(Duration::from_millis(200));
            w.write_all(b"\"managementNic\":{}}").unwrap();
        });
        let got = read_port(&fifo, Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        assert_eq!(
            got,
            b"{\"publicKey\":\"ssh-rsa AAAA\",\"managementNic\":{}}".to_vec()
        );
    }

    #[test]
    fn a_missing_port_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_port(&dir.path().join("none"), Duration::from_millis(300)).unwrap_err();
        assert!(
            err.to_string()
                .contains("within 0 s: the port does not exist"),
            "{err}"
        );
    }
}
