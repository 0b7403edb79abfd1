//! Settings of `vr-agent serve`, filled from the command line. Every path the agent writes is
//! here, so tests can point them into a temporary directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `serve` needs to know before it starts.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener of the virtual router paths (7272).
    pub vr_listen: SocketAddr,
    /// Listener of the `/appliancevm/*` paths (7759).
    pub appliance_listen: SocketAddr,
    /// Where the desired state is persisted.
    pub state_dir: PathBuf,
    /// Runtime files (listener addresses, helper process files).
    pub run_dir: PathBuf,
    /// Largest accepted request body.
    pub max_body: usize,
    /// How long SIGTERM waits for commands and callbacks in flight.
    pub shutdown_grace: Duration,
    /// How long a callback is retried on connection errors.
    pub callback_retry: Duration,
}

impl Config {
    /// Defaults for tests: loopback listeners on free ports, given directories.
    pub fn for_dirs(state_dir: PathBuf, run_dir: PathBuf) -> Config {
        Config {
            vr_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            appliance_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir,
            run_dir,
            max_body: 32 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(20),
            callback_retry: Duration::from_secs(60),
        }
    }
}
