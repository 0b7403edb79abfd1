//! Start-up at scale: the agent starts on a stored state of 100,000 EIPs (each VIP an address
//! on the public nic, as the management node creates them), 10,000 port forwards and 10,000
//! DHCP hosts. Reports the time from exec to the listeners, to the first `/echo` answer, and
//! to the end of the re-apply (`/ping` no longer says `startup:`), and the agent's RSS.
//! Runs the release binary in private network namespaces. `cargo bench --bench startup`
//! (`VR_BENCH_EIPS`, `VR_BENCH_FORWARDS`, `VR_BENCH_HOSTS` change the sizes).
//!
//! `VR_BENCH_NAT_ONLY=1` measures only the NAT and firewall re-apply, in process and without
//! the 100,000 VIP addresses (the state names each VIP's nic): the model, the whole tables
//! through `nft -f` text (the path of earlier versions), and the backend's re-apply (rules in
//! place + one nfnetlink set batch) on an empty kernel, on a kernel that holds the state, and
//! adding only (`reconcile_keeping`).

#[path = "../tests/common/mod.rs"]
mod common;

use common::agent::AgentProc;
use common::netns::{Netns, veth};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use vr_agent::protocol::{Request, route};
use vr_agent::state::DesiredState;
use vr_agent::state::store::Store;

const PUB_MAC: &str = "fa:7e:4b:ad:11:01";
const GUEST_MAC: &str = "fa:7e:4b:ad:11:02";

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn apply(state: &mut DesiredState, path: &str, body: Value) {
    let route = route(path).expect("path");
    let Ok(Request::Change(cmd)) = route.parse(body.to_string().as_bytes()) else {
        panic!("{path} refused");
    };
    state.apply(&cmd).expect("applies");
}

fn addr(base: [u8; 2], i: usize) -> String {
    format!(
        "{}.{}.{}.{}",
        base[0],
        base[1] + (i >> 16) as u8,
        (i >> 8) & 255,
        i & 255
    )
}

fn build_state(eips: usize, forwards: usize, hosts: usize) -> DesiredState {
    let mut s = DesiredState::default();
    apply(
        &mut s,
        "/configurenic",
        json!({"nics": [
            {"mac": PUB_MAC, "ip": "100.64.0.1", "netmask": "255.192.0.0"},
            {"mac": GUEST_MAC, "ip": "10.0.0.1", "netmask": "255.0.0.0"}
        ]}),
    );
    let vips: Vec<Value> = (0..eips)
        .map(|i| json!({"ip": addr([100, 65], i), "netmask": "255.192.0.0", "ownerEthernetMac": PUB_MAC}))
        .collect();
    apply(&mut s, "/createvip", json!({ "vips": vips }));
    let list: Vec<Value> = (0..eips)
        .map(|i| json!({"vipIp": addr([100, 65], i), "privateMac": GUEST_MAC, "guestIp": addr([10, 1], i)}))
        .collect();
    apply(&mut s, "/synceip", json!({ "eips": list }));
    let rules: Vec<Value> = (0..forwards)
        .map(|i| {
            let port = 1000 + (i % 1000) as u16;
            json!({"vipPortStart": port, "vipPortEnd": port, "privatePortStart": 80, "privatePortEnd": 80,
                   "protocolType": "TCP", "vipIp": addr([100, 80], i / 1000),
                   "privateIp": addr([10, 100], i), "privateMac": GUEST_MAC})
        })
        .collect();
    apply(&mut s, "/syncportforwarding", json!({ "rules": rules }));
    let entries: Vec<Value> = (0..hosts)
        .map(|i| {
            json!({"ip": addr([10, 200], i), "mac": format!("fa:3c:{:02x}:{:02x}:{:02x}:01", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                   "netmask": "255.0.0.0", "gateway": "10.0.0.1", "vrNicMac": GUEST_MAC,
                   "isDefaultL3Network": true, "hostname": format!("vm-{i}"), "dnsDomain": "bench.test"})
        })
        .collect();
    apply(
        &mut s,
        "/adddhcp",
        json!({"dhcpEntries": entries, "rebuild": true}),
    );
    s
}

fn echo_answers(addr: std::net::SocketAddr) -> bool {
    let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    if c.write_all(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// Sets' element counts of our tables, as `nft` lists them (a check that each round loaded
/// everything).
fn elements(ns: &Netns) -> usize {
    let mut total = 0;
    for table in [["ip", "vr_nat"], ["inet", "vr_filter"]] {
        let out = ns.exec_ok(&["nft", "-j", "list", "table", table[0], table[1]]);
        let v: Value = serde_json::from_str(&out).expect("nft json");
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(set) = item.get("set").or_else(|| item.get("map")) {
                total += set["elem"].as_array().map_or(0, Vec::len);
            }
        }
    }
    total
}

fn nat_only(state: &DesiredState) {
    use vr_agent::backend::Backend;
    use vr_agent::nat::{NatBackend, inputs::Inputs, plan};
    let router = Netns::new("vrbn");
    let peer = Netns::new("vrbq");
    veth(&router, "eth1", PUB_MAC, &peer, "p0", "fa:7e:4b:00:00:11");
    veth(&router, "eth2", GUEST_MAC, &peer, "g0", "fa:7e:4b:00:00:12");
    // VR_BENCH_NFT_LISTENER=1: an `nft monitor` listens to the nftables notifications, as
    // the agent's drift watch does (the kernel then builds one message per element changed)
    let mut monitor = std::env::var_os("VR_BENCH_NFT_LISTENER").map(|_| {
        router
            .command("nft")
            .arg("monitor")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("nft monitor")
    });
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    // the backend's own account of each step (RUST_LOG, e.g. vr_agent=debug)
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    router.block_on(|| async {
        let inputs = Inputs {
            names: vr_agent::link::view::current().expect("nics").names(),
            mgmt_nic: "eth0".into(),
            agent_ports: vec![7272, 7759],
            ..Inputs::default()
        };
        let t = Instant::now();
        let (rs, skipped) = vr_agent::nat::model::resolve(state, &inputs);
        println!(
            "model: {} elements, {} left out, in {:.0} ms",
            rs.elements.len(),
            skipped.len(),
            ms(t)
        );
        let t = Instant::now();
        let full = plan::full(state, &inputs);
        println!(
            "full nft text: {} MB in {:.0} ms",
            full.nft().len() >> 20,
            ms(t)
        );
        let t = Instant::now();
        let (split, change) = plan::full_split(state, &inputs, &[]);
        println!(
            "split plan: {} kB of rules, {} elements in {:.0} ms",
            split.nft().len() >> 10,
            change.adds.len(),
            ms(t)
        );
        let health = std::sync::Arc::new(vr_agent::health::Health::default());
        let mut nat = NatBackend::with("eth0".into(), vec![7272, 7759], health);
        let t = Instant::now();
        nat.reconcile(state).await.expect("reconcile");
        println!("re-apply on an empty kernel: {:.0} ms", ms(t));
        let t = Instant::now();
        vr_agent::nat::nft::apply(&full.nft())
            .await
            .expect("nft -f");
        println!(
            "re-apply through nft -f text, tables present (earlier versions): {:.0} ms",
            ms(t)
        );
        for round in 1..=3 {
            let t = Instant::now();
            nat.reconcile(state).await.expect("reconcile");
            println!("re-apply, tables present, round {round}: {:.0} ms", ms(t));
        }
        let t = Instant::now();
        nat.reconcile_keeping(state).await.expect("keeping");
        println!("re-apply adding only (reconcile_keeping): {:.0} ms", ms(t));
    });
    println!("kernel holds {} elements", elements(&router));
    if let Some(m) = monitor.as_mut() {
        let _ = m.kill();
        let _ = m.wait();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run with `cargo bench --bench startup`");
        return;
    }
    let (eips, forwards, hosts) = (
        size("VR_BENCH_EIPS", 100_000),
        size("VR_BENCH_FORWARDS", 10_000),
        size("VR_BENCH_HOSTS", 10_000),
    );
    let t = Instant::now();
    let state = build_state(eips, forwards, hosts);
    println!(
        "state built in {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        state.summary()
    );
    if std::env::var_os("VR_BENCH_NAT_ONLY").is_some() {
        nat_only(&state);
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("vr-bench-startup-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    {
        let (mut store, _) = Store::open(&dir.path().join("state"));
        store.compact(&state).expect("snapshot");
    }
    let router = Netns::new("vrbs");
    let peer = Netns::new("vrbp");
    veth(
        &router,
        "eth0",
        "fa:7e:4b:ad:11:00",
        &peer,
        "m0",
        "fa:7e:4b:00:00:10",
    );
    veth(&router, "eth1", PUB_MAC, &peer, "p0", "fa:7e:4b:00:00:11");
    veth(&router, "eth2", GUEST_MAC, &peer, "g0", "fa:7e:4b:00:00:12");
    router.ip(&["addr", "add", "192.168.100.20/24", "dev", "eth0"]);
    for round in [
        "first start (empty kernel)",
        "restart (kernel already holds the state)",
    ] {
        router.enter(|| {
            let started = Instant::now();
            let mut agent = AgentProc::launch_in(
                dir.path(),
                &["--vr-listen=127.0.0.1:7272", "--appliance-listen=127.0.0.1:7759"],
            );
            let api: std::net::SocketAddr = "127.0.0.1:7272".parse().unwrap();
            while !echo_answers(api) {
                assert!(started.elapsed() < Duration::from_secs(60), "no /echo:\n{}", agent.log());
                std::thread::sleep(Duration::from_millis(5));
            }
            let echo = started.elapsed();
            let deadline = agent.wait_bound(Duration::from_secs(60));
            agent.wait_reapplied(deadline + Duration::from_secs(1800));
            let reapplied = started.elapsed();
            let (rss, hwm) = common::rss_kib(agent.pid());
            println!(
                "{round}: /echo answered after {:.0} ms; re-applied after {:.2} s; RSS {} MiB (peak {} MiB)",
                echo.as_secs_f64() * 1e3,
                reapplied.as_secs_f64(),
                rss / 1024,
                hwm / 1024
            );
            let log = agent.log();
            // every line of the re-apply (its span), with the times of its steps
            for line in log.lines().filter(|l| l.contains("reapply")) {
                println!("  {}", line.trim());
            }
            agent.stop();
        });
    }
}
