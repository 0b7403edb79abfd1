//! The nics of the current network namespace, by MAC (netlink dumps, so it sees the
//! namespace the agent runs in; /sys may not).

use crate::link::netlink::Link;
use crate::state::types::{Cidr, MacAddr, PrefixLen};
use rtnetlink::packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// A network interface as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Device name.
    pub name: String,
    /// Hardware address, if it has one.
    pub mac: Option<MacAddr>,
    /// IPv4 addresses with their prefixes.
    pub addrs: Vec<Cidr>,
}

/// Every interface of the current namespace with its MAC and IPv4 addresses, in kernel order
/// (two netlink dumps, linear in the number of addresses; glibc's getifaddrs grows
/// quadratically: 2 s at 100,000 addresses).
pub fn interfaces() -> std::io::Result<Vec<Interface>> {
    with_addresses(dump_links()?, None)
}

/// The interfaces whose MAC is in `macs` or whose name is in `names`, with their IPv4
/// addresses. Only those interfaces' addresses are read (a filtered dump each), so a public
/// nic carrying 100,000 VIPs costs nothing unless asked for.
pub fn interfaces_of(macs: &[MacAddr], names: &[&str]) -> std::io::Result<Vec<Interface>> {
    let links: Vec<Link> = dump_links()?
        .into_iter()
        .filter(|l| l.mac.is_some_and(|m| macs.contains(&m)) || names.contains(&l.name.as_str()))
        .collect();
    let mut out = Vec::with_capacity(links.len());
    for link in links {
        let index = link.index;
        out.extend(with_addresses(vec![link], Some(index))?);
    }
    Ok(out)
}

fn with_addresses(links: Vec<Link>, only: Option<u32>) -> std::io::Result<Vec<Interface>> {
    let mut by_index: HashMap<u32, Vec<Cidr>> = HashMap::new();
    for (index, cidr) in dump_addrs(only)? {
        by_index.entry(index).or_default().push(cidr);
    }
    Ok(links
        .into_iter()
        .map(|l| Interface {
            addrs: by_index.remove(&l.index).unwrap_or_default(),
            name: l.name,
            mac: l.mac,
        })
        .collect())
}

fn dump_links() -> std::io::Result<Vec<Link>> {
    Ok(
        dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), false)?
            .into_iter()
            .filter_map(|msg| match msg {
                RouteNetlinkMessage::NewLink(l) => Some(crate::link::netlink::link_of(l)),
                _ => None,
            })
            .collect(),
    )
}

/// IPv4 addresses by interface index: all, or those of one interface.
fn dump_addrs(only: Option<u32>) -> std::io::Result<Vec<(u32, Cidr)>> {
    let mut req = AddressMessage::default();
    req.header.family = AddressFamily::Inet;
    if let Some(index) = only {
        req.header.index = index;
    }
    let mut out = Vec::new();
    for msg in dump(RouteNetlinkMessage::GetAddress(req), only.is_some())? {
        let RouteNetlinkMessage::NewAddress(a) = msg else {
            continue;
        };
        if a.header.family != AddressFamily::Inet || only.is_some_and(|i| i != a.header.index) {
            continue;
        }
        let Some(prefix) = PrefixLen::new(a.header.prefix_len) else {
            continue;
        };
        // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on point-to-point
        // links); fall back to IFA_ADDRESS when there is no IFA_LOCAL.
        let mut local = None;
        let mut address = None;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            out.push((a.header.index, Cidr::new(ip, prefix)));
        }
    }
    Ok(out)
}

/// One netlink dump request and every message of its answer.
fn dump(req: RouteNetlinkMessage, strict: bool) -> std::io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    if strict {
        // lets the kernel filter an address dump by interface
        socket.set_netlink_get_strict_chk(true)?;
    }
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(req));
    msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 1 << 17];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut data = &rx[..n.min(rx.len())];
        while !data.is_empty() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data)
                .map_err(|e| std::io::Error::other(format!("netlink dump: {e}")))?;
            let len = (m.header.length as usize + 3) & !3;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            if len == 0 || len > data.len() {
                break;
            }
            data = &data[len..];
        }
    }
}

/// Every IPv4 address of the current namespace with the name of its interface.
pub fn addresses() -> std::io::Result<Vec<(String, Cidr)>> {
    Ok(interfaces()?
        .into_iter()
        .flat_map(|i| {
            let name = i.name;
            i.addrs.into_iter().map(move |a| (name.clone(), a))
        })
        .collect())
}

/// Interface names by MAC address. A MAC may map to several names (a bug to report).
pub type NicNames = BTreeMap<MacAddr, Vec<String>>;

/// Reads the MAC of every interface in the current namespace (links only: no addresses).
pub fn by_mac() -> std::io::Result<NicNames> {
    let mut out: NicNames = BTreeMap::new();
    for link in dump_links()? {
        if let Some(mac) = link.mac {
            out.entry(mac).or_default().push(link.name);
        }
    }
    Ok(out)
}

/// The one interface carrying `mac`, or why there is none.
pub fn name_of(names: &NicNames, mac: MacAddr) -> Result<&str, String> {
    match names.get(&mac).map(Vec::as_slice) {
        Some([one]) => Ok(one),
        Some(many) if many.len() > 1 => {
            Err(format!("nics [{}] share the MAC {mac}", many.join(", ")))
        }
        _ => Err(format!("no nic with MAC {mac} in this router")),
    }
}
