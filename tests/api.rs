//! The agent core end to end: the real binary in its own network namespace, driven by a client
//! that behaves like the management node.

mod common;

use common::agent::{AgentProc, binary};
use common::fixture;
use common::mgmt::{MgmtNode, assert_fails, assert_ok};
use common::netns::Netns;
use serde_json::{Value, json};
use std::sync::Arc;

#[test]
fn echo_answers_empty_on_every_spelling_and_both_listeners() {
    let ns = Netns::new("vrapi");
    ns.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        for addr in [agent.vr, agent.appliance] {
            for path in ["/echo", "/echo/", "/appliancevm/echo", "/appliancevm/echo/"] {
                let r = mn.post_raw(addr, path, &[], Vec::new()).await;
                assert_eq!(r.status, 200, "{path}");
                assert!(r.body.is_empty(), "{path}: {:?}", r.body);
            }
            // both listeners answer the other's paths
            let reply = mn.call(addr, "/appliancevm/init/", &json!({})).await;
            assert_ok(&reply);
            let reply = mn.call(addr, "/ping/", &json!({})).await;
            assert_ok(&reply);
        }
        let r = mn
            .post_raw(agent.vr, "/nosuchpath", &[], b"{}".to_vec())
            .await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["success"], json!(false));
    });
}

#[test]
fn init_then_ping_reports_uuid_version_md5_and_health() {
    let ns = Netns::new("vrapi");
    ns.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        let md5 = String::from_utf8(
            std::process::Command::new("md5sum")
                .arg(binary())
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let md5 = md5.split_whitespace().next().unwrap().to_string();

        let ping = mn.call(agent.vr, "/ping", &fixture("ping")).await;
        assert_ok(&ping);
        assert!(ping.get("uuid").is_none(), "no uuid before /init: {ping}");

        let init = mn.call(agent.vr, "/init", &fixture("init")).await;
        common::assert_superset(&init, &common::reply_fixture("init"));
        assert_eq!(init["md5"], json!(md5));
        assert_eq!(init["version"], json!(env!("CARGO_PKG_VERSION")));

        let ping = mn.call(agent.vr, "/ping", &fixture("ping")).await;
        common::assert_superset(&ping, &common::reply_fixture("ping"));
        assert_eq!(ping["md5"], json!(md5));
        assert_eq!(ping["healthy"], json!(true));
        assert_eq!(ping["healthDetail"], json!(""));
        assert!(ping["version"].is_string());

        // `vr-agent md5` agrees with md5sum
        let out = std::process::Command::new(binary())
            .args(["md5"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), md5);
    });
}

#[test]
fn header_cases_sync_async_and_half() {
    let ns = Netns::new("vrapi");
    ns.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        // neither header: synchronous reply in the body
        let reply = mn
            .call_sync(agent.vr, "/init", &json!({"uuid": "aaaa"}))
            .await;
        assert_ok(&reply);
        // only taskuuid: 400 and nothing done
        let r = mn
            .post_raw(
                agent.vr,
                "/init",
                &[("taskuuid", "0123")],
                br#"{"uuid":"bbbb"}"#.to_vec(),
            )
            .await;
        assert_eq!(r.status, 400);
        assert!(r.json()["error"].as_str().unwrap().contains("callbackurl"));
        // only callbackurl: 400 and nothing done
        let r = mn
            .post_raw(
                agent.vr,
                "/init",
                &[("callbackurl", mn.callback_url.as_str())],
                br#"{"uuid":"cccc"}"#.to_vec(),
            )
            .await;
        assert_eq!(r.status, 400);
        assert!(r.json()["error"].as_str().unwrap().contains("taskuuid"));
        let ping = mn.call_sync(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["uuid"], json!("aaaa"));
        // both headers: empty 200 ack, reply by callback
        let reply = mn.call(agent.vr, "/init", &json!({"uuid": "dddd"})).await;
        assert_ok(&reply);
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["uuid"], json!("dddd"));
    });
}

#[test]
fn malformed_input_gets_clear_errors_and_no_panic() {
    let ns = Netns::new("vrapi");
    ns.block_on(|| async {
        let agent = AgentProc::start(&["--max-body=4096"]);
        let mn = MgmtNode::start().await;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("/init", br#"{"uuid": "#.to_vec(), "malformed JSON body: EOF while parsing"),
            ("/init", b"{\"uuid\": \"a\",,}".to_vec(), "line 1 column"),
            ("/init", b"[1,2]".to_vec(), "not a JSON object"),
            ("/init", b"\xff\xfe".to_vec(), "not UTF-8"),
            ("/init", br#"{"uuid": 17}"#.to_vec(), "uuid: invalid type: integer `17`"),
            (
                "/createeip",
                br#"{"eip":{"vipIp":"10.0.0.300","privateMac":"fa:7e:4b:ad:11:02","guestIp":"172.20.0.15"}}"#.to_vec(),
                r#"eip.vipIp: "10.0.0.300" is not an IPv4 address"#,
            ),
            (
                "/createvip",
                br#"{"vips":[{"ip":"10.10.1.55","netmask":"255.255.255.0","ownerEthernetMac":"fa:7e:4b:zz:11:01"}]}"#.to_vec(),
                r#"vips[0].ownerEthernetMac: "fa:7e:4b:zz:11:01" is not a MAC address"#,
            ),
            (
                "/createportforwarding",
                br#"{"rules":[{"vipPortStart":65536,"vipPortEnd":65536,"privatePortStart":80,"privatePortEnd":80,"protocolType":"TCP","vipIp":"10.10.1.56","privateIp":"172.20.0.15","privateMac":"fa:7e:4b:ad:11:02"}]}"#.to_vec(),
                "rules[0].vipPortStart: 65536 is not a port (0-65535)",
            ),
            (
                "/createportforwarding",
                br#"{"rules":[{"vipPortStart":-1,"vipPortEnd":80,"privatePortStart":80,"privatePortEnd":80,"protocolType":"TCP","vipIp":"10.10.1.56","privateIp":"172.20.0.15","privateMac":"fa:7e:4b:ad:11:02"}]}"#.to_vec(),
                "rules[0].vipPortStart: -1 is not a port",
            ),
            (
                "/appliancevm/refreshfirewall",
                br#"{"rules":[{"protocol":"tcp","startPort":90,"endPort":80,"nicMac":"fa:7e:4b:ad:11:00"}]}"#.to_vec(),
                "rules[0].startPort: start 90 is above endPort 80",
            ),
            (
                "/setsnat",
                br#"{"snat":{"publicNicMac":"fa:7e:4b:ad:11:01","publicIp":"10.10.1.20","privateNicMac":"fa:7e:4b:ad:11:02","privateNicIp":"172.20.0.1","snatNetmask":"255.255.0.255"}}"#.to_vec(),
                r#"snat.snatNetmask: "255.255.0.255" is not a contiguous netmask"#,
            ),
            (
                "/adddhcp",
                br#"{"dhcpEntries":[{"ip":"172.20.0.15","mac":"fa:3c:91:5e:22:07","netmask":"255.255.255.0","dns":["8.8.8"]}]}"#.to_vec(),
                r#"dhcpEntries[0].dns[0]: "8.8.8" is not an IPv4 address"#,
            ),
            (
                "/setdns",
                br#"{"dns":[{"dnsAddress":"223.5.5.5"},{"dnsAddress":true}]}"#.to_vec(),
                "dns[1].dnsAddress: invalid type: boolean",
            ),
            (
                "/createportforwarding",
                br#"{"rules":[{"vipPortStart":80,"vipPortEnd":80,"privatePortStart":80,"privatePortEnd":80,"protocolType":"SCTP","vipIp":"10.10.1.56","privateIp":"172.20.0.15","privateMac":"fa:7e:4b:ad:11:02"}]}"#.to_vec(),
                r#"rules[0].protocolType: "SCTP" is not TCP or UDP"#,
            ),
        ];
        for (path, body, needle) in cases {
            // sync and async both
            let r = mn.post_raw(agent.vr, path, &[], body.clone()).await;
            assert_eq!(r.status, 200, "{path}");
            assert_fails(&r.json(), needle);
            let v: Value = match serde_json::from_slice(&body) {
                Ok(v @ Value::Object(_)) => v,
                _ => continue,
            };
            assert_fails(&mn.call(agent.vr, path, &v).await, needle);
        }
        // oversized body, with Content-Length
        let big = vec![b' '; 10_000];
        let r = mn.post_raw(agent.vr, "/init", &[], big).await;
        assert_eq!(r.status, 413);
        assert_fails(&r.json(), "exceeds the limit of 4096 bytes");
        // oversized chunked body (no Content-Length): refused while streaming
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..100).map(|_| Ok(vec![b' '; 1000])).collect();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let resp = client
            .post(format!("http://{}/init", agent.vr))
            .body(reqwest::Body::wrap_stream(futures_stream(chunks)))
            .send()
            .await;
        if let Ok(resp) = resp {
            assert_eq!(resp.status().as_u16(), 413);
        }
        // still alive and unchanged
        let ping = mn.call_sync(agent.vr, "/ping", &json!({})).await;
        assert_ok(&ping);
        assert!(ping.get("uuid").is_none());
    });
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    struct Iter(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(chunks.into_iter())
}

#[test]
fn hundred_commands_in_flight_all_answered_in_order() {
    let ns = Netns::new("vrapi");
    ns.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = Arc::new(MgmtNode::start().await);
        // 100 at once: every callback arrives with its own reply.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..100 {
            let mn = Arc::clone(&mn);
            let addr = agent.vr;
            set.spawn(async move {
                let body = if i % 10 == 0 {
                    json!({"eip": {"vipIp": "10.0.0.999"}})
                } else {
                    json!({"uuid": format!("uuid-{i}"), "restartDnsmasqAfterNumberOfSIGUSER1": 0})
                };
                let path = if i % 10 == 0 { "/createeip" } else { "/init" };
                (i, mn.call(addr, path, &body).await)
            });
        }
        let mut n = 0;
        while let Some(r) = set.join_next().await {
            let (i, reply) = r.unwrap();
            if i % 10 == 0 {
                assert_fails(&reply, "eip.vipIp");
            } else {
                assert_ok(&reply);
            }
            n += 1;
        }
        assert_eq!(n, 100);
        assert!(mn.strays.lock().unwrap().is_empty());
    });
}

#[test]
fn sequential_acks_keep_arrival_order() {
    let ns = Netns::new("vrapi");
    ns.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        for i in 0..100 {
            let r = client
                .post(format!("http://{}/init", agent.vr))
                .header("taskuuid", format!("seq{i:04}"))
                .header("callbackurl", &mn.callback_url)
                .body(json!({"uuid": format!("seq-{i}")}).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
        // a sync command queues behind all 100
        let reply = mn
            .call_sync(agent.vr, "/appliancevm/init", &json!({}))
            .await;
        assert_ok(&reply);
        let ping = mn.call_sync(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["uuid"], json!("seq-99"));
        // the 100 callbacks reached the node (as strays: nobody waited for them)
        for _ in 0..100 {
            if mn.strays.lock().unwrap().len() == 100 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(mn.strays.lock().unwrap().len(), 100);
    });
}

#[test]
fn restart_keeps_the_uuid() {
    let ns = Netns::new("vrapi");
    ns.block_on(|| async {
        let mut agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        assert_ok(&mn.call(agent.vr, "/init", &fixture("init")).await);
        agent.restart();
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["uuid"], json!("8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f"));
        assert_eq!(ping["healthy"], json!(true));
        agent.crash_and_restart();
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["uuid"], json!("8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f"));
        // `vr-agent state` prints the persisted state
        let out = std::process::Command::new(binary())
            .arg("state")
            .arg(format!("--state-dir={}", agent.dir.join("state").display()))
            .output()
            .unwrap();
        let state: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(state["uuid"], json!("8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f"));
        assert_eq!(state["restart_dnsmasq_after"], json!(500));
    });
}

#[test]
fn corrupted_state_is_copied_aside_and_reported_until_init() {
    let ns = Netns::new("vrapi");
    ns.block_on(|| async {
        let mut agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        assert_ok(&mn.call(agent.vr, "/init", &fixture("init")).await);
        assert_ok(&mn.call(agent.vr, "/init", &json!({"uuid": "second"})).await);
        agent.stop();
        let journal = agent.dir.join("state/journal.0");
        let mut bytes = std::fs::read(&journal).unwrap();
        bytes[10] ^= 0x20; // corrupt the first of two records
        std::fs::write(&journal, bytes).unwrap();
        agent.crash_and_restart();
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_ok(&ping);
        assert!(ping.get("uuid").is_none(), "{ping}");
        assert_eq!(ping["healthy"], json!(false));
        let detail = ping["healthDetail"].as_str().unwrap();
        assert!(
            detail.contains("journal.0: records 1-2 dropped"),
            "{detail}"
        );
        assert!(detail.contains("preserving"), "{detail}");
        let aside = std::fs::read_dir(agent.dir.join("state"))
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
        assert!(aside);
        assert_ok(&mn.call(agent.vr, "/init", &fixture("init")).await);
        let ping = mn.call(agent.vr, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(true));
        assert_eq!(ping["healthDetail"], json!(""));
    });
}

#[test]
fn sigterm_drains_then_exits_zero_within_the_grace() {
    let ns = Netns::new("vrapi");
    ns.block_on(|| async {
        let mut agent = AgentProc::start(&["--shutdown-grace-secs=2"]);
        let mn = MgmtNode::start().await;
        // a callback to a closed port keeps retrying; SIGTERM must not wait past the grace
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let r = mn
            .post_raw(
                agent.vr,
                "/init",
                &[
                    ("taskuuid", "t1"),
                    ("callbackurl", &format!("http://{closed}/cb")),
                ],
                br#"{"uuid":"x"}"#.to_vec(),
            )
            .await;
        assert_eq!(r.status, 200);
        let started = std::time::Instant::now();
        let status = agent.stop();
        assert!(status.success(), "{status}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    });
}

#[test]
fn a_listener_on_a_vip_no_nic_holds_fails_loudly() {
    let ns = Netns::new("vrapi");
    ns.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = MgmtNode::start().await;
        let reply = mn
            .call(agent.vr, "/lb/refresh", &fixture("lb-refresh"))
            .await;
        assert_fails(&reply, "lbs[0].vip: listener 4e5f6a7b8c9d4e0f1a2b3c4d5e6f7a8b: no nic of the router carries \"10.10.1.57\"");
    });
}

#[test]
fn ping_is_answered_while_a_long_command_holds_the_writer() {
    let ns = Netns::new("vrapi");
    // A nic with a known MAC for the firewall rules to name.
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "address",
        "fa:7e:4b:ad:11:00",
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
    ]);
    ns.block_on(|| async {
        let agent = AgentProc::start(&[]);
        let mn = Arc::new(MgmtNode::start().await);
        // Thousands of firewall rules: one long nft transaction in the writer.
        let rules: Vec<Value> = (0..4000)
            .map(|i| {
                json!({"protocol": "tcp", "startPort": 10000 + i, "endPort": 10000 + i,
                       "sourceIp": format!("10.{}.{}.1", i / 250, i % 250),
                       "nicMac": "fa:7e:4b:ad:11:00"})
            })
            .collect();
        let body = json!({ "rules": rules });
        // Acked means queued: the long command holds the writer, the second waits behind it.
        let sent = std::time::Instant::now();
        let long = mn
            .send(agent.vr, "/appliancevm/refreshfirewall", &body)
            .await;
        let queued = mn.send(agent.vr, "/appliancevm/init", &json!({})).await;
        let mut pinged = Vec::new();
        for _ in 0..5 {
            let ping = mn.call_sync(agent.vr, "/ping", &json!({})).await;
            assert_ok(&ping);
            pinged.push(sent.elapsed());
        }
        let reply = long.await.unwrap();
        let long_done = sent.elapsed();
        assert_ok(&reply);
        let reply = queued.await.unwrap();
        let queued_done = sent.elapsed();
        assert_ok(&reply);
        eprintln!("pings answered at {pinged:?}; long command done at {long_done:?}");
        // The pings were answered before the command queued behind the long one was: they did
        // not wait for the writer.
        assert!(
            pinged.iter().all(|t| *t < queued_done),
            "a ping waited behind the writer"
        );
    });
}
