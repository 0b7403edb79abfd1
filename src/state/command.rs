//! Typed changes to the desired state, one per management-node command that changes state.

use super::Parts;
use super::model::{
    DhcpHost, Eip, FirewallRule, LbDelete, LbListener, Nic, PortForward, Snat, Vip,
};
use super::types::MacAddr;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A validated command that changes the desired state. Also the record of the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", content = "args", rename_all = "snake_case")]
pub enum Command {
    /// `/init`: who we are and the dnsmasq restart knob.
    Init {
        /// The router VM's uuid.
        uuid: Option<String>,
        /// Restart dnsmasq after this many reloads; 0 means never.
        restart_dnsmasq_after: u32,
    },
    /// `/appliancevm/init`: no upgrade scripts to run.
    ApplianceInit,
    /// `/configurenic`
    ConfigureNics(Vec<Nic>),
    /// `/removenic`
    RemoveNics(Vec<MacAddr>),
    /// `/adddhcp`
    AddDhcp {
        /// Hosts to add or update.
        hosts: Vec<DhcpHost>,
        /// Replace every host with `hosts`.
        rebuild: bool,
    },
    /// `/removedhcp`
    RemoveDhcp(Vec<DhcpHost>),
    /// `/setsnat`
    SetSnat(Snat),
    /// `/syncsnat`: (entry, enabled)
    SyncSnat(Vec<(Snat, bool)>),
    /// `/removesnat`
    RemoveSnat(Vec<Snat>),
    /// `/setdns`
    SetDns(Vec<Ipv4Addr>),
    /// `/removedns`
    RemoveDns(Vec<Ipv4Addr>),
    /// `/createvip`
    CreateVips(Vec<Vip>),
    /// `/removevip`
    RemoveVips(Vec<Vip>),
    /// `/createeip`
    CreateEip(Eip),
    /// `/removeeip`
    RemoveEip(Eip),
    /// `/synceip`
    SyncEips(Vec<Eip>),
    /// `/createportforwarding`
    CreatePortForwards(Vec<PortForward>),
    /// `/revokeportforwarding`
    RevokePortForwards(Vec<PortForward>),
    /// `/syncportforwarding`
    SyncPortForwards(Vec<PortForward>),
    /// `/appliancevm/refreshfirewall`
    RefreshFirewall(Vec<FirewallRule>),
    /// `/lb/refresh`
    RefreshLb(Vec<LbListener>),
    /// `/lb/delete`
    DeleteLb(Vec<LbDelete>),
    /// `/enableVyosha`: configure (or reconfigure) router HA.
    EnableHa(super::ha::HaConfig),
}

/// The part of the router a command changes; each is applied by its own backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// Identity and knobs only; nothing in the kernel.
    Core,
    /// Nics and VIPs (netlink).
    Links,
    /// SNAT, EIP, port forwarding (nftables).
    Nat,
    /// The appliance firewall (nftables).
    Firewall,
    /// Static DHCP hosts (dnsmasq).
    Dhcp,
    /// Upstream DNS servers (dnsmasq).
    Dns,
    /// Load balancers (haproxy).
    LoadBalancer,
    /// Router HA (keepalived, conntrackd).
    Ha,
}

impl Feature {
    /// Lower-case name for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Core => "core",
            Feature::Links => "interfaces",
            Feature::Nat => "nat",
            Feature::Firewall => "firewall",
            Feature::Dhcp => "dhcp",
            Feature::Dns => "dns",
            Feature::LoadBalancer => "load balancer",
            Feature::Ha => "ha",
        }
    }
}

impl Command {
    /// The parts of the desired state this command writes.
    pub fn parts(&self) -> Parts {
        match self {
            Command::Init { .. } => Parts::IDENTITY,
            Command::ApplianceInit => Parts::NONE,
            Command::ConfigureNics(_) | Command::RemoveNics(_) => Parts::NICS,
            Command::CreateVips(_) | Command::RemoveVips(_) => Parts::VIPS,
            Command::AddDhcp { .. } | Command::RemoveDhcp(_) => Parts::DHCP_HOSTS,
            Command::SetDns(_) | Command::RemoveDns(_) => Parts::DNS_SERVERS,
            Command::SetSnat(_) | Command::SyncSnat(_) | Command::RemoveSnat(_) => Parts::SNATS,
            Command::CreateEip(_) | Command::RemoveEip(_) | Command::SyncEips(_) => Parts::EIPS,
            Command::CreatePortForwards(_)
            | Command::RevokePortForwards(_)
            | Command::SyncPortForwards(_) => Parts::PORT_FORWARDS,
            Command::RefreshFirewall(_) => Parts::FIREWALL,
            Command::RefreshLb(_) | Command::DeleteLb(_) => Parts::LISTENERS,
            Command::EnableHa(_) => Parts::HA,
        }
    }

    /// The feature whose backend applies this command.
    pub fn feature(&self) -> Feature {
        match self {
            Command::Init { .. } | Command::ApplianceInit => Feature::Core,
            Command::ConfigureNics(_)
            | Command::RemoveNics(_)
            | Command::CreateVips(_)
            | Command::RemoveVips(_) => Feature::Links,
            Command::AddDhcp { .. } | Command::RemoveDhcp(_) => Feature::Dhcp,
            Command::SetDns(_) | Command::RemoveDns(_) => Feature::Dns,
            Command::SetSnat(_)
            | Command::SyncSnat(_)
            | Command::RemoveSnat(_)
            | Command::CreateEip(_)
            | Command::RemoveEip(_)
            | Command::SyncEips(_)
            | Command::CreatePortForwards(_)
            | Command::RevokePortForwards(_)
            | Command::SyncPortForwards(_) => Feature::Nat,
            Command::RefreshFirewall(_) => Feature::Firewall,
            Command::RefreshLb(_) | Command::DeleteLb(_) => Feature::LoadBalancer,
            Command::EnableHa(_) => Feature::Ha,
        }
    }
}
