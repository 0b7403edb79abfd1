//! The agent core in process, root-free: the real HTTP server, writer and store over backends
//! that record what they are asked, can be told to fail and can be held inside `apply`
//! (tests/common/inprocess.rs). What the kernel does with a change is tested in the namespace
//! tests; here, which backends a change reaches, in which order, what is undone when one of
//! them fails or the journal cannot record it, and the HTTP side: ordering of commands in
//! flight, repeated `taskuuid`s, callbacks (headers, retries, allowed targets), the body
//! limit and the drain at shutdown.

mod common;
#[path = "common/inprocess.rs"]
mod harness;

use common::fixture;
use common::mgmt::{MgmtNode, assert_fails, assert_ok};
use harness::{InProcess, Options, Receiver, free_port, runtime};
use serde_json::json;
use std::time::Duration;
use vr_agent::state::store::Store;

#[test]
fn a_command_reaches_the_backends_whose_parts_it_writes_in_order() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mn = MgmtNode::start().await;
        assert_ok(
            &mn.call(agent.addr, "/createeip", &fixture("createeip"))
                .await,
        );
        assert_eq!(agent.take_log(), ["nat apply create_eip eips 0->1"]);
        assert_ok(
            &mn.call(agent.addr, "/createvip", &fixture("createvip"))
                .await,
        );
        assert_eq!(agent.take_log(), ["links apply create_vips eips 1->1"]);
        assert_ok(
            &mn.call(agent.addr, "/configurenic", &fixture("configurenic"))
                .await,
        );
        assert_eq!(
            agent.take_log(),
            [
                "links apply configure_nics eips 1->1",
                "nat apply configure_nics eips 1->1"
            ]
        );
        // /init concerns no backend's parts, but the management node takes charge again:
        // every backend re-applies the whole state
        assert_ok(&mn.call(agent.addr, "/init", &fixture("init")).await);
        assert_eq!(
            agent.take_log(),
            [
                "links reconcile nics 1 eips 1",
                "nat reconcile nics 1 eips 1"
            ]
        );
        agent.stop().await;
    });
}

#[test]
fn a_failing_backend_rolls_back_those_that_followed_and_nothing_is_stored() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mn = MgmtNode::start().await;
        assert_ok(
            &mn.call(agent.addr, "/createeip", &fixture("createeip"))
                .await,
        );
        agent.take_log();
        agent.fail.lock().unwrap().push("nat:configure_nics");
        let reply = mn
            .call(agent.addr, "/configurenic", &fixture("configurenic"))
            .await;
        assert_fails(&reply, "nat refused configure_nics; nothing was changed");
        // links followed, nat refused: links is brought back to the state before (no nic)
        assert_eq!(
            agent.take_log(),
            [
                "links apply configure_nics eips 1->1",
                "nat apply configure_nics eips 1->1",
                "links reconcile nics 0 eips 1"
            ]
        );
        // a rollback that fails too is said, and shows in /ping
        agent
            .fail
            .lock()
            .unwrap()
            .extend(["nat:configure_nics", "links:reconcile"]);
        let reply = mn
            .call(agent.addr, "/configurenic", &fixture("configurenic"))
            .await;
        assert_fails(
            &reply,
            "nat refused configure_nics; bringing the other parts back failed too (interfaces: links could not reconcile)",
        );
        let ping = mn.call(agent.addr, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(false), "{ping}");
        agent.fail.lock().unwrap().clear();
        // the refused commands were not journaled: a restart loads the EIP and no nic
        let dir = agent.stop().await;
        let (_store, loaded) = Store::open(dir.path());
        assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
        assert_eq!(loaded.state.eips.len(), 1);
        assert!(loaded.state.nics.is_empty());
    });
}

#[test]
fn a_backend_that_failed_halfway_is_brought_back_too_and_the_reply_says_whether_it_was() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mn = MgmtNode::start().await;
        assert_ok(
            &mn.call(agent.addr, "/createeip", &fixture("createeip"))
                .await,
        );
        agent.take_log();
        // nat may have changed part of the system: it goes back first, then links
        agent
            .fail
            .lock()
            .unwrap()
            .push("nat:configure_nics:partial");
        let reply = mn
            .call(agent.addr, "/configurenic", &fixture("configurenic"))
            .await;
        assert_fails(
            &reply,
            "nat stopped halfway through configure_nics; nothing was changed",
        );
        assert_eq!(
            agent.take_log(),
            [
                "links apply configure_nics eips 1->1",
                "nat apply configure_nics eips 1->1",
                "nat reconcile nics 0 eips 1",
                "links reconcile nics 0 eips 1"
            ]
        );
        // when it cannot be brought back, the reply does not claim nothing was changed
        agent.fail.lock().unwrap().push("nat:reconcile");
        let reply = mn
            .call(agent.addr, "/configurenic", &fixture("configurenic"))
            .await;
        assert_fails(
            &reply,
            "nat stopped halfway through configure_nics; putting back what it changed failed (nat: nat could not reconcile): the router may differ from its last acknowledged state",
        );
        assert!(
            !reply["error"]
                .as_str()
                .unwrap_or_default()
                .contains("nothing was changed"),
            "{reply}"
        );
        agent.fail.lock().unwrap().clear();
        let dir = agent.stop().await;
        let (_store, loaded) = Store::open(dir.path());
        assert!(loaded.state.nics.is_empty());
    });
}

#[test]
fn a_feature_without_a_backend_is_refused_and_changes_nothing() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mn = MgmtNode::start().await;
        // no backend owns DHCP here
        let reply = mn.call(agent.addr, "/adddhcp", &fixture("adddhcp")).await;
        assert_fails(&reply, "not supported");
        assert!(agent.take_log().is_empty());
        let dir = agent.stop().await;
        let (_store, loaded) = Store::open(dir.path());
        assert!(loaded.state.dhcp_hosts.is_empty());
    });
}

/// The body of a `/createeip` for EIP `i` (a valid one unless `bad`, whose VIP is unparsable).
fn eip(i: u32, bad: bool) -> serde_json::Value {
    let vip = if bad {
        format!("10.10.{i}.999")
    } else {
        format!("10.10.{}.{}", 1 + i / 200, 1 + i % 200)
    };
    json!({"eip": {"vipIp": vip, "privateMac": "fa:7e:4b:ad:11:02",
        "guestIp": format!("172.20.{}.{}", i / 200, 2 + i % 200), "snatInboundTraffic": false}})
}

/// The VIP of an applied `create_eip`, as the backend got it.
fn applied_vip(cmd: &serde_json::Value) -> String {
    cmd["args"]["vip_ip"]
        .as_str()
        .unwrap_or_else(|| panic!("not a create_eip: {cmd}"))
        .to_string()
}

#[test]
fn hundred_commands_in_flight_each_answered_with_its_own_reply_in_arrival_order() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mn = MgmtNode::start().await;
        // the first command that reaches a backend waits there: all the others are in flight
        let release = agent.hold_next();
        let mut replies = Vec::new();
        for i in 0..100u32 {
            replies.push((
                i,
                mn.send(agent.addr, "/createeip", &eip(i, i % 10 == 0))
                    .await,
            ));
        }
        agent.wait_log(1).await;
        assert_eq!(
            agent.log.lock().unwrap().len(),
            1,
            "one command applied at a time"
        );
        release.send(()).unwrap();
        for (i, reply) in replies {
            let reply = tokio::time::timeout(Duration::from_secs(60), reply)
                .await
                .unwrap_or_else(|_| panic!("no callback for command {i}"))
                .unwrap();
            if i % 10 == 0 {
                // its own failure, naming its own value
                assert_fails(&reply, &format!("10.10.{i}.999"));
            } else {
                assert_ok(&reply);
            }
        }
        assert!(mn.strays.lock().unwrap().is_empty());
        // applied one after the other, in the order they arrived
        let vips: Vec<String> = agent
            .commands
            .lock()
            .unwrap()
            .iter()
            .map(applied_vip)
            .collect();
        let expected: Vec<String> = (0..100u32)
            .filter(|i| i % 10 != 0)
            .map(|i| eip(i, false)["eip"]["vipIp"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(vips, expected);
        let log = agent.take_log();
        let counts: Vec<String> = (0..90)
            .map(|n| format!("nat apply create_eip eips {n}->{}", n + 1))
            .collect();
        assert_eq!(log, counts);
        agent.stop().await;
    });
}

#[test]
fn sequential_acks_keep_arrival_order_and_a_sync_command_queues_behind() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mn = MgmtNode::start().await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let release = agent.hold_next();
        for i in 0..100u32 {
            let r = client
                .post(format!("http://{}/createeip", agent.addr))
                .header("taskuuid", format!("seq{i:04}"))
                .header("callbackurl", &mn.callback_url)
                .body(eip(i, false).to_string())
                .send()
                .await
                .unwrap();
            // acked at once, with an empty body, while the first is still being applied
            assert_eq!(r.status().as_u16(), 200);
            assert!(r.bytes().await.unwrap().is_empty());
        }
        let sync = {
            let body = json!({"uuid": "after-all"}).to_string();
            let url = format!("http://{}/init", agent.addr);
            let client = client.clone();
            tokio::spawn(async move { client.post(url).body(body).send().await })
        };
        agent.wait_log(1).await;
        release.send(()).unwrap();
        let reply: serde_json::Value = sync.await.unwrap().unwrap().json().await.unwrap();
        assert_ok(&reply);
        // the sync /init came after all 100: it found them all applied
        let log = agent.take_log();
        let mut expected: Vec<String> = (0..100)
            .map(|n| format!("nat apply create_eip eips {n}->{}", n + 1))
            .collect();
        expected.extend([
            "links reconcile nics 0 eips 100".to_string(),
            "nat reconcile nics 0 eips 100".to_string(),
        ]);
        assert_eq!(log, expected);
        let ping = mn.call_sync(agent.addr, "/ping", &json!({})).await;
        assert_eq!(ping["uuid"], json!("after-all"));
        agent.stop().await;
    });
}

#[test]
fn a_repeated_taskuuid_in_flight_is_acked_and_ignored() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mut cb = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let cb_url = cb.url();
        let post = |uuid: &'static str, body: serde_json::Value| {
            client
                .post(format!("http://{}/createeip", agent.addr))
                .header("taskuuid", uuid)
                .header("callbackurl", &cb_url)
                .body(body.to_string())
                .send()
        };
        let release = agent.hold_next();
        assert_eq!(post("dup", eip(1, false)).await.unwrap().status(), 200);
        agent.wait_log(1).await;
        // the same task again while the first is in flight (another body even): acked
        let again = post("dup", eip(2, false)).await.unwrap();
        assert_eq!(again.status(), 200);
        assert!(again.bytes().await.unwrap().is_empty());
        release.send(()).unwrap();
        let first = cb.next().await;
        assert_eq!(first.headers["taskuuid"], "dup");
        assert_ok(&first.body);
        // a later command is the next thing any backend or the node sees
        assert_eq!(post("next", eip(3, false)).await.unwrap().status(), 200);
        let next = cb.next().await;
        assert_eq!(next.headers["taskuuid"], "next");
        assert_eq!(
            agent.take_log(),
            [
                "nat apply create_eip eips 0->1",
                "nat apply create_eip eips 1->2"
            ]
        );
        let vips: Vec<serde_json::Value> = agent
            .commands
            .lock()
            .unwrap()
            .iter()
            .map(|c| json!(applied_vip(c)))
            .collect();
        assert_eq!(
            vips,
            [
                eip(1, false)["eip"]["vipIp"].clone(),
                eip(3, false)["eip"]["vipIp"].clone()
            ]
        );
        // once answered, the taskuuid may come again (a new task of the node)
        assert_eq!(post("dup", eip(4, false)).await.unwrap().status(), 200);
        assert_eq!(cb.next().await.headers["taskuuid"], "dup");
        assert_eq!(agent.take_log(), ["nat apply create_eip eips 2->3"]);
        agent.stop().await;
    });
}

#[test]
fn a_callback_carries_the_nodes_headers_and_the_reply() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mut cb = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = client
            .post(format!("http://{}/createeip", agent.addr))
            .header("taskuuid", "t-headers")
            .header("callbackurl", cb.url())
            .body(fixture("createeip").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen = cb.next().await;
        assert_eq!(seen.path, "/zstack/asyncrest/callback");
        assert_eq!(seen.headers["taskuuid"], "t-headers");
        assert_eq!(seen.headers["content-type"], "application/json");
        assert_eq!(seen.headers["host"], cb.addr.to_string());
        assert_ok(&seen.body);
        assert_eq!(agent.take_log(), ["nat apply create_eip eips 0->1"]);
        agent.stop().await;
    });
}

#[test]
fn a_callback_is_retried_on_connection_errors_within_the_retry_window() {
    runtime().block_on(async {
        let agent = InProcess::start_with(Options {
            args: &["--callback-retry-secs", "30"],
            ..Options::default()
        })
        .await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        // nobody listens there yet
        let port = free_port();
        let r = client
            .post(format!("http://{}/createeip", agent.addr))
            .header("taskuuid", "t-retry")
            .header("callbackurl", format!("http://{port}/cb"))
            .body(fixture("createeip").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        agent
            .wait_metric("vr_agent_callbacks_total{outcome=\"retried\"}", 1.0)
            .await;
        // the node comes up: the next try reaches it
        let mut cb = Receiver::start(port).await;
        let seen = cb.next().await;
        assert_eq!(seen.headers["taskuuid"], "t-retry");
        assert_ok(&seen.body);
        agent
            .wait_metric("vr_agent_callbacks_total{outcome=\"delivered\"}", 1.0)
            .await;
        assert_eq!(
            agent
                .metric("vr_agent_callbacks_total{outcome=\"dropped\"}")
                .await,
            0.0
        );
        agent.stop().await;
    });
}

#[test]
fn a_callback_is_given_up_once_the_retry_window_is_over() {
    runtime().block_on(async {
        let agent = InProcess::start_with(Options {
            args: &["--callback-retry-secs", "0"],
            ..Options::default()
        })
        .await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let port = free_port();
        let r = client
            .post(format!("http://{}/createeip", agent.addr))
            .header("taskuuid", "t-gone")
            .header("callbackurl", format!("http://{port}/cb"))
            .body(fixture("createeip").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        agent
            .wait_metric("vr_agent_callbacks_total{outcome=\"dropped\"}", 1.0)
            .await;
        assert_eq!(
            agent
                .metric("vr_agent_callbacks_total{outcome=\"retried\"}")
                .await,
            0.0
        );
        // the command itself was applied
        assert_eq!(agent.take_log(), ["nat apply create_eip eips 0->1"]);
        agent.stop().await;
    });
}

#[test]
fn a_callback_outside_the_allowed_targets_is_refused_before_anything_changes() {
    runtime().block_on(async {
        let mn = MgmtNode::start().await;
        // TEST-NET-1: neither the sender (loopback) nor on a management subnet
        let outside = [
            ("taskuuid", "t-out"),
            ("callbackurl", "http://192.0.2.7:8080/cb"),
        ];
        let agent = InProcess::start().await;
        let raw = mn
            .post_raw(
                agent.addr,
                "/createeip",
                &outside,
                fixture("createeip").to_string().into_bytes(),
            )
            .await;
        assert_eq!(raw.status, 400);
        assert_fails(&raw.json(), "--callback-allow");
        // another loopback address than the sender's is never a target
        let raw = mn
            .post_raw(
                agent.addr,
                "/createeip",
                &[
                    ("taskuuid", "t-lo"),
                    ("callbackurl", "http://127.0.0.2:8080/cb"),
                ],
                fixture("createeip").to_string().into_bytes(),
            )
            .await;
        assert_eq!(raw.status, 400);
        assert_fails(&raw.json(), "loopback");
        assert!(agent.take_log().is_empty());
        agent.stop().await;
        // allowed by --callback-allow: acked and applied (held there, so no callback is
        // attempted to that address; the grace of 0 s ends the test with it in flight)
        let agent = InProcess::start_with(Options {
            args: &[
                "--callback-allow",
                "192.0.2.0/24",
                "--shutdown-grace-secs",
                "0",
            ],
            ..Options::default()
        })
        .await;
        let release = agent.hold_next();
        let raw = mn
            .post_raw(
                agent.addr,
                "/createeip",
                &outside,
                fixture("createeip").to_string().into_bytes(),
            )
            .await;
        assert_eq!(raw.status, 200, "{}", String::from_utf8_lossy(&raw.body));
        agent.wait_log(1).await;
        assert_eq!(agent.take_log(), ["nat apply create_eip eips 0->1"]);
        agent.stop().await;
        drop(release);
    });
}

#[test]
fn a_body_over_the_limit_is_refused_with_the_envelope_and_reaches_no_backend() {
    runtime().block_on(async {
        let agent = InProcess::start_with(Options {
            args: &["--max-body", "1024"],
            ..Options::default()
        })
        .await;
        let mn = MgmtNode::start().await;
        let mut big = fixture("createeip");
        big["eip"]["padding"] = json!("x".repeat(2048));
        let big = big.to_string().into_bytes();
        // sync, with a Content-Length
        let raw = mn
            .post_raw(agent.addr, "/createeip", &[], big.clone())
            .await;
        assert_eq!(raw.status, 413);
        // refused on its Content-Length, before reading it
        let on_length = format!(
            "request body of {} bytes exceeds the limit of 1024 bytes",
            big.len()
        );
        assert_fails(&raw.json(), &on_length);
        // async: refused instead of acked, and no callback
        let raw = mn
            .post_raw(
                agent.addr,
                "/createeip",
                &[("taskuuid", "t-big"), ("callbackurl", &mn.callback_url)],
                big.clone(),
            )
            .await;
        assert_eq!(raw.status, 413);
        assert_fails(&raw.json(), "exceeds the limit of 1024 bytes");
        // chunked, without a length: cut off while reading
        let raw = chunked_post(agent.addr, "/createeip", &big).await;
        assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
        let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
        let reply: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_fails(&reply, "exceeds the limit of 1024 bytes");
        assert!(agent.take_log().is_empty());
        // a body within the limit goes through
        assert_ok(
            &mn.call_sync(agent.addr, "/createeip", &fixture("createeip"))
                .await,
        );
        assert_eq!(agent.take_log(), ["nat apply create_eip eips 0->1"]);
        assert!(mn.strays.lock().unwrap().is_empty());
        let dir = agent.stop().await;
        let (_store, loaded) = Store::open(dir.path());
        assert_eq!(loaded.state.eips.len(), 1);
    });
}

/// POSTs `body` chunked (no Content-Length) on a fresh connection; the whole answer as text.
async fn chunked_post(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(256) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // the agent may answer and close before taking all of it
    let _ = s.write_all(&req).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn at_shutdown_a_command_in_flight_completes_and_is_called_back_and_new_connections_are_refused() {
    runtime().block_on(async {
        let mut agent = InProcess::start_with(Options {
            args: &["--shutdown-grace-secs", "60"],
            ..Options::default()
        })
        .await;
        let mn = MgmtNode::start().await;
        let release = agent.hold_next();
        let mut reply = mn
            .send(agent.addr, "/createeip", &fixture("createeip"))
            .await;
        agent.wait_log(1).await;
        agent.begin_stop();
        // the listener closes: a new connection is refused
        let mut refused = false;
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(agent.addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            refused,
            "the agent still accepts connections while stopping"
        );
        // the command is still held: nothing answered it
        assert!(reply.try_recv().is_err());
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), agent.stopped())
            .await
            .expect("the agent did not stop after its work");
        // run returned only after the callback was delivered
        let reply = reply
            .try_recv()
            .expect("callback delivered before the agent stopped");
        assert_ok(&reply);
        assert_eq!(agent.take_log(), ["nat apply create_eip eips 0->1"]);
        let dir = agent.stop().await;
        let (_store, loaded) = Store::open(dir.path());
        assert_eq!(loaded.state.eips.len(), 1);
    });
}

#[test]
fn a_failed_journal_append_rolls_back_every_backend_that_followed() {
    runtime().block_on(async {
        // The store's write check at open writes to `.write-probe`: made /dev/full, it fails
        // (ENOSPC) and the store opens no journal yet; the check removes its file, so the
        // next one, at the first command, passes and the journal is opened then.
        let full = |dir: &std::path::Path| {
            std::os::unix::fs::symlink("/dev/full", dir.join(".write-probe")).unwrap();
        };
        let agent = InProcess::start_with(Options {
            prepare: Some(&full),
            ..Options::default()
        })
        .await;
        let mn = MgmtNode::start().await;
        let dir = agent.state_dir().to_path_buf();
        assert!(
            !dir.join(".write-probe").exists(),
            "the write check ran at open"
        );
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "no journal opened at start"
        );
        // The journal the store opens at the first command is /dev/full too: the append of the
        // command's record fails for real (ENOSPC), after both backends followed.
        let journal = "journal.0";
        std::os::unix::fs::symlink("/dev/full", dir.join(journal)).unwrap();
        let reply = mn
            .call(agent.addr, "/configurenic", &fixture("configurenic"))
            .await;
        assert_fails(&reply, "could not persist the change, rolled back");
        assert_fails(&reply, "; nothing was changed");
        // both followed; both are brought back to the state before (no nic), last first
        assert_eq!(
            agent.take_log(),
            [
                "links apply configure_nics eips 0->0",
                "nat apply configure_nics eips 0->0",
                "nat reconcile nics 0 eips 0",
                "links reconcile nics 0 eips 0"
            ]
        );
        let ping = mn.call(agent.addr, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(false), "{ping}");
        // the agent kept the state before: the next command starts from no nic and is
        // recorded (the store replaces the broken journal by a snapshot first)
        assert_ok(
            &mn.call(agent.addr, "/createeip", &fixture("createeip"))
                .await,
        );
        assert_eq!(agent.take_log(), ["nat apply create_eip eips 0->1"]);
        let dir = agent.stop().await;
        std::fs::remove_file(dir.path().join(journal)).unwrap();
        let (_store, loaded) = Store::open(dir.path());
        assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
        assert_eq!(loaded.state.eips.len(), 1);
        assert!(loaded.state.nics.is_empty());
    });
}

#[test]
fn ha_reads_answer_no_ha_and_a_restart_without_ha_is_refused() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mn = MgmtNode::start().await;
        let reply = mn.call(agent.addr, "/syncVpcRouterHa", &json!({})).await;
        assert_ok(&reply);
        assert_eq!(reply["haStatus"], json!("NoHa"), "{reply}");
        let ping = mn.call(agent.addr, "/ping", &json!({})).await;
        assert_eq!(ping["haStatus"], json!("NoHa"), "{ping}");
        let reply = mn.call(agent.addr, "/restartKeepalived", &json!({})).await;
        assert_fails(&reply, "HA is not configured on this router");
        // no HA engine among these backends: refused, nothing stored, still NoHa
        let reply = mn
            .call(agent.addr, "/enableVyosha", &fixture("enableVyosha"))
            .await;
        assert_fails(&reply, "ha is not supported");
        assert!(agent.take_log().is_empty());
        let reply = mn.call(agent.addr, "/syncVpcRouterHa", &json!({})).await;
        assert_eq!(reply["haStatus"], json!("NoHa"), "{reply}");
        let dir = agent.stop().await;
        let (_store, loaded) = Store::open(dir.path());
        assert!(loaded.state.ha.is_none());
    });
}

#[test]
fn ha_role_changes_reach_every_backend_in_order_between_commands() {
    use vr_agent::state::ha::Role;
    runtime().block_on(async {
        let mut agent = InProcess::start_with(Options {
            ha: true,
            ..Options::default()
        })
        .await;
        let mn = MgmtNode::start().await;
        let events = agent.ha_events.clone().expect("ha events");
        let status = |reply: serde_json::Value| reply["haStatus"].as_str().unwrap().to_string();
        assert_ok(
            &mn.call(agent.addr, "/enableVyosha", &fixture("enableVyosha"))
                .await,
        );
        assert_eq!(
            agent.take_log(),
            [
                "links apply enable_ha eips 0->0",
                "nat apply enable_ha eips 0->0",
                "ha apply enable_ha eips 0->0"
            ]
        );
        // configured, no VRRP decision yet: backup
        assert_eq!(
            status(mn.call(agent.addr, "/syncVpcRouterHa", &json!({})).await),
            "Backup"
        );
        // becoming master: conntrackd (ha) first, then the forward chain (nat), then addresses
        events.send((Role::Master, "test".into())).unwrap();
        agent.wait_log(3).await;
        assert_eq!(
            agent.take_log(),
            ["ha role Master", "nat role Master", "links role Master"]
        );
        assert_eq!(
            status(mn.call(agent.addr, "/syncVpcRouterHa", &json!({})).await),
            "Master"
        );
        assert_eq!(
            status(mn.call(agent.addr, "/ping", &json!({})).await),
            "Master"
        );
        // the same decision again changes nothing
        events.send((Role::Master, "again".into())).unwrap();
        let _ = mn.call(agent.addr, "/syncVpcRouterHa", &json!({})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(agent.take_log().is_empty());
        // becoming backup: forward chain closed first, addresses, conntrackd last
        events.send((Role::Backup, "test".into())).unwrap();
        agent.wait_log(3).await;
        assert_eq!(
            agent.take_log(),
            ["nat role Backup", "links role Backup", "ha role Backup"]
        );
        // /restartKeepalived on a master: it gives up its data plane before the restart
        events.send((Role::Master, "test".into())).unwrap();
        agent.wait_log(3).await;
        agent.take_log();
        assert_ok(&mn.call(agent.addr, "/restartKeepalived", &json!({})).await);
        assert_eq!(
            agent.take_log(),
            [
                "nat role Backup",
                "links role Backup",
                "ha role Backup",
                "links restart_ha",
                "nat restart_ha",
                "ha restart_ha"
            ]
        );
        // a master that shuts down demotes itself first
        events.send((Role::Master, "test".into())).unwrap();
        agent.wait_log(3).await;
        agent.take_log();
        agent.begin_stop();
        agent.stopped().await;
        assert_eq!(
            agent.take_log(),
            ["nat role Backup", "links role Backup", "ha role Backup"]
        );
    });
}
