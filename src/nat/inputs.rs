//! What the renderer needs from the running system besides the desired state: nic names by
//! MAC, the kernel's addresses per nic, and the agent's own settings. Read at apply time by the
//! backend and passed to the pure renderer as plain data.

use crate::nics::NicNames;
use crate::state::types::{Cidr, PrefixLen};
use std::net::Ipv4Addr;

/// Explicit inputs of the renderer.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Inputs {
    /// Interface names by MAC.
    pub names: NicNames,
    /// IPv4 addresses of the interfaces (name, address/prefix); read only when an EIP's public
    /// nic cannot be told from the desired state.
    pub addrs: Vec<(String, Cidr)>,
    /// The management nic: ssh and the agent's ports are accepted only there.
    pub mgmt_nic: String,
    /// TCP ports the agent listens on.
    pub agent_ports: Vec<u16>,
}

/// Reads every IPv4 address of the current namespace with the name of its interface.
pub fn addresses() -> std::io::Result<Vec<(String, Cidr)>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        let prefix = ifa
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .and_then(|m| PrefixLen::from_netmask(m.ip()))
            .or_else(|| PrefixLen::new(32));
        if let Some(prefix) = prefix {
            out.push((ifa.interface_name.clone(), Cidr::new(addr.ip(), prefix)));
        }
    }
    Ok(out)
}

/// The interface whose address or subnet holds `ip` (longest prefix wins).
pub fn nic_holding(addrs: &[(String, Cidr)], ip: Ipv4Addr) -> Option<&str> {
    addrs
        .iter()
        .filter(|(_, c)| c.contains(ip))
        .max_by_key(|(_, c)| c.prefix.len())
        .map(|(n, _)| n.as_str())
}
