//! DHCP hosts (`/adddhcp`, `/removedhcp`) and the DNS forwarder's servers (`/setdns`,
//! `/removedns`).

use super::{bounded, each, each_req};
use crate::protocol::fields::*;
use crate::protocol::{Request, RequestError, Route, decode};
use crate::state::model::DhcpHost;
use crate::state::{Command, Invalid};
use serde::Deserialize;

/// The paths of this module.
pub const ROUTES: &[Route] = &[
    Route::new("/adddhcp", add_dhcp),
    Route::new("/removedhcp", remove_dhcp),
    Route::new("/setdns", set_dns),
    Route::new("/removedns", remove_dns),
];

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

/// `/adddhcp`, `/removedhcp`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub dhcp_entries: Option<Vec<DhcpInfo>>,
    pub rebuild: Option<bool>,
}

/// `/adddhcp`: a hostname dnsmasq would misread is dropped, with a note.
fn add_dhcp(body: &[u8], notes: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: DhcpCmd = decode(body, false)?;
    let hosts = each_req("dhcpEntries", &w.dhcp_entries, |f, d| {
        let (host, note) = d.validate_noted(f)?;
        notes.extend(note);
        Ok(host)
    })?;
    Ok(Request::Change(Command::AddDhcp {
        hosts,
        rebuild: w.rebuild.unwrap_or(false),
    }))
}

fn remove_dhcp(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: DhcpCmd = decode(body, false)?;
    let hosts = each_req("dhcpEntries", &w.dhcp_entries, |f, d| d.validate(f))?;
    Ok(Request::Change(Command::RemoveDhcp(hosts)))
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

impl DnsCmd {
    /// The servers' addresses; `usable` also refuses those dnsmasq cannot forward to
    /// (removing keeps working for whatever was stored before).
    fn servers(&self, usable: bool) -> Result<Vec<std::net::Ipv4Addr>, Invalid> {
        each_req("dns", &self.dns, |f, d| {
            let field = format!("{f}.dnsAddress");
            let ip = req_ipv4(&field, &d.dns_address)?;
            if usable {
                dns_server(&field, &ip.to_string())?;
            }
            Ok(ip)
        })
    }
}

fn set_dns(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: DnsCmd = decode(body, false)?;
    Ok(Request::Change(Command::SetDns(w.servers(true)?)))
}

fn remove_dns(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: DnsCmd = decode(body, false)?;
    Ok(Request::Change(Command::RemoveDns(w.servers(false)?)))
}
