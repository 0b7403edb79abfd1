//! The nics of the current network namespace, by MAC (through getifaddrs, which asks the
//! kernel over netlink, so it sees the namespace the agent runs in; /sys may not).

use crate::state::types::MacAddr;
use std::collections::BTreeMap;

/// Interface names by MAC address. A MAC may map to several names (a bug to report).
pub type NicNames = BTreeMap<MacAddr, Vec<String>>;

/// Reads the MAC of every interface in the current namespace.
pub fn by_mac() -> std::io::Result<NicNames> {
    let mut out: NicNames = BTreeMap::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let Some(link) = ifa.address.as_ref().and_then(|a| a.as_link_addr()) else {
            continue;
        };
        let Some(mac) = link.addr() else { continue };
        if mac == [0; 6] {
            continue;
        }
        let names = out.entry(MacAddr(mac)).or_default();
        if !names.contains(&ifa.interface_name) {
            names.push(ifa.interface_name.clone());
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
