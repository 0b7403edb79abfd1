//! NAT benchmark, end to end through the agent's HTTP API in sync mode, with the real agent in a
//! router namespace between a client namespace and a guest namespace (see tests/nat_support):
//!
//! - `/createeip` latency with N = 100, 1,000, 10,000 EIPs present (median of 100 creates);
//! - `/synceip` of 10,000 EIPs;
//! - new TCP connections per second and single-stream TCP throughput client -> VIP -> guest,
//!   with 1 and with 10,000 EIPs.
//!
//! `cargo bench --bench nat` runs it in full (as root). Under `cargo test` it runs a short smoke
//! pass (small N, short windows) so the code stays working.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/nat_support/mod.rs"]
mod nat_support;

use nat_support::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Params {
    sizes: Vec<usize>,
    samples: usize,
    sync_runs: usize,
    window: Duration,
    runs: usize,
}

fn filler_vip(i: usize) -> String {
    // 198.18.0.0/15 holds 131,072 addresses; .1 of the first /24 is the nic's own
    let (hi, lo) = (i / 250, i % 250 + 2);
    format!("198.{}.{}.{lo}", 18 + hi / 256, hi % 256)
}

fn filler(i: usize, moved: bool) -> Value {
    // VIPs 198.18.x.y -> guests 10.1.x.y, or with `moved` 10.9.x.y (only the measured EIP has
    // a real guest)
    let (hi, lo) = (i / 250, i % 250 + 1);
    let first = if moved { 9 } else { 1 };
    eip(
        &filler_vip(i),
        G1_MAC,
        &format!("10.{}.{}.{lo}", first + hi / 256, hi % 256),
        false,
    )
}

/// A number from the environment (benchmark knobs), or `default`.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn measured() -> Value {
    eip("10.10.1.55", G1_MAC, GUEST1, false)
}

fn eips(n: usize) -> Value {
    eips_moved(n, false)
}

/// `n` EIPs; with `moved`, every filler's guest is another one.
fn eips_moved(n: usize, moved: bool) -> Value {
    let mut v: Vec<Value> = (0..n.saturating_sub(1)).map(|i| filler(i, moved)).collect();
    v.push(measured());
    json!({ "eips": v })
}

/// `n` port forwards, 1,000 ports per VIP (198.18.x.y), to guests in 10.0.0.0/12; with
/// `moved`, every forward goes to another guest.
fn forwards(n: usize, moved: bool) -> Value {
    let rules: Vec<Value> = (0..n)
        .map(|i| {
            let port = 1000 + (i % 1000) as u16;
            let g = i + if moved { 1 } else { 0 };
            json!({"vipPortStart": port, "vipPortEnd": port, "privatePortStart": 80,
                   "privatePortEnd": 80, "protocolType": "TCP", "vipIp": filler_vip(i / 1000),
                   "privateIp": format!("10.{}.{}.{}", 1 + g / 62500, (g / 250) % 250, g % 250 + 1),
                   "privateMac": G1_MAC})
        })
        .collect();
    json!({ "rules": rules })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Accepts connections on guest 1 and drops them at once (a blocking accept loop; the thread
/// ends with the process).
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

/// Reads and discards everything on guest 1.
fn sink(net: &Net, port: u16) -> Arc<AtomicBool> {
    let listener = net
        .guest1
        .enter(|| TcpListener::bind(("0.0.0.0", port)).unwrap());
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 18];
        while !s.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    stop
}

/// New connections per second from the client to the measured VIP (closed with RST, so no
/// TIME_WAIT piles up), and how many attempts failed.
fn conn_rate(net: &Net, dst: SocketAddr, window: Duration) -> (f64, u64) {
    net.client.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let start = Instant::now();
            let (mut n, mut failed) = (0u64, 0u64);
            while start.elapsed() < window {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                // A zero linger closes with RST at once (no TIME_WAIT, no blocking on drop).
                #[allow(deprecated)]
                s.set_linger(Some(Duration::ZERO)).unwrap();
                match tokio::time::timeout(Duration::from_secs(3), s.connect(dst)).await {
                    Ok(Ok(_)) => n += 1,
                    _ => failed += 1,
                }
            }
            (n as f64 / start.elapsed().as_secs_f64(), failed)
        })
    })
}

/// Single-stream throughput from the client to the measured VIP, in Gbit/s.
fn throughput(net: &Net, dst: &str, window: Duration) -> f64 {
    let mut s = tcp_connect(&net.client, dst, None).expect("connect for throughput");
    let buf = vec![0x5au8; 1 << 18];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < window {
        s.write_all(&buf).unwrap();
        bytes += buf.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(s);
    bytes as f64 * 8.0 / secs / 1e9
}

/// One run of each data-plane figure: (connections per second, Gbit/s).
fn data_plane(net: &Net, p: &Params) -> (f64, f64) {
    net.router.exec(&["conntrack", "-F"]);
    let dst: SocketAddr = "10.10.1.55:5002".parse().unwrap();
    let (rate, failed) = conn_rate(net, dst, p.window);
    net.router.exec(&["conntrack", "-F"]);
    let gbit = throughput(net, "10.10.1.55:5001", p.window);
    eprintln!("conn rate {rate:.0}/s ({failed} failed connects), {gbit:.2} Gbit/s");
    (rate, gbit)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let p = if bench {
        Params {
            sizes: vec![100, 1_000, 10_000],
            samples: 100,
            sync_runs: 5,
            window: Duration::from_secs(2),
            runs: 7,
        }
    } else {
        Params {
            sizes: vec![10, 100],
            samples: 5,
            sync_runs: 1,
            window: Duration::from_millis(200),
            runs: 1,
        }
    };
    // knobs: VR_BENCH_SIZES=10000,100000 (EIPs present), VR_BENCH_VIPS=N (the first N filler
    // VIPs are made addresses on the public nic through /createvip, as the management node
    // does), VR_BENCH_DATAPLANE=0 (skip the connection and throughput part),
    // VR_BENCH_SYNC_MOVED=1 (also syncs that move every EIP to another guest),
    // VR_BENCH_PF_SIZES=1000,10000,100000 (/syncportforwarding of as many forwards)
    let mut p = p;
    if let Ok(list) = std::env::var("VR_BENCH_SIZES") {
        p.sizes = list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect();
    }
    let vips_wanted = knob("VR_BENCH_VIPS", 0);
    p.sync_runs = knob("VR_BENCH_SYNC_RUNS", p.sync_runs);
    p.samples = knob("VR_BENCH_SAMPLES", p.samples);
    let dataplane = knob("VR_BENCH_DATAPLANE", 1) != 0;
    let net = Net::new();
    // the filler VIPs' subnet sits on the public nic
    net.router
        .ip(&["addr", "add", "198.18.0.1/15", "dev", "eth1"]);
    // and the filler guests' subnet on the guest nic (a guest must be in its nic's subnet)
    net.router
        .ip(&["addr", "add", "10.0.0.1/12", "dev", "eth2"]);
    let stop_a = accept_and_close(&net, 5002);
    let stop_b = sink(&net, 5001);
    let n = &net;
    let p = &p;
    let api = net.api();
    net.run(|mn, _| async move {
        let call = |path: &'static str, body: Value| {
            let mn = &mn;
            async move {
                let t = Instant::now();
                let reply = mn.call_sync(api, path, &body).await;
                let dt = t.elapsed();
                assert_eq!(reply["success"], json!(true), "{path}: {reply}");
                dt.as_secs_f64() * 1e3
            }
        };
        let mut lines = vec![
            format!("VIPs as addresses on the public nic: {vips_wanted} (capped at N)"),
            "| N EIPs | /createeip median (ms) | /createeip p90 (ms) |".to_string(),
            "|---:|---:|---:|".to_string(),
        ];
        let mut sync_ms = Vec::new();
        let mut vips_made = 0;
        for &size in &p.sizes {
            let target = vips_wanted.min(size);
            if vips_made < target {
                let t = Instant::now();
                for chunk in (vips_made..target).collect::<Vec<_>>().chunks(5_000) {
                    let vips: Vec<Value> = chunk
                        .iter()
                        .map(|&i| json!({"ip": filler_vip(i), "netmask": "255.254.0.0",
                            "gateway": "198.18.0.1", "ownerEthernetMac": PUB_MAC}))
                        .collect();
                    call("/createvip", json!({ "vips": vips })).await;
                }
                eprintln!(
                    "{} VIPs made addresses of the public nic in {:.1} s",
                    target - vips_made,
                    t.elapsed().as_secs_f64()
                );
                vips_made = target;
            }
            let mut ms = Vec::new();
            for _ in 0..p.sync_runs.max(1) {
                ms.push(call("/synceip", eips(size)).await);
            }
            eprintln!("/synceip of {size}: {ms:.1?} ms");
            if knob("VR_BENCH_SYNC_MOVED", 0) != 0 {
                // every EIP's guest changes at each sync: the whole difference is sent
                let mut moved = Vec::new();
                for run in 0..p.sync_runs.max(1) {
                    moved.push(call("/synceip", eips_moved(size, run % 2 == 0)).await);
                }
                call("/synceip", eips(size)).await;
                eprintln!("/synceip of {size}, every guest moved: {moved:.1?} ms");
            }
            if size == *p.sizes.last().unwrap() {
                sync_ms = ms;
            }
            let mut lat = Vec::new();
            for i in 0..p.samples {
                let vip = format!("198.19.255.{}", i % 250 + 1);
                let e = eip(&vip, G1_MAC, "10.2.0.1", false);
                // as the management node does: the VIP first (not timed), then the EIP
                let v = json!({"vips": [{"ip": vip, "netmask": "255.254.0.0",
                    "gateway": "198.18.0.1", "ownerEthernetMac": PUB_MAC}]});
                if vips_wanted > 0 {
                    call("/createvip", v.clone()).await;
                }
                lat.push(call("/createeip", json!({ "eip": e.clone() })).await);
                call("/removeeip", json!({ "eip": e })).await;
                if vips_wanted > 0 {
                    call("/removevip", v).await;
                }
            }
            let med = median(lat.clone());
            lat.sort_by(|a, b| a.total_cmp(b));
            let p90 = lat[lat.len() * 9 / 10];
            lines.push(format!("| {size} | {med:.2} | {p90:.2} |"));
            eprintln!("{}", lines.last().unwrap());
        }
        let biggest = p.sizes.last().unwrap();
        // VR_BENCH_PF_SIZES=1000,10000,100000: /syncportforwarding of as many forwards
        if let Ok(list) = std::env::var("VR_BENCH_PF_SIZES") {
            for size in list.split(',').filter_map(|s| s.trim().parse::<usize>().ok()) {
                let mut same = Vec::new();
                let mut moved = Vec::new();
                call("/syncportforwarding", forwards(size, false)).await;
                for run in 0..p.sync_runs.max(1) {
                    same.push(call("/syncportforwarding", forwards(size, false)).await);
                    moved.push(call("/syncportforwarding", forwards(size, run % 2 == 0)).await);
                }
                call("/syncportforwarding", forwards(size, false)).await;
                let line = format!(
                    "/syncportforwarding of {size}: median {:.1} ms (same forwards), {:.1} ms (every guest moved)",
                    median(same),
                    median(moved)
                );
                eprintln!("{line}");
                lines.push(line);
            }
            call("/syncportforwarding", json!({ "rules": [] })).await;
        }
        // at rest: the agent trims its heap once idle a moment after a large command
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss, hwm) = common::rss_kib(n.agent.pid());
        let sync_line = format!(
            "/synceip of {biggest} EIPs (replacing {biggest}): median {:.1} ms over {} runs\n\
             agent RSS {} MiB (peak {} MiB)",
            median(sync_ms.clone()),
            sync_ms.len(),
            rss >> 10,
            hwm >> 10
        );

        // data plane with 1 and with the largest N, interleaved (the machine is shared)
        let (mut r1, mut g1, mut rn, mut gn) = (vec![], vec![], vec![], vec![]);
        if !dataplane {
            println!("{}\n\n{sync_line}", lines.join("\n"));
            // where the commands' time went, from the agent's own log
            for path in ["/synceip", "/createeip"] {
                let log: String = {
                    // without the terminal colours of the log
                    let raw = n.agent.log();
                    let mut out = String::with_capacity(raw.len());
                    let mut esc = false;
                    for c in raw.chars() {
                        match (esc, c) {
                            (false, '\u{1b}') => esc = true,
                            (true, 'm') => esc = false,
                            (true, _) => {}
                            (false, c) => out.push(c),
                        }
                    }
                    out
                };
                let spent: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains(&format!("path=\"{path}\"")) && l.contains("applied"))
                    .collect();
                for line in spent.iter().rev().take(3) {
                    let at = line.find("check_us").unwrap_or(0);
                    println!("{path}: {}", &line[at..]);
                }
            }
            return;
        }
        for _ in 0..p.runs {
            call("/synceip", eips(1)).await;
            let (r, g) = data_plane(n, p);
            r1.push(r);
            g1.push(g);
            call("/synceip", eips(*biggest)).await;
            let (r, g) = data_plane(n, p);
            rn.push(r);
            gn.push(g);
        }
        let (rate1, gbit1, rate_n, gbit_n) = (median(r1), median(g1), median(rn), median(gn));
        let mut dp = vec![
            format!(
                "| EIPs | new TCP conns/s (median of {}) | TCP 1 stream Gbit/s (median of {}) |",
                p.runs, p.runs
            ),
            "|---:|---:|---:|".to_string(),
        ];
        dp.push(format!("| 1 | {rate1:.0} | {gbit1:.2} |"));
        dp.push(format!("| {biggest} | {rate_n:.0} | {gbit_n:.2} |"));

        // where a command's time goes: an nft process for one element, and one fdatasync
        let nft_ms: Vec<f64> = (0..p.samples.min(50))
            .map(|i| {
                let t = Instant::now();
                let mut c = std::process::Command::new("nft")
                    .args(["-f", "-"])
                    .stdin(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                let text = format!(
                    "add element ip vr_nat eip_dnat {{ 198.19.254.{} : 10.3.0.1 }}\ndelete element ip vr_nat eip_dnat {{ 198.19.254.{} }}\n",
                    i % 250 + 1,
                    i % 250 + 1
                );
                c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
                assert!(c.wait().unwrap().success());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let fsync_ms: Vec<f64> = {
            let path = n.agent.dir.join("state/fsync-probe");
            let mut f = std::fs::File::create(&path).unwrap();
            let v = (0..50)
                .map(|_| {
                    let t = Instant::now();
                    f.write_all(&[b'x'; 300]).unwrap();
                    f.sync_data().unwrap();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            let _ = std::fs::remove_file(&path);
            v
        };
        let report = format!(
            "{}\n\n{sync_line}\n\n{}\n\nOne `nft -f -` process (add+delete of one element, at N={biggest}): median {:.2} ms\nOne 300-byte append + fdatasync in the state directory: median {:.3} ms\n",
            lines.join("\n"),
            dp.join("\n"),
            median(nft_ms),
            median(fsync_ms)
        );
        println!("{report}");
        let fallbacks = n.agent.log().matches("using nft").count();
        println!("Element updates that fell back from nfnetlink to nft: {fallbacks}");
    });
    stop_a.store(true, Ordering::SeqCst);
    stop_b.store(true, Ordering::SeqCst);
}
