//! Which nics of the router serve guests, and why: the one definition the firewall's guest
//! nic set (DHCP and DNS accepted there, `src/nat`) and dnsmasq's listening nics
//! (`src/dnsmasq`) both derive from.
//!
//! A guest nic is a nic of the router on a guest network:
//! - the nic each DHCP host is served on ([`HostNic`]): the nic with the host's `vrNicMac`;
//!   else the nic of the desired state whose subnet holds the host's gateway (or its own
//!   address when it has no gateway); else, when neither is a nic the router has, the nic
//!   whose address holds that gateway or address (a nic configured from the bootstrap info
//!   only is known to the system, not to the desired state);
//! - the guest nic of each SNAT entry (`privateNicMac`): a guest network without DHCP hosts
//!   still uses the router's DNS forwarder.
//!
//! The definition is pure: the router's nics are seen through two lookups the caller passes
//! ([`HostNic::resolve`]). The uses differ only on top of it, each at its use site: the
//! firewall accepts DHCP and DNS on every SNAT guest nic, while dnsmasq listens on SNAT guest
//! nics only while upstream DNS servers are set (it has nothing to serve there otherwise).

use super::DesiredState;
use super::Table;
use super::model::{DhcpHost, Nic, Snat};
use super::types::{Cidr, MacAddr};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Where a DHCP host is served, as far as the desired state tells: the first of `vr_nic`,
/// `subnet_nic` the router has, else the nic whose address or subnet holds `holding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostNic {
    /// The host's `vrNicMac`.
    pub vr_nic: Option<MacAddr>,
    /// The desired nic whose subnet holds `holding` (the longest prefix wins).
    pub subnet_nic: Option<MacAddr>,
    /// The host's gateway, or its own address when it has no gateway.
    pub holding: Ipv4Addr,
}

impl HostNic {
    /// The nic serving the host among the router's nics: `by_mac` of `vr_nic`, else of
    /// `subnet_nic`, else `holding_nic(holding)` (the nic whose address or subnet holds it).
    pub fn resolve<T>(
        &self,
        by_mac: impl Fn(MacAddr) -> Option<T>,
        holding_nic: impl FnOnce(Ipv4Addr) -> Option<T>,
    ) -> Option<T> {
        self.vr_nic
            .and_then(&by_mac)
            .or_else(|| self.subnet_nic.and_then(&by_mac))
            .or_else(|| holding_nic(self.holding))
    }

    /// The MACs the state names for the host (`vr_nic`, `subnet_nic`).
    pub fn macs(&self) -> impl Iterator<Item = MacAddr> {
        self.vr_nic.into_iter().chain(self.subnet_nic)
    }
}

/// The nic serving `host`, given the desired nics (see [`HostNic`]).
pub fn host_nic(nics: &Table<MacAddr, Nic>, host: &DhcpHost) -> HostNic {
    let holding = host.gateway.unwrap_or(host.ip);
    let subnet_nic = nics
        .values()
        .filter(|n| Cidr::new(n.ip, n.prefix).contains(holding))
        .max_by_key(|n| n.prefix.len())
        .map(|n| n.mac);
    HostNic {
        vr_nic: host.vr_nic_mac,
        subnet_nic,
        holding,
    }
}

/// The guest nics of SNAT entries (`privateNicMac`).
pub fn snat_nics<'a>(snats: impl IntoIterator<Item = &'a Snat>) -> BTreeSet<MacAddr> {
    snats.into_iter().map(|s| s.private_nic_mac).collect()
}

/// The router's guest nics as the desired state names them (see the module header).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestNics {
    /// The nics DHCP hosts are served on (one entry per distinct placement).
    pub dhcp: BTreeSet<HostNic>,
    /// The guest nics of SNAT entries.
    pub snat: BTreeSet<MacAddr>,
}

impl GuestNics {
    /// The guest nics of the given parts of a desired state (a plan may ask about SNAT
    /// entries that are not in a state yet).
    pub fn of<'a>(
        nics: &Table<MacAddr, Nic>,
        snats: impl IntoIterator<Item = &'a Snat>,
        dhcp_hosts: &Table<MacAddr, DhcpHost>,
    ) -> GuestNics {
        let mut dhcp = BTreeSet::new();
        let mut last = None;
        for h in dhcp_hosts.values() {
            // hosts of one network come in runs: place each run once
            let key = (h.vr_nic_mac, h.gateway.unwrap_or(h.ip));
            if last == Some(key) {
                continue;
            }
            last = Some(key);
            dhcp.insert(host_nic(nics, h));
        }
        GuestNics {
            dhcp,
            snat: snat_nics(snats),
        }
    }

    /// Every guest nic found among the router's nics (see [`HostNic::resolve`]), with the
    /// SNAT guest nics when `with_snat`. Nics the router does not have are left out.
    pub fn resolve<T: Ord>(
        &self,
        with_snat: bool,
        by_mac: impl Fn(MacAddr) -> Option<T>,
        holding_nic: impl Fn(Ipv4Addr) -> Option<T>,
    ) -> BTreeSet<T> {
        let mut out: BTreeSet<T> = self
            .dhcp
            .iter()
            .filter_map(|h| h.resolve(&by_mac, &holding_nic))
            .collect();
        if with_snat {
            out.extend(self.snat.iter().filter_map(|m| by_mac(*m)));
        }
        out
    }
}

impl DesiredState {
    /// The router's guest nics (see [`GuestNics`]).
    pub fn guest_nics(&self) -> GuestNics {
        GuestNics::of(&self.nics, self.snats.values(), &self.dhcp_hosts)
    }

    /// The nic serving `host` (see [`HostNic`]).
    pub fn host_nic(&self, host: &DhcpHost) -> HostNic {
        host_nic(&self.nics, host)
    }
}

/// Nics and DHCP hosts for tests: MACs `fa:7e:00:00:00:NN` (nics) and `fa:3c:00:00:00:NN`
/// (hosts), /24 networks.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::state::types::PrefixLen;

    pub(crate) fn mac(n: u8) -> MacAddr {
        format!("fa:7e:00:00:00:{n:02x}").parse().unwrap()
    }

    pub(crate) fn nic(n: u8, ip: &str) -> Nic {
        Nic {
            mac: mac(n),
            ip: ip.parse().unwrap(),
            prefix: PrefixLen::new(24).unwrap(),
            gateway: None,
            is_default_route: false,
            mtu: None,
            device_name: None,
        }
    }

    pub(crate) fn host(n: u8, ip: &str, gateway: Option<&str>, vr_nic: Option<u8>) -> DhcpHost {
        DhcpHost {
            mac: format!("fa:3c:00:00:00:{n:02x}").parse().unwrap(),
            ip: ip.parse().unwrap(),
            prefix: PrefixLen::new(24).unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            dns: Vec::new(),
            hostname: None,
            vr_nic_mac: vr_nic.map(mac),
            dns_domain: None,
            is_default_l3: true,
            mtu: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{host, mac, nic};
    use super::*;

    fn state() -> DesiredState {
        let mut s = DesiredState::default();
        for n in [nic(1, "10.10.1.20"), nic(2, "172.20.0.1")] {
            s.nics.insert(n.mac, n);
        }
        s
    }

    #[test]
    fn a_host_is_served_on_its_vr_nic_else_its_subnets_nic_else_by_address() {
        let s = state();
        let ip = |a: &str| -> Ipv4Addr { a.parse().unwrap() };
        // 1. vrNicMac first, then the desired nic holding the gateway
        let h = host(1, "172.20.0.10", Some("172.20.0.1"), Some(9));
        assert_eq!(
            s.host_nic(&h),
            HostNic {
                vr_nic: Some(mac(9)),
                subnet_nic: Some(mac(2)),
                holding: ip("172.20.0.1")
            }
        );
        assert_eq!(s.host_nic(&h).macs().collect::<Vec<_>>(), [mac(9), mac(2)]);
        // 2. no vrNicMac: the desired nic whose subnet holds the gateway
        let h = host(2, "172.20.0.11", Some("172.20.0.1"), None);
        assert_eq!(s.host_nic(&h).subnet_nic, Some(mac(2)));
        // 3. no gateway: the host's own address decides
        let h = host(3, "172.20.0.12", None, None);
        assert_eq!(
            s.host_nic(&h),
            s.host_nic(&host(4, "172.20.0.12", None, None))
        );
        assert_eq!(s.host_nic(&h).subnet_nic, Some(mac(2)));
        // 4. no desired nic holds it: the system decides by address
        let h = host(5, "172.30.0.10", Some("172.30.0.1"), None);
        assert_eq!(
            s.host_nic(&h),
            HostNic {
                vr_nic: None,
                subnet_nic: None,
                holding: ip("172.30.0.1")
            }
        );
    }

    #[test]
    fn resolving_falls_back_to_the_address_and_snat_nics_count_only_when_asked() {
        let mut s = state();
        for h in [
            host(1, "172.20.0.10", Some("172.20.0.1"), Some(9)),
            host(2, "172.30.0.10", Some("172.30.0.1"), None),
        ] {
            s.dhcp_hosts.insert(h.mac, h);
        }
        s.snats.insert(
            mac(3),
            Snat {
                public_nic_mac: mac(1),
                public_ip: "10.10.1.20".parse().unwrap(),
                private_nic_mac: mac(3),
                private_net: "172.40.0.1/24".parse().unwrap(),
            },
        );
        let names = |m: MacAddr| {
            [(mac(1), "eth1"), (mac(2), "eth2"), (mac(3), "eth3")]
                .into_iter()
                .find(|(k, _)| *k == m)
                .map(|(_, n)| n)
        };
        let holder = |ip: Ipv4Addr| {
            [("eth2", "172.20.0.0/24"), ("eth4", "172.30.0.0/24")]
                .into_iter()
                .find(|(_, c)| c.parse::<Cidr>().unwrap().contains(ip))
                .map(|(n, _)| n)
        };
        let g = s.guest_nics();
        // the missing vrNicMac (9) falls back to the desired nic holding the gateway (eth2);
        // the host no desired nic holds is placed by address (eth4)
        assert_eq!(
            g.resolve(false, names, holder),
            BTreeSet::from(["eth2", "eth4"])
        );
        assert_eq!(
            g.resolve(true, names, holder),
            BTreeSet::from(["eth2", "eth3", "eth4"])
        );
    }
}
