//! The pure transition function: `DesiredState` x `Command` -> `DesiredState`, refusing
//! commands that contradict themselves or the state (with the field that conflicts).

use super::command::Command;
use super::model::{Eip, L4Proto, PortForward, PortForwardKey};
use super::types::{MacAddr, PortRange};
use super::{DesiredState, Invalid, Parts};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

impl DesiredState {
    /// Refuses `cmd` if it contradicts itself or the state; changes nothing.
    pub fn check(&self, cmd: &Command) -> Result<(), Invalid> {
        match cmd {
            Command::SyncEips(eips) => {
                let mut seen: BTreeMap<Ipv4Addr, &Eip> = BTreeMap::new();
                for (i, eip) in eips.iter().enumerate() {
                    if let Some(prev) = seen.insert(eip.vip_ip, eip)
                        && prev != eip
                    {
                        return Err(Invalid::new(
                            format!("eips[{i}].vipIp"),
                            format!(
                                "{} is given twice with different guests ({} and {})",
                                eip.vip_ip, prev.guest_ip, eip.guest_ip
                            ),
                        ));
                    }
                }
                Ok(())
            }
            Command::CreatePortForwards(rules) => {
                check_port_forwards(&self.port_forwards, rules)?;
                self.check_forwards_against_listeners(rules)
            }
            Command::SyncPortForwards(rules) => {
                check_port_forwards(&crate::state::Table::new(), rules)?;
                self.check_forwards_against_listeners(rules)
            }
            Command::RefreshLb(lbs) => self.check_lb_refresh(lbs),
            _ => Ok(()),
        }
    }

    /// Applies `cmd` to `self` after [`DesiredState::check`] and says which parts it wrote.
    /// On error `self` is unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Result<Parts, Invalid> {
        self.check(cmd)?;
        Ok(self.apply_checked(cmd))
    }

    /// Applies `cmd`, which [`DesiredState::check`] (or `check_with`) accepted on this very
    /// state, and says which parts it wrote.
    pub fn apply_checked(&mut self, cmd: &Command) -> Parts {
        match cmd {
            Command::Init {
                uuid,
                restart_dnsmasq_after,
            } => {
                self.uuid.clone_from(uuid);
                self.restart_dnsmasq_after = *restart_dnsmasq_after;
            }
            Command::ApplianceInit => {}
            Command::ConfigureNics(nics) => {
                for nic in nics {
                    self.nics.insert(nic.mac, nic.clone());
                }
            }
            Command::RemoveNics(macs) => {
                for mac in macs {
                    self.nics.remove(mac);
                }
            }
            Command::AddDhcp { hosts, rebuild } => {
                if *rebuild {
                    self.dhcp_hosts.clear();
                }
                // A new MAC for an address replaces the old host of that address. The index
                // keeps a rebuild of thousands of hosts linear.
                let mut mac_of_ip: HashMap<Ipv4Addr, MacAddr> =
                    self.dhcp_hosts.values().map(|h| (h.ip, h.mac)).collect();
                for host in hosts {
                    if let Some(old) = mac_of_ip.insert(host.ip, host.mac)
                        && old != host.mac
                    {
                        self.dhcp_hosts.remove(&old);
                    }
                    if let Some(prev) = self.dhcp_hosts.insert(host.mac, host.clone())
                        && prev.ip != host.ip
                        && mac_of_ip.get(&prev.ip) == Some(&host.mac)
                    {
                        mac_of_ip.remove(&prev.ip);
                    }
                }
            }
            Command::RemoveDhcp(hosts) => {
                for host in hosts {
                    self.dhcp_hosts.remove(&host.mac);
                }
            }
            Command::SetSnat(snat) => {
                self.snats.insert(snat.private_nic_mac, snat.clone());
            }
            Command::SyncSnat(entries) => {
                for (snat, enabled) in entries {
                    if *enabled {
                        self.snats.insert(snat.private_nic_mac, snat.clone());
                    } else {
                        self.snats.remove(&snat.private_nic_mac);
                    }
                }
            }
            Command::RemoveSnat(snats) => {
                for snat in snats {
                    self.snats.remove(&snat.private_nic_mac);
                }
            }
            Command::SetDns(servers) => {
                for server in servers {
                    if !self.dns_servers.contains(server) {
                        self.dns_servers.push(*server);
                    }
                }
            }
            Command::RemoveDns(servers) => {
                self.dns_servers.retain(|s| !servers.contains(s));
            }
            Command::CreateVips(vips) => {
                for vip in vips {
                    self.vips.insert(vip.ip, vip.clone());
                }
            }
            Command::RemoveVips(vips) => {
                for vip in vips {
                    self.vips.remove(&vip.ip);
                }
            }
            Command::CreateEip(eip) => {
                self.eips.insert(eip.vip_ip, eip.clone());
            }
            Command::RemoveEip(eip) => {
                self.eips.remove(&eip.vip_ip);
            }
            Command::SyncEips(eips) => {
                self.eips = eips.iter().map(|e| (e.vip_ip, e.clone())).collect();
            }
            Command::CreatePortForwards(rules) => {
                for rule in rules {
                    self.port_forwards.insert(rule.key(), rule.clone());
                }
            }
            Command::RevokePortForwards(rules) => {
                for rule in rules {
                    self.port_forwards.remove(&rule.key());
                }
            }
            Command::SyncPortForwards(rules) => {
                self.port_forwards = rules.iter().map(|r| (r.key(), r.clone())).collect();
            }
            Command::RefreshFirewall(rules) => {
                self.firewall.clone_from(rules);
            }
            Command::RefreshLb(lbs) => self.apply_lb_refresh(lbs),
            Command::DeleteLb(names) => self.apply_lb_delete(names),
            Command::EnableHa(cfg) => self.ha = Some(cfg.clone()),
        }
        cmd.parts()
    }
}

/// The forward of `existing` (free of overlaps) on the same VIP and protocol whose ports
/// overlap `ports`, if any.
pub(super) fn overlapping<'a>(
    existing: &'a crate::state::Table<PortForwardKey, PortForward>,
    vip_ip: Ipv4Addr,
    protocol: L4Proto,
    ports: PortRange,
) -> impl Iterator<Item = &'a PortForward> + 'a {
    let lo = PortForwardKey {
        vip_ip,
        protocol,
        vip_ports: PortRange { start: 0, end: 0 },
    };
    let hi = PortForwardKey {
        vip_ip,
        protocol,
        vip_ports: PortRange {
            start: ports.end,
            end: u16::MAX,
        },
    };
    // The forwards of one VIP and protocol never overlap each other, so ordered by start they
    // are ordered by end too: of those starting at or below `ports.end`, only the last can
    // reach `ports.start`. One lookup, whatever the number of forwards on the VIP.
    existing
        .range(lo..=hi)
        .next_back()
        .map(|(_, pf)| pf)
        .into_iter()
        .filter(move |pf| pf.vip_ports.overlaps(ports))
}

/// Refuses a rule whose VIP ports overlap another rule's on the same VIP and protocol, in
/// `existing` or earlier in `rules`. Re-adding a rule identical to an existing one is fine.
fn check_port_forwards(
    existing: &crate::state::Table<PortForwardKey, PortForward>,
    rules: &[PortForward],
) -> Result<(), Invalid> {
    let mut accepted: crate::state::Table<PortForwardKey, PortForward> = crate::state::Table::new();
    for (i, rule) in rules.iter().enumerate() {
        if existing.get(&rule.key()) == Some(rule) || accepted.get(&rule.key()) == Some(rule) {
            continue;
        }
        let clash = overlapping(existing, rule.vip_ip, rule.protocol, rule.vip_ports)
            .chain(overlapping(
                &accepted,
                rule.vip_ip,
                rule.protocol,
                rule.vip_ports,
            ))
            .next();
        if let Some(other) = clash {
            return Err(Invalid::new(
                format!("rules[{i}]"),
                format!(
                    "{} {}:{}-{} conflicts with the forward of {}:{}-{} to {}",
                    rule.protocol.name(),
                    rule.vip_ip,
                    rule.vip_ports.start,
                    rule.vip_ports.end,
                    other.vip_ip,
                    other.vip_ports.start,
                    other.vip_ports.end,
                    other.private_ip
                ),
            ));
        }
        accepted.insert(rule.key(), rule.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dhcp(mac: &str, ip: &str) -> crate::state::model::DhcpHost {
        crate::state::model::DhcpHost {
            mac: mac.parse().unwrap(),
            ip: ip.parse().unwrap(),
            prefix: crate::state::types::PrefixLen::new(24).unwrap(),
            gateway: None,
            dns: Vec::new(),
            hostname: None,
            vr_nic_mac: None,
            dns_domain: None,
            is_default_l3: true,
            mtu: None,
        }
    }

    #[test]
    fn a_dhcp_address_has_one_owner() {
        let mut s = DesiredState::default();
        let add = |hosts| Command::AddDhcp {
            hosts,
            rebuild: false,
        };
        s.apply(&add(vec![dhcp("fa:00:00:00:00:01", "10.0.0.1")]))
            .unwrap();
        // The address moves to another MAC and the first MAC moves to another address.
        s.apply(&add(vec![
            dhcp("fa:00:00:00:00:02", "10.0.0.1"),
            dhcp("fa:00:00:00:00:01", "10.0.0.2"),
        ]))
        .unwrap();
        let owners: Vec<(String, String)> = s
            .dhcp_hosts
            .values()
            .map(|h| (h.mac.to_string(), h.ip.to_string()))
            .collect();
        assert_eq!(
            owners,
            [
                ("fa:00:00:00:00:01".into(), "10.0.0.2".into()),
                ("fa:00:00:00:00:02".into(), "10.0.0.1".into())
            ]
        );
        // A MAC moving away frees its old address; a later claim of it displaces no one.
        s.apply(&add(vec![
            dhcp("fa:00:00:00:00:02", "10.0.0.3"),
            dhcp("fa:00:00:00:00:03", "10.0.0.1"),
        ]))
        .unwrap();
        assert_eq!(s.dhcp_hosts.len(), 3);
    }

    fn pf(start: u16, end: u16, private: &str) -> PortForward {
        PortForward {
            vip_ip: "10.10.1.56".parse().unwrap(),
            protocol: L4Proto::Tcp,
            vip_ports: PortRange::new(start, end).unwrap(),
            private_ip: private.parse().unwrap(),
            private_ports: PortRange::new(start, end).unwrap(),
            private_mac: "fa:7e:4b:ad:11:02".parse().unwrap(),
            allowed_cidr: None,
            snat_inbound: false,
        }
    }

    #[test]
    fn overlapping_port_forward_is_refused_and_state_kept() {
        let mut s = DesiredState::default();
        s.apply(&Command::CreatePortForwards(vec![pf(
            8080,
            8090,
            "172.20.0.15",
        )]))
        .unwrap();
        let before = s.clone();
        let err = s
            .apply(&Command::CreatePortForwards(vec![
                pf(9000, 9000, "172.20.0.16"),
                pf(8090, 8095, "172.20.0.16"),
            ]))
            .unwrap_err();
        assert_eq!(err.field, "rules[1]");
        assert!(err.reason.contains("conflicts"), "{err}");
        assert_eq!(s, before);
        // identical re-create is idempotent
        s.apply(&Command::CreatePortForwards(vec![pf(
            8080,
            8090,
            "172.20.0.15",
        )]))
        .unwrap();
        assert_eq!(s, before);
    }

    #[test]
    fn sync_replaces_and_remove_dns_is_exact() {
        let mut s = DesiredState::default();
        s.apply(&Command::SyncPortForwards(vec![pf(1, 2, "172.20.0.15")]))
            .unwrap();
        s.apply(&Command::SyncPortForwards(vec![pf(3, 4, "172.20.0.15")]))
            .unwrap();
        assert_eq!(s.port_forwards.len(), 1);
        let a = "8.8.8.8".parse().unwrap();
        let b = "8.8.8.88".parse().unwrap();
        s.apply(&Command::SetDns(vec![a, b, a])).unwrap();
        assert_eq!(s.dns_servers, vec![a, b]);
        s.apply(&Command::RemoveDns(vec![a])).unwrap();
        assert_eq!(s.dns_servers, vec![b]);
    }
}
