//! Pure planning of the interface side: which nics and addresses are wanted (bootstrap info
//! overlaid with the desired state), nics found by MAC, renames, and address differences.
//! Nothing here touches the system.

use super::netlink::{Addr, Link};
use crate::state::DesiredState;
use crate::state::model::Nic;
use crate::state::types::MacAddr;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// What the interfaces should look like.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Nics by MAC: bootstrap nics overlaid with `/configurenic` ones.
    pub nics: BTreeMap<MacAddr, Nic>,
    /// VIP addresses by the MAC of the nic that carries them.
    pub vips: BTreeMap<MacAddr, BTreeSet<(Ipv4Addr, u8)>>,
    /// The default route: (nic MAC, gateway).
    pub default_route: Option<(MacAddr, Ipv4Addr)>,
}

impl Wanted {
    /// Bootstrap nics overlaid with the nics and VIPs of `state`. A `/configurenic` nic keeps
    /// the bootstrap `deviceName` of its MAC. The default route follows a `/configurenic` nic
    /// that asks for it, else the bootstrap one.
    pub fn new(bootstrap: &[Nic], state: &DesiredState) -> Wanted {
        Self::for_role(bootstrap, state, true)
    }

    /// [`Wanted::new`] for a node of an HA pair: with `data_plane` (master, or no HA) the
    /// VIPs and the HA addresses are wanted, without (backup) none of them.
    pub fn for_role(bootstrap: &[Nic], state: &DesiredState, data_plane: bool) -> Wanted {
        let mut nics: BTreeMap<MacAddr, Nic> =
            bootstrap.iter().map(|n| (n.mac, n.clone())).collect();
        for (mac, nic) in &state.nics {
            let mut nic = nic.clone();
            if nic.device_name.is_none() {
                nic.device_name = nics.get(mac).and_then(|b| b.device_name.clone());
            }
            nics.insert(*mac, nic);
        }
        let default_of = |n: &Nic| {
            n.gateway
                .filter(|_| n.is_default_route)
                .map(|gw| (n.mac, gw))
        };
        let default_route = state
            .nics
            .values()
            .find_map(default_of)
            .or_else(|| bootstrap.iter().find_map(default_of));
        let vips = if data_plane {
            master_addresses(state)
        } else {
            BTreeMap::new()
        };
        Wanted {
            nics,
            vips,
            default_route,
        }
    }

    /// Every MAC this plan touches: nics and VIP owners.
    pub fn macs(&self) -> BTreeSet<MacAddr> {
        self.nics.keys().chain(self.vips.keys()).copied().collect()
    }

    /// The primary address of the nic with `mac`, if known.
    pub fn primary(&self, mac: MacAddr) -> Option<(Ipv4Addr, u8)> {
        self.nics.get(&mac).map(|n| (n.ip, n.prefix.len()))
    }

    /// Addresses wanted on the nic with `mac`: the primary first, then its VIPs.
    pub fn addrs(&self, mac: MacAddr) -> Vec<(Ipv4Addr, u8)> {
        let primary = self.primary(mac);
        primary
            .into_iter()
            .chain(
                self.vips
                    .get(&mac)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|a| Some(*a) != primary),
            )
            .collect()
    }
}

/// The addresses a node carries only as master (or without HA), by nic MAC: every VIP of
/// `state` and the HA addresses of `/enableVyosha`.
pub fn master_addresses(state: &DesiredState) -> BTreeMap<MacAddr, BTreeSet<(Ipv4Addr, u8)>> {
    let mut vips: BTreeMap<MacAddr, BTreeSet<(Ipv4Addr, u8)>> = BTreeMap::new();
    for vip in state.vips.values() {
        vips.entry(vip.owner_mac)
            .or_default()
            .insert((vip.ip, vip.prefix.len()));
    }
    for vip in state.ha.iter().flat_map(|h| &h.vips) {
        vips.entry(vip.mac)
            .or_default()
            .insert((vip.ip, vip.prefix.len()));
    }
    vips
}

/// Why a nic cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NicProblem {
    /// No link carries the MAC.
    #[error("unable to find nic with mac[{0}] in virtual router vm")]
    Missing(MacAddr),
    /// Several links carry the MAC.
    #[error("nics [{}] have the same mac address[{mac}]", .names.join(", "))]
    Shared {
        /// The MAC.
        mac: MacAddr,
        /// Names of the links that carry it.
        names: Vec<String>,
    },
    /// A wanted name belongs to a link that is not being renamed away.
    #[error("cannot rename {from} (mac[{mac}]) to {to}: another nic already has that name")]
    NameTaken {
        /// MAC of the nic to rename.
        mac: MacAddr,
        /// Its current name.
        from: String,
        /// The wanted name.
        to: String,
    },
    /// Two nics want the same name.
    #[error("nics with mac[{0}] and mac[{1}] both want the name {2}")]
    NameTwice(MacAddr, MacAddr, String),
}

/// The one link that carries `mac`.
pub fn find(links: &[Link], mac: MacAddr) -> Result<&Link, NicProblem> {
    let found: Vec<&Link> = links.iter().filter(|l| l.mac == Some(mac)).collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err(NicProblem::Missing(mac)),
        many => Err(NicProblem::Shared {
            mac,
            names: many.iter().map(|l| l.name.clone()).collect(),
        }),
    }
}

/// Finds every MAC, or names the first that is missing or shared.
pub fn find_all(
    links: &[Link],
    macs: impl IntoIterator<Item = MacAddr>,
) -> Result<BTreeMap<MacAddr, &Link>, NicProblem> {
    macs.into_iter()
        .map(|mac| find(links, mac).map(|l| (mac, l)))
        .collect()
}

/// Renames to make: `(link, wanted name)` for every found nic whose name differs. Refuses a
/// name held by a link that keeps its name, or wanted by two nics.
pub fn renames<'a>(
    links: &'a [Link],
    found: &BTreeMap<MacAddr, &'a Link>,
    nics: &BTreeMap<MacAddr, Nic>,
) -> Result<Vec<(&'a Link, String)>, NicProblem> {
    let mut out: Vec<(&Link, String)> = Vec::new();
    let mut claimed: BTreeMap<&str, MacAddr> = BTreeMap::new();
    for (mac, link) in found {
        let Some(name) = nics.get(mac).and_then(|n| n.device_name.as_deref()) else {
            continue;
        };
        if let Some(other) = claimed.insert(name, *mac) {
            return Err(NicProblem::NameTwice(other, *mac, name.to_string()));
        }
        if link.name != name {
            out.push((link, name.to_string()));
        }
    }
    let moving: BTreeSet<u32> = out.iter().map(|(l, _)| l.index).collect();
    for (link, to) in &out {
        if let Some(holder) = links.iter().find(|l| &l.name == to)
            && !moving.contains(&holder.index)
        {
            return Err(NicProblem::NameTaken {
                mac: link.mac.unwrap_or(MacAddr([0; 6])),
                from: link.name.clone(),
                to: to.clone(),
            });
        }
    }
    Ok(out)
}

/// An IPv4 address with its prefix length, as the kernel keys it on a link.
pub type AddrKey = (Ipv4Addr, u8);

/// Address changes on one link: `(to_add, to_remove)`. `to_add` keeps the order of `wanted`
/// (primary first). With `prune`, every IPv4 address not wanted is removed.
pub fn addr_changes(
    current: &[Addr],
    wanted: &[(Ipv4Addr, u8)],
    prune: bool,
) -> (Vec<AddrKey>, Vec<AddrKey>) {
    let have: BTreeSet<(Ipv4Addr, u8)> = current.iter().map(|a| (a.ip, a.prefix)).collect();
    let want: BTreeSet<(Ipv4Addr, u8)> = wanted.iter().copied().collect();
    let add = wanted
        .iter()
        .copied()
        .filter(|a| !have.contains(a))
        .collect();
    let remove = if prune {
        have.difference(&want).copied().collect()
    } else {
        Vec::new()
    };
    (add, remove)
}

/// True if `a` and `b` are in the same IPv4 subnet of `prefix` bits.
pub fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    u32::from(a) & mask == u32::from(b) & mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::model::Vip;
    use crate::state::types::PrefixLen;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0xfa, 0x7e, 0, 0, 0, n])
    }

    fn nic(n: u8, ip: &str, default: bool, name: Option<&str>) -> Nic {
        Nic {
            mac: mac(n),
            ip: ip.parse().unwrap(),
            prefix: PrefixLen::new(24).unwrap(),
            gateway: Some("10.0.0.1".parse().unwrap()),
            is_default_route: default,
            mtu: None,
            device_name: name.map(String::from),
        }
    }

    #[test]
    fn a_backup_wants_neither_vips_nor_ha_addresses_and_a_master_wants_both() {
        let mut state = DesiredState::default();
        state.nics.insert(mac(1), nic(1, "10.0.0.2", true, None));
        state.vips.insert(
            "10.0.0.55".parse().unwrap(),
            Vip {
                ip: "10.0.0.55".parse().unwrap(),
                prefix: PrefixLen::new(24).unwrap(),
                gateway: None,
                owner_mac: mac(1),
            },
        );
        state.ha = Some(crate::state::ha::HaConfig {
            advert_secs: 1,
            heartbeat_mac: mac(3),
            local_ip: "192.168.7.1".parse().unwrap(),
            peer_ip: "192.168.7.2".parse().unwrap(),
            monitors: vec![],
            vips: vec![crate::state::ha::HaVip {
                mac: mac(2),
                ip: "172.20.0.1".parse().unwrap(),
                prefix: PrefixLen::new(24).unwrap(),
                category: None,
            }],
            callback_url: None,
        });
        let master = Wanted::for_role(&[], &state, true);
        assert_eq!(
            master.addrs(mac(1)),
            vec![
                ("10.0.0.2".parse().unwrap(), 24),
                ("10.0.0.55".parse().unwrap(), 24)
            ]
        );
        assert_eq!(
            master.addrs(mac(2)),
            vec![("172.20.0.1".parse().unwrap(), 24)]
        );
        let backup = Wanted::for_role(&[], &state, false);
        assert_eq!(
            backup.addrs(mac(1)),
            vec![("10.0.0.2".parse().unwrap(), 24)]
        );
        assert!(backup.addrs(mac(2)).is_empty());
        // the nic itself (address, default route) is the same in both roles
        assert_eq!(master.nics, backup.nics);
        assert_eq!(master.default_route, backup.default_route);
        assert_eq!(master_addresses(&state).len(), 2);
    }

    fn link(index: u32, name: &str, m: Option<u8>) -> Link {
        Link {
            index,
            name: name.into(),
            mac: m.map(mac),
            mtu: Some(1500),
            up: true,
            promotes_secondaries: false,
        }
    }

    #[test]
    fn configured_nics_overlay_bootstrap_and_keep_its_names() {
        let boot = [
            nic(0, "10.0.0.2", true, Some("eth0")),
            nic(1, "10.1.0.2", false, Some("eth1")),
        ];
        let mut state = DesiredState::default();
        state.nics.insert(mac(1), nic(1, "10.1.0.9", false, None));
        state.vips.insert(
            "10.1.0.50".parse().unwrap(),
            Vip {
                ip: "10.1.0.50".parse().unwrap(),
                prefix: PrefixLen::new(32).unwrap(),
                gateway: None,
                owner_mac: mac(1),
            },
        );
        let w = Wanted::new(&boot, &state);
        assert_eq!(w.nics[&mac(1)].ip.to_string(), "10.1.0.9");
        assert_eq!(w.nics[&mac(1)].device_name.as_deref(), Some("eth1"));
        assert_eq!(w.default_route, Some((mac(0), "10.0.0.1".parse().unwrap())));
        assert_eq!(
            w.addrs(mac(1)),
            vec![
                ("10.1.0.9".parse().unwrap(), 24),
                ("10.1.0.50".parse().unwrap(), 32)
            ]
        );
        state.nics.insert(mac(1), nic(1, "10.1.0.9", true, None));
        let w = Wanted::new(&boot, &state);
        assert_eq!(w.default_route.map(|d| d.0), Some(mac(1)));
    }

    #[test]
    fn missing_and_shared_macs_are_named() {
        let links = [
            link(1, "lo", None),
            link(2, "a", Some(1)),
            link(3, "b", Some(1)),
        ];
        assert_eq!(
            find(&links, mac(2)).unwrap_err().to_string(),
            "unable to find nic with mac[fa:7e:00:00:00:02] in virtual router vm"
        );
        assert_eq!(
            find(&links, mac(1)).unwrap_err().to_string(),
            "nics [a, b] have the same mac address[fa:7e:00:00:00:01]"
        );
    }

    #[test]
    fn renames_allow_swaps_and_refuse_taken_names() {
        let links = [
            link(2, "eth1", Some(0)),
            link(3, "eth0", Some(1)),
            link(4, "eth2", Some(9)),
        ];
        let mut nics = BTreeMap::new();
        nics.insert(mac(0), nic(0, "10.0.0.2", false, Some("eth0")));
        nics.insert(mac(1), nic(1, "10.1.0.2", false, Some("eth1")));
        let found = find_all(&links, [mac(0), mac(1)]).unwrap();
        let r = renames(&links, &found, &nics).unwrap();
        assert_eq!(r.len(), 2);
        nics.insert(mac(1), nic(1, "10.1.0.2", false, Some("eth2")));
        let err = renames(&links, &found, &nics).unwrap_err();
        assert!(matches!(err, NicProblem::NameTaken { ref to, .. } if to == "eth2"));
        nics.insert(mac(1), nic(1, "10.1.0.2", false, Some("eth0")));
        assert!(matches!(
            renames(&links, &found, &nics),
            Err(NicProblem::NameTwice(..))
        ));
    }

    #[test]
    fn address_changes_add_primary_first_and_prune_only_when_asked() {
        let a = |s: &str, p: u8| Addr {
            ip: s.parse().unwrap(),
            prefix: p,
            secondary: false,
        };
        let current = [a("10.0.0.5", 24), a("10.0.0.50", 32)];
        let wanted = [
            ("10.0.0.6".parse().unwrap(), 24),
            ("10.0.0.50".parse().unwrap(), 32),
            ("10.0.0.51".parse().unwrap(), 32),
        ];
        let (add, remove) = addr_changes(&current, &wanted, true);
        assert_eq!(add, vec![wanted[0], wanted[2]]);
        assert_eq!(remove, vec![("10.0.0.5".parse().unwrap(), 24)]);
        let (_, remove) = addr_changes(&current, &wanted, false);
        assert!(remove.is_empty());
        assert!(same_subnet(
            "10.0.0.5".parse().unwrap(),
            "10.0.0.99".parse().unwrap(),
            24
        ));
        assert!(!same_subnet(
            "10.0.0.5".parse().unwrap(),
            "10.0.1.5".parse().unwrap(),
            24
        ));
    }
}
