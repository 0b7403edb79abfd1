//! The appliance firewall: `/appliancevm/refreshfirewall`.

use super::{bounded, each_req};
use crate::protocol::fields::*;
use crate::protocol::{Request, RequestError, Route, decode};
use crate::state::model::{FirewallProto, FirewallRule};
use crate::state::{Command, Invalid};
use serde::Deserialize;

/// The paths of this module.
pub const ROUTES: &[Route] = &[Route::new("/appliancevm/refreshfirewall", refresh_firewall)];

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

/// `/appliancevm/refreshfirewall`
#[derive(Debug, Default, Deserialize)]
pub struct RefreshFirewallCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub rules: Option<Vec<FirewallRuleTo>>,
}

fn refresh_firewall(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: RefreshFirewallCmd = decode(body, false)?;
    let rules = each_req("rules", &w.rules, |f, r| r.validate(f))?;
    Ok(Request::Change(Command::RefreshFirewall(rules)))
}
