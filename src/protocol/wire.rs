//! The management node's request bodies, field for field as section 3 of the protocol spells
//! them. Every field is optional here (missing keys mean absent, unknown keys are ignored);
//! `validate` turns them into typed commands, naming any field it refuses.

use super::fields::*;
use crate::state::Invalid;
use crate::state::model::{
    DhcpHost, Eip, FirewallProto, FirewallRule, L4Proto, LbListener, Nic, PortForward, Snat, Vip,
};
use crate::state::types::Cidr;
use serde::Deserialize;

/// `/init`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitCmd {
    pub uuid: Option<String>,
    #[serde(rename = "restartDnsmasqAfterNumberOfSIGUSER1")]
    pub restart_dnsmasq_after_number_of_siguser1: Option<i64>,
}

/// `/ping`
#[derive(Debug, Default, Deserialize)]
pub struct PingCmd {
    pub uuid: Option<String>,
}

/// `NicInfo` of `/configurenic` and `/removenic`, and `ApplianceVmNicTO` of the bootstrap info.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NicInfo {
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub gateway: Option<String>,
    pub netmask: Option<String>,
    pub is_default_route: Option<bool>,
    pub mtu: Option<i64>,
    pub device_name: Option<String>,
}

/// `/configurenic`, `/removenic`
#[derive(Debug, Default, Deserialize)]
pub struct NicsCmd {
    pub nics: Option<Vec<NicInfo>>,
}

/// `DhcpInfo`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpInfo {
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub netmask: Option<String>,
    pub gateway: Option<String>,
    pub dns: Option<Vec<String>>,
    pub hostname: Option<String>,
    pub vr_nic_mac: Option<String>,
    pub dns_domain: Option<String>,
    pub is_default_l3_network: Option<bool>,
    pub mtu: Option<i64>,
}

/// `/adddhcp`, `/removedhcp`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpCmd {
    pub dhcp_entries: Option<Vec<DhcpInfo>>,
    pub rebuild: Option<bool>,
}

/// `SNATInfo`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnatInfo {
    pub public_nic_mac: Option<String>,
    pub public_ip: Option<String>,
    pub private_nic_mac: Option<String>,
    pub private_nic_ip: Option<String>,
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
    pub snats: Option<Vec<SnatInfo>>,
    pub enable: Option<bool>,
}

/// `/removesnat`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveSnatCmd {
    pub nat_info: Option<Vec<SnatInfo>>,
}

/// `DnsInfo`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsInfo {
    pub dns_address: Option<String>,
    pub nic_mac: Option<String>,
}

/// `/setdns`, `/removedns`
#[derive(Debug, Default, Deserialize)]
pub struct DnsCmd {
    pub dns: Option<Vec<DnsInfo>>,
}

/// `VipTO`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VipTo {
    pub ip: Option<String>,
    pub netmask: Option<String>,
    pub gateway: Option<String>,
    pub owner_ethernet_mac: Option<String>,
    pub prefix_length: Option<i64>,
}

/// `/createvip`, `/removevip`
#[derive(Debug, Default, Deserialize)]
pub struct VipsCmd {
    pub vips: Option<Vec<VipTo>>,
}

/// `EipTO`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EipTo {
    pub vip_ip: Option<String>,
    pub private_mac: Option<String>,
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
    pub protocol_type: Option<String>,
    pub vip_ip: Option<String>,
    pub private_ip: Option<String>,
    pub private_mac: Option<String>,
    pub allowed_cidr: Option<String>,
    pub snat_inbound_traffic: Option<bool>,
}

/// The three port forwarding commands.
#[derive(Debug, Default, Deserialize)]
pub struct PortForwardingCmd {
    pub rules: Option<Vec<PortForwardingRuleTo>>,
}

/// `ApplianceVmFirewallRuleTO`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallRuleTo {
    pub protocol: Option<String>,
    pub start_port: Option<i64>,
    pub end_port: Option<i64>,
    pub allow_cidr: Option<String>,
    pub source_ip: Option<String>,
    pub dest_ip: Option<String>,
    pub nic_mac: Option<String>,
}

/// `/appliancevm/refreshfirewall`
#[derive(Debug, Default, Deserialize)]
pub struct RefreshFirewallCmd {
    pub rules: Option<Vec<FirewallRuleTo>>,
}

/// `LbTO`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbTo {
    pub lb_uuid: Option<String>,
    pub listener_uuid: Option<String>,
    pub vip: Option<String>,
    pub nic_ips: Option<Vec<String>>,
    pub instance_port: Option<i64>,
    pub load_balancer_port: Option<i64>,
    pub mode: Option<String>,
    pub parameters: Option<Vec<String>>,
}

/// `/lb/refresh`, `/lb/delete`
#[derive(Debug, Default, Deserialize)]
pub struct LbCmd {
    pub lbs: Option<Vec<LbTo>>,
}

/// Validates each element of an optional list, naming elements `field[i]`.
pub fn each<W, T>(
    field: &str,
    list: &Option<Vec<W>>,
    f: impl Fn(&str, &W) -> Result<T, Invalid>,
) -> Result<Vec<T>, Invalid> {
    list.iter()
        .flatten()
        .enumerate()
        .map(|(i, w)| f(&format!("{field}[{i}]"), w))
        .collect()
}

impl NicInfo {
    /// A nic as `/configurenic` or the bootstrap info gives it.
    pub fn validate(&self, at: &str) -> Result<Nic, Invalid> {
        let device_name = match given(&self.device_name) {
            None => None,
            Some(n)
                if n.len() < 16
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                Some(n.to_string())
            }
            Some(n) => {
                return Err(Invalid::new(
                    format!("{at}.deviceName"),
                    format!("{n:?} is not an interface name"),
                ));
            }
        };
        Ok(Nic {
            mac: req_mac(&format!("{at}.mac"), &self.mac)?,
            ip: req_ipv4(&format!("{at}.ip"), &self.ip)?,
            prefix: req_netmask(&format!("{at}.netmask"), &self.netmask)?,
            gateway: opt_ipv4(&format!("{at}.gateway"), &self.gateway)?,
            is_default_route: self.is_default_route.unwrap_or(false),
            mtu: opt_mtu(&format!("{at}.mtu"), &self.mtu)?,
            device_name,
        })
    }
}

impl DhcpInfo {
    /// A static DHCP host.
    pub fn validate(&self, at: &str) -> Result<DhcpHost, Invalid> {
        Ok(DhcpHost {
            mac: req_mac(&format!("{at}.mac"), &self.mac)?,
            ip: req_ipv4(&format!("{at}.ip"), &self.ip)?,
            prefix: req_netmask(&format!("{at}.netmask"), &self.netmask)?,
            gateway: opt_ipv4(&format!("{at}.gateway"), &self.gateway)?,
            dns: each(&format!("{at}.dns"), &self.dns, |f, s| ipv4(f, s))?,
            hostname: opt_dns_name(&format!("{at}.hostname"), &self.hostname)?,
            vr_nic_mac: opt_mac(&format!("{at}.vrNicMac"), &self.vr_nic_mac)?,
            dns_domain: opt_dns_name(&format!("{at}.dnsDomain"), &self.dns_domain)?,
            is_default_l3: self.is_default_l3_network.unwrap_or(false),
            mtu: opt_mtu(&format!("{at}.mtu"), &self.mtu)?,
        })
    }
}

impl SnatInfo {
    /// A SNAT entry.
    pub fn validate(&self, at: &str) -> Result<Snat, Invalid> {
        let private_ip = req_ipv4(&format!("{at}.privateNicIp"), &self.private_nic_ip)?;
        let prefix = req_netmask(&format!("{at}.snatNetmask"), &self.snat_netmask)?;
        Ok(Snat {
            public_nic_mac: req_mac(&format!("{at}.publicNicMac"), &self.public_nic_mac)?,
            public_ip: req_ipv4(&format!("{at}.publicIp"), &self.public_ip)?,
            private_nic_mac: req_mac(&format!("{at}.privateNicMac"), &self.private_nic_mac)?,
            private_net: Cidr::new(private_ip, prefix),
        })
    }
}

impl VipTo {
    /// A VIP. The prefix comes from `netmask`, else from a non-zero `prefixLength`.
    pub fn validate(&self, at: &str) -> Result<Vip, Invalid> {
        let ip = req_ipv4(&format!("{at}.ip"), &self.ip)?;
        let prefix = match (given(&self.netmask), self.prefix_length) {
            (Some(_), _) | (None, None | Some(0)) => {
                req_netmask(&format!("{at}.netmask"), &self.netmask)?
            }
            (None, Some(n)) => u8::try_from(n)
                .ok()
                .and_then(crate::state::types::PrefixLen::new)
                .ok_or_else(|| {
                    Invalid::new(
                        format!("{at}.prefixLength"),
                        format!("{n} is not a prefix length (0-32)"),
                    )
                })?,
        };
        Ok(Vip {
            ip,
            prefix,
            gateway: opt_ipv4(&format!("{at}.gateway"), &self.gateway)?,
            owner_mac: req_mac(&format!("{at}.ownerEthernetMac"), &self.owner_ethernet_mac)?,
        })
    }
}

impl EipTo {
    /// An EIP.
    pub fn validate(&self, at: &str) -> Result<Eip, Invalid> {
        Ok(Eip {
            vip_ip: req_ipv4(&format!("{at}.vipIp"), &self.vip_ip)?,
            private_mac: req_mac(&format!("{at}.privateMac"), &self.private_mac)?,
            guest_ip: req_ipv4(&format!("{at}.guestIp"), &self.guest_ip)?,
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
                    format!("{p:?} is not TCP or UDP"),
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
            vip_ip: req_ipv4(&format!("{at}.vipIp"), &self.vip_ip)?,
            protocol,
            vip_ports,
            private_ip: req_ipv4(&format!("{at}.privateIp"), &self.private_ip)?,
            private_ports,
            private_mac: req_mac(&format!("{at}.privateMac"), &self.private_mac)?,
            allowed_cidr: opt_cidr(&format!("{at}.allowedCidr"), &self.allowed_cidr)?,
            snat_inbound: self.snat_inbound_traffic.unwrap_or(false),
        })
    }
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
                    format!("{p:?} is not tcp, udp or all"),
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

impl LbTo {
    /// A load balancer listener.
    pub fn validate(&self, at: &str) -> Result<LbListener, Invalid> {
        let text = |name: &str, v: &Option<String>| -> Result<String, Invalid> {
            opt_token(&format!("{at}.{name}"), v)?
                .ok_or_else(|| Invalid::new(format!("{at}.{name}"), "missing"))
        };
        Ok(LbListener {
            lb_uuid: text("lbUuid", &self.lb_uuid)?,
            listener_uuid: text("listenerUuid", &self.listener_uuid)?,
            vip: req_ipv4(&format!("{at}.vip"), &self.vip)?,
            nic_ips: each(&format!("{at}.nicIps"), &self.nic_ips, |f, s| ipv4(f, s))?,
            instance_port: port(&format!("{at}.instancePort"), &self.instance_port)?,
            load_balancer_port: port(&format!("{at}.loadBalancerPort"), &self.load_balancer_port)?,
            mode: text("mode", &self.mode)?,
            parameters: self.parameters.clone().unwrap_or_default(),
        })
    }
}
