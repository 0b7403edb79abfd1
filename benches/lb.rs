//! Load balancer benchmark, end to end through the agent's HTTP API in sync mode, with the real
//! agent and haproxy in a router namespace between a client and guests (see tests/nat_support):
//!
//! - `/lb/refresh` of one listener (a change that needs a reload) with 1 and with 500
//!   listeners present (median);
//! - failed connections per 10,000 while 20 refreshes reload haproxy (a client opening
//!   connections in a loop);
//! - new connections per second (connect, read the backend's greeting, close) through one
//!   listener, and straight to the backend through a port forward (kernel NAT);
//! - haproxy (master and workers) and agent RSS with 500 listeners.
//!
//! `cargo bench --bench lb` runs it in full (as root). Under `cargo test --benches` it runs a
//! short smoke pass (few listeners, short windows) so the code stays working.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/nat_support/mod.rs"]
mod nat_support;

use nat_support::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Params {
    filler: usize,
    samples: usize,
    window: Duration,
    reloads: usize,
}

const MEASURED_LB: &str = "measured-lb";
const FILLER_LB: &str = "filler-lb";

/// The measured listener: VIP 10.10.1.57:80 -> guest 1 port 8080; `timeout` varies so each
/// refresh changes the file and reloads.
fn measured(timeout: usize) -> Value {
    json!({"lbs": [{"lbUuid": MEASURED_LB, "listenerUuid": "measured", "vip": "10.10.1.57",
        "nicIps": [GUEST1], "instancePort": 8080, "loadBalancerPort": 80, "mode": "tcp",
        "parameters": [format!("connectionIdleTimeout::{}", 60 + timeout % 2),
                       "healthCheckInterval::5", "maxConnection::20000"]}]})
}

/// `n` listeners on VIP 10.10.1.58, ports 10000.., each to guest 1 and 2.
fn filler(n: usize) -> Value {
    let lbs: Vec<Value> = (0..n)
        .map(|i| {
            json!({"lbUuid": FILLER_LB, "listenerUuid": format!("filler-{i}"), "vip": "10.10.1.58",
                "nicIps": [GUEST1, GUEST2], "instancePort": 8080, "loadBalancerPort": 10_000 + i,
                "mode": if i % 2 == 0 { "tcp" } else { "http" }, "parameters": ["healthCheckInterval::30"]})
        })
        .collect();
    json!({ "lbs": lbs })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A backend on guest 1 that greets each connection with a line and closes it.
fn greeter(net: &Net, port: u16) -> Arc<AtomicBool> {
    let listener = net
        .guest1
        .enter(|| TcpListener::bind(("0.0.0.0", port)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            if let Ok((mut c, _)) = listener.accept() {
                let _ = c.write_all(b"hello\n");
            }
        }
    });
    stop
}

/// Connect, read the greeting, close: true when the greeting came.
fn one_connection(dst: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(3)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).is_ok() && &buf == b"hello\n"
}

/// Connections per second from the client to `dst` during `window`, and failures.
fn conn_rate(net: &Net, dst: SocketAddr, window: Duration) -> (f64, u64) {
    net.client.enter(|| {
        let start = Instant::now();
        let (mut n, mut failed) = (0u64, 0u64);
        while start.elapsed() < window {
            if one_connection(dst) {
                n += 1;
            } else {
                failed += 1;
            }
        }
        (n as f64 / start.elapsed().as_secs_f64(), failed)
    })
}

/// The haproxy master and its children (the workers).
fn haproxy_pids(net: &Net) -> Vec<u32> {
    let Some(master) = std::fs::read_to_string(net.agent.dir.join("run/haproxy/haproxy.pid"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return Vec::new();
    };
    let mut pids = vec![master];
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{master}/task")) {
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let p = if bench {
        Params {
            filler: 500,
            samples: 21,
            window: Duration::from_secs(3),
            reloads: 20,
        }
    } else {
        Params {
            filler: 10,
            samples: 3,
            window: Duration::from_millis(300),
            reloads: 3,
        }
    };
    let net = Net::new();
    let _greeter = greeter(&net, 8080);
    let n = &net;
    let report = std::sync::Mutex::new(Vec::new());
    let r = &report;
    net.run(|mn, api| async move {
        let call = |body: Value| {
            let mn = &mn;
            async move {
                let start = Instant::now();
                let reply = mn.call_sync(api, "/lb/refresh", &body).await;
                assert_eq!(reply["success"], json!(true), "{reply}");
                start.elapsed().as_secs_f64() * 1000.0
            }
        };
        // the same backend, straight through a port forward
        let reply = mn
            .call_sync(api, "/createportforwarding", &json!({"rules": [
                pf("TCP", "10.10.1.56", (8080, 8080), GUEST1, (8080, 8080), G1_MAC, None, false)]}))
            .await;
        assert_eq!(reply["success"], json!(true), "{reply}");
        call(measured(0)).await;
        let mut one = Vec::new();
        for i in 1..=p.samples {
            one.push(call(measured(i)).await);
        }
        let with_one = median(one);
        let fill_ms = call(filler(p.filler)).await;
        let mut many = Vec::new();
        for i in 1..=p.samples {
            many.push(call(measured(i)).await);
        }
        let with_many = median(many);
        r.lock().unwrap().push(format!(
            "/lb/refresh of one listener: {with_one:.1} ms with 1 listener, {with_many:.1} ms with {} listeners (median of {}); the {} filler listeners in one refresh: {fill_ms:.0} ms",
            p.filler + 1,
            p.samples,
            p.filler
        ));
        let haproxy: Vec<(u32, u64)> = haproxy_pids(n).into_iter().map(|p| (p, common::rss_kib(p).0)).collect();
        let agent = common::rss_kib(n.agent.pid()).0;
        r.lock().unwrap().push(format!(
            "RSS with {} listeners: haproxy {} KiB ({}), agent {agent} KiB",
            p.filler + 1,
            haproxy.iter().map(|(_, r)| r).sum::<u64>(),
            haproxy
                .iter()
                .map(|(p, r)| format!("pid {p}: {r} KiB"))
                .collect::<Vec<_>>()
                .join(", ")
        ));

        // failed connections while haproxy reloads
        let stop = Arc::new(AtomicBool::new(false));
        let (good, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let looping = {
            let (stop, good, bad) = (stop.clone(), good.clone(), bad.clone());
            let path = format!("/run/netns/{}", n.client.name);
            std::thread::spawn(move || {
                use std::os::fd::AsFd;
                let file = std::fs::File::open(&path).unwrap();
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let dst: SocketAddr = "10.10.1.57:80".parse().unwrap();
                while !stop.load(Ordering::SeqCst) {
                    if one_connection(dst) {
                        good.fetch_add(1, Ordering::SeqCst);
                    } else {
                        bad.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        for i in 0..p.reloads {
            call(measured(i + 1)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let spent = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        looping.join().unwrap();
        let (good, bad) = (good.load(Ordering::SeqCst), bad.load(Ordering::SeqCst));
        r.lock().unwrap().push(format!(
            "{} reloads in {:.1} s with {} listeners: {good} connections answered, {bad} failed ({:.2} per 10,000)",
            p.reloads,
            spent.as_secs_f64(),
            p.filler + 1,
            bad as f64 * 10_000.0 / (good + bad).max(1) as f64
        ));
    });
    let mut report = report.into_inner().unwrap();
    // data plane, outside the writer's runtime
    let (through, f1) = conn_rate(&net, "10.10.1.57:80".parse().unwrap(), p.window);
    let (direct, f2) = conn_rate(&net, "10.10.1.56:8080".parse().unwrap(), p.window);
    report.push(format!(
        "connections/s (connect, greeting, close): {through:.0} through the listener ({f1} failed), {direct:.0} straight to the backend through a port forward ({f2} failed)"
    ));
    let old_workers = haproxy_pids(&net).len().saturating_sub(2);
    report.push(format!(
        "haproxy processes left: master + {} workers",
        old_workers + 1
    ));
    for line in &report {
        println!("{line}");
    }
}
