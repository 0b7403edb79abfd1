//! What the renderer needs from the running system besides the desired state: nic names by
//! MAC, the kernel's addresses per nic, and the agent's own settings. Read at apply time by the
//! backend and passed to the pure renderer as plain data.

use crate::link::system::NicNames;
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
    /// Our sets hold exactly the elements of the state before the command (the agent wrote
    /// them and nothing else changed them since): a sync then sends the difference between
    /// the two states instead of dumping the sets to compare them with the new one.
    pub sets_hold_before: bool,
    /// This router is the backup of an HA pair: it forwards nothing (hosts with a stale ARP
    /// entry for a moved address must not be served by it).
    pub ha_standby: bool,
    /// `addrs` indexed for longest-prefix lookups, built on first use (a cache: leave it at
    /// its default).
    #[serde(skip)]
    pub holders: std::sync::OnceLock<Holders>,
    /// The system's interfaces and addresses as the backend read them (then `addrs` is left
    /// empty: lookups go to this view, whatever the number of addresses).
    #[serde(skip)]
    pub system: Option<crate::link::view::Snapshot>,
}

impl Inputs {
    /// The interface whose address or subnet holds `ip` (longest prefix wins), in O(prefix
    /// lengths) whatever the number of addresses (a sync binds every EIP through this).
    pub fn nic_holding(&self, ip: Ipv4Addr) -> Option<&str> {
        if let Some(system) = &self.system {
            return system.nic_holding(ip);
        }
        self.holders
            .get_or_init(|| Holders::of(&self.addrs))
            .lookup(ip)
            .map(|i| self.addrs[i].0.as_str())
    }
}

/// For each prefix length present, longest first: the network of each address -> the index of
/// the first address of that network in `addrs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holders(Vec<(u8, std::collections::HashMap<u32, usize>)>);

impl Holders {
    fn of(addrs: &[(String, Cidr)]) -> Holders {
        let mut by_len: std::collections::BTreeMap<u8, std::collections::HashMap<u32, usize>> =
            Default::default();
        for (i, (_, c)) in addrs.iter().enumerate() {
            let len = c.prefix.len();
            by_len
                .entry(len)
                .or_default()
                .entry(network(c.addr, len))
                .or_insert(i);
        }
        Holders(by_len.into_iter().rev().collect())
    }

    fn lookup(&self, ip: Ipv4Addr) -> Option<usize> {
        self.0
            .iter()
            .find_map(|(len, nets)| nets.get(&network(ip, *len)).copied())
    }
}

fn network(ip: Ipv4Addr, len: u8) -> u32 {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    u32::from(ip) & mask
}

/// The interface whose address or subnet holds `ip` (longest prefix wins), by a scan; see
/// [`Inputs::nic_holding`] for the indexed lookup.
pub fn nic_holding(addrs: &[(String, Cidr)], ip: Ipv4Addr) -> Option<&str> {
    addrs
        .iter()
        .filter(|(_, c)| c.contains(ip))
        .max_by_key(|(_, c)| c.prefix.len())
        .map(|(n, _)| n.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_what_the_scan_finds() {
        let c = |s: &str| -> Cidr { s.parse().unwrap() };
        let inputs = Inputs {
            addrs: vec![
                ("eth1".into(), c("10.10.1.20/24")),
                ("eth1".into(), c("10.10.1.55/32")),
                ("eth2".into(), c("172.20.0.1/24")),
                ("eth3".into(), c("10.10.0.1/16")),
                ("lo".into(), c("127.0.0.1/8")),
            ],
            ..Inputs::default()
        };
        for ip in [
            "10.10.1.55",
            "10.10.1.9",
            "10.10.9.9",
            "172.20.0.200",
            "192.0.2.1",
            "127.1.2.3",
        ] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            assert_eq!(
                inputs.nic_holding(ip),
                nic_holding(&inputs.addrs, ip),
                "{ip}"
            );
        }
    }
}
