//! haproxy.cfg, pure: the whole file for the listeners of a desired state. One frontend and one
//! backend per listener, named after the listener uuid; the global section runs haproxy in
//! master-worker mode with a runtime socket, bounded old workers and a server-state file, so a
//! reload keeps the listening sockets and the backends' health.

use crate::state::lb::{Algorithm, HealthTarget, LbListener, Mode};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Old workers still serving connections after a reload are stopped this long after it.
pub const HARD_STOP_AFTER_S: u32 = 60;
/// Reloads after which a worker still alive is killed (bounds old workers in memory).
pub const MAX_RELOADS: u32 = 50;
/// Connect timeout to a backend, seconds.
pub const CONNECT_TIMEOUT_S: u32 = 5;
/// Global connection cap: the sum of the listeners' caps, at most this (and what the
/// open-file limit allows).
pub const MAX_GLOBAL_CONNECTIONS: u64 = 100_000;
/// File descriptors haproxy keeps for itself besides two per connection (listeners, checks,
/// sockets, logs).
const FD_RESERVE: u64 = 1_000;

// `httpclient.ssl.verify none`: nothing of ours uses haproxy's internal HTTP client, and
// without it every start and reload reads the whole system CA store (~160 ms of a ~190 ms
// `haproxy -c` on Debian 12).

/// Where haproxy's files live (all under one directory of ours).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The directory.
    pub dir: PathBuf,
}

impl Paths {
    /// Paths under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Paths {
        Paths { dir: dir.into() }
    }
    /// The configuration haproxy runs.
    pub fn conf(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }
    /// A candidate configuration, checked before it replaces [`Paths::conf`].
    pub fn candidate(&self) -> PathBuf {
        self.dir.join("haproxy.cfg.candidate")
    }
    /// The master's command socket (`-S`): reloads.
    pub fn master_socket(&self) -> PathBuf {
        self.dir.join("master.sock")
    }
    /// The worker's runtime API socket: weights, server state.
    pub fn runtime_socket(&self) -> PathBuf {
        self.dir.join("runtime.sock")
    }
    /// Backend health and weights, saved before each reload and read by the new worker.
    pub fn server_state(&self) -> PathBuf {
        self.dir.join("server-state")
    }
    /// The master's pid file.
    pub fn pid(&self) -> PathBuf {
        self.dir.join("haproxy.pid")
    }
}

/// Name of a listener's frontend (both uuids: listener uuids of two load balancers are not
/// known to differ).
pub fn frontend_name(l: &LbListener) -> String {
    format!("l:{}:{}", l.lb_uuid, l.listener_uuid)
}

/// Name of a listener's backend.
pub fn backend_name(l: &LbListener) -> String {
    format!("b:{}:{}", l.lb_uuid, l.listener_uuid)
}

/// Name of a backend server of a listener.
pub fn server_name(ip: std::net::Ipv4Addr) -> String {
    format!("s-{ip}")
}

fn balance(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RoundRobin | Algorithm::WeightRoundRobin => "roundrobin",
        Algorithm::LeastConn => "leastconn",
        Algorithm::Source => "source",
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The whole configuration for `listeners` (those without backends are left out). `fd_limit`:
/// the open-file limit haproxy may raise itself to (it refuses to start when the global
/// connection cap needs more: two descriptors per connection plus its own).
pub fn render<'a>(
    paths: &Paths,
    fd_limit: u64,
    listeners: impl IntoIterator<Item = &'a LbListener>,
) -> String {
    let listeners: Vec<&LbListener> = listeners.into_iter().filter(|l| l.serves()).collect();
    // haproxy counts each listener and (twice) each checked server into its descriptor need
    let own: u64 = 2 * listeners
        .iter()
        .map(|l| 1 + l.backends.len() as u64)
        .sum::<u64>()
        + FD_RESERVE;
    let fits = (fd_limit.saturating_sub(own) / 2).max(256);
    let maxconn = listeners
        .iter()
        .map(|l| u64::from(l.config.max_connections))
        .sum::<u64>()
        .clamp(1024, MAX_GLOBAL_CONNECTIONS)
        .min(fits);
    let mut out = String::from("# written by vr-agent; every change replaces this file\n");
    let _ = write!(
        out,
        "global\n\
         \tmaster-worker\n\
         \thttpclient.ssl.verify none\n\
         \tmaxconn {maxconn}\n\
         \tstats socket {} mode 600 level admin\n\
         \thard-stop-after {HARD_STOP_AFTER_S}s\n\
         \tmworker-max-reloads {MAX_RELOADS}\n\
         \tserver-state-file {}\n\
         \n\
         defaults\n\
         \tmode tcp\n\
         \ttimeout connect {CONNECT_TIMEOUT_S}s\n\
         \ttimeout client 60s\n\
         \ttimeout server 60s\n\
         \tretries 3\n\
         \toption redispatch\n\
         \tload-server-state-from-file global\n",
        path(&paths.runtime_socket()),
        path(&paths.server_state()),
    );
    for l in listeners {
        listener(&mut out, l);
    }
    out
}

fn listener(out: &mut String, l: &LbListener) {
    let c = &l.config;
    let mode = l.mode.name();
    let _ = write!(
        out,
        "\n# load balancer {} listener {}\n\
         frontend {}\n\
         \tmode {mode}\n\
         \tbind {}:{} transparent\n\
         \tmaxconn {}\n\
         \ttimeout client {}s\n",
        l.lb_uuid,
        l.listener_uuid,
        frontend_name(l),
        l.vip,
        l.load_balancer_port,
        c.max_connections,
        c.idle_timeout_s,
    );
    if l.mode == Mode::Http {
        out.push_str("\toption forwardfor\n");
    }
    let _ = write!(
        out,
        "\tdefault_backend {}\n\
         \n\
         backend {}\n\
         \tmode {mode}\n\
         \tbalance {}\n\
         \ttimeout server {}s\n\
         \ttimeout check {}s\n",
        backend_name(l),
        backend_name(l),
        balance(c.algorithm),
        c.idle_timeout_s,
        c.check_timeout_s,
    );
    let check_port = match &c.health_target {
        HealthTarget::Tcp { port } => port.unwrap_or(l.instance_port),
        HealthTarget::Http { port, method, uri } => {
            let _ = writeln!(out, "\toption httpchk {method} {uri}");
            out.push_str("\thttp-check expect status 200-399\n");
            port.unwrap_or(l.instance_port)
        }
    };
    for b in &l.backends {
        let _ = writeln!(
            out,
            "\tserver {} {}:{} weight {} check port {check_port} inter {}s fall {} rise {}",
            server_name(b.ip),
            b.ip,
            l.instance_port,
            b.weight,
            c.check_interval_s,
            c.unhealthy_threshold,
            c.healthy_threshold,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::lb::{BackendServer, ListenerConfig};

    fn listeners(n: u16) -> Vec<LbListener> {
        (0..n)
            .map(|i| LbListener {
                lb_uuid: "A".into(),
                listener_uuid: format!("l{i}"),
                vip: "10.10.1.57".parse().unwrap(),
                load_balancer_port: 10_000 + i,
                instance_port: 8080,
                mode: Mode::Tcp,
                backends: vec![
                    BackendServer {
                        ip: "172.20.0.15".parse().unwrap(),
                        weight: 100,
                    },
                    BackendServer {
                        ip: "172.20.0.16".parse().unwrap(),
                        weight: 100,
                    },
                ],
                config: ListenerConfig::default(),
            })
            .collect()
    }

    fn maxconn(text: &str) -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("maxconn "))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn the_global_cap_fits_the_open_file_limit() {
        let paths = Paths::new("/x");
        let many = listeners(500);
        // haproxy needs 2 per connection plus ~2 per listener and checked server: measured
        // refusing 20,040 descriptors under a limit of 20,000 with 501 listeners
        let cap = maxconn(&render(&paths, 20_000, &many));
        assert!(2 * cap + 2 * (500 + 1000) + 100 <= 20_000, "{cap}");
        assert_eq!(
            maxconn(&render(&paths, 1 << 20, &many)),
            MAX_GLOBAL_CONNECTIONS
        );
        assert_eq!(maxconn(&render(&paths, 1 << 20, &listeners(1))), 5000);
    }
}
