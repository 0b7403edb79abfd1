//! `/removeeip` latency against the size of the conntrack table, end to end through the agent's
//! HTTP API (sync mode) in the router namespace of tests/nat_support.
//!
//! The table is filled with UDP entries created over ctnetlink (`IPCTNL_MSG_CT_NEW`, 256 per
//! send: 60,000 in well under a second, where `conntrack -I` would spawn 60,000 processes).
//! Each sample creates the EIP, adds one flow to its VIP, and times `/removeeip`, which must
//! delete that flow. For reference it also times the `conntrack` tool's `-D --orig-dst` on the
//! same table (what the agent ran before).
//!
//! It also measures what the event listener costs the data plane: new TCP connections per
//! second client -> VIP -> guest with `--conntrack-events true` and `false` (each connection
//! is two events the agent reads), interleaved runs.
//!
//! `cargo bench --bench conntrack` runs 0 and 60,000 entries with 50 samples each and 5 runs
//! of 2 s per setting (as root). Under `cargo test` it runs a short smoke pass (0 and 2,000
//! entries, 5 samples, 1 run of 0.2 s).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/nat_support/mod.rs"]
mod nat_support;

use nat_support::*;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const VIP: &str = "10.10.1.55";

fn udp_tuple(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<Tuple> {
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(IpAddr::V4(src)),
            IPTuple::DestinationAddress(IpAddr::V4(dst)),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::Udp),
            ProtoTuple::SourcePort(sport),
            ProtoTuple::DestinationPort(dport),
        ]),
    ]
}

/// Creates UDP flows `src:sport -> dst:dport` (reply from `reply_src`) in the current
/// namespace; returns how many the kernel accepted.
fn create_flows(flows: &[(Ipv4Addr, u16, Ipv4Addr, u16, Ipv4Addr)]) -> usize {
    let mut sock = Socket::new(NETLINK_NETFILTER).expect("netlink socket");
    sock.bind_auto().expect("bind");
    sock.connect(&NlAddr::new(0, 0)).expect("connect");
    let _ = sock.set_rx_buf_sz(1 << 20);
    let mut ok = 0;
    let mut buf = vec![0u8; 1 << 16];
    for (n, chunk) in flows.chunks(256).enumerate() {
        let mut batch = Vec::new();
        for (i, &(src, sport, dst, dport, reply_src)) in chunk.iter().enumerate() {
            let mut hdr = NetlinkHeader::default();
            hdr.flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK;
            hdr.sequence_number = (n * 256 + i) as u32;
            let mut msg = NetlinkMessage::new(
                hdr,
                NetlinkPayload::from(NetfilterMessage::new(
                    NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
                    ConntrackMessage::New(vec![
                        ConntrackAttribute::CtaTupleOrig(udp_tuple(src, dst, sport, dport)),
                        ConntrackAttribute::CtaTupleReply(udp_tuple(reply_src, src, dport, sport)),
                        ConntrackAttribute::CtaTimeout(3600),
                    ]),
                )),
            );
            msg.finalize();
            let mut b = vec![0; msg.buffer_len()];
            msg.serialize(&mut b);
            batch.extend(b);
        }
        sock.send(&batch, 0).expect("send");
        let mut acks = 0;
        while acks < chunk.len() {
            let len = sock.recv(&mut &mut buf[..], 0).expect("recv");
            let mut off = 0;
            while off + 16 <= len {
                let l = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                if l < 16 || off + l > len {
                    break;
                }
                if let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..off + l])
                    && let NetlinkPayload::Error(e) = m.payload
                {
                    acks += 1;
                    if e.code.is_none() {
                        ok += 1;
                    }
                }
                off += (l + 3) & !3;
            }
        }
    }
    ok
}

/// Flows that none of the benchmark's EIPs match (client 100.64.x.y -> the router's public
/// address).
fn filler(n: usize) -> Vec<(Ipv4Addr, u16, Ipv4Addr, u16, Ipv4Addr)> {
    let dst: Ipv4Addr = "10.10.1.20".parse().unwrap();
    (0..n)
        .map(|i| {
            let src = Ipv4Addr::new(100, 64 + (i / 60_000) as u8, ((i / 250) % 240) as u8, 1);
            let sport = 1024 + (i % 60_000) as u16;
            (src, sport, dst, 53, dst)
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn count(net: &Net) -> usize {
    let out = net.router.exec(&["conntrack", "-C"]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Accepts connections on guest 1 and drops them at once.
fn accept_and_close(net: &Net, port: u16) -> Arc<AtomicBool> {
    let listener = net
        .guest1
        .enter(|| TcpListener::bind(("0.0.0.0", port)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            if let Ok((c, _)) = listener.accept() {
                drop(c);
            }
        }
    });
    stop
}

/// New connections per second from the client to `dst` (closed with RST).
fn conn_rate(net: &Net, dst: SocketAddr, window: Duration) -> f64 {
    net.client.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < window {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                #[allow(deprecated)]
                s.set_linger(Some(Duration::ZERO)).unwrap();
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_secs(3), s.connect(dst)).await
                {
                    n += 1;
                }
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
    })
}

/// Connection rates through an EIP with the event listener on and off.
fn data_plane(runs: usize, window: Duration) -> (f64, f64) {
    let mut rates = [Vec::new(), Vec::new()];
    let nets = [
        Net::with_agent_args(&["--conntrack-events=true"]),
        Net::with_agent_args(&["--conntrack-events=false"]),
    ];
    let mut stops = Vec::new();
    for net in &nets {
        stops.push(accept_and_close(net, 5002));
        let api = net.api();
        net.router.block_on(|| async move {
            let mn = common::mgmt::MgmtNode::start().await;
            let r = mn
                .call_sync(
                    api,
                    "/createeip",
                    &json!({ "eip": eip(VIP, G1_MAC, GUEST1, false) }),
                )
                .await;
            assert_eq!(r["success"], json!(true), "{r}");
        });
    }
    let dst: SocketAddr = format!("{VIP}:5002").parse().unwrap();
    for _ in 0..runs {
        for (i, net) in nets.iter().enumerate() {
            net.router.exec(&["conntrack", "-F"]);
            rates[i].push(conn_rate(net, dst, window));
        }
    }
    for s in stops {
        s.store(true, Ordering::SeqCst);
    }
    let [on, off] = rates;
    (median(on), median(off))
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (runs, window) = if bench {
        (5, Duration::from_secs(2))
    } else {
        (1, Duration::from_millis(200))
    };
    let (on, off) = data_plane(runs, window);
    let dp = format!(
        "new TCP conns/s through an EIP, median of {runs}: {on:.0} with the event index, {off:.0} without"
    );
    eprintln!("{dp}");
    let (sizes, samples) = if bench {
        (vec![0usize, 60_000], 50)
    } else {
        (vec![0usize, 2_000], 5)
    };
    let net = Net::new();
    let vip: Ipv4Addr = VIP.parse().unwrap();
    let guest: Ipv4Addr = GUEST1.parse().unwrap();
    let client: Ipv4Addr = CLIENT.parse().unwrap();
    let api = net.api();
    let n = &net;
    let mut lines = vec![
        "| tracked connections | /removeeip p50 (ms) | /removeeip p90 (ms) | its ctnetlink step p50 (ms) | `conntrack -D --orig-dst` p50 (ms) |".to_string(),
        "|---:|---:|---:|---:|---:|".to_string(),
    ];
    let mut have = 0;
    for &size in &sizes {
        if size > have {
            let flows = filler(size);
            let t = Instant::now();
            let made = net.router.enter(|| create_flows(&flows[have..]));
            eprintln!(
                "created {made} conntrack entries in {:.0} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
            have = size;
        }
        let table = count(n);
        let lat = net.router.block_on(|| async move {
            let mn = common::mgmt::MgmtNode::start().await;
            let mut lat = Vec::new();
            for i in 0..samples {
                let e = eip(VIP, G1_MAC, GUEST1, false);
                let r = mn
                    .call_sync(api, "/createeip", &json!({ "eip": e.clone() }))
                    .await;
                assert_eq!(r["success"], json!(true), "{r}");
                // one inbound flow to the VIP (DNATed to the guest) that the removal must cut
                let made = n
                    .router
                    .enter(|| create_flows(&[(client, 40_000 + i as u16, vip, 80, guest)]));
                assert_eq!(made, 1);
                let t = Instant::now();
                let r = mn.call_sync(api, "/removeeip", &json!({ "eip": e })).await;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                assert_eq!(r["success"], json!(true), "{r}");
                let left = n.router.exec(&["conntrack", "-L", "--orig-dst", VIP]);
                let left = String::from_utf8_lossy(&left.stdout);
                assert_eq!(left.lines().count(), 0, "flows of the VIP left: {left}");
            }
            lat
        });
        let tool: Vec<f64> = (0..samples.min(10))
            .map(|_| {
                let t = Instant::now();
                net.router.exec(&["conntrack", "-D", "--orig-dst", VIP]);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        // the agent's own time for the conntrack step (debug log), of this table size
        let log = strip_ansi(&net.agent.log());
        let inner: Vec<f64> = log
            .lines()
            .filter(|l| l.contains("conntrack entries deleted"))
            .filter_map(|l| l.split("elapsed_us=").nth(1))
            .filter_map(|v| {
                v.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .collect();
        for l in log
            .lines()
            .filter(|l| l.contains("flow index") || l.contains("in the index"))
            .take(5)
        {
            eprintln!("{l}");
        }
        if inner.is_empty() {
            for l in log.lines().filter(|l| l.contains("removeeip")).take(12) {
                eprintln!("{l}");
            }
        }
        let inner = inner[inner.len().saturating_sub(samples)..].to_vec();
        let inner_p50 = if inner.is_empty() {
            f64::NAN
        } else {
            median(inner) / 1e3
        };
        let p50 = median(lat.clone());
        let mut sorted = lat;
        sorted.sort_by(|a, b| a.total_cmp(b));
        let p90 = sorted[sorted.len() * 9 / 10];
        lines.push(format!(
            "| {table} | {p50:.2} | {p90:.2} | {inner_p50:.2} | {:.1} |",
            median(tool)
        ));
        eprintln!("{}", lines.last().unwrap());
    }
    println!("{}\n\n{dp}", lines.join("\n"));
    let agent_log = net.agent.log();
    let problems = agent_log.matches("stale flows may keep").count();
    println!("conntrack problems logged by the agent: {problems}");
    assert_eq!(problems, 0, "the agent reported conntrack problems");
}
