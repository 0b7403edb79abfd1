//! How many entries of each kind the desired state holds: what `/metrics` and `vr-agent status`
//! show. O(1) to take (map lengths), so the writer publishes it after every command.

use super::DesiredState;

/// Entries by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryCounts {
    /// Elastic IPs.
    pub eips: usize,
    /// Port forwarding rules.
    pub port_forwards: usize,
    /// SNAT entries (guest nics).
    pub snats: usize,
    /// VIPs (extra addresses on the router's nics).
    pub vips: usize,
    /// Appliance firewall rules.
    pub firewall_rules: usize,
    /// Static DHCP hosts.
    pub dhcp_hosts: usize,
    /// Nics configured by `/configurenic`.
    pub nics: usize,
    /// Upstream DNS servers.
    pub dns_servers: usize,
}

impl EntryCounts {
    /// The counts of `state`.
    pub fn of(state: &DesiredState) -> EntryCounts {
        EntryCounts {
            eips: state.eips.len(),
            port_forwards: state.port_forwards.len(),
            snats: state.snats.len(),
            vips: state.vips.len(),
            firewall_rules: state.firewall.len(),
            dhcp_hosts: state.dhcp_hosts.len(),
            nics: state.nics.len(),
            dns_servers: state.dns_servers.len(),
        }
    }

    /// `(kind, count)` in a fixed order; the kind is the metric label and the table row.
    pub fn by_kind(&self) -> [(&'static str, usize); 8] {
        [
            ("eips", self.eips),
            ("port_forwards", self.port_forwards),
            ("snats", self.snats),
            ("vips", self.vips),
            ("firewall_rules", self.firewall_rules),
            ("dhcp_hosts", self.dhcp_hosts),
            ("nics", self.nics),
            ("dns_servers", self.dns_servers),
        ]
    }
}
