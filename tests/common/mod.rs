//! Shared test harness: network namespaces, the agent as a real process, and a test client that
//! behaves like the management node. Every namespace test runs as root (CI is root) and fails
//! loudly when it cannot set its namespaces up.
#![allow(dead_code)]

pub mod agent;
pub mod golden;
pub mod mgmt;
pub mod netns;

use std::path::PathBuf;

/// Polls `check` every 20 ms until it holds or `within` has passed; true if it held (waits
/// on something observable instead of a fixed sleep).
pub fn eventually(within: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Resident and peak resident memory of a process, in KiB (`VmRSS`, `VmHWM`; 0 if unknown).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A request body from `fixtures/requests/<name>.json`.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/requests")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A reply body from `fixtures/replies/<name>.json`.
pub fn reply_fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/replies")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Asserts `reply` carries every key of `expected` with the same value (extra keys allowed,
/// as the management node ignores them).
pub fn assert_superset(reply: &serde_json::Value, expected: &serde_json::Value) {
    let want = expected.as_object().expect("expected is an object");
    for (k, v) in want {
        assert_eq!(reply.get(k), Some(v), "key {k:?} in {reply}");
    }
}

/// A name unique to this process and call, at most 15 bytes (fits an interface name).
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id() % 100_000;
    let mut s = format!("{tag}{pid}x{n}");
    s.truncate(15);
    s
}
