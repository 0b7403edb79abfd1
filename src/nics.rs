//! The nics of the current network namespace, by MAC (through getifaddrs, which asks the
//! kernel over netlink, so it sees the namespace the agent runs in; /sys may not).

use crate::state::types::{Cidr, MacAddr, PrefixLen};
use std::collections::BTreeMap;

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

/// Every interface of the current namespace with its MAC and IPv4 addresses, in kernel order.
pub fn interfaces() -> std::io::Result<Vec<Interface>> {
    let mut out: Vec<Interface> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let pos = match out.iter().position(|i| i.name == ifa.interface_name) {
            Some(p) => p,
            None => {
                out.push(Interface {
                    name: ifa.interface_name.clone(),
                    mac: None,
                    addrs: Vec::new(),
                });
                out.len() - 1
            }
        };
        let iface = &mut out[pos];
        let Some(addr) = ifa.address.as_ref() else {
            continue;
        };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr().filter(|m| *m != [0; 6]) {
                iface.mac = Some(MacAddr(mac));
            }
        } else if let Some(v4) = addr.as_sockaddr_in() {
            let prefix = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .and_then(|m| PrefixLen::from_netmask(m.ip()))
                .or_else(|| PrefixLen::new(32));
            if let Some(prefix) = prefix {
                iface.addrs.push(Cidr::new(v4.ip(), prefix));
            }
        }
    }
    Ok(out)
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

/// Reads the MAC of every interface in the current namespace.
pub fn by_mac() -> std::io::Result<NicNames> {
    let mut out: NicNames = BTreeMap::new();
    for iface in interfaces()? {
        if let Some(mac) = iface.mac {
            out.entry(mac).or_default().push(iface.name);
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
