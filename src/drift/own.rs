//! Which netlink senders are the agent itself: its own threads, the `nft` processes it ran,
//! and the port ids of its rtnetlink sockets. Notifications from these are not drift.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a child's pid counts as ours after it was started (a notification is read soon
/// after the child committed; pids are reused only much later).
const CHILD_MEMORY: Duration = Duration::from_secs(120);
/// Most children remembered at once.
const MAX_CHILDREN: usize = 256;

static CHILDREN: Mutex<VecDeque<(u32, Instant)>> = Mutex::new(VecDeque::new());
static PORTS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Records a child process the agent started (e.g. `nft`).
pub fn record_child(pid: u32) {
    let mut c = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    while c
        .front()
        .is_some_and(|(_, at)| now.duration_since(*at) > CHILD_MEMORY)
        || c.len() >= MAX_CHILDREN
    {
        c.pop_front();
    }
    c.push_back((pid, now));
}

/// Records the port id of one of the agent's rtnetlink sockets.
pub fn record_port(port: u32) {
    let mut p = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    if !p.contains(&port) {
        if p.len() >= MAX_CHILDREN {
            p.remove(0);
        }
        p.push(port);
    }
}

/// True when `pid` (a thread id, as the kernel reports who committed an nftables
/// transaction) is a thread of this process or a child it started.
pub fn is_our_pid(pid: u32) -> bool {
    if pid == std::process::id() || std::path::Path::new(&format!("/proc/self/task/{pid}")).exists()
    {
        return true;
    }
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|(p, _)| *p == pid)
}

/// True when a notification with this sender port id was requested by one of our sockets.
pub fn is_our_port(port: u32) -> bool {
    port != 0
        && PORTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_threads_children_and_ports_are_recognised() {
        assert!(is_our_pid(std::process::id()));
        let tid = nix::unistd::gettid().as_raw() as u32;
        assert!(is_our_pid(tid));
        assert!(!is_our_pid(u32::MAX - 7));
        record_child(u32::MAX - 7);
        assert!(is_our_pid(u32::MAX - 7));
        assert!(!is_our_port(0));
        assert!(!is_our_port(4_000_000_001));
        record_port(4_000_000_001);
        assert!(is_our_port(4_000_000_001));
    }
}
