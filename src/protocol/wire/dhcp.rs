//! DHCP hosts (`/adddhcp`, `/removedhcp`) and the DNS forwarder's servers (`/setdns`,
//! `/removedns`).

use super::{bounded, each};
use crate::protocol::fields::*;
use crate::state::Invalid;
use crate::state::model::DhcpHost;
use serde::Deserialize;

/// `DhcpInfo`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpInfo {
    #[serde(default, deserialize_with = "bounded::text")]
    pub ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub mac: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub netmask: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub gateway: Option<String>,
    #[serde(default, deserialize_with = "bounded::list")]
    pub dns: Option<Vec<bounded::Text>>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub hostname: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub vr_nic_mac: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub dns_domain: Option<String>,
    pub is_default_l3_network: Option<bool>,
    pub mtu: Option<i64>,
}

/// `/adddhcp`, `/removedhcp`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub dhcp_entries: Option<Vec<DhcpInfo>>,
    pub rebuild: Option<bool>,
}

/// `DnsInfo`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsInfo {
    #[serde(default, deserialize_with = "bounded::text")]
    pub dns_address: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub nic_mac: Option<String>,
}

/// `/setdns`, `/removedns`
#[derive(Debug, Default, Deserialize)]
pub struct DnsCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub dns: Option<Vec<DnsInfo>>,
}

impl DhcpInfo {
    /// A static DHCP host.
    pub fn validate(&self, at: &str) -> Result<DhcpHost, Invalid> {
        self.validate_noted(at).map(|(host, _)| host)
    }

    /// A static DHCP host, and a note when its hostname is one dnsmasq would read as something
    /// else (a keyword, an address, a lease time): such a name is dropped, the host keeps its
    /// lease under the default name.
    pub fn validate_noted(&self, at: &str) -> Result<(DhcpHost, Option<String>), Invalid> {
        let mac = req_mac(&format!("{at}.mac"), &self.mac)?;
        let netmask_field = format!("{at}.netmask");
        let prefix = req_netmask(&netmask_field, &self.netmask)?;
        if prefix.is_empty() {
            return Err(Invalid::new(
                netmask_field,
                "\"0.0.0.0\" is not a usable netmask for a host",
            ));
        }
        let ip_field = format!("{at}.ip");
        let ip = req_host_ipv4(&ip_field, &self.ip, Some(prefix))?;
        let gateway = opt_host_ipv4(&format!("{at}.gateway"), &self.gateway, None)?;
        if gateway == Some(ip) {
            return Err(Invalid::new(
                ip_field,
                format!("\"{ip}\" is the gateway's (the router's) address"),
            ));
        }
        let hostname_field = format!("{at}.hostname");
        let mut hostname = opt_dns_name(&hostname_field, &self.hostname)?;
        let mut note = None;
        if let Some(name) = &hostname
            && let Some(why) = dnsmasq_name_problem(name)
        {
            note = Some(format!(
                "{hostname_field}: {} is {why}; not passed to dnsmasq as a name",
                quote(name)
            ));
            hostname = None;
        }
        let host = DhcpHost {
            mac,
            ip,
            prefix,
            gateway,
            dns: each(&format!("{at}.dns"), &self.dns, |f, s| dns_server(f, &s.0))?,
            hostname,
            vr_nic_mac: opt_mac(&format!("{at}.vrNicMac"), &self.vr_nic_mac)?,
            dns_domain: opt_dns_name(&format!("{at}.dnsDomain"), &self.dns_domain)?,
            is_default_l3: self.is_default_l3_network.unwrap_or(false),
            mtu: opt_mtu(&format!("{at}.mtu"), &self.mtu)?,
        };
        Ok((host, note))
    }
}
