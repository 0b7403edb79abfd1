//! `GET /metrics` of the real agent after a known sequence of commands (async with callbacks,
//! sync, refused), a DHCP host (dnsmasq starts) and a ruleset flushed by hand (drift). The
//! scrape is parsed as the Prometheus text format (0.0.4) by a small parser below, and every
//! counter is checked to have moved by what the sequence implies.

mod common;
mod nat_support;

use common::mgmt::{MgmtNode, assert_fails, assert_ok};
use nat_support::*;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One sample: metric name and its labels.
type Key = (String, BTreeMap<String, String>);

/// A parsed scrape: samples, and the declared type of each family.
#[derive(Debug, Default)]
struct Scrape {
    samples: HashMap<Key, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    /// The value of `name` with exactly `labels` (0 when absent: counters not yet touched).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .get(&(name.to_string(), labels))
            .copied()
            .unwrap_or(0.0)
    }
}

/// Parses the text exposition format: `# TYPE name kind` lines, and samples
/// `name{k="v",...} value`, with `\\`, `\"` and `\n` escapes in label values.
fn parse(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                panic!("bad TYPE line: {line}");
            };
            out.types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let mut end = None;
            let mut key = String::new();
            while let Some((i, c)) = chars.next() {
                match c {
                    '}' => {
                        end = Some(i + 1);
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().map(|x| x.1) {
                                Some('\\') => match chars.next().map(|x| x.1) {
                                    Some('n') => value.push('\n'),
                                    Some(other) => value.push(other),
                                    None => panic!("cut escape: {line}"),
                                },
                                Some('"') => break,
                                Some(other) => value.push(other),
                                None => panic!("unterminated value: {line}"),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
            let end = end.unwrap_or_else(|| panic!("unterminated labels: {line}"));
            rest = &after[end..];
        }
        let value = rest.trim();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
        };
        out.samples.insert((name.to_string(), labels), value);
    }
    out
}

async fn scrape(api: SocketAddr) -> Scrape {
    let resp = reqwest::get(format!("http://{api}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse(&resp.text().await.expect("body"))
}

#[test]
fn counters_follow_a_known_sequence_of_commands() {
    let net = Net::with_agent_args(&["--verify-secs=1"]);
    let n = &net;
    net.run(|mn: MgmtNode, api| async move {
        let before = scrape(api).await;
        assert_eq!(before.types.get("vr_agent_commands_total").map(String::as_str), Some("counter"));
        assert_eq!(
            before.types.get("vr_agent_command_duration_seconds").map(String::as_str),
            Some("histogram")
        );
        assert_eq!(before.get("vr_agent_up", &[]), 1.0);
        assert_eq!(
            before.get(
                "vr_agent_build_info",
                &[("version", env!("CARGO_PKG_VERSION")), ("md5", &md5_of_agent())]
            ),
            1.0
        );

        // 4 async commands (callbacks), one of them refused; 2 sync ones
        let snat_reply = mn
            .call(api, "/setsnat", &json!({"snat": snat(G1_MAC, "172.20.0.1", "10.10.1.20")}))
            .await;
        assert_ok(&snat_reply);
        assert_ok(
            &mn.call(api, "/createeip", &json!({"eip": eip("10.10.1.55", G1_MAC, GUEST1, false)}))
                .await,
        );
        assert_fails(
            &mn.call(api, "/createeip", &json!({"eip": {"vipIp": "10.10.1.56"}}))
                .await,
            "eip.privateMac: missing",
        );
        assert_ok(
            &mn.call(
                api,
                "/createportforwarding",
                &json!({"rules": [pf("TCP", "10.10.1.57", (8080, 8080), GUEST1, (80, 80), G1_MAC, None, false)]}),
            )
            .await,
        );
        ok(
            &mn,
            api,
            "/adddhcp",
            json!({"dhcpEntries": [{"ip": GUEST1, "mac": "fa:7e:4b:00:00:12",
                "netmask": "255.255.255.0", "gateway": "172.20.0.1", "dns": ["172.20.0.1"],
                "hostname": "web1", "vrNicMac": G1_MAC, "dnsDomain": "zstack.local",
                "isDefaultL3Network": true}], "rebuild": false}),
        )
        .await;
        ok(&mn, api, "/ping", json!({})).await;
        // the guest takes its lease (a real DHCP client; the address is not configured)
        let lease = n.guest1.exec(&[
            "busybox", "udhcpc", "-i", "g0", "-n", "-q", "-t", "5", "-T", "1", "-s", "/bin/true",
        ]);
        assert!(
            lease.status.success(),
            "udhcpc: {}",
            String::from_utf8_lossy(&lease.stderr)
        );

        // a change behind the agent's back: one drift event, one repair
        n.router.exec_ok(&["nft", "flush", "ruleset"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let s = scrape(api).await;
            if s.get("vr_agent_drift_repairs_total", &[]) >= 1.0 {
                break s;
            }
            assert!(Instant::now() < deadline, "no drift repair counted:\n{}", n.agent.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let delta = |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);

        let c = "vr_agent_commands_total";
        assert_eq!(delta(c, &[("path", "/createeip"), ("outcome", "ok")]), 1.0);
        assert_eq!(delta(c, &[("path", "/createeip"), ("outcome", "refused")]), 1.0);
        assert_eq!(delta(c, &[("path", "/setsnat"), ("outcome", "ok")]), 1.0);
        assert_eq!(delta(c, &[("path", "/createportforwarding"), ("outcome", "ok")]), 1.0);
        assert_eq!(delta(c, &[("path", "/adddhcp"), ("outcome", "ok")]), 1.0);
        assert_eq!(delta(c, &[("path", "/ping"), ("outcome", "ok")]), 1.0);
        let h = "vr_agent_command_duration_seconds";
        assert_eq!(delta(&format!("{h}_count"), &[("path", "/createeip")]), 2.0);
        let sum = delta(&format!("{h}_sum"), &[("path", "/createeip")]);
        assert!(sum > 0.0 && sum < 10.0, "{sum}");
        assert_eq!(
            after.get(&format!("{h}_bucket"), &[("path", "/createeip"), ("le", "+Inf")]),
            after.get(&format!("{h}_count"), &[("path", "/createeip")])
        );

        for (kind, n) in [("eips", 1.0), ("snats", 1.0), ("port_forwards", 1.0), ("dhcp_hosts", 1.0), ("vips", 0.0)] {
            assert_eq!(after.get("vr_agent_entries", &[("kind", kind)]), n, "{kind}");
        }
        assert_eq!(after.get("vr_agent_writer_queue_depth", &[]), 0.0);
        // the 4 async commands were answered by callback; the management node answered each
        assert_eq!(delta("vr_agent_callbacks_total", &[("outcome", "delivered")]), 4.0);
        assert_eq!(delta("vr_agent_callbacks_total", &[("outcome", "dropped")]), 0.0);
        // setsnat: nft (a chain rewrite); createeip and the forward: nfnetlink element batches;
        // the repair: a whole replace through nft
        assert!(delta("vr_agent_nft_transactions_total", &[("outcome", "ok")]) >= 2.0);
        assert!(delta("vr_agent_netlink_batches_total", &[("outcome", "ok")]) >= 2.0);
        assert_eq!(delta("vr_agent_nft_transactions_total", &[("outcome", "failed")]), 0.0);
        assert!(after.get("vr_agent_dnsmasq_restarts_total", &[]) >= 1.0);
        assert_eq!(after.get("vr_agent_dnsmasq_leases", &[]), 1.0);
        assert!(delta("vr_agent_drift_events_total", &[]) >= 1.0);
        assert!(delta("vr_agent_drift_repairs_total", &[]) >= 1.0);
        // five commands journaled since the first scrape (the refused one and /ping are not)
        assert!(
            delta("vr_agent_journal_bytes", &[]) > 0.0
                || delta("vr_agent_journal_compactions_total", &[]) > 0.0
        );
    });
}

fn md5_of_agent() -> String {
    let out = std::process::Command::new("md5sum")
        .arg(common::agent::binary())
        .output()
        .expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_parser_reads_labels_with_escapes() {
    let s = parse(
        "# TYPE x counter\nx_total{a=\"1,2\",b=\"q\\\"uote\\\\\"} 3\nplain 4.5\nh_bucket{le=\"+Inf\"} 2\n",
    );
    assert_eq!(s.get("x_total", &[("a", "1,2"), ("b", "q\"uote\\")]), 3.0);
    assert_eq!(s.get("plain", &[]), 4.5);
    assert_eq!(s.get("h_bucket", &[("le", "+Inf")]), 2.0);
    assert_eq!(s.types["x"], "counter");
}
