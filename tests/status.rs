//! `vr-agent status` against a running agent (`--url`, through `GET /status`) and a stopped
//! one (`--state-dir`): the real binary in its own network namespace.

mod common;

use common::agent::{AgentProc, binary};
use common::fixture;
use common::mgmt::{MgmtNode, assert_fails, assert_ok};
use common::netns::Netns;
use serde_json::{Value, json};
use std::process::Command;

fn status(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .arg("status")
        .args(args)
        .output()
        .expect("vr-agent status");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The rows of the section titled `title` (up to the next blank line), header included.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.split("\n\n")
        .find(|s| s.starts_with(title))
        .unwrap_or_else(|| panic!("no section {title:?} in:\n{text}"))
        .lines()
        .skip(1)
        .collect()
}

#[test]
fn status_of_a_running_then_a_stopped_agent() {
    let ns = Netns::new("vrst");
    ns.block_on(|| async {
        // no nic of that name and no bootstrap info: a problem the summary must show
        let mut agent = AgentProc::start(&["--mgmt-nic=mgmt9"]);
        let mn = MgmtNode::start().await;
        assert_ok(&mn.call_sync(agent.vr, "/init", &fixture("init")).await);
        assert_ok(
            &mn.call_sync(
                agent.vr,
                "/setdns",
                &json!({"dns": [{"dnsAddress": "10.10.1.1"}]}),
            )
            .await,
        );
        assert_fails(
            &mn.call_sync(agent.vr, "/createeip", &json!({"eip": {}}))
                .await,
            "eip.vipIp: missing",
        );
        let url = format!("http://{}", agent.vr);

        // the JSON behind it
        let report: Value = reqwest::get(format!("{url}/status"))
            .await
            .expect("GET /status")
            .json()
            .await
            .expect("json");
        assert_eq!(report["uuid"], json!("8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f"));
        assert_eq!(report["healthy"], json!(false));
        assert_eq!(report["counts"]["dns_servers"], json!(1));
        assert_eq!(report["problems"][0]["source"], json!("firewall"));
        let paths: Vec<&str> = report["recent"]
            .as_array()
            .expect("recent")
            .iter()
            .filter_map(|c| c["path"].as_str())
            .collect();
        assert_eq!(paths, ["/init", "/setdns", "/createeip"]);

        // the summary, on a pipe: aligned, no colour
        let (ok, text, err) = status(&["--url", &url]);
        assert!(ok, "{err}");
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(text.starts_with(&format!("vr-agent at {url}\n")), "{text}");
        assert!(
            text.contains("  health    UNHEALTHY (1 problems)\n"),
            "{text}"
        );
        assert!(
            text.contains("  uuid      8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("  version   {}\n", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        let entries = section(&text, "Entries");
        assert_eq!(entries[0], "  kind            count");
        assert!(entries.contains(&"  dns_servers         1"), "{entries:?}");
        assert!(entries.contains(&"  eips                0"), "{entries:?}");
        let problems = section(&text, "Problems");
        assert!(
            problems[1].starts_with("  firewall  no management nic known"),
            "{problems:?}"
        );
        let commands = section(&text, "Last commands");
        assert_eq!(commands.len(), 4, "{commands:?}");
        // newest first; columns line up under the header
        let col = commands[0].find("outcome").expect("outcome column");
        for (row, (path, outcome)) in commands[1..].iter().zip([
            ("/createeip", "refused"),
            ("/setdns", "ok"),
            ("/init", "ok"),
        ]) {
            assert!(row.contains(path), "{row}");
            assert_eq!(&row[col..col + outcome.len()], outcome, "{commands:?}");
        }
        assert!(commands[1].ends_with("eip.vipIp: missing"), "{commands:?}");

        // on a terminal: coloured
        let cmd = format!("{} status --url {url}", binary().display());
        let tty = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .expect("script");
        let tty_text = String::from_utf8_lossy(&tty.stdout);
        assert!(tty_text.contains("\x1b[31mUNHEALTHY"), "{tty_text:?}");
        assert!(tty_text.contains("\x1b[33mrefused"), "{tty_text:?}");

        // stopped: read from the store
        let status_code = agent.stop();
        assert!(status_code.success());
        let dir = agent.dir.join("state");
        let (ok, text, err) = status(&["--state-dir", dir.to_str().expect("path")]);
        assert!(ok, "{err}");
        assert!(text.contains("not running: read from the store"), "{text}");
        assert!(
            text.contains("  uuid      8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f\n"),
            "{text}"
        );
        assert!(text.contains("  bootstrap no bootstrap info\n"), "{text}");
        assert!(
            section(&text, "Entries").contains(&"  dns_servers         1"),
            "{text}"
        );
        let journal = std::fs::metadata(dir.join("journal.0"))
            .expect("journal")
            .len();
        assert!(
            section(&text, "Files")
                .iter()
                .any(|l| l.starts_with("  journal.0") && l.ends_with(&format!(" {journal}"))),
            "{text}"
        );

        // nothing answering: a failure naming the URL
        let (ok, _, err) = status(&["--url", &url]);
        assert!(!ok);
        assert!(err.contains(&url), "{err}");
    });
}
