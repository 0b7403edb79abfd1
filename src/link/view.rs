//! One view of the system's interfaces and IPv4 addresses for the whole process, kept current
//! by netlink notifications (link and IPv4 address groups) instead of a dump per command.
//!
//! A dump of every address costs O(addresses): about 10 ms at 10,000 VIPs on the public nic,
//! 100 ms at 100,000, for each command that needs one nic's name or the nic holding one VIP.
//! Here the dump is made once; every read drains the notifications queued since the last read
//! (non-blocking) and returns a snapshot that shares its maps with the view (O(1)).
//!
//! Reads see the kernel as it is when they are made: the kernel queues a notification on
//! every listening socket before it acknowledges the change to the socket that asked for it,
//! so a change our own backends made (and saw acknowledged) is always drained by the next
//! read. If the queue overflowed (ENOBUFS, after a burst larger than the socket's buffer), the
//! view is rebuilt from a dump.

use super::system::{self, AddrEntry, Interface, NicNames};
use crate::state::types::{Cidr, MacAddr};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::net::Ipv4Addr;
use std::sync::{Mutex, OnceLock, PoisonError};

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
/// Receive buffer of the notification socket: room for a burst of ~8,000 address changes
/// between two reads (each notification takes ~1 KiB of buffer) before a re-dump is needed.
const EVENTS_BUFFER: usize = 8 << 20;

/// The interfaces and addresses of this process's network namespace, as of one read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    links: imbl::OrdMap<u32, LinkInfo>,
    addrs: imbl::OrdMap<(u32, Cidr), AddrMeta>,
    /// (prefix length, network, interface index) -> number of addresses of that interface in
    /// that network: longest-prefix lookups in O(prefix lengths present × log n).
    nets: imbl::OrdMap<(u8, u32, u32), u32>,
    /// Number of addresses of each prefix length.
    lens: [u32; 33],
    /// Order of arrival (kernel order for a dump).
    seq: u64,
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot {
            links: imbl::OrdMap::new(),
            addrs: imbl::OrdMap::new(),
            nets: imbl::OrdMap::new(),
            lens: [0; 33],
            seq: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LinkInfo {
    name: String,
    mac: Option<MacAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AddrMeta {
    seq: u64,
    secondary: bool,
}

impl Snapshot {
    fn of(links: Vec<super::netlink::Link>, addrs: Vec<AddrEntry>) -> Snapshot {
        let mut s = Snapshot::default();
        for l in links {
            s.set_link(l.index, l.name, l.mac);
        }
        for a in addrs {
            s.add_addr(a);
        }
        s
    }

    fn set_link(&mut self, index: u32, name: String, mac: Option<MacAddr>) {
        self.links.insert(index, LinkInfo { name, mac });
    }

    fn remove_link(&mut self, index: u32) {
        self.links.remove(&index);
        let gone: Vec<Cidr> = self
            .addrs
            .range((index, Cidr::MIN)..=(index, Cidr::MAX))
            .map(|((_, c), _)| *c)
            .collect();
        for c in gone {
            self.remove_addr(index, c);
        }
    }

    fn add_addr(&mut self, a: AddrEntry) {
        let key = (a.index, a.cidr);
        if let Some(meta) = self.addrs.get_mut(&key) {
            // a change of flags: the address keeps its place
            meta.secondary = a.secondary;
            return;
        }
        self.seq += 1;
        self.addrs.insert(
            key,
            AddrMeta {
                seq: self.seq,
                secondary: a.secondary,
            },
        );
        let len = a.cidr.prefix.len();
        *self
            .nets
            .entry((len, network(a.cidr.addr, len), a.index))
            .or_insert(0) += 1;
        self.lens[usize::from(len.min(32))] += 1;
    }

    fn remove_addr(&mut self, index: u32, cidr: Cidr) {
        if self.addrs.remove(&(index, cidr)).is_none() {
            return;
        }
        let len = cidr.prefix.len();
        let net = (len, network(cidr.addr, len), index);
        match self.nets.get_mut(&net) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                self.nets.remove(&net);
            }
        }
        let slot = &mut self.lens[usize::from(len.min(32))];
        *slot = slot.saturating_sub(1);
    }

    /// Interface names by MAC (a MAC on several interfaces lists them all).
    pub fn names(&self) -> NicNames {
        let mut out = NicNames::new();
        for l in self.links.values() {
            if let Some(mac) = l.mac {
                out.entry(mac).or_default().push(l.name.clone());
            }
        }
        out
    }

    /// Every interface with its addresses, primaries first (O(addresses)).
    pub fn interfaces(&self) -> Vec<Interface> {
        self.links
            .iter()
            .map(|(index, l)| self.interface(*index, l))
            .collect()
    }

    /// The interfaces whose MAC is in `macs` or whose name is in `names`, with their
    /// addresses (O(their addresses × log n)).
    pub fn interfaces_of(&self, macs: &[MacAddr], names: &[&str]) -> Vec<Interface> {
        self.links
            .iter()
            .filter(|(_, l)| {
                l.mac.is_some_and(|m| macs.contains(&m)) || names.contains(&l.name.as_str())
            })
            .map(|(index, l)| self.interface(*index, l))
            .collect()
    }

    fn interface(&self, index: u32, l: &LinkInfo) -> Interface {
        let mut addrs: Vec<(bool, u64, Cidr)> = self
            .addrs
            .range((index, Cidr::MIN)..=(index, Cidr::MAX))
            .map(|((_, c), m)| (m.secondary, m.seq, *c))
            .collect();
        addrs.sort_unstable();
        Interface {
            name: l.name.clone(),
            mac: l.mac,
            addrs: addrs.into_iter().map(|(_, _, c)| c).collect(),
        }
    }

    /// The IPv4 addresses of interface `index` (O(its addresses × log n)), in address order.
    pub fn addrs_of(&self, index: u32) -> Vec<super::netlink::Addr> {
        self.addrs
            .range((index, Cidr::MIN)..=(index, Cidr::MAX))
            .map(|((_, c), m)| super::netlink::Addr {
                ip: c.addr,
                prefix: c.prefix.len(),
                secondary: m.secondary,
            })
            .collect()
    }

    /// The interface whose address or subnet holds `ip` (longest prefix wins; between
    /// interfaces with the same network, the lowest index).
    pub fn nic_holding(&self, ip: Ipv4Addr) -> Option<&str> {
        (0..=32u8)
            .rev()
            .filter(|len| self.lens[usize::from(*len)] > 0)
            .find_map(|len| {
                let net = network(ip, len);
                self.nets
                    .range((len, net, 0)..=(len, net, u32::MAX))
                    .next()
                    .and_then(|((_, _, index), _)| self.links.get(index))
            })
            .map(|l| l.name.as_str())
    }

    /// Number of IPv4 addresses.
    pub fn address_count(&self) -> usize {
        self.addrs.len()
    }

    fn apply(&mut self, msg: RouteNetlinkMessage) {
        match msg {
            RouteNetlinkMessage::NewLink(m) => {
                let l = super::netlink::link_of(m);
                self.set_link(l.index, l.name, l.mac);
            }
            RouteNetlinkMessage::DelLink(m) => self.remove_link(m.header.index),
            RouteNetlinkMessage::NewAddress(m) => {
                if let Some(a) = system::addr_entry(&m) {
                    self.add_addr(a);
                }
            }
            RouteNetlinkMessage::DelAddress(m) => {
                if let Some(a) = system::addr_entry(&m) {
                    self.remove_addr(a.index, a.cidr);
                }
            }
            _ => {}
        }
    }
}

fn network(ip: Ipv4Addr, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::from(ip) & (u32::MAX << (32 - u32::from(len.min(32))))
    }
}

/// The view: a snapshot and the socket its notifications arrive on.
pub struct View {
    inner: Mutex<Inner>,
}

impl Default for View {
    fn default() -> View {
        View::with_buffer(EVENTS_BUFFER)
    }
}

#[derive(Default)]
struct Inner {
    /// Receive buffer of the notification socket, in bytes.
    buffer: usize,
    events: Option<Socket>,
    snap: Option<Snapshot>,
    /// Dumps made (the first, and one after each overflow).
    dumps: u64,
    /// The last try to subscribe failed (said once in the log, not at every read).
    unsubscribed: bool,
}

impl View {
    /// A view whose notification socket has a receive buffer of `bytes` (the default is
    /// room for ~8,000 changes between two reads).
    pub fn with_buffer(bytes: usize) -> View {
        View {
            inner: Mutex::new(Inner {
                buffer: bytes,
                ..Inner::default()
            }),
        }
    }

    /// The system as it is now.
    pub fn read(&self) -> std::io::Result<Snapshot> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.catch_up()?;
        inner
            .snap
            .clone()
            .ok_or_else(|| std::io::Error::other("no interface view"))
    }

    /// Number of full dumps made so far.
    pub fn dumps(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dumps
    }
}

impl Inner {
    fn catch_up(&mut self) -> std::io::Result<()> {
        if self.events.is_none() {
            match subscribe(self.buffer) {
                Ok(s) => {
                    self.events = Some(s);
                    self.unsubscribed = false;
                }
                // without notifications every read is a dump
                Err(e) => {
                    if !self.unsubscribed {
                        tracing::warn!(error = %e, "no link notifications; reading the interfaces by dumps");
                    }
                    self.unsubscribed = true;
                    self.snap = None;
                }
            }
            return self.dump();
        }
        let mut overflowed = false;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let Some(sock) = self.events.as_ref() else {
                return self.dump();
            };
            match sock.recv(&mut &mut buf[..], 0) {
                Ok(n) => {
                    let Some(snap) = self.snap.as_mut() else {
                        overflowed = true;
                        continue;
                    };
                    for msg in messages(&buf[..n.min(buf.len())]) {
                        snap.apply(msg);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => overflowed = true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "link notifications failed; subscribing again");
                    self.events = None;
                    return self.catch_up();
                }
            }
        }
        if overflowed || self.snap.is_none() {
            tracing::debug!("link notifications overflowed; reading the interfaces again");
            return self.dump();
        }
        Ok(())
    }

    fn dump(&mut self) -> std::io::Result<()> {
        let links = system::dump_links()?;
        let addrs = system::dump_addr_entries(None)?;
        self.snap = Some(Snapshot::of(links, addrs));
        self.dumps += 1;
        Ok(())
    }
}

fn subscribe(buffer: usize) -> std::io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))?;
    if nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &buffer).is_err()
    {
        // not privileged: as large as rmem_max allows; overflows cost a dump
        sock.set_rx_buf_sz(buffer)?;
    }
    sock.set_non_blocking(true)?;
    Ok(sock)
}

/// The route messages of one datagram (malformed ones end it).
fn messages(mut data: &[u8]) -> Vec<RouteNetlinkMessage> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data) else {
            break;
        };
        let len = (m.header.length as usize + 3) & !3;
        if let NetlinkPayload::InnerMessage(inner) = m.payload {
            out.push(inner);
        }
        if len == 0 || len > data.len() {
            break;
        }
        data = &data[len..];
    }
    out
}

/// The process's view (of the namespace of its first read).
pub fn shared() -> &'static View {
    static VIEW: OnceLock<View> = OnceLock::new();
    VIEW.get_or_init(View::default)
}

/// The system's interfaces and addresses as they are now (see [`View::read`]).
pub fn current() -> std::io::Result<Snapshot> {
    shared().read()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::types::PrefixLen;

    fn entry(index: u32, cidr: &str, secondary: bool) -> AddrEntry {
        AddrEntry {
            index,
            cidr: cidr.parse().unwrap(),
            secondary,
        }
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.set_link(1, "lo".into(), None);
        s.set_link(2, "eth1".into(), Some("52:54:00:00:00:01".parse().unwrap()));
        s.set_link(3, "eth2".into(), Some("52:54:00:00:00:02".parse().unwrap()));
        s.add_addr(entry(1, "127.0.0.1/8", false));
        s.add_addr(entry(2, "10.10.1.55/32", true));
        s.add_addr(entry(2, "10.10.1.20/24", false));
        s.add_addr(entry(3, "172.20.0.1/24", false));
        s.add_addr(entry(3, "10.10.0.1/16", false));
        s
    }

    #[test]
    fn the_longest_prefix_holds_an_address_and_follows_removals() {
        let mut s = snapshot();
        let at = |s: &Snapshot, ip: &str| s.nic_holding(ip.parse().unwrap()).map(str::to_string);
        assert_eq!(at(&s, "10.10.1.55").as_deref(), Some("eth1"));
        assert_eq!(at(&s, "10.10.1.9").as_deref(), Some("eth1"));
        assert_eq!(at(&s, "10.10.9.9").as_deref(), Some("eth2"));
        assert_eq!(at(&s, "127.1.2.3").as_deref(), Some("lo"));
        assert_eq!(at(&s, "192.0.2.1"), None);
        s.remove_addr(2, "10.10.1.20/24".parse().unwrap());
        assert_eq!(at(&s, "10.10.1.9").as_deref(), Some("eth2"));
        assert_eq!(at(&s, "10.10.1.55").as_deref(), Some("eth1"));
        s.remove_link(2);
        assert_eq!(at(&s, "10.10.1.55").as_deref(), Some("eth2"));
        assert_eq!(s.address_count(), 3);
    }

    #[test]
    fn two_addresses_of_one_network_count_until_both_are_gone() {
        let mut s = snapshot();
        s.add_addr(entry(2, "198.18.0.1/15", false));
        s.add_addr(entry(2, "198.19.0.7/15", true));
        let ip: Ipv4Addr = "198.19.3.3".parse().unwrap();
        s.remove_addr(2, "198.18.0.1/15".parse().unwrap());
        assert_eq!(s.nic_holding(ip), Some("eth1"));
        s.remove_addr(2, "198.19.0.7/15".parse().unwrap());
        assert_eq!(s.nic_holding(ip), None);
        // a removal of what is not there changes nothing
        s.remove_addr(2, "198.19.0.7/15".parse().unwrap());
        assert_eq!(s.lens[15], 0);
    }

    #[test]
    fn primaries_come_first_then_the_order_of_arrival() {
        let s = snapshot();
        let eth1 = s.interfaces_of(&[], &["eth1"]);
        let addrs: Vec<String> = eth1[0].addrs.iter().map(ToString::to_string).collect();
        assert_eq!(addrs, ["10.10.1.20/24", "10.10.1.55/32"]);
        assert_eq!(s.names().len(), 2);
        assert_eq!(s.interfaces().len(), 3);
        assert!(PrefixLen::new(33).is_none());
    }
}
