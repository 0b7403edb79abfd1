//! Resource bounds and callback targets, end to end: the real binary in its own network
//! namespace, attacked the way a hostile or broken client would.

mod common;

use common::agent::AgentProc;
use common::mgmt::{MgmtNode, assert_ok};
use common::netns::{Netns, veth};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let want = hard.min(65536);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit");
    assert!(
        want >= 4096,
        "open-file hard limit {hard} too low for this test"
    );
}

/// One request on a fresh connection (`Connection: close`): status and body.
async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect {path}: timed out"))
        .unwrap_or_else(|e| panic!("connect {path}: {e}"));
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    s.write_all(head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within 10 s"))
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{path}: not an HTTP answer: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

async fn ping_ok(addr: SocketAddr) {
    let (status, body) = post(addr, "/ping", &[], "{}").await;
    assert_eq!(status, 200, "/ping: {body}");
    let v: Value = serde_json::from_str(&body).expect("ping JSON");
    assert_ok(&v);
    let (status, body) = post(addr, "/echo", &[], "").await;
    assert_eq!((status, body.as_str()), (200, ""), "/echo");
}

/// Waits until the server closes `s` (EOF or reset); panics after `within`.
async fn closed_within(mut s: TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(within.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            // an answer (408 to a dribbled head): keep reading until the close
            Ok(Ok(_)) => {}
        }
    }
}

#[test]
fn a_thousand_idle_and_half_open_connections_are_closed_and_ping_keeps_answering() {
    raise_fd_limit();
    let ns = Netns::new("vrlim");
    ns.block_on(|| async {
        let agent = AgentProc::start(&[
            "--idle-timeout-secs=3",
            "--header-timeout-secs=2",
            "--max-connections=256",
        ]);
        let addr = agent.vr;
        ping_ok(addr).await;
        let failures = Arc::new(AtomicUsize::new(0));
        let pings = Arc::new(AtomicUsize::new(0));
        let pinger = {
            let (failures, pings) = (failures.clone(), pings.clone());
            tokio::spawn(async move {
                loop {
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        post(addr, "/ping", &[], "{}"),
                    )
                    .await
                    {
                        Ok((200, _)) => pings.fetch_add(1, Ordering::SeqCst),
                        _ => failures.fetch_add(1, Ordering::SeqCst),
                    };
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let opened = Instant::now();
        let mut conns = Vec::new();
        for i in 0..1000 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            if i % 10 == 0 {
                // half-open: a request line that never ends
                s.write_all(b"POST /init HT").await.expect("write");
            }
            conns.push(s);
        }
        eprintln!("1000 connections opened in {:?}", opened.elapsed());
        ping_ok(addr).await;
        let waits: Vec<_> = conns
            .into_iter()
            .map(|s| tokio::spawn(closed_within(s, Duration::from_secs(15))))
            .collect();
        let mut slowest = Duration::ZERO;
        for w in waits {
            slowest = slowest.max(w.await.expect("closed"));
        }
        eprintln!("all 1000 closed, the last {slowest:?} after the wait began");
        // the last 256 are idle ones still in the table: closed by the idle timeout (3 s)
        assert!(
            slowest < Duration::from_secs(6),
            "closed only after {slowest:?}"
        );
        ping_ok(addr).await;
        pinger.abort();
        assert_eq!(failures.load(Ordering::SeqCst), 0, "pings failed meanwhile");
        assert!(pings.load(Ordering::SeqCst) > 10, "too few pings meanwhile");
    });
}

#[test]
fn at_the_cap_of_busy_connections_ping_and_echo_still_answer() {
    raise_fd_limit();
    let ns = Netns::new("vrlim");
    ns.block_on(|| async {
        let agent = AgentProc::start(&[
            "--idle-timeout-secs=30",
            "--body-timeout-secs=4",
            "--max-connections=64",
        ]);
        let addr = agent.vr;
        // 64 connections, each inside a request whose body never comes: none is idle
        let mut busy = Vec::new();
        for _ in 0..64 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"POST /init HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
                .await
                .expect("write");
            busy.push(s);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        ping_ok(addr).await;
        let (status, body) = post(addr, "/init", &[], r#"{"uuid":"x"}"#).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("too many connections"), "{body}");
        // the body timeout ends the busy ones with 408, then normal service resumes
        for mut s in busy {
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut out))
                .await
                .expect("closed by the body timeout")
                .ok();
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        }
        let (status, body) = post(addr, "/init", &[], r#"{"uuid":"x"}"#).await;
        assert_eq!(status, 200, "{body}");
    });
}

/// The router (eth0 192.168.100.20/24, the management nic) and the management node
/// (192.168.100.10) on a veth pair; a guest-side nic 172.20.0.1/24 on the router.
struct MgmtNet {
    agent: AgentProc,
    router: Netns,
    mgmt: Netns,
    _guest: Netns,
}

impl MgmtNet {
    fn new(extra: &[&str]) -> MgmtNet {
        let router = Netns::new("vrlr");
        let mgmt = Netns::new("vrlm");
        let guest = Netns::new("vrlg");
        veth(
            &router,
            "eth0",
            "fa:7e:4b:ad:11:00",
            &mgmt,
            "m0",
            "fa:7e:4b:00:00:10",
        );
        veth(
            &router,
            "eth2",
            "fa:7e:4b:ad:11:02",
            &guest,
            "g0",
            "fa:7e:4b:00:00:12",
        );
        router.ip(&["addr", "add", "192.168.100.20/24", "dev", "eth0"]);
        router.ip(&["addr", "add", "172.20.0.1/24", "dev", "eth2"]);
        mgmt.ip(&["addr", "add", "192.168.100.10/24", "dev", "m0"]);
        mgmt.ip(&["addr", "add", "192.168.100.11/24", "dev", "m0"]);
        let mut args = vec!["--vr-listen=0.0.0.0:7272", "--mgmt-nic=eth0"];
        args.extend_from_slice(extra);
        let agent = router.enter(|| AgentProc::start(&args));
        MgmtNet {
            agent,
            router,
            mgmt,
            _guest: guest,
        }
    }
}

#[test]
fn callbacks_go_to_the_sender_or_its_subnet_and_nowhere_else() {
    let net = MgmtNet::new(&[]);
    let api: SocketAddr = "192.168.100.20:7272".parse().unwrap();
    net.mgmt.block_on(|| async {
        // the sender itself: delivered
        let mn = MgmtNode::start_at("192.168.100.10").await;
        assert_ok(&mn.call(api, "/init", &json!({"uuid": "u1"})).await);
        // another host of the management subnet (a second management node): delivered
        let other = MgmtNode::start_at("192.168.100.11").await;
        assert_ok(&other.call(api, "/ping", &json!({})).await);
        let port = mn
            .callback_url
            .split(':')
            .nth(2)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        for host in [
            "127.0.0.1".to_string(),
            "[::1]".into(),
            "2130706433".into(),
            "0x7f000001".into(),
            "localhost".into(),
            "192.168.100.20".into(),
            "192.168.100.255".into(),
            "172.20.0.15".into(),
            "169.254.1.1".into(),
            "224.0.0.1".into(),
            "8.8.8.8".into(),
        ] {
            let url = format!("http://{host}:{port}/zstack/asyncrest/callback");
            let r = mn
                .post_raw(
                    api,
                    "/init",
                    &[("taskuuid", "0123456789abcdef"), ("callbackurl", &url)],
                    br#"{"uuid":"bad"}"#.to_vec(),
                )
                .await;
            assert_eq!(r.status, 400, "{url}");
            let err = r.json()["error"].as_str().unwrap_or_default().to_string();
            assert!(err.contains("callbackurl"), "{url}: {err}");
            assert_eq!(r.json()["success"], json!(false));
        }
        let https = mn.callback_url.replace("http://", "https://");
        let r = mn
            .post_raw(
                api,
                "/init",
                &[("taskuuid", "0123456789abcdef"), ("callbackurl", &https)],
                br#"{"uuid":"bad"}"#.to_vec(),
            )
            .await;
        assert_eq!(r.status, 400);
        // nothing was queued: the uuid is still the first one
        let ping = mn.call_sync(api, "/ping", &json!({})).await;
        assert_eq!(ping["uuid"], json!("u1"));
    });
    let _ = &net.router;
}

#[test]
fn callback_allow_widens_the_targets() {
    let net = MgmtNet::new(&["--callback-allow=172.20.0.0/28"]);
    let api: SocketAddr = "192.168.100.20:7272".parse().unwrap();
    net.mgmt.block_on(|| async {
        let mn = MgmtNode::start_at("192.168.100.10").await;
        // allowed by the flag, refused without it (see the test above): nobody listens
        // there, so the ack is what tells
        let r = mn
            .post_raw(
                api,
                "/ping",
                &[
                    ("taskuuid", "00000000000000000000000000000001"),
                    (
                        "callbackurl",
                        "http://172.20.0.15:8080/zstack/asyncrest/callback",
                    ),
                ],
                b"{}".to_vec(),
            )
            .await;
        assert_eq!(r.status, 200);
        let r = mn
            .post_raw(
                api,
                "/ping",
                &[
                    ("taskuuid", "00000000000000000000000000000002"),
                    (
                        "callbackurl",
                        "http://172.20.0.16:8080/zstack/asyncrest/callback",
                    ),
                ],
                b"{}".to_vec(),
            )
            .await;
        assert_eq!(r.status, 400);
    });
    let _ = &net.agent;
}

#[test]
fn a_megabyte_value_never_makes_a_long_log_line() {
    let ns = Netns::new("vrlim");
    ns.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        let huge = "9".repeat(1 << 20);
        let body = json!({"eip": {"vipIp": huge, "privateMac": "fa:7e:4b:ad:11:02", "guestIp": "172.20.0.15"}});
        let r = mn
            .post_raw(agent.vr, "/createeip", &[], body.to_string().into_bytes())
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["success"], json!(false));
        let long = format!("http://{}/cb", "1".repeat(100_000));
        let r = mn
            .post_raw(
                agent.vr,
                "/init",
                &[("taskuuid", "00000000000000000000000000000003"), ("callbackurl", &long)],
                b"{}".to_vec(),
            )
            .await;
        assert_eq!(r.status, 400);
        assert!(r.body.len() < 400, "{} bytes", r.body.len());
        ping_ok(agent.vr).await;
        let log = agent.log();
        let longest = log.lines().map(str::len).max().unwrap_or(0);
        // vr_agent::logging: 1,536 bytes at info and above, 4,608 at debug
        assert!(longest <= 4608, "a log line of {longest} bytes");
        for l in log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")) {
            assert!(l.len() <= 1536, "a warning of {} bytes", l.len());
        }
        // (the decoder already refuses strings over 64 KiB and quotes at most 100 characters,
        // so nothing here reaches the logger's cut; logging::tests covers the cut itself)
        assert!(log.len() < 200_000, "log of {} bytes", log.len());
    });
}
