//! The interface view (`link::view`) against the real kernel in a namespace: links and
//! addresses added and removed by someone else show up at the next read without a dump, a
//! deleted link takes its addresses with it, and a burst larger than the notification buffer
//! is caught up by a dump. Every read is compared with a fresh view of the same namespace (a
//! dump).

mod common;

use common::{netns::Netns, unique};
use std::net::Ipv4Addr;
use std::process::Command;
use vr_agent::link::view::{Snapshot, View};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_batch(lines: &str) {
    let path = std::env::temp_dir().join(format!("{}.batch", unique("view")));
    std::fs::write(&path, lines).unwrap();
    let r = Command::new("ip")
        .args(["-batch", path.to_str().unwrap()])
        .output()
        .expect("ip -batch");
    let _ = std::fs::remove_file(&path);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// What a new view (one dump) of the namespace shows.
fn dumped() -> Snapshot {
    View::default().read().expect("dump")
}

fn same(kept: &Snapshot, fresh: &Snapshot) {
    assert_eq!(kept.names(), fresh.names());
    assert_eq!(kept.address_count(), fresh.address_count());
    let mut a = kept.interfaces();
    let mut b = fresh.interfaces();
    for i in a.iter_mut().chain(b.iter_mut()) {
        i.addrs.sort();
    }
    assert_eq!(a, b);
}

fn holder(s: &Snapshot, ip: &str) -> Option<String> {
    s.nic_holding(ip.parse::<Ipv4Addr>().unwrap())
        .map(str::to_string)
}

#[test]
fn the_view_follows_changes_made_by_others_without_dumps() {
    let ns = Netns::new("view");
    ns.enter(|| {
        let view = View::default();
        let first = view.read().expect("first read");
        assert!(first.interfaces().iter().any(|i| i.name == "lo"));
        assert_eq!(view.dumps(), 1);

        ip(&[
            "link",
            "add",
            "vw0",
            "address",
            "52:54:00:aa:00:01",
            "type",
            "veth",
            "peer",
            "name",
            "vw0p",
        ]);
        ip(&["link", "set", "vw0", "up"]);
        ip(&["addr", "add", "10.9.0.1/24", "dev", "vw0"]);
        ip(&["addr", "add", "10.9.0.50/32", "dev", "vw0"]);
        let s = view.read().unwrap();
        assert_eq!(holder(&s, "10.9.0.77").as_deref(), Some("vw0"));
        assert_eq!(
            s.names()
                .get(&"52:54:00:aa:00:01".parse().unwrap())
                .map(Vec::as_slice),
            Some(&["vw0".to_string()][..])
        );
        let vw0 = s.interfaces_of(&[], &["vw0"]);
        assert_eq!(vw0[0].addrs[0].to_string(), "10.9.0.1/24", "primary first");
        same(&s, &dumped());

        // a thousand VIPs, as /createvip makes them, then half of them removed
        let adds: String = (0..1000)
            .map(|i| format!("addr add 198.18.{}.{}/32 dev vw0\n", i / 200, i % 200 + 1))
            .collect();
        ip_batch(&adds);
        let dels: String = (0..500)
            .map(|i| format!("addr del 198.18.{}.{}/32 dev vw0\n", i / 200, i % 200 + 1))
            .collect();
        ip_batch(&dels);
        let s = view.read().unwrap();
        assert_eq!(holder(&s, "198.18.4.199").as_deref(), Some("vw0"));
        assert_eq!(holder(&s, "198.18.0.1"), None);
        same(&s, &dumped());
        assert_eq!(view.dumps(), 1, "followed by notifications, not dumps");

        // a renamed link, then a deleted one: its addresses go with it
        ip(&["link", "set", "vw0", "down"]);
        ip(&["link", "set", "vw0", "name", "vw1"]);
        let s = view.read().unwrap();
        assert_eq!(holder(&s, "10.9.0.77").as_deref(), Some("vw1"));
        ip(&["link", "del", "vw1"]);
        let s = view.read().unwrap();
        assert_eq!(holder(&s, "10.9.0.77"), None);
        assert_eq!(holder(&s, "198.18.4.199"), None);
        same(&s, &dumped());
        assert_eq!(view.dumps(), 1);
    });
}

#[test]
fn a_burst_beyond_the_buffer_is_caught_up_by_a_dump() {
    let ns = Netns::new("viewburst");
    ns.enter(|| {
        // a buffer of 64 KiB holds ~100 notifications: 3,000 adds overflow it
        let view = View::with_buffer(64 << 10);
        view.read().expect("first read");
        ip(&["link", "add", "vb0", "type", "veth", "peer", "name", "vb0p"]);
        let adds: String = (0..3_000)
            .map(|i| format!("addr add 198.19.{}.{}/32 dev vb0\n", i / 250, i % 250 + 1))
            .collect();
        ip_batch(&adds);
        let s = view.read().unwrap();
        assert_eq!(
            s.interfaces_of(&[], &["vb0"])[0].addrs.len(),
            3_000,
            "every address, whether by notifications or by a dump"
        );
        same(&s, &dumped());
        assert!(
            view.dumps() >= 2,
            "the overflow was noticed and caught up by a dump"
        );
        // and the view goes on following notifications afterwards
        ip(&["addr", "add", "10.77.0.1/16", "dev", "vb0"]);
        let dumps = view.dumps();
        let s = view.read().unwrap();
        assert_eq!(holder(&s, "10.77.3.3").as_deref(), Some("vb0"));
        assert_eq!(view.dumps(), dumps);
    });
}
