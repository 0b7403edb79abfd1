//! SNAT, EIPs and port forwarding: the commands behind `ip vr_nat`.

use super::{bounded, each_req};
use crate::protocol::fields::*;
use crate::protocol::{Request, RequestError, Route, decode};
use crate::state::model::{Eip, L4Proto, PortForward, Snat};
use crate::state::types::Cidr;
use crate::state::{Command, Invalid};
use serde::Deserialize;

/// The paths of this module.
pub const ROUTES: &[Route] = &[
    Route::new("/setsnat", set_snat),
    Route::new("/syncsnat", sync_snat),
    Route::new("/removesnat", remove_snat),
    Route::new("/createeip", create_eip),
    Route::new("/removeeip", remove_eip),
    Route::new("/synceip", sync_eips),
    Route::new("/createportforwarding", create_port_forwards),
    Route::new("/revokeportforwarding", revoke_port_forwards),
    Route::new("/syncportforwarding", sync_port_forwards),
];

/// `SNATInfo`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnatInfo {
    #[serde(default, deserialize_with = "bounded::text")]
    pub public_nic_mac: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub public_ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub private_nic_mac: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub private_nic_ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub snat_netmask: Option<String>,
    pub state: Option<bool>,
}

impl SnatInfo {
    /// A SNAT entry.
    pub fn validate(&self, at: &str) -> Result<Snat, Invalid> {
        let prefix = req_netmask(&format!("{at}.snatNetmask"), &self.snat_netmask)?;
        let private_ip = req_host_ipv4(
            &format!("{at}.privateNicIp"),
            &self.private_nic_ip,
            Some(prefix),
        )?;
        Ok(Snat {
            public_nic_mac: req_mac(&format!("{at}.publicNicMac"), &self.public_nic_mac)?,
            public_ip: req_host_ipv4(&format!("{at}.publicIp"), &self.public_ip, None)?,
            private_nic_mac: req_mac(&format!("{at}.privateNicMac"), &self.private_nic_mac)?,
            private_net: Cidr::new(private_ip, prefix),
        })
    }
}

/// `/setsnat`
#[derive(Debug, Default, Deserialize)]
pub struct SetSnatCmd {
    pub snat: Option<SnatInfo>,
}

fn set_snat(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: SetSnatCmd = decode(body, false)?;
    let snat = required("snat", &w.snat)?.validate("snat")?;
    Ok(Request::Change(Command::SetSnat(snat)))
}

/// `/syncsnat`
#[derive(Debug, Default, Deserialize)]
pub struct SyncSnatCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub snats: Option<Vec<SnatInfo>>,
    pub enable: Option<bool>,
}

/// `/syncsnat`: each entry with whether it is on (`enable` and its own `state`).
fn sync_snat(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: SyncSnatCmd = decode(body, false)?;
    let enable = w.enable.unwrap_or(true);
    let snats = each_req("snats", &w.snats, |f, s| {
        Ok((s.validate(f)?, enable && s.state.unwrap_or(true)))
    })?;
    Ok(Request::Change(Command::SyncSnat(snats)))
}

/// `/removesnat`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveSnatCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub nat_info: Option<Vec<SnatInfo>>,
}

fn remove_snat(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: RemoveSnatCmd = decode(body, false)?;
    let snats = each_req("natInfo", &w.nat_info, |f, s| s.validate(f))?;
    Ok(Request::Change(Command::RemoveSnat(snats)))
}

/// `EipTO`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EipTo {
    #[serde(default, deserialize_with = "bounded::text")]
    pub vip_ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub private_mac: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub guest_ip: Option<String>,
    pub snat_inbound_traffic: Option<bool>,
}

impl EipTo {
    /// An EIP.
    pub fn validate(&self, at: &str) -> Result<Eip, Invalid> {
        Ok(Eip {
            vip_ip: req_host_ipv4(&format!("{at}.vipIp"), &self.vip_ip, None)?,
            private_mac: req_mac(&format!("{at}.privateMac"), &self.private_mac)?,
            guest_ip: req_host_ipv4(&format!("{at}.guestIp"), &self.guest_ip, None)?,
            snat_inbound: self.snat_inbound_traffic.unwrap_or(false),
        })
    }
}

/// `/createeip`, `/removeeip`
#[derive(Debug, Default, Deserialize)]
pub struct EipCmd {
    pub eip: Option<EipTo>,
}

impl EipCmd {
    /// The one EIP, required.
    fn eip(&self) -> Result<Eip, Invalid> {
        required("eip", &self.eip)?.validate("eip")
    }
}

fn create_eip(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: EipCmd = decode(body, false)?;
    Ok(Request::Change(Command::CreateEip(w.eip()?)))
}

fn remove_eip(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: EipCmd = decode(body, false)?;
    Ok(Request::Change(Command::RemoveEip(w.eip()?)))
}

/// `/synceip`
#[derive(Debug, Default, Deserialize)]
pub struct SyncEipCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub eips: Option<Vec<EipTo>>,
}

fn sync_eips(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: SyncEipCmd = decode(body, false)?;
    let eips = each_req("eips", &w.eips, |f, e| e.validate(f))?;
    Ok(Request::Change(Command::SyncEips(eips)))
}

/// `PortForwardingRuleTO`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortForwardingRuleTo {
    pub vip_port_start: Option<i64>,
    pub vip_port_end: Option<i64>,
    pub private_port_start: Option<i64>,
    pub private_port_end: Option<i64>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub protocol_type: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub vip_ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub private_ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub private_mac: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub allowed_cidr: Option<String>,
    pub snat_inbound_traffic: Option<bool>,
}

impl PortForwardingRuleTo {
    /// A port forward; the two ranges must have the same length.
    pub fn validate(&self, at: &str) -> Result<PortForward, Invalid> {
        let protocol = match given(&self.protocol_type) {
            Some(p) if p.eq_ignore_ascii_case("tcp") => L4Proto::Tcp,
            Some(p) if p.eq_ignore_ascii_case("udp") => L4Proto::Udp,
            Some(p) => {
                return Err(Invalid::new(
                    format!("{at}.protocolType"),
                    format!("{} is not TCP or UDP", quote(p)),
                ));
            }
            None => return Err(Invalid::new(format!("{at}.protocolType"), "missing")),
        };
        let vip_ports = port_range(
            &format!("{at}.vipPortStart"),
            &self.vip_port_start,
            "vipPortEnd",
            &self.vip_port_end,
        )?;
        let private_ports = port_range(
            &format!("{at}.privatePortStart"),
            &self.private_port_start,
            "privatePortEnd",
            &self.private_port_end,
        )?;
        if vip_ports.len() != private_ports.len() {
            return Err(Invalid::new(
                format!("{at}.vipPortStart..vipPortEnd"),
                format!(
                    "{}-{} ({} ports) and privatePortStart..privatePortEnd {}-{} ({} ports) differ in length",
                    vip_ports.start,
                    vip_ports.end,
                    vip_ports.len(),
                    private_ports.start,
                    private_ports.end,
                    private_ports.len()
                ),
            ));
        }
        Ok(PortForward {
            vip_ip: req_host_ipv4(&format!("{at}.vipIp"), &self.vip_ip, None)?,
            protocol,
            vip_ports,
            private_ip: req_host_ipv4(&format!("{at}.privateIp"), &self.private_ip, None)?,
            private_ports,
            private_mac: req_mac(&format!("{at}.privateMac"), &self.private_mac)?,
            allowed_cidr: opt_cidr(&format!("{at}.allowedCidr"), &self.allowed_cidr)?,
            snat_inbound: self.snat_inbound_traffic.unwrap_or(false),
        })
    }
}

/// The three port forwarding commands.
#[derive(Debug, Default, Deserialize)]
pub struct PortForwardingCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub rules: Option<Vec<PortForwardingRuleTo>>,
}

/// The rules of a port forwarding body.
fn port_forwards(body: &[u8]) -> Result<Vec<PortForward>, RequestError> {
    let w: PortForwardingCmd = decode(body, false)?;
    Ok(each_req("rules", &w.rules, |f, r| r.validate(f))?)
}

fn create_port_forwards(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let rules = port_forwards(body)?;
    Ok(Request::Change(Command::CreatePortForwards(rules)))
}

fn revoke_port_forwards(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let rules = port_forwards(body)?;
    Ok(Request::Change(Command::RevokePortForwards(rules)))
}

fn sync_port_forwards(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let rules = port_forwards(body)?;
    Ok(Request::Change(Command::SyncPortForwards(rules)))
}
