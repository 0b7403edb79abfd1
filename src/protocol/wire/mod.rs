//! The management node's request bodies, field for field as section 3 of the protocol spells
//! them. Every field is optional here (missing keys mean absent, unknown keys are ignored);
//! `validate` turns them into typed commands, naming any field it refuses.

use super::fields::*;
use crate::state::Invalid;
use crate::state::ha::{HaConfig, HaVip, MAX_ADVERT_SECS};
use crate::state::lb::{
    BackendServer, DEFAULT_WEIGHT, LbDelete, MAX_WEIGHT, Mode, parse_parameters,
};
use crate::state::model::{
    DhcpHost, Eip, FirewallProto, FirewallRule, L4Proto, LbListener, Nic, PortForward, Snat, Vip,
};
use crate::state::types::Cidr;
use serde::Deserialize;
use std::collections::BTreeMap;

/// `/init`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitCmd {
    #[serde(default, deserialize_with = "bounded::text")]
    pub uuid: Option<String>,
    #[serde(rename = "restartDnsmasqAfterNumberOfSIGUSER1")]
    pub restart_dnsmasq_after_number_of_siguser1: Option<i64>,
}

/// `/ping`
#[derive(Debug, Default, Deserialize)]
pub struct PingCmd {
    #[serde(default, deserialize_with = "bounded::text")]
    pub uuid: Option<String>,
}

/// `NicInfo` of `/configurenic` and `/removenic`, and `ApplianceVmNicTO` of the bootstrap info.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NicInfo {
    #[serde(default, deserialize_with = "bounded::text")]
    pub ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub mac: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub gateway: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub netmask: Option<String>,
    pub is_default_route: Option<bool>,
    pub mtu: Option<i64>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub device_name: Option<String>,
}

/// `/configurenic`, `/removenic`
#[derive(Debug, Default, Deserialize)]
pub struct NicsCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub nics: Option<Vec<NicInfo>>,
}

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

/// `VipTO`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VipTo {
    #[serde(default, deserialize_with = "bounded::text")]
    pub ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub netmask: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub gateway: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub owner_ethernet_mac: Option<String>,
    pub prefix_length: Option<i64>,
}

/// `/createvip`, `/removevip`
#[derive(Debug, Default, Deserialize)]
pub struct VipsCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub vips: Option<Vec<VipTo>>,
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

/// `LbTO`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbTo {
    #[serde(default, deserialize_with = "bounded::text")]
    pub lb_uuid: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub listener_uuid: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub vip: Option<String>,
    #[serde(default, deserialize_with = "bounded::list")]
    pub nic_ips: Option<Vec<bounded::Text>>,
    pub instance_port: Option<i64>,
    pub load_balancer_port: Option<i64>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub mode: Option<String>,
    #[serde(default, deserialize_with = "bounded::list")]
    pub parameters: Option<Vec<bounded::Text>>,
    /// Later management nodes: backends in server groups (with weights).
    #[serde(default, deserialize_with = "bounded::list")]
    pub server_groups: Option<Vec<LbServerGroup>>,
}

/// A server group of a later `LbTO` (its name, uuid and default flag are not used).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbServerGroup {
    #[serde(default, deserialize_with = "bounded::list")]
    pub backend_servers: Option<Vec<LbBackendServer>>,
}

/// One backend of a server group.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbBackendServer {
    #[serde(default, deserialize_with = "bounded::text")]
    pub ip: Option<String>,
    pub weight: Option<i64>,
}

/// `/lb/refresh`, `/lb/delete`
#[derive(Debug, Default, Deserialize)]
pub struct LbCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub lbs: Option<Vec<LbTo>>,
}

/// Validates each element of a required list, naming elements `field[i]`; an absent or null
/// list is `field: missing` (an explicit `[]` is an empty list).
pub fn each_req<W, T>(
    field: &str,
    list: &Option<Vec<W>>,
    f: impl FnMut(&str, &W) -> Result<T, Invalid>,
) -> Result<Vec<T>, Invalid> {
    if list.is_none() {
        return Err(Invalid::new(field, "missing"));
    }
    each(field, list, f)
}

/// Validates each element of an optional list, naming elements `field[i]`.
pub fn each<W, T>(
    field: &str,
    list: &Option<Vec<W>>,
    mut f: impl FnMut(&str, &W) -> Result<T, Invalid>,
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
                    format!("{} is not an interface name", quote(n)),
                ));
            }
        };
        let mac = req_mac(&format!("{at}.mac"), &self.mac)?;
        let prefix = req_netmask(&format!("{at}.netmask"), &self.netmask)?;
        Ok(Nic {
            mac,
            ip: req_host_ipv4(&format!("{at}.ip"), &self.ip, Some(prefix))?,
            prefix,
            gateway: opt_host_ipv4(&format!("{at}.gateway"), &self.gateway, None)?,
            is_default_route: self.is_default_route.unwrap_or(false),
            mtu: opt_mtu(&format!("{at}.mtu"), &self.mtu)?,
            device_name,
        })
    }
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

/// The prefix of an address from `<at>.netmask`, else from a non-zero `<at>.<prefix_field>`
/// (a later management node sends both; 0 means not set).
fn netmask_or_prefix(
    at: &str,
    netmask: &Option<String>,
    prefix: Option<i64>,
    prefix_field: &str,
) -> Result<crate::state::types::PrefixLen, Invalid> {
    match (given(netmask), prefix) {
        (Some(_), _) | (None, None | Some(0)) => req_netmask(&format!("{at}.netmask"), netmask),
        (None, Some(n)) => u8::try_from(n)
            .ok()
            .and_then(crate::state::types::PrefixLen::new)
            .ok_or_else(|| {
                Invalid::new(
                    format!("{at}.{prefix_field}"),
                    format!("{n} is not a prefix length (0-32)"),
                )
            }),
    }
}

impl VipTo {
    /// A VIP. The prefix comes from `netmask`, else from a non-zero `prefixLength`.
    pub fn validate(&self, at: &str) -> Result<Vip, Invalid> {
        let ip_field = format!("{at}.ip");
        let ip = req_ipv4(&ip_field, &self.ip)?;
        let prefix = netmask_or_prefix(at, &self.netmask, self.prefix_length, "prefixLength")?;
        check_unicast(&ip_field, ip, Some(prefix))?;
        Ok(Vip {
            ip,
            prefix,
            gateway: opt_host_ipv4(&format!("{at}.gateway"), &self.gateway, None)?,
            owner_mac: req_mac(&format!("{at}.ownerEthernetMac"), &self.owner_ethernet_mac)?,
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

/// A load balancer or listener uuid: it names haproxy sections, so letters, digits, `-`,
/// `_` and `.` only.
fn lb_uuid(field: &str, v: &Option<String>) -> Result<Option<String>, Invalid> {
    let Some(s) = opt_token(field, v)? else {
        return Ok(None);
    };
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        Ok(Some(s))
    } else {
        Err(Invalid::new(
            field,
            format!("{} is not a uuid (letters, digits, -, _, .)", quote(&s)),
        ))
    }
}

impl LbTo {
    /// A load balancer listener: backends from `nicIps` (weights from `balancerWeight`
    /// parameters) and from `serverGroups[].backendServers` (weights given there).
    pub fn validate(&self, at: &str) -> Result<LbListener, Invalid> {
        let req = |name: &str, v: Option<String>| -> Result<String, Invalid> {
            v.ok_or_else(|| Invalid::new(format!("{at}.{name}"), "missing"))
        };
        let listener_uuid = req(
            "listenerUuid",
            lb_uuid(&format!("{at}.listenerUuid"), &self.listener_uuid)?,
        )?;
        let mode = match given(&self.mode) {
            Some(m) if m.eq_ignore_ascii_case("tcp") => Mode::Tcp,
            Some(m) if m.eq_ignore_ascii_case("http") => Mode::Http,
            Some(m) => {
                return Err(Invalid::new(
                    format!("{at}.mode"),
                    format!("listener {listener_uuid}: {} is not tcp or http", quote(m)),
                ));
            }
            None => return Err(Invalid::new(format!("{at}.mode"), "missing")),
        };
        let params: Vec<String> = self
            .parameters
            .iter()
            .flatten()
            .map(|t| t.0.clone())
            .collect();
        let (config, weights) =
            parse_parameters(&format!("{at}.parameters"), &listener_uuid, &params)?;
        let mut backends: BTreeMap<std::net::Ipv4Addr, u8> = BTreeMap::new();
        let unicast = |f: &str, s: &str| -> Result<std::net::Ipv4Addr, Invalid> {
            let ip = ipv4(f, s)?;
            check_unicast(f, ip, None)?;
            Ok(ip)
        };
        for ip in each(&format!("{at}.nicIps"), &self.nic_ips, |f, s| {
            unicast(f, &s.0)
        })? {
            backends.insert(ip, weights.get(&ip).copied().unwrap_or(DEFAULT_WEIGHT));
        }
        for (g, group) in self.server_groups.iter().flatten().enumerate() {
            let gat = format!("{at}.serverGroups[{g}].backendServers");
            for (ip, w) in each(&gat, &group.backend_servers, |f, b| {
                let ip = unicast(&format!("{f}.ip"), required(&format!("{f}.ip"), &b.ip)?)?;
                let w = match b.weight {
                    None => weights.get(&ip).copied().unwrap_or(DEFAULT_WEIGHT),
                    Some(w) => u8::try_from(w)
                        .ok()
                        .filter(|w| *w <= MAX_WEIGHT)
                        .ok_or_else(|| {
                            Invalid::new(
                                format!("{f}.weight"),
                                format!(
                                    "listener {listener_uuid}: {w} is not a weight (0-{MAX_WEIGHT})"
                                ),
                            )
                        })?,
                };
                Ok((ip, w))
            })? {
                backends.insert(ip, w);
            }
        }
        Ok(LbListener {
            lb_uuid: req("lbUuid", lb_uuid(&format!("{at}.lbUuid"), &self.lb_uuid)?)?,
            listener_uuid: listener_uuid.clone(),
            vip: req_host_ipv4(&format!("{at}.vip"), &self.vip, None)?,
            instance_port: nonzero_port(&format!("{at}.instancePort"), &self.instance_port)?,
            load_balancer_port: nonzero_port(
                &format!("{at}.loadBalancerPort"),
                &self.load_balancer_port,
            )?,
            mode,
            backends: backends
                .into_iter()
                .map(|(ip, weight)| BackendServer { ip, weight })
                .collect(),
            config,
        })
    }

    /// What `/lb/delete` names: the listener, or every listener of the load balancer when no
    /// listener uuid is given. Other fields are not looked at.
    pub fn validate_delete(&self, at: &str) -> Result<LbDelete, Invalid> {
        Ok(LbDelete {
            lb_uuid: lb_uuid(&format!("{at}.lbUuid"), &self.lb_uuid)?
                .ok_or_else(|| Invalid::new(format!("{at}.lbUuid"), "missing"))?,
            listener_uuid: lb_uuid(&format!("{at}.listenerUuid"), &self.listener_uuid)?,
        })
    }
}

fn nonzero_port(field: &str, v: &Option<i64>) -> Result<u16, Invalid> {
    match port(field, v)? {
        0 => Err(Invalid::new(field, "0 is not a port a listener can use")),
        p => Ok(p),
    }
}

/// Lists of a request are read element by element under two caps, so a large body cannot
/// make a large heap: no list holds more than [`MAX_LIST`] entries, and one request holds at
/// most [`MAX_ENTRIES`] list entries in all (nested lists count too).
/// `vips[]` of `/enableVyosha`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HaVipTo {
    #[serde(default, deserialize_with = "bounded::text")]
    pub nic_mac: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub nic_vip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub netmask: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub category: Option<String>,
    pub prefix_len: Option<i64>,
}

/// `/enableVyosha` (IPv6 fields are read and ignored)
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnableHaCmd {
    pub keepalive: Option<i64>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub heartbeat_nic: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub local_ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub peer_ip: Option<String>,
    #[serde(default, deserialize_with = "bounded::list")]
    pub monitors: Option<Vec<Option<String>>>,
    #[serde(default, deserialize_with = "bounded::list")]
    pub vips: Option<Vec<HaVipTo>>,
    #[serde(default, deserialize_with = "bounded::text")]
    pub callback_url: Option<String>,
}

impl HaVipTo {
    /// One address only the master carries. The prefix comes from `netmask`, else from a
    /// non-zero `prefixLen`.
    pub fn validate(&self, at: &str) -> Result<HaVip, Invalid> {
        let ip_field = format!("{at}.nicVip");
        let ip = req_ipv4(&ip_field, &self.nic_vip)?;
        let prefix = netmask_or_prefix(at, &self.netmask, self.prefix_len, "prefixLen")?;
        check_unicast(&ip_field, ip, Some(prefix))?;
        Ok(HaVip {
            mac: req_mac(&format!("{at}.nicMac"), &self.nic_mac)?,
            ip,
            prefix,
            category: opt_token(&format!("{at}.category"), &self.category)?,
        })
    }
}

impl EnableHaCmd {
    /// The HA settings, or the first field refused.
    pub fn validate(&self) -> Result<HaConfig, Invalid> {
        let keepalive = *required("keepalive", &self.keepalive)?;
        let advert_secs = u32::try_from(keepalive)
            .ok()
            .filter(|n| (1..=MAX_ADVERT_SECS).contains(n))
            .ok_or_else(|| {
                Invalid::new(
                    "keepalive",
                    format!("{keepalive} is not an advert interval (1-{MAX_ADVERT_SECS} s)"),
                )
            })?;
        let heartbeat_mac = req_mac("heartbeatNic", &self.heartbeat_nic)?;
        let local_ip = req_host_ipv4("localIp", &self.local_ip, None)?;
        let peer_ip = req_host_ipv4("peerIp", &self.peer_ip, None)?;
        if peer_ip == local_ip {
            return Err(Invalid::new(
                "peerIp",
                format!("\"{peer_ip}\" is localIp too: the peer must be another router"),
            ));
        }
        let monitors = each("monitors", &self.monitors, |f, m| req_host_ipv4(f, m, None))?;
        let vips = each_req("vips", &self.vips, |f, v| v.validate(f))?;
        for (i, v) in vips.iter().enumerate() {
            if let Some(j) = vips[..i].iter().position(|o| o.ip == v.ip) {
                return Err(Invalid::new(
                    format!("vips[{i}].nicVip"),
                    format!("\"{}\" is vips[{j}] too", v.ip),
                ));
            }
            if v.ip == local_ip || v.ip == peer_ip {
                return Err(Invalid::new(
                    format!("vips[{i}].nicVip"),
                    format!(
                        "\"{}\" is a heartbeat address, not one the master carries",
                        v.ip
                    ),
                ));
            }
        }
        let callback_url = match given(&self.callback_url) {
            None => None,
            Some(url) => {
                crate::api::callback::CallbackTarget::parse(url)
                    .map_err(|e| Invalid::new("callbackUrl", e.to_string()))?;
                Some(url.to_string())
            }
        };
        Ok(HaConfig {
            advert_secs,
            heartbeat_mac,
            local_ip,
            peer_ip,
            monitors,
            vips,
            callback_url,
        })
    }
}

pub mod bounded {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
    use std::cell::Cell;
    use std::fmt;
    use std::marker::PhantomData;

    /// Entries one list may hold (a real 100k-entry sync fits twice).
    pub const MAX_LIST: usize = 200_000;
    /// List entries one request may hold in all.
    pub const MAX_ENTRIES: usize = 400_000;

    thread_local! {
        static LEFT: Cell<usize> = const { Cell::new(MAX_ENTRIES) };
    }

    /// Runs `f` (one request's deserialization) with a fresh budget of [`MAX_ENTRIES`].
    pub fn with_budget<R>(f: impl FnOnce() -> R) -> R {
        let saved = LEFT.with(|l| l.replace(MAX_ENTRIES));
        let r = f();
        LEFT.with(|l| l.set(saved));
        r
    }

    struct ListVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
        type Value = Option<Vec<T>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(v) = seq.next_element()? {
                if out.len() == MAX_LIST {
                    return Err(serde::de::Error::custom(format!(
                        "more than {MAX_LIST} entries"
                    )));
                }
                // Read after the element: nested lists inside it have taken their share.
                let left = LEFT.with(Cell::get);
                if left == 0 {
                    return Err(serde::de::Error::custom(format!(
                        "the request holds more than {MAX_ENTRIES} list entries in all"
                    )));
                }
                LEFT.with(|l| l.set(left - 1));
                out.push(v);
            }
            out.shrink_to_fit();
            Ok(Some(out))
        }
    }

    /// Bytes one string of a request may hold (the longest real ones are a few hundred).
    pub const MAX_TEXT: usize = 64 * 1024;

    fn check_len<E: serde::de::Error>(v: &str) -> Result<String, E> {
        if v.len() > MAX_TEXT {
            Err(E::custom(format!(
                "a string of {} bytes is too long (at most {MAX_TEXT})",
                v.len()
            )))
        } else {
            Ok(v.to_owned())
        }
    }

    struct TextVisitor;

    impl<'de> Visitor<'de> for TextVisitor {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            check_len(v).map(Some)
        }
    }

    /// `#[serde(deserialize_with)]` of an optional string of at most [`MAX_TEXT`] bytes
    /// (checked before it is copied): absent or null is `None`.
    pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_option(TextVisitor)
    }

    /// A string element of a list, at most [`MAX_TEXT`] bytes.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Text(pub String);

    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            match d.deserialize_str(TextVisitor)? {
                Some(s) => Ok(Text(s)),
                None => Err(serde::de::Error::custom("null is not a string")),
            }
        }
    }

    /// `#[serde(deserialize_with)]` of an optional list: absent or null is `None`.
    pub fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Vec<T>>, D::Error> {
        d.deserialize_option(ListVisitor(PhantomData))
    }
}
