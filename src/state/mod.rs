//! The desired state: what the management node asked for, typed and validated, with a pure
//! `apply` for every command and durable storage.

pub mod apply;
pub mod change;
pub mod command;
pub mod counts;
pub mod eips;
pub mod facts;
pub mod guests;
pub mod ha;
pub mod lb;
pub mod model;
pub mod store;
pub mod types;

use model::{DhcpHost, FirewallRule, Nic, PortForward, PortForwardKey, Snat, Vip};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use types::MacAddr;

pub use change::{Change, Parts};
pub use command::{Command, Feature};

/// A map of the desired state: persistent, so cloning the state for a command costs nothing
/// and the clone shares every entry it does not change.
pub type Table<K, V> = imbl::OrdMap<K, V>;

/// A value the agent refuses, with the path of the field that carries it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// Path of the field in the request, e.g. `eip.vipIp` or `rules[2].vipPortEnd`.
    pub field: String,
    /// Why the value is refused.
    pub reason: String,
}

impl Invalid {
    /// A refusal of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Everything the router should be. Maps are keyed by what identifies an entry on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DesiredState {
    /// The router VM's uuid from `/init`.
    pub uuid: Option<String>,
    /// Restart dnsmasq after this many reloads (0: never).
    pub restart_dnsmasq_after: u32,
    /// Nics by MAC.
    pub nics: Table<MacAddr, Nic>,
    /// VIPs by address.
    pub vips: Table<Ipv4Addr, Vip>,
    /// SNAT by the router's guest nic MAC.
    pub snats: Table<MacAddr, Snat>,
    /// EIPs by VIP.
    pub eips: eips::EipTable,
    /// Port forwards by claimed VIP ports (stored as a list: JSON keys must be strings).
    #[serde(with = "port_forward_list")]
    pub port_forwards: Table<PortForwardKey, PortForward>,
    /// The appliance firewall's accept rules, in the order given.
    pub firewall: Vec<FirewallRule>,
    /// Static DHCP hosts by guest MAC.
    pub dhcp_hosts: Table<MacAddr, DhcpHost>,
    /// Upstream DNS servers, in the order given.
    pub dns_servers: Vec<Ipv4Addr>,
    /// Load balancer listeners by (load balancer, listener) uuid.
    #[serde(with = "lb::listener_list")]
    pub lb_listeners: Table<lb::LbKey, lb::LbListener>,
    /// Router HA (`/enableVyosha`), when configured.
    pub ha: Option<ha::HaConfig>,
}

mod port_forward_list {
    use super::{PortForward, PortForwardKey, Table};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        map: &Table<PortForwardKey, PortForward>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Table<PortForwardKey, PortForward>, D::Error> {
        let list = Vec::<PortForward>::deserialize(d)?;
        Ok(list.into_iter().map(|pf| (pf.key(), pf)).collect())
    }
}

impl DesiredState {
    /// Counts of entries, for logs and `/ping`-side reporting.
    pub fn summary(&self) -> String {
        format!(
            "nics={} vips={} snats={} eips={} port_forwards={} firewall_rules={} dhcp_hosts={} dns_servers={} lb_listeners={} ha={}",
            self.nics.len(),
            self.vips.len(),
            self.snats.len(),
            self.eips.len(),
            self.port_forwards.len(),
            self.firewall.len(),
            self.dhcp_hosts.len(),
            self.dns_servers.len(),
            self.lb_listeners.len(),
            if self.ha.is_some() { "on" } else { "off" }
        )
    }
}
