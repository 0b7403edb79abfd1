//! A router in a namespace running the real agent, with a management namespace, a client on the
//! public side and two guests behind it; plus small TCP/UDP peers that report the source
//! address they see. Sockets are created inside the namespace they belong to.
#![allow(dead_code)]

use crate::common::agent::AgentProc;
use crate::common::mgmt::{MgmtNode, assert_ok};
use crate::common::netns::{Netns, veth};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Router nic MACs: management, public, guest 1, guest 2.
pub const MGMT_MAC: &str = "fa:7e:4b:ad:11:00";
/// Public nic.
pub const PUB_MAC: &str = "fa:7e:4b:ad:11:01";
/// Guest network 1 (172.20.0.0/24).
pub const G1_MAC: &str = "fa:7e:4b:ad:11:02";
/// Guest network 2 (172.20.1.0/24).
pub const G2_MAC: &str = "fa:7e:4b:ad:11:03";
/// Client addresses on the public network.
pub const CLIENT: &str = "10.10.1.100";
/// A second client address.
pub const CLIENT2: &str = "10.10.1.101";
/// Guest addresses.
pub const GUEST1: &str = "172.20.0.15";
/// Guest 2.
pub const GUEST2: &str = "172.20.1.20";
/// VIPs carried by the router's public nic.
pub const VIPS: &[&str] = &[
    "10.10.1.55",
    "10.10.1.56",
    "10.10.1.57",
    "10.10.1.58",
    "10.10.1.60",
];

/// How long a peer waits for an answer that should come.
pub const WAIT: Duration = Duration::from_millis(1500);

/// The whole test network. Dropped in field order: the agent first.
pub struct Net {
    /// The agent in `router`.
    pub agent: AgentProc,
    /// Router namespace (eth0 mgmt, eth1 public, eth2 guest 1, eth3 guest 2).
    pub router: Netns,
    /// Management side (192.168.100.10).
    pub mgmt: Netns,
    /// Public side (10.10.1.100 and .101).
    pub client: Netns,
    /// Guest 1 (172.20.0.15).
    pub guest1: Netns,
    /// Guest 2 (172.20.1.20).
    pub guest2: Netns,
}

impl Net {
    /// Builds the namespaces and starts the agent in the router.
    pub fn new() -> Net {
        Self::with_agent_args(&[])
    }

    /// [`Net::new`] with more arguments to the agent's `serve`.
    pub fn with_agent_args(extra: &[&str]) -> Net {
        let router = Netns::new("vrnr");
        let mgmt = Netns::new("vrnm");
        let client = Netns::new("vrnc");
        let guest1 = Netns::new("vrng");
        let guest2 = Netns::new("vrng");
        veth(&router, "eth0", MGMT_MAC, &mgmt, "m0", "fa:7e:4b:00:00:10");
        veth(&router, "eth1", PUB_MAC, &client, "c0", "fa:7e:4b:00:00:11");
        veth(&router, "eth2", G1_MAC, &guest1, "g0", "fa:7e:4b:00:00:12");
        veth(&router, "eth3", G2_MAC, &guest2, "g0", "fa:7e:4b:00:00:13");
        router.ip(&["addr", "add", "192.168.100.20/24", "dev", "eth0"]);
        router.ip(&["addr", "add", "10.10.1.20/24", "dev", "eth1"]);
        for vip in VIPS {
            router.ip(&["addr", "add", &format!("{vip}/32"), "dev", "eth1"]);
        }
        router.ip(&["addr", "add", "172.20.0.1/24", "dev", "eth2"]);
        router.ip(&["addr", "add", "172.20.1.1/24", "dev", "eth3"]);
        router.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        mgmt.ip(&["addr", "add", "192.168.100.10/24", "dev", "m0"]);
        client.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "c0"]);
        client.ip(&["addr", "add", &format!("{CLIENT2}/24"), "dev", "c0"]);
        guest1.ip(&["addr", "add", &format!("{GUEST1}/24"), "dev", "g0"]);
        guest1.ip(&["route", "add", "default", "via", "172.20.0.1"]);
        guest2.ip(&["addr", "add", &format!("{GUEST2}/24"), "dev", "g0"]);
        guest2.ip(&["route", "add", "default", "via", "172.20.1.1"]);
        let agent = router.enter(|| {
            let mut args = vec![
                "--vr-listen=0.0.0.0:7272",
                "--appliance-listen=0.0.0.0:7759",
                "--mgmt-nic=eth0",
            ];
            args.extend_from_slice(extra);
            AgentProc::start(&args)
        });
        Net {
            agent,
            router,
            mgmt,
            client,
            guest1,
            guest2,
        }
    }

    /// The agent's address as seen from inside the router.
    pub fn api(&self) -> SocketAddr {
        "127.0.0.1:7272".parse().unwrap()
    }

    /// Runs `body` inside the router namespace with a management-node client.
    pub fn run<F: std::future::Future<Output = ()>>(
        &self,
        body: impl FnOnce(MgmtNode, SocketAddr) -> F + Send,
    ) {
        let api = self.api();
        self.router
            .block_on(move || async move { body(MgmtNode::start().await, api).await });
    }

    /// Our two tables as nft prints them.
    pub fn tables(&self) -> String {
        let nat = self
            .router
            .exec_ok(&["nft", "list", "table", "ip", "vr_nat"]);
        let filter = self
            .router
            .exec_ok(&["nft", "list", "table", "inet", "vr_filter"]);
        format!("{nat}{filter}")
    }
}

/// Posts `body` to `path` synchronously and asserts success.
pub async fn ok(mn: &MgmtNode, api: SocketAddr, path: &str, body: Value) {
    let reply = mn.call_sync(api, path, &body).await;
    assert_ok(&reply);
}

/// An EIP request body.
pub fn eip(vip: &str, mac: &str, guest: &str, snat_inbound: bool) -> Value {
    json!({"vipIp": vip, "privateMac": mac, "guestIp": guest, "snatInboundTraffic": snat_inbound})
}

/// A port forwarding rule.
#[allow(clippy::too_many_arguments)]
pub fn pf(
    proto: &str,
    vip: &str,
    vip_ports: (u16, u16),
    guest: &str,
    guest_ports: (u16, u16),
    mac: &str,
    allowed: Option<&str>,
    snat_inbound: bool,
) -> Value {
    let mut v = json!({
        "vipPortStart": vip_ports.0, "vipPortEnd": vip_ports.1,
        "privatePortStart": guest_ports.0, "privatePortEnd": guest_ports.1,
        "protocolType": proto, "vipIp": vip, "privateIp": guest, "privateMac": mac,
        "snatInboundTraffic": snat_inbound
    });
    if let Some(a) = allowed {
        v["allowedCidr"] = json!(a);
    }
    v
}

/// A SNAT entry for guest network 1 or 2 behind the public nic.
pub fn snat(guest_mac: &str, guest_ip: &str, public_ip: &str) -> Value {
    json!({"publicNicMac": PUB_MAC, "publicIp": public_ip, "privateNicMac": guest_mac,
           "privateNicIp": guest_ip, "snatNetmask": "255.255.255.0"})
}

/// A peer that answers every TCP connection with `<source ip> <local port>\n`, then echoes.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP server in `ns` on `addr`.
pub fn tcp_server(ns: &Netns, addr: &str) -> Server {
    let addr: SocketAddr = addr.parse().unwrap();
    let listener = ns.enter(|| TcpListener::bind(addr).unwrap());
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        let mut conns = Vec::new();
        while !s.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let s = Arc::clone(&s);
                    conns.push(std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                        let _ = writeln!(stream, "{} {}", peer.ip(), addr.port());
                        let mut buf = [0u8; 4096];
                        while !s.load(Ordering::SeqCst) {
                            match stream.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    }));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        for c in conns {
            let _ = c.join();
        }
    });
    Server {
        stop,
        handle: Some(handle),
    }
}

/// A UDP server in `ns` on `addr` answering each datagram with `<source ip> <local port>`.
pub fn udp_server(ns: &Netns, addr: &str) -> Server {
    let addr: SocketAddr = addr.parse().unwrap();
    let sock = ns.enter(|| UdpSocket::bind(addr).unwrap());
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s.load(Ordering::SeqCst) {
            if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(format!("{} {}", peer.ip(), addr.port()).as_bytes(), peer);
            }
        }
    });
    Server {
        stop,
        handle: Some(handle),
    }
}

/// A TCP connection from `ns` (optionally from source address `src`), or None if it fails.
pub fn tcp_connect(ns: &Netns, dst: &str, src: Option<&str>) -> Option<TcpStream> {
    let dst: SocketAddr = dst.parse().unwrap();
    ns.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().ok()?;
            if let Some(src) = src {
                sock.bind(format!("{src}:0").parse().unwrap()).ok()?;
            }
            let stream = tokio::time::timeout(WAIT, sock.connect(dst))
                .await
                .ok()?
                .ok()?;
            let std = stream.into_std().ok()?;
            std.set_nonblocking(false).ok()?;
            std.set_read_timeout(Some(WAIT)).ok()?;
            Some(std)
        })
    })
}

/// Reads one line (without the newline), or None on timeout, reset or end of stream.
pub fn read_line(stream: &TcpStream) -> Option<String> {
    let mut line = String::new();
    let mut r = BufReader::new(stream);
    match r.read_line(&mut line) {
        Ok(n) if n > 0 && line.ends_with('\n') => Some(line.trim_end().to_string()),
        _ => None,
    }
}

/// Connects from `ns` to `dst` and returns the server's first line: the source address and
/// port the server saw. None when no answer comes.
pub fn tcp_ask(ns: &Netns, dst: &str, src: Option<&str>) -> Option<String> {
    let stream = tcp_connect(ns, dst, src)?;
    read_line(&stream)
}

/// Sends `line` on an open connection and expects it echoed.
pub fn echoes(stream: &mut TcpStream, line: &str) -> bool {
    if writeln!(stream, "{line}").is_err() {
        return false;
    }
    read_line(stream).as_deref() == Some(line)
}

/// Sends one UDP datagram from `ns` (optionally from `src`) and returns the answer.
pub fn udp_ask(ns: &Netns, dst: &str, src: Option<&str>) -> Option<String> {
    let dst: SocketAddr = dst.parse().unwrap();
    let sock = ns.enter(|| UdpSocket::bind(format!("{}:0", src.unwrap_or("0.0.0.0"))).unwrap());
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock.send_to(b"hello", dst).ok()?;
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}
