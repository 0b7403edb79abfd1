//! `scripts/run-agent.sh` with no argument: the sandboxed router starts, answers `/ping` from
//! this (the host's) namespace, and after SIGINT leaves no namespace, veth or directory
//! behind. The script runs against the binary under test (`VR_AGENT_BIN`, no release build).

mod common;

use common::agent::{binary, raw_ping};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The script, stopped (SIGINT, then SIGKILL) on drop, so a failing test leaves nothing.
struct Sandbox {
    child: Child,
    /// Everything it printed so far.
    out: String,
}

impl Sandbox {
    fn interrupt(&mut self) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) && self.interrupt().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- run-agent.sh output ----\n{}", self.out);
        }
    }
}

/// The word after `label` in `text`.
fn after<'a>(text: &'a str, label: &str) -> &'a str {
    let start = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} not in:\n{text}"))
        + label.len();
    text[start..]
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .find(|w| !w.is_empty())
        .unwrap_or_default()
}

fn namespaces() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn sandbox_answers_ping_from_the_host_and_leaves_nothing_after_sigint() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-agent.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .env("VR_AGENT_BIN", binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run-agent.sh");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let mut sb = Sandbox {
        child,
        out: String::new(),
    };
    // stderr (warnings, the agent's exit) is read on its own thread so it never blocks
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sb.out.contains("Ctrl-C stops") {
        assert!(Instant::now() < deadline, "no ready message");
        match lines.next() {
            Some(Ok(line)) => {
                sb.out.push_str(&line);
                sb.out.push('\n');
            }
            _ => panic!("run-agent.sh ended before it was ready"),
        }
    }
    let out = sb.out.clone();
    let router = after(&out, "namespaces ").to_string();
    let public = after(&out, "(router), ").to_string();
    let guest = after(&out, "(public side),").to_string();
    let host_if = after(&out, "host veth ").to_string();
    let url = after(&out, "Agent: ").to_string();
    let dir = after(&out, "state ").trim_end_matches("/state").to_string();
    for ns in [&router, &public, &guest] {
        assert!(ns.starts_with("vrsb-"), "{ns}: {out}");
        assert!(namespaces().contains(ns.as_str()), "{ns} missing");
    }
    assert!(link_exists(&host_if), "{host_if}");
    // the printed curl lines are ready to paste
    assert!(
        out.contains(&format!("curl -s -X POST {url}/ping -d '{{}}'")),
        "{out}"
    );
    assert!(
        out.contains(&format!("curl -s -X POST {url}/createeip -d '{{\"eip\":")),
        "{out}"
    );

    // /ping from the host namespace, over the sandbox's management veth
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .expect("url is http://ip:port");
    let ping: Value = serde_json::from_str(&raw_ping(addr).expect("ping answered")).expect("json");
    assert_eq!(ping["success"], Value::Bool(true), "{ping}");
    assert_eq!(ping["healthy"], Value::Bool(true), "{ping}");
    // bootstrapped: the router's nics are named and addressed from the bootstrap info
    let addrs = Command::new("ip")
        .args(["-n", &router, "-4", "-o", "addr", "show"])
        .output()
        .expect("ip addr");
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(
        addrs.contains("eth1") && addrs.contains("10.10.1.20/24"),
        "{addrs}"
    );
    assert!(
        addrs.contains("eth2") && addrs.contains("172.20.0.1/24"),
        "{addrs}"
    );

    let status = sb.interrupt().expect("run-agent.sh stops on SIGINT");
    assert_eq!(
        status.code(),
        Some(130),
        "{}",
        errors.join().unwrap_or_default()
    );
    let left = namespaces();
    for ns in [&router, &public, &guest] {
        assert!(!left.contains(ns.as_str()), "{ns} left behind: {left}");
    }
    assert!(!link_exists(&host_if), "{host_if} left behind");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    // and the agent's address is no longer on a link of this host
    let route = Command::new("ip")
        .args(["-4", "route", "get", &addr.ip().to_string()])
        .output()
        .expect("ip route get");
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(!route.contains(&host_if), "{route}");
}
