//! The typed entities of the desired state: what the management node asked for, validated.

use super::types::{Cidr, MacAddr, PortRange, PrefixLen};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// One nic of the router as `/configurenic` or the bootstrap info describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// The nic is found by this MAC.
    pub mac: MacAddr,
    /// Its primary address.
    pub ip: Ipv4Addr,
    /// Prefix of the primary address.
    pub prefix: PrefixLen,
    /// Gateway of the nic's network, if any.
    pub gateway: Option<Ipv4Addr>,
    /// The default route goes through `gateway` on this nic.
    pub is_default_route: bool,
    /// MTU to set, when given.
    pub mtu: Option<u32>,
    /// Name the nic must carry (bootstrap info only).
    pub device_name: Option<String>,
}

/// A virtual IP: an extra address on the nic with `owner_mac`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vip {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its prefix (from the VIP's netmask).
    pub prefix: PrefixLen,
    /// The VIP network's gateway (unused by the data plane, kept for the record).
    pub gateway: Option<Ipv4Addr>,
    /// MAC of the router nic that carries the VIP.
    pub owner_mac: MacAddr,
}

/// Source NAT of one guest subnet behind the public nic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snat {
    /// MAC of the public nic.
    pub public_nic_mac: MacAddr,
    /// Address guest traffic is translated to.
    pub public_ip: Ipv4Addr,
    /// MAC of the router's guest nic (the key: one SNAT per guest nic).
    pub private_nic_mac: MacAddr,
    /// The guest subnet: the router's guest address with the guest netmask.
    pub private_net: Cidr,
}

/// A 1:1 NAT between a VIP and a guest address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eip {
    /// Public address (the key).
    pub vip_ip: Ipv4Addr,
    /// MAC of the router's nic on the guest network.
    pub private_mac: MacAddr,
    /// Guest address.
    pub guest_ip: Ipv4Addr,
    /// Also source-NAT inbound traffic to the router's guest address.
    pub snat_inbound: bool,
}

/// Layer-4 protocol of a port forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L4Proto {
    /// TCP
    Tcp,
    /// UDP
    Udp,
}

impl L4Proto {
    /// Lower-case name as nft and conntrack spell it.
    pub fn name(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
        }
    }
}

/// Identity of a port forward: which VIP ports of which protocol it claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortForwardKey {
    /// Public address.
    pub vip_ip: Ipv4Addr,
    /// Protocol.
    pub protocol: L4Proto,
    /// Public ports.
    pub vip_ports: PortRange,
}

/// A port forward from a VIP port range to a guest port range of equal length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    /// Public address.
    pub vip_ip: Ipv4Addr,
    /// Protocol.
    pub protocol: L4Proto,
    /// Public ports.
    pub vip_ports: PortRange,
    /// Guest address.
    pub private_ip: Ipv4Addr,
    /// Guest ports; same length as `vip_ports`, offsets preserved.
    pub private_ports: PortRange,
    /// MAC of the router's nic on the guest network.
    pub private_mac: MacAddr,
    /// Only sources inside this prefix are forwarded.
    pub allowed_cidr: Option<Cidr>,
    /// Also source-NAT forwarded traffic to the router's guest address.
    pub snat_inbound: bool,
}

impl PortForward {
    /// The ports this forward claims.
    pub fn key(&self) -> PortForwardKey {
        PortForwardKey {
            vip_ip: self.vip_ip,
            protocol: self.protocol,
            vip_ports: self.vip_ports,
        }
    }
}

/// Protocol of an appliance firewall rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallProto {
    /// TCP only
    Tcp,
    /// UDP only
    Udp,
    /// TCP and UDP
    All,
}

/// One accept rule of the appliance firewall (input to the router itself).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FirewallRule {
    /// Protocol.
    pub protocol: FirewallProto,
    /// Destination ports.
    pub ports: PortRange,
    /// The rule applies to packets arriving on the nic with this MAC.
    pub nic_mac: MacAddr,
    /// Only from this source.
    pub source: Option<Cidr>,
    /// Only to this destination.
    pub dest: Option<Cidr>,
    /// Only from sources in this prefix.
    pub allow_cidr: Option<Cidr>,
}

/// A static DHCP host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpHost {
    /// Guest nic MAC (the key).
    pub mac: MacAddr,
    /// Address handed out.
    pub ip: Ipv4Addr,
    /// Prefix of the guest network.
    pub prefix: PrefixLen,
    /// Router option.
    pub gateway: Option<Ipv4Addr>,
    /// DNS server option.
    pub dns: Vec<Ipv4Addr>,
    /// Host name, as sent (may already carry the domain).
    pub hostname: Option<String>,
    /// The router's nic on that network, when sent.
    pub vr_nic_mac: Option<MacAddr>,
    /// Domain-name option.
    pub dns_domain: Option<String>,
    /// Router and DNS options only go to hosts of the default network.
    pub is_default_l3: bool,
    /// Interface MTU option.
    pub mtu: Option<u32>,
}

pub use super::lb::{LbDelete, LbListener};
