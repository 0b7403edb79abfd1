//! Rails that keep the agent reachable, checked against a few facts about the system (the
//! management nic's address, the agent's ports, the nics' subnets) before any syscall.
//! Pure: the facts are gathered by the caller and passed in.

use super::command::Command;
use super::model::{Eip, LbListener, PortForward};
use super::types::{Cidr, MacAddr};
use super::{DesiredState, Invalid};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Port of ssh, which the management node uses to reach the router too.
pub const SSH_PORT: u16 = 22;

/// What the rails need to know about the system, gathered by the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SystemFacts {
    /// The management nic's addresses with their prefixes.
    pub mgmt_addrs: Vec<Cidr>,
    /// Addresses of the management node, when known.
    pub mgmt_nodes: Vec<Ipv4Addr>,
    /// Ports that must stay the agent's on the management address: its listen ports and ssh.
    pub protected_ports: Vec<u16>,
    /// Addresses (with prefixes) of the router's nics by MAC, as the system shows them.
    pub nic_addrs: BTreeMap<MacAddr, Vec<Cidr>>,
}

impl SystemFacts {
    /// True if the rails look at `cmd` (so the facts are worth gathering).
    pub fn needed(cmd: &Command) -> bool {
        matches!(
            cmd,
            Command::CreateEip(_)
                | Command::SyncEips(_)
                | Command::CreatePortForwards(_)
                | Command::SyncPortForwards(_)
                | Command::CreateVips(_)
                | Command::RemoveVips(_)
                | Command::AddDhcp { .. }
                | Command::RefreshLb(_)
        )
    }

    fn is_mgmt_addr(&self, ip: Ipv4Addr) -> bool {
        self.mgmt_addrs.iter().any(|c| c.addr == ip)
    }

    /// Addresses of the nic `mac` as the state and the system know them.
    fn subnets_of(&self, state: &DesiredState, mac: MacAddr) -> Vec<Cidr> {
        let mut out: Vec<Cidr> = self.nic_addrs.get(&mac).cloned().unwrap_or_default();
        if let Some(nic) = state.nics.get(&mac) {
            out.push(Cidr::new(nic.ip, nic.prefix));
        }
        out
    }

    /// True if `ip` is one of the router's own addresses.
    fn is_router_addr(&self, state: &DesiredState, ip: Ipv4Addr) -> bool {
        self.is_mgmt_addr(ip)
            || self.nic_addrs.values().flatten().any(|c| c.addr == ip)
            || state.nics.values().any(|n| n.ip == ip)
    }

    /// Refuses `cmd` if it would cut the agent off or point NAT at the wrong place.
    pub fn check(&self, state: &DesiredState, cmd: &Command) -> Result<(), Invalid> {
        match cmd {
            Command::CreateEip(eip) => self.check_eip(state, "eip", eip),
            Command::SyncEips(eips) => eips
                .iter()
                .enumerate()
                .try_for_each(|(i, e)| self.check_eip(state, &format!("eips[{i}]"), e)),
            Command::CreatePortForwards(rules) | Command::SyncPortForwards(rules) => rules
                .iter()
                .enumerate()
                .try_for_each(|(i, r)| self.check_forward(state, &format!("rules[{i}]"), r)),
            Command::CreateVips(vips) | Command::RemoveVips(vips) => {
                for (i, vip) in vips.iter().enumerate() {
                    if self.is_mgmt_addr(vip.ip) {
                        return Err(Invalid::new(
                            format!("vips[{i}].ip"),
                            format!(
                                "\"{}\" is the management nic's address; the agent would be cut off",
                                vip.ip
                            ),
                        ));
                    }
                }
                Ok(())
            }
            Command::AddDhcp { hosts, .. } => {
                for (i, host) in hosts.iter().enumerate() {
                    if self.is_router_addr(state, host.ip) {
                        return Err(Invalid::new(
                            format!("dhcpEntries[{i}].ip"),
                            format!("\"{}\" is the router's own address", host.ip),
                        ));
                    }
                }
                Ok(())
            }
            Command::RefreshLb(lbs) => lbs
                .iter()
                .enumerate()
                .try_for_each(|(i, l)| self.check_listener(state, &format!("lbs[{i}]"), l)),
            _ => Ok(()),
        }
    }

    /// A listener's VIP must be held or covered by a router nic (a VIP of the state, a nic's
    /// subnet, or an address the system shows), as an EIP's is; never the management address
    /// on a port of the agent or ssh.
    fn check_listener(
        &self,
        state: &DesiredState,
        at: &str,
        l: &LbListener,
    ) -> Result<(), Invalid> {
        let ports = if self.protected_ports.contains(&l.load_balancer_port) {
            format!(" and {} is the agent's or ssh's port", l.load_balancer_port)
        } else {
            String::new()
        };
        if !ports.is_empty() {
            self.check_vip_addr(format!("{at}.vip"), l.vip, &ports)?;
        }
        let covered = state.vips.contains_key(&l.vip)
            || state
                .nics
                .values()
                .any(|n| Cidr::new(n.ip, n.prefix).contains(l.vip))
            || self.nic_addrs.values().flatten().any(|c| c.contains(l.vip));
        if covered {
            Ok(())
        } else {
            Err(Invalid::new(
                format!("{at}.vip"),
                format!(
                    "listener {}: no nic of the router carries \"{}\" or a subnet containing it (create the VIP first)",
                    l.listener_uuid, l.vip
                ),
            ))
        }
    }

    fn check_vip_addr(&self, field: String, ip: Ipv4Addr, ports: &str) -> Result<(), Invalid> {
        if self.is_mgmt_addr(ip) {
            return Err(Invalid::new(
                field,
                format!(
                    "\"{ip}\" is the management nic's address{ports}; the agent would be cut off"
                ),
            ));
        }
        Ok(())
    }

    fn check_guest(
        &self,
        state: &DesiredState,
        field: String,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> Result<(), Invalid> {
        if self.is_mgmt_addr(ip) {
            return Err(Invalid::new(
                field,
                format!("\"{ip}\" is the management nic's address, not a guest's"),
            ));
        }
        if self.mgmt_nodes.contains(&ip) {
            return Err(Invalid::new(
                field,
                format!("\"{ip}\" is the management node's address, not a guest's"),
            ));
        }
        let subnets = self.subnets_of(state, mac);
        if !subnets.is_empty() && !subnets.iter().any(|c| c.contains(ip)) {
            let list: Vec<String> = subnets.iter().map(|c| c.network().to_string()).collect();
            return Err(Invalid::new(
                field,
                format!(
                    "\"{ip}\" is not in the subnet of the nic {mac} ({})",
                    list.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn check_eip(&self, state: &DesiredState, at: &str, eip: &Eip) -> Result<(), Invalid> {
        self.check_vip_addr(format!("{at}.vipIp"), eip.vip_ip, "")?;
        self.check_guest(
            state,
            format!("{at}.guestIp"),
            eip.guest_ip,
            eip.private_mac,
        )
    }

    fn check_forward(
        &self,
        state: &DesiredState,
        at: &str,
        pf: &PortForward,
    ) -> Result<(), Invalid> {
        let hit: Vec<String> = self
            .protected_ports
            .iter()
            .filter(|p| (pf.vip_ports.start..=pf.vip_ports.end).contains(p))
            .map(u16::to_string)
            .collect();
        let ports = if hit.is_empty() {
            String::new()
        } else {
            format!(
                " and the ports hold the agent's or ssh's port {}",
                hit.join(", ")
            )
        };
        self.check_vip_addr(format!("{at}.vipIp"), pf.vip_ip, &ports)?;
        self.check_guest(
            state,
            format!("{at}.privateIp"),
            pf.private_ip,
            pf.private_mac,
        )
    }
}

impl DesiredState {
    /// [`DesiredState::check`] plus the rails of [`SystemFacts::check`]. Changes nothing.
    pub fn check_with(&self, cmd: &Command, facts: &SystemFacts) -> Result<(), Invalid> {
        self.check(cmd)?;
        facts.check(self, cmd)
    }
}
