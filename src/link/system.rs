//! The nics of the current network namespace read by netlink dumps (so it sees the namespace
//! the agent runs in; /sys may not): the parsing shared by the dumps and the notifications
//! of [`super::view`], which is what the rest of the agent reads.

use crate::link::netlink::Link;
use crate::link::plan::NicProblem;
use crate::state::types::{Cidr, MacAddr, PrefixLen};
use rtnetlink::packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::collections::BTreeMap;
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

/// Every link of the namespace, in index order.
pub(crate) fn dump_links() -> std::io::Result<Vec<Link>> {
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

/// One IPv4 address of an interface, as an address message describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AddrEntry {
    /// Interface index.
    pub index: u32,
    /// The address and its prefix.
    pub cidr: Cidr,
    /// A secondary address (the kernel lists these after the primaries of the nic).
    pub secondary: bool,
}

/// IPv4 addresses in kernel order: all, or those of one interface.
pub(crate) fn dump_addr_entries(only: Option<u32>) -> std::io::Result<Vec<AddrEntry>> {
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
        if only.is_some_and(|i| i != a.header.index) {
            continue;
        }
        out.extend(addr_entry(&a));
    }
    Ok(out)
}

/// The IPv4 address an address message (a dump's answer or a notification) describes.
pub(crate) fn addr_entry(a: &AddressMessage) -> Option<AddrEntry> {
    if a.header.family != AddressFamily::Inet {
        return None;
    }
    let prefix = PrefixLen::new(a.header.prefix_len)?;
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
    let ip = local.or(address)?;
    Some(AddrEntry {
        index: a.header.index,
        cidr: Cidr::new(ip, prefix),
        secondary: a
            .header
            .flags
            .contains(rtnetlink::packet_route::address::AddressHeaderFlags::Secondary),
    })
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

/// Interface names by MAC address. A MAC may map to several names (a bug to report).
pub type NicNames = BTreeMap<MacAddr, Vec<String>>;

/// The one interface carrying `mac`, or why there is none: the same [`NicProblem`] (and so
/// the same words) as the interfaces backend reports for a missing or shared MAC.
pub fn name_of(names: &NicNames, mac: MacAddr) -> Result<&str, NicProblem> {
    match names.get(&mac).map(Vec::as_slice) {
        Some([one]) => Ok(one),
        Some(many) if many.len() > 1 => Err(NicProblem::Shared {
            mac,
            names: many.to_vec(),
        }),
        _ => Err(NicProblem::Missing(mac)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_shared_mac_reads_as_the_interfaces_backend_says_it() {
        let mac: MacAddr = "fa:7e:00:00:00:01".parse().unwrap();
        let other: MacAddr = "fa:7e:00:00:00:02".parse().unwrap();
        let names: NicNames = [
            (mac, vec!["eth1".to_string(), "eth2".to_string()]),
            (other, vec!["eth3".to_string()]),
        ]
        .into_iter()
        .collect();
        assert_eq!(name_of(&names, other), Ok("eth3"));
        let missing: MacAddr = "fa:7e:00:00:00:09".parse().unwrap();
        assert_eq!(
            name_of(&names, missing).unwrap_err().to_string(),
            "unable to find nic with mac[fa:7e:00:00:00:09] in virtual router vm"
        );
        assert_eq!(
            name_of(&names, mac).unwrap_err().to_string(),
            "nics [eth1, eth2] have the same mac address[fa:7e:00:00:00:01]"
        );
    }
}
