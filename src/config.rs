//! Settings of `vr-agent serve`, from the command line. Every path the agent writes is here, so
//! tests can point each into a temporary directory or a namespace of their own.

use crate::state::types::Cidr;
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
    /// Seconds a client has to send a whole request head once it has sent its first byte.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a connection may stay open without a request (after the accept or a reply:
    /// the keep-alive timeout).
    #[arg(long, default_value_t = 30)]
    pub idle_timeout_secs: u64,
    /// Seconds a client has to send a whole request body.
    #[arg(long, default_value_t = 60)]
    pub body_timeout_secs: u64,
    /// Client connections served at once. At the cap a new connection closes the one idle the
    /// longest; if none is idle, up to a quarter more (8..256) are served `/ping` and `/echo`
    /// only, one request each; beyond that a connection is closed at once. Lowered to fit the
    /// open-file limit.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_connections: u64,
    /// Also post callbacks to addresses in this prefix (repeatable; e.g. a management node
    /// behind NAT). By default a callback goes only to the command's sender or to an address
    /// on the management nic's subnet, never to the router's own or loopback addresses.
    #[arg(long = "callback-allow", value_name = "CIDR", value_parser = parse_cidr)]
    pub callback_allow: Vec<Cidr>,
    /// Keep an index of the VIPs' flows from conntrack events, so removing an EIP or port
    /// forward deletes its flows directly. `false`: no event listener; each removal finds its
    /// flows by kernel-filtered dumps, which walk the whole conntrack hash table.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub conntrack_events: bool,
    /// The management nic: ssh and the agent's ports are accepted only there.
    #[arg(long, default_value = "eth0")]
    pub mgmt_nic: String,
    /// dnsmasq's files (config, hosts, options, leases); default: `<run-dir>/dnsmasq`. It and
    /// every directory above it must be searchable by `nobody`, the user dnsmasq drops to.
    #[arg(long)]
    pub dnsmasq_dir: Option<PathBuf>,
    /// The dnsmasq binary (Debian's dnsmasq-base).
    #[arg(long, default_value = "dnsmasq")]
    pub dnsmasq_bin: PathBuf,
    /// haproxy's files (config, sockets, server state); default: `<run-dir>/haproxy`.
    #[arg(long)]
    pub haproxy_dir: Option<PathBuf>,
    /// The haproxy binary (Debian's haproxy, 2.6).
    #[arg(long, default_value = "haproxy")]
    pub haproxy_bin: PathBuf,
    /// keepalived's and conntrackd's files (configurations, pid files, notify fifo, control
    /// socket); default: `<run-dir>/keepalived`.
    #[arg(long)]
    pub keepalived_dir: Option<PathBuf>,
    /// The keepalived binary (Debian's keepalived, 2.2).
    #[arg(long, default_value = "keepalived")]
    pub keepalived_bin: PathBuf,
    /// The conntrackd binary (Debian's conntrackd, 1.4).
    #[arg(long, default_value = "conntrackd")]
    pub conntrackd_bin: PathBuf,
    /// The ping keepalived runs for the HA monitors (an absolute path).
    #[arg(long, default_value = "/usr/bin/ping")]
    pub ping_bin: PathBuf,
    /// Seconds between full verifies of the system against the desired state (a safety net
    /// under the netlink notifications that catch drift at once); 0 disables them.
    #[arg(long, default_value_t = 10)]
    pub verify_secs: u64,
}

/// Settings of `vr-agent bootstrap`.
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapConfig {
    /// Read the bootstrap info from this file instead of the virtio-serial port.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// The virtio-serial port the management node writes the bootstrap info to.
    #[arg(long, default_value = crate::bootstrap::source::PORT)]
    pub port: PathBuf,
    /// Seconds to wait for the port to appear and deliver the info.
    #[arg(long, default_value_t = 300)]
    pub port_timeout_secs: u64,
    /// Seconds to wait for the port when a cached copy exists (after a reboot the host may not
    /// send the info again; the cached copy is applied then).
    #[arg(long, default_value_t = 20)]
    pub cached_port_timeout_secs: u64,
    /// Where the info is cached (the state directory of `serve`).
    #[arg(long, default_value = "/var/lib/vr-agent")]
    pub state_dir: PathBuf,
    /// root's authorized_keys, which receives `publicKey`.
    #[arg(long, default_value = "/root/.ssh/authorized_keys")]
    pub authorized_keys: PathBuf,
    /// Root of the sysctl tree the router settings are written under.
    #[arg(long, default_value = "/proc/sys")]
    pub sysctl_root: PathBuf,
    /// The file the management node reads over ssh to learn why bootstrap failed.
    #[arg(long, default_value = "/var/lib/zstack/error.log")]
    pub error_log: PathBuf,
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
        .map_err(|()| format!("{s:?} is not an IPv4 prefix (a.b.c.d/len)"))
}
