//! What the renderer needs from the running system besides the desired state: nic names by
//! MAC, the kernel's addresses per nic, and the agent's own settings. Read at apply time by the
//! backend and passed to the pure renderer as plain data.

use crate::nics::NicNames;
use crate::state::types::Cidr;
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
    /// No nic is known to be the management nic ([`super::mgmt_guard`]): the filter table
    /// goes in without its drop policies and drop rules.
    pub mgmt_unknown: bool,
}

/// Reads every IPv4 address of the current namespace with the name of its interface.
pub fn addresses() -> std::io::Result<Vec<(String, Cidr)>> {
    crate::nics::addresses()
}

/// The interface whose address or subnet holds `ip` (longest prefix wins).
pub fn nic_holding(addrs: &[(String, Cidr)], ip: Ipv4Addr) -> Option<&str> {
    addrs
        .iter()
        .filter(|(_, c)| c.contains(ip))
        .max_by_key(|(_, c)| c.prefix.len())
        .map(|(n, _)| n.as_str())
}
