//! The appliance firewall: `/appliancevm/refreshfirewall`.

use super::bounded;
use crate::protocol::fields::*;
use crate::state::Invalid;
use crate::state::model::{FirewallProto, FirewallRule};
use serde::Deserialize;

/// `ApplianceVmFirewallRuleTO`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallRuleTo {
    #[serde(default, deserialize_with = "bounded::text")]
    pub protocol: Option<String>,
    pub start_port: Option<i64>,
    pub end_port: Option<i64>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub allow_cidr: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub source_ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub dest_ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub nic_mac: Option<String>,
}

/// `/appliancevm/refreshfirewall`
#[derive(Debug, Default, Deserialize)]
pub struct RefreshFirewallCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub rules: Option<Vec<FirewallRuleTo>>,
}

impl FirewallRuleTo {
    /// An appliance firewall rule.
    pub fn validate(&self, at: &str) -> Result<FirewallRule, Invalid> {
        let protocol = match given(&self.protocol) {
            Some(p) if p.eq_ignore_ascii_case("tcp") => FirewallProto::Tcp,
            Some(p) if p.eq_ignore_ascii_case("udp") => FirewallProto::Udp,
            Some(p) if p.eq_ignore_ascii_case("all") => FirewallProto::All,
            Some(p) => {
                return Err(Invalid::new(
                    format!("{at}.protocol"),
                    format!("{} is not tcp, udp or all", quote(p)),
                ));
            }
            None => return Err(Invalid::new(format!("{at}.protocol"), "missing")),
        };
        Ok(FirewallRule {
            protocol,
            ports: port_range(
                &format!("{at}.startPort"),
                &self.start_port,
                "endPort",
                &self.end_port,
            )?,
            nic_mac: req_mac(&format!("{at}.nicMac"), &self.nic_mac)?,
            source: opt_cidr(&format!("{at}.sourceIp"), &self.source_ip)?,
            dest: opt_cidr(&format!("{at}.destIp"), &self.dest_ip)?,
            allow_cidr: opt_cidr(&format!("{at}.allowCidr"), &self.allow_cidr)?,
        })
    }
}
