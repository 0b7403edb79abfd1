//! Load balancing with real haproxy and real TCP: a client on the public side connects to a
//! listener on a VIP of the router, backends on the guest side answer (see `nat_support` for
//! the network). Every command goes through the agent's HTTP API.

mod common;
mod nat_support;

use common::mgmt::assert_fails;
use nat_support::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const LB: &str = "0c9e6a0b5b7e4f2a8d1c3b5a7e9f1d2c";
/// The router's address on each guest network: how a backend sees haproxy.
const FROM_G1: &str = "172.20.0.1 8080";
const FROM_G2: &str = "172.20.1.1 8080";

fn listener(id: &str, vip: &str, port: u16, nics: &[&str], mode: &str, params: &[&str]) -> Value {
    json!({"lbUuid": LB, "listenerUuid": id, "vip": vip, "nicIps": nics, "instancePort": 8080,
           "loadBalancerPort": port, "mode": mode, "parameters": params})
}

/// Fast health checks: a dead backend is out after 2 x 1 s.
const FAST: &[&str] = &[
    "healthCheckInterval::1",
    "unhealthyThreshold::2",
    "healthyThreshold::1",
    "healthCheckTimeout::1",
    "healthCheckTarget::tcp:default",
];

fn haproxy_cfg(net: &Net) -> String {
    std::fs::read_to_string(net.agent.dir.join("run/haproxy/haproxy.cfg")).unwrap_or_default()
}

/// The operational state haproxy holds for `server` (0: down, 2: up), from its runtime API.
fn server_state(net: &Net, server: &str) -> Option<u32> {
    let path = net.agent.dir.join("run/haproxy/runtime.sock");
    let mut s = std::os::unix::net::UnixStream::connect(path).ok()?;
    s.write_all(b"show servers state\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(3) == Some(&server)).then(|| f.get(5)?.parse().ok())?
    })
}

/// The answers of `n` connections in a row to `dst`.
fn answers(ns: &common::netns::Netns, dst: &str, n: usize) -> Vec<Option<String>> {
    (0..n).map(|_| tcp_ask(ns, dst, None)).collect()
}

/// Waits until `f` holds (at most `limit`), returning how long it took.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_tcp_listener_spreads_over_its_backends_and_follows_refresh_delete_and_restart() {
    let mut net = Net::new();
    let g1 = tcp_server(&net.guest1, "0.0.0.0:8080");
    let g2 = tcp_server(&net.guest2, "0.0.0.0:8080");
    let n = &net;
    net.run(|mn, api| async move {
        // nothing listens before
        assert_eq!(tcp_ask(&n.client, "10.10.1.57:80", None), None);
        let both = [GUEST1, GUEST2];
        ok(
            &mn,
            api,
            "/lb/refresh",
            json!({"lbs": [
                listener("l1", "10.10.1.57", 80, &both, "tcp", FAST),
                listener("l2", "10.10.1.57", 81, &[GUEST1], "tcp", FAST),
            ]}),
        )
        .await;
        // answered by the two backends in turn, on instancePort 8080 (not 80)
        let got = answers(&n.client, "10.10.1.57:80", 6);
        let got: Vec<String> = got.into_iter().map(|a| a.expect("answered")).collect();
        for pair in got.windows(2) {
            assert_ne!(pair[0], pair[1], "not in turn: {got:?}");
        }
        assert!(got.iter().all(|a| a == FROM_G1 || a == FROM_G2), "{got:?}");
        // the firewall takes the listener from the guest side too
        assert!(tcp_ask(&n.guest1, "10.10.1.57:81", None).is_some());
        assert_eq!(
            tcp_ask(&n.client, "10.10.1.57:81", None).as_deref(),
            Some(FROM_G1)
        );
        // `lbs: []` changes nothing
        let cfg = haproxy_cfg(n);
        ok(&mn, api, "/lb/refresh", json!({"lbs": []})).await;
        assert_eq!(haproxy_cfg(n), cfg);
        // every bad parameter class is refused naming the listener and the parameter, and
        // nothing changes
        for (bad, needle) in [
            (
                "healthCheckInterval::soon",
                "healthCheckInterval \"soon\" is not a number",
            ),
            (
                "unhealthyThreshold::0",
                "unhealthyThreshold \"0\" is out of range",
            ),
            (
                "maxConnection::99999999",
                "maxConnection \"99999999\" is out of range",
            ),
            (
                "balancerAlgorithm::fastest",
                "balancerAlgorithm \"fastest\" is not",
            ),
            ("healthCheckURI::/a\nlisten x", "control character"),
            ("healthCheckURI::/a#b", "'#'"),
            (
                "balancerWeight::172.20.0.15::x",
                "balancerWeight \"x\" is not a number",
            ),
        ] {
            let mut params = FAST.to_vec();
            params.push(bad);
            let reply = mn
                .call_sync(
                    api,
                    "/lb/refresh",
                    &json!({"lbs": [
                    listener("l1", "10.10.1.57", 80, &[GUEST1], "tcp", &params)]}),
                )
                .await;
            assert_fails(&reply, "lbs[0].parameters[5]: listener l1: ");
            assert_fails(&reply, needle);
            assert_eq!(haproxy_cfg(n), cfg, "{bad} changed haproxy.cfg");
        }
        // a VIP no nic holds or covers, and a port forward on a listener's port, are refused
        let reply = mn
            .call_sync(
                api,
                "/lb/refresh",
                &json!({"lbs": [listener("l9", "10.99.0.9", 80, &[GUEST1], "tcp", FAST)]}),
            )
            .await;
        assert_fails(
            &reply,
            "lbs[0].vip: listener l9: no nic of the router carries \"10.99.0.9\"",
        );
        let reply = mn
            .call_sync(
                api,
                "/createportforwarding",
                &json!({"rules": [
                pf("TCP", "10.10.1.57", (79, 81), GUEST2, (79, 81), G2_MAC, None, false)]}),
            )
            .await;
        assert_fails(&reply, "the port forward tcp 10.10.1.57:79-81");
        assert_fails(&reply, "conflicts with listener l");
        assert_eq!(haproxy_cfg(n), cfg);
        assert!(tcp_ask(&n.client, "10.10.1.57:80", None).is_some());
    });

    // a backend killed is taken out within interval x unhealthyThreshold (2 s); connections
    // meanwhile are retried on the other one, and none fails
    let killed = Instant::now();
    drop(g2);
    let mut failed = 0;
    let mut out = None;
    while killed.elapsed() < Duration::from_secs(5) && out.is_none() {
        if tcp_ask(&net.client, "10.10.1.57:80", None).is_none() {
            failed += 1;
        }
        if server_state(&net, "s-172.20.1.20") == Some(0) {
            out = Some(killed.elapsed());
        }
    }
    let out = out.expect("the dead backend was not taken out");
    eprintln!("dead backend out after {out:?}; {failed} connections failed meanwhile");
    assert!(out <= Duration::from_millis(2500), "{out:?}");
    assert_eq!(failed, 0);
    let got = answers(&net.client, "10.10.1.57:80", 20);
    assert!(got.iter().all(|a| a.as_deref() == Some(FROM_G1)), "{got:?}");

    // the stored listeners serve again after a restart, before anything is sent
    let router = &net.router;
    let client = &net.client;
    let agent = &mut net.agent;
    router.enter(|| {
        agent.restart_after(|| {
            // the agent stops haproxy with itself
            assert_eq!(tcp_ask(client, "10.10.1.57:80", None), None);
        });
    });
    assert_eq!(
        tcp_ask(&net.client, "10.10.1.57:80", None).as_deref(),
        Some(FROM_G1)
    );

    let n = &net;
    net.run(|mn, api| async move {
        // a listener left out of a refresh of its load balancer stops listening
        ok(
            &mn,
            api,
            "/lb/refresh",
            json!({"lbs": [
            listener("l1", "10.10.1.57", 80, &[GUEST1], "tcp", FAST)]}),
        )
        .await;
        assert_eq!(tcp_ask(&n.client, "10.10.1.57:81", None), None);
        assert!(tcp_ask(&n.client, "10.10.1.57:80", None).is_some());
        // /lb/delete closes the port, and the firewall with it
        ok(
            &mn,
            api,
            "/lb/delete",
            json!({"lbs": [
            listener("l1", "10.10.1.57", 80, &[GUEST1], "tcp", FAST)]}),
        )
        .await;
        assert_eq!(tcp_ask(&n.client, "10.10.1.57:80", None), None);
        let tables = n.tables();
        assert!(!tables.contains("10.10.1.57 . tcp . 80"), "{tables}");
    });
    drop(g1);
}

#[test]
fn reloads_and_weight_changes_refuse_no_connection_and_keep_a_long_one() {
    let net = Net::new();
    let _g1 = tcp_server(&net.guest1, "0.0.0.0:8080");
    let _g2 = tcp_server(&net.guest2, "0.0.0.0:8080");
    let n = &net;
    net.run(|mn, api| async move {
        let both = [GUEST1, GUEST2];
        let refresh = |i: usize| {
            // even: the idle timeout changes (a reload); odd: only the weights (runtime API)
            let timeout = format!("connectionIdleTimeout::{}", 60 + (i / 2) % 2);
            let w1 = format!("balancerWeight::{GUEST1}::{}", 10 + (i % 4) * 20);
            let mut params = FAST.to_vec();
            params.extend([
                "balancerAlgorithm::weightroundrobin",
                timeout.as_str(),
                w1.as_str(),
            ]);
            json!({"lbs": [listener("l1", "10.10.1.57", 80, &both, "tcp", &params)]})
        };
        ok(&mn, api, "/lb/refresh", refresh(0)).await;
        let mut long = tcp_connect(&n.client, "10.10.1.57:80", None).expect("long connection");
        assert!(read_line(&long).is_some());
        assert!(echoes(&mut long, "before"));

        let stop = Arc::new(AtomicBool::new(false));
        let (okays, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let looping = {
            let (stop, okays, failures) = (stop.clone(), okays.clone(), failures.clone());
            let path = format!("/run/netns/{}", n.client.name);
            std::thread::spawn(move || {
                use std::os::fd::AsFd;
                let file = std::fs::File::open(&path).unwrap();
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let answered = std::net::TcpStream::connect_timeout(
                        &"10.10.1.57:80".parse().unwrap(),
                        Duration::from_secs(2),
                    )
                    .ok()
                    .and_then(|s| {
                        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                        read_line(&s)
                    });
                    match answered {
                        Some(_) => okays.fetch_add(1, Ordering::SeqCst),
                        None => failures.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 1..=20 {
            ok(&mn, api, "/lb/refresh", refresh(i)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        looping.join().unwrap();
        let (okays, failures) = (
            okays.load(Ordering::SeqCst),
            failures.load(Ordering::SeqCst),
        );
        eprintln!("connections during 20 refreshes: {okays} answered, {failures} failed");
        assert!(okays > 100, "{okays}");
        assert_eq!(failures, 0);
        assert!(
            echoes(&mut long, "after 20 refreshes"),
            "the long connection was cut"
        );
        let log = std::fs::read_to_string(n.agent.dir.join("agent.log")).unwrap_or_default();
        assert!(
            log.contains("weights set without a reload"),
            "no runtime weight change"
        );
        assert!(log.contains("haproxy reloaded"), "no reload");
    });
}

/// An HTTP backend answering each request with the `X-Forwarded-For` it got (health checks
/// connect too: it serves until the test process ends).
fn xff_server(ns: &common::netns::Netns) {
    let listener = ns.enter(|| std::net::TcpListener::bind("0.0.0.0:8080").unwrap());
    let _detached = std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let xff = head
                .lines()
                .find_map(|l| l.strip_prefix("x-forwarded-for:"))
                .unwrap_or("none")
                .trim()
                .to_string();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xff}",
                xff.len()
            );
        }
    });
}

#[test]
fn http_mode_carries_x_forwarded_for() {
    let net = Net::new();
    xff_server(&net.guest1);
    let n = &net;
    net.run(|mn, api| async move {
        // checked over HTTP (the server answers 200 to any path)
        let mut params = FAST.to_vec();
        params.extend(["healthCheckTarget::http:default", "healthCheckURI::/health"]);
        ok(
            &mn,
            api,
            "/lb/refresh",
            json!({"lbs": [
            listener("web", "10.10.1.58", 80, &[GUEST1], "http", &params)]}),
        )
        .await;
    });
    let cfg = haproxy_cfg(n);
    assert!(cfg.contains("option httpchk GET /health"), "{cfg}");
    // still up after more than interval x unhealthyThreshold of HTTP checks (2: running)
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(server_state(n, "s-172.20.0.15"), Some(2));
    let mut s = tcp_connect(&n.client, "10.10.1.58:80", None).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with(&format!("\r\n\r\n{CLIENT}")), "{out}");
}

#[test]
fn a_killed_haproxy_is_back_at_once_and_reported_until_then() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold");
    let bin = dir.path().join("haproxy");
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\n[ -e {} ] && {{ echo 'haproxy: held down by the test' >&2; exit 1; }}\nexec haproxy \"$@\"\n",
            hold.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bin_arg = format!("--haproxy-bin={}", bin.display());
    let net = Net::with_agent_args(&[&bin_arg, "--verify-secs=1"]);
    let _g1 = tcp_server(&net.guest1, "0.0.0.0:8080");
    let n = &net;
    let master = || -> u32 {
        std::fs::read_to_string(n.agent.dir.join("run/haproxy/haproxy.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let kill = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    };
    net.run(|mn, api| async move {
        ok(
            &mn,
            api,
            "/lb/refresh",
            json!({"lbs": [
            listener("l1", "10.10.1.57", 80, &[GUEST1], "tcp", FAST)]}),
        )
        .await;
        assert!(tcp_ask(&n.client, "10.10.1.57:80", None).is_some());
        // killed: a new master serves within a second
        let old = master();
        kill(old);
        let back = wait_for(Duration::from_secs(1), || {
            std::fs::read_to_string(n.agent.dir.join("run/haproxy/haproxy.pid"))
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
                .is_some_and(|p| p != old)
        })
        .expect("haproxy not back within a second");
        eprintln!("haproxy back after {back:?}");
        assert!(
            wait_for(Duration::from_secs(3), || tcp_ask(
                &n.client,
                "10.10.1.57:80",
                None
            )
            .is_some())
            .is_some()
        );
        // while it cannot come back, /ping says so; once it can, health clears
        std::fs::write(&hold, "").unwrap();
        kill(master());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ping = mn.call_sync(api, "/ping", &json!({})).await;
            if ping["healthy"] == json!(false) {
                let detail = ping["healthDetail"].as_str().unwrap();
                assert!(detail.contains("haproxy"), "{detail}");
                break;
            }
            assert!(Instant::now() < deadline, "no health report: {ping}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_file(&hold).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ping = mn.call_sync(api, "/ping", &json!({})).await;
            if ping["healthy"] == json!(true) {
                break;
            }
            assert!(Instant::now() < deadline, "still unhealthy: {ping}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(tcp_ask(&n.client, "10.10.1.57:80", None).is_some());
        // haproxy.cfg edited behind the agent: the verify rewrites it (and reloads)
        let cfg = haproxy_cfg(n);
        let path = n.agent.dir.join("run/haproxy/haproxy.cfg");
        std::fs::write(
            &path,
            format!("{cfg}\nlisten hand-made\n\tbind 10.10.1.57:99\n"),
        )
        .unwrap();
        assert!(
            wait_for(Duration::from_secs(5), || haproxy_cfg(n) == cfg).is_some(),
            "haproxy.cfg not rewritten"
        );
        assert!(tcp_ask(&n.client, "10.10.1.57:80", None).is_some());
    });
}
