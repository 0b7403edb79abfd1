//! Settings of `vr-agent serve`, from the command line. Every path the agent writes is here, so
//! tests can point each into a temporary directory or a namespace of their own.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `serve` needs to know before it starts.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Listener of the virtual router paths.
    #[arg(long, default_value = "0.0.0.0:7272")]
    pub vr_listen: SocketAddr,
    /// Listener of the /appliancevm/* paths (both listeners answer every path).
    #[arg(long, default_value = "0.0.0.0:7759")]
    pub appliance_listen: SocketAddr,
    /// Where the desired state is persisted.
    #[arg(long, default_value = "/var/lib/vr-agent")]
    pub state_dir: PathBuf,
    /// Runtime files (listener addresses, helper process files).
    #[arg(long, default_value = "/run/vr-agent")]
    pub run_dir: PathBuf,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    pub max_body: usize,
    /// Seconds SIGTERM waits for commands and callbacks in flight.
    #[arg(long, default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// Seconds a callback is retried on connection errors.
    #[arg(long, default_value_t = 60)]
    pub callback_retry_secs: u64,
    /// dnsmasq's files (config, hosts, options, leases); default: `<run-dir>/dnsmasq`. It and
    /// every directory above it must be searchable by `nobody`, the user dnsmasq drops to.
    #[arg(long)]
    pub dnsmasq_dir: Option<PathBuf>,
    /// The dnsmasq binary (Debian's dnsmasq-base).
    #[arg(long, default_value = "dnsmasq")]
    pub dnsmasq_bin: PathBuf,
}
