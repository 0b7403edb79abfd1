//! SNAT, EIPs and port forwarding: the commands behind `ip vr_nat`.

use super::bounded;
use crate::protocol::fields::*;
use crate::state::Invalid;
use crate::state::model::{Eip, L4Proto, PortForward, Snat};
use crate::state::types::Cidr;
use serde::Deserialize;

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

/// `/setsnat`
#[derive(Debug, Default, Deserialize)]
pub struct SetSnatCmd {
    pub snat: Option<SnatInfo>,
}

/// `/syncsnat`
#[derive(Debug, Default, Deserialize)]
pub struct SyncSnatCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub snats: Option<Vec<SnatInfo>>,
    pub enable: Option<bool>,
}

/// `/removesnat`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveSnatCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub nat_info: Option<Vec<SnatInfo>>,
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

/// `/createeip`, `/removeeip`
#[derive(Debug, Default, Deserialize)]
pub struct EipCmd {
    pub eip: Option<EipTo>,
}

/// `/synceip`
#[derive(Debug, Default, Deserialize)]
pub struct SyncEipCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub eips: Option<Vec<EipTo>>,
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

/// The three port forwarding commands.
#[derive(Debug, Default, Deserialize)]
pub struct PortForwardingCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub rules: Option<Vec<PortForwardingRuleTo>>,
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
