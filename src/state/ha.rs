//! Router HA as the management node configures it (`/enableVyosha`): the pair's heartbeat, the
//! monitors, and the addresses only the master carries. Part of the desired state (persisted,
//! re-applied at start); which node is master is not: keepalived decides that at run time.

use super::types::{MacAddr, PrefixLen};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The largest advert interval accepted, in seconds (keepalived takes up to 255; a failover
/// after 3 x 60 s is no longer HA).
pub const MAX_ADVERT_SECS: u32 = 60;

/// One address that only the master carries (a guest gateway, a public address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaVip {
    /// MAC of the router nic that carries it.
    pub mac: MacAddr,
    /// The address.
    pub ip: Ipv4Addr,
    /// Its prefix.
    pub prefix: PrefixLen,
    /// The management node's category of the network (`Private`, `Public`, ...), kept for the
    /// record.
    pub category: Option<String>,
}

/// HA of this router: one VRRP instance with its peer over the heartbeat nic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaConfig {
    /// VRRP advert interval, in seconds (1..=[`MAX_ADVERT_SECS`]).
    pub advert_secs: u32,
    /// MAC of the nic the pair talks over (VRRP and conntrackd).
    pub heartbeat_mac: MacAddr,
    /// This router's address on the heartbeat nic.
    pub local_ip: Ipv4Addr,
    /// The peer's address on the heartbeat nic.
    pub peer_ip: Ipv4Addr,
    /// Addresses pinged to decide whether this node may be master (any unreachable: fault).
    pub monitors: Vec<Ipv4Addr>,
    /// Addresses only the master carries.
    pub vips: Vec<HaVip>,
    /// Where every transition is posted (`commandpath: /vpc/hastatus`).
    pub callback_url: Option<String>,
}

impl HaConfig {
    /// The VRRP router id both nodes of the pair derive from their two addresses (1..=255).
    pub fn vrid(&self) -> u8 {
        let (a, b) = if self.local_ip < self.peer_ip {
            (self.local_ip, self.peer_ip)
        } else {
            (self.peer_ip, self.local_ip)
        };
        let x = u32::from(a).wrapping_mul(31).wrapping_add(u32::from(b));
        let folded = (x ^ (x >> 8) ^ (x >> 16) ^ (x >> 24)) & 0xff;
        (folded % 255 + 1) as u8
    }

    /// The same settings but the addresses only the master carries (a change of those only
    /// needs no keepalived reload).
    pub fn without_vips(&self) -> HaConfig {
        HaConfig {
            vips: Vec::new(),
            callback_url: None,
            ..self.clone()
        }
    }
}

/// Which role this router has in its pair, as `/syncVpcRouterHa` and `/ping` say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// No HA configured: the router carries its data plane.
    NoHa,
    /// Standby (also fault and stopped): HA addresses absent, dnsmasq not serving.
    Backup,
    /// Active: carries the HA addresses and serves DHCP/DNS.
    Master,
}

impl Role {
    /// The wire name (`haStatus`).
    pub fn wire(self) -> &'static str {
        match self {
            Role::NoHa => "NoHa",
            Role::Backup => "Backup",
            Role::Master => "Master",
        }
    }

    /// True when this node carries the data plane (the HA addresses, dnsmasq).
    pub fn carries_data_plane(self) -> bool {
        matches!(self, Role::NoHa | Role::Master)
    }

    /// The role this node has in `ha` (configured or not) given the last VRRP decision
    /// (`None`: none yet, which is backup: a node comes up without its data plane).
    pub fn of(ha: Option<&HaConfig>, vrrp: Option<Role>) -> Role {
        match (ha, vrrp) {
            (None, _) => Role::NoHa,
            (Some(_), Some(Role::Master)) => Role::Master,
            (Some(_), _) => Role::Backup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(local: &str, peer: &str) -> HaConfig {
        HaConfig {
            advert_secs: 1,
            heartbeat_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            local_ip: local.parse().unwrap(),
            peer_ip: peer.parse().unwrap(),
            monitors: vec![],
            vips: vec![],
            callback_url: None,
        }
    }

    #[test]
    fn both_nodes_derive_the_same_router_id() {
        let a = cfg("192.168.7.1", "192.168.7.2");
        let b = cfg("192.168.7.2", "192.168.7.1");
        assert_eq!(a.vrid(), b.vrid());
        assert!(a.vrid() >= 1);
        assert_ne!(a.vrid(), cfg("10.0.0.1", "10.0.0.2").vrid());
    }

    #[test]
    fn no_decision_yet_is_backup() {
        let c = cfg("192.168.7.1", "192.168.7.2");
        assert_eq!(Role::of(Some(&c), None), Role::Backup);
        assert_eq!(Role::of(Some(&c), Some(Role::Master)), Role::Master);
        assert_eq!(Role::of(None, Some(Role::Master)), Role::NoHa);
        assert!(!Role::Backup.carries_data_plane());
    }
}
