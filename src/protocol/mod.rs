//! The management node's paths and request bodies, and their translation into typed requests.

pub mod fields;
pub mod wire;

use crate::state::{Command, Invalid};
use serde::de::DeserializeOwned;
use wire::*;

/// Every path the agent answers (section 2 of the protocol, plus `/removenic`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/echo`, `/appliancevm/echo`: synchronous liveness, empty body.
    Echo,
    /// `/init`
    Init,
    /// `/ping`
    Ping,
    /// `/configurenic`
    ConfigureNic,
    /// `/removenic`
    RemoveNic,
    /// `/adddhcp`
    AddDhcp,
    /// `/removedhcp`
    RemoveDhcp,
    /// `/setsnat`
    SetSnat,
    /// `/syncsnat`
    SyncSnat,
    /// `/removesnat`
    RemoveSnat,
    /// `/setdns`
    SetDns,
    /// `/removedns`
    RemoveDns,
    /// `/createvip`
    CreateVip,
    /// `/removevip`
    RemoveVip,
    /// `/createeip`
    CreateEip,
    /// `/removeeip`
    RemoveEip,
    /// `/synceip`
    SyncEip,
    /// `/createportforwarding`
    CreatePortForwarding,
    /// `/revokeportforwarding`
    RevokePortForwarding,
    /// `/syncportforwarding`
    SyncPortForwarding,
    /// `/lb/refresh`
    LbRefresh,
    /// `/lb/delete`
    LbDelete,
    /// `/appliancevm/init`
    ApplianceInit,
    /// `/appliancevm/refreshfirewall`
    RefreshFirewall,
    /// `/enableVyosha`: configure (or reconfigure) router HA.
    EnableVyosha,
    /// `/syncVpcRouterHa`: this node's HA role, answered without waiting for the writer.
    SyncVpcRouterHa,
    /// `/restartKeepalived`: the management node's remedy for a split brain.
    RestartKeepalived,
}

const ROUTES: &[(&str, Endpoint)] = &[
    ("/echo", Endpoint::Echo),
    ("/init", Endpoint::Init),
    ("/ping", Endpoint::Ping),
    ("/configurenic", Endpoint::ConfigureNic),
    ("/removenic", Endpoint::RemoveNic),
    ("/adddhcp", Endpoint::AddDhcp),
    ("/removedhcp", Endpoint::RemoveDhcp),
    ("/setsnat", Endpoint::SetSnat),
    ("/syncsnat", Endpoint::SyncSnat),
    ("/removesnat", Endpoint::RemoveSnat),
    ("/setdns", Endpoint::SetDns),
    ("/removedns", Endpoint::RemoveDns),
    ("/createvip", Endpoint::CreateVip),
    ("/removevip", Endpoint::RemoveVip),
    ("/createeip", Endpoint::CreateEip),
    ("/removeeip", Endpoint::RemoveEip),
    ("/synceip", Endpoint::SyncEip),
    ("/createportforwarding", Endpoint::CreatePortForwarding),
    ("/revokeportforwarding", Endpoint::RevokePortForwarding),
    ("/syncportforwarding", Endpoint::SyncPortForwarding),
    ("/lb/refresh", Endpoint::LbRefresh),
    ("/lb/delete", Endpoint::LbDelete),
    ("/appliancevm/echo", Endpoint::Echo),
    ("/appliancevm/init", Endpoint::ApplianceInit),
    ("/appliancevm/refreshfirewall", Endpoint::RefreshFirewall),
    ("/enableVyosha", Endpoint::EnableVyosha),
    ("/syncVpcRouterHa", Endpoint::SyncVpcRouterHa),
    ("/restartKeepalived", Endpoint::RestartKeepalived),
];

impl Endpoint {
    /// The endpoint of a request path, with or without a trailing `/`.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = match path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p,
            _ => path,
        };
        ROUTES.iter().find(|(p, _)| *p == path).map(|(_, e)| *e)
    }

    /// All routed paths.
    pub fn paths() -> impl Iterator<Item = &'static str> {
        ROUTES.iter().map(|(p, _)| *p)
    }
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `/ping`: a read, answered without waiting for the writer.
    Ping,
    /// A command that goes through the writer.
    Change(Command),
    /// `/syncVpcRouterHa`: the HA role, a read.
    HaStatus,
    /// `/restartKeepalived`: an action of the writer that changes no state.
    RestartKeepalived,
}

/// Why a request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Not JSON, or not a JSON object.
    #[error("malformed JSON body: {0}")]
    Malformed(String),
    /// A field has the wrong JSON type.
    #[error("{field}: {reason}")]
    WrongType {
        /// Path of the field.
        field: String,
        /// serde's message, with the position.
        reason: String,
    },
    /// A field's value is refused.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// What the first non-blank byte of a body says it is, when that is not an object.
fn top_level_kind(first: u8) -> Option<&'static str> {
    match first {
        b'{' => None,
        b'n' => Some("null"),
        b't' | b'f' => Some("a boolean"),
        b'-' | b'0'..=b'9' => Some("a number"),
        b'"' => Some("a string"),
        b'[' => Some("an array"),
        _ => Some("not JSON"),
    }
}

/// Parses `body` straight into the wire struct `T` (no intermediate JSON tree), with every
/// list under the caps of [`wire::bounded`]. A blank body is `T::default()` when `empty_ok`.
fn decode<T: DeserializeOwned + Default>(body: &[u8], empty_ok: bool) -> Result<T, RequestError> {
    std::str::from_utf8(body).map_err(|e| RequestError::Malformed(format!("not UTF-8: {e}")))?;
    let Some(&first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return if empty_ok {
            Ok(T::default())
        } else {
            Err(RequestError::Malformed(
                "the body is empty, not a JSON object".into(),
            ))
        };
    };
    if let Some(kind) = top_level_kind(first) {
        return Err(RequestError::Malformed(if kind == "not JSON" {
            format!(
                "the body starts with {}, not a JSON object",
                fields::quote(&String::from_utf8_lossy(&[first]))
            )
        } else {
            format!("the body is {kind}, not a JSON object")
        }));
    }
    wire::bounded::with_budget(|| {
        let de = &mut serde_json::Deserializer::from_slice(body);
        let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    // The field path says where; the parser's position adds nothing.
                    let text = inner.to_string();
                    let text = match text.rfind(" at line ") {
                        Some(i) if inner.line() > 0 => &text[..i],
                        _ => &text,
                    };
                    RequestError::WrongType {
                        field,
                        reason: fields::bounded_text(text),
                    }
                }
                _ => RequestError::Malformed(fields::bounded_text(&inner.to_string())),
            }
        })?;
        de.end()
            .map_err(|e| RequestError::Malformed(fields::bounded_text(&e.to_string())))?;
        Ok(value)
    })
}

fn one<T>(field: &str, v: &Option<T>) -> Result<(), Invalid> {
    fields::required(field, v).map(|_| ())
}

impl Endpoint {
    /// Parses and validates the body of a request to this endpoint. `Echo` never gets here.
    pub fn parse(self, body: &[u8]) -> Result<Request, RequestError> {
        self.parse_noted(body).map(|(r, _)| r)
    }

    /// [`Endpoint::parse`], plus notes on what was accepted but not taken as sent (a DHCP
    /// hostname dnsmasq would misread is dropped): the reply and the log carry them.
    pub fn parse_noted(self, body: &[u8]) -> Result<(Request, Vec<String>), RequestError> {
        let mut notes = Vec::new();
        let cmd = match self {
            Endpoint::Echo | Endpoint::Ping => {
                let _: PingCmd = decode(body, true)?;
                return Ok((Request::Ping, notes));
            }
            Endpoint::Init => {
                let w: InitCmd = decode(body, false)?;
                let n = w.restart_dnsmasq_after_number_of_siguser1.unwrap_or(0);
                let restart_dnsmasq_after = u32::try_from(n).map_err(|_| {
                    Invalid::new(
                        "restartDnsmasqAfterNumberOfSIGUSER1",
                        format!("{n} is not a count (0 or more)"),
                    )
                })?;
                Command::Init {
                    uuid: fields::opt_token("uuid", &w.uuid)?,
                    restart_dnsmasq_after,
                }
            }
            Endpoint::ApplianceInit => {
                let _: PingCmd = decode(body, true)?;
                Command::ApplianceInit
            }
            Endpoint::SyncVpcRouterHa => {
                let _: PingCmd = decode(body, true)?;
                return Ok((Request::HaStatus, notes));
            }
            Endpoint::RestartKeepalived => {
                let _: PingCmd = decode(body, true)?;
                return Ok((Request::RestartKeepalived, notes));
            }
            Endpoint::EnableVyosha => {
                let w: EnableHaCmd = decode(body, false)?;
                Command::EnableHa(w.validate()?)
            }
            Endpoint::ConfigureNic => {
                let w: NicsCmd = decode(body, false)?;
                Command::ConfigureNics(each_req("nics", &w.nics, |f, n| n.validate(f))?)
            }
            Endpoint::RemoveNic => {
                let w: NicsCmd = decode(body, false)?;
                Command::RemoveNics(each_req("nics", &w.nics, |f, n| {
                    fields::req_mac(&format!("{f}.mac"), &n.mac)
                })?)
            }
            Endpoint::AddDhcp => {
                let w: DhcpCmd = decode(body, false)?;
                Command::AddDhcp {
                    hosts: each_req("dhcpEntries", &w.dhcp_entries, |f, d| {
                        let (host, note) = d.validate_noted(f)?;
                        notes.extend(note);
                        Ok(host)
                    })?,
                    rebuild: w.rebuild.unwrap_or(false),
                }
            }
            Endpoint::RemoveDhcp => {
                let w: DhcpCmd = decode(body, false)?;
                Command::RemoveDhcp(each_req("dhcpEntries", &w.dhcp_entries, |f, d| {
                    d.validate(f)
                })?)
            }
            Endpoint::SetSnat => {
                let w: SetSnatCmd = decode(body, false)?;
                one("snat", &w.snat)?;
                Command::SetSnat(w.snat.unwrap_or_default().validate("snat")?)
            }
            Endpoint::SyncSnat => {
                let w: SyncSnatCmd = decode(body, false)?;
                let enable = w.enable.unwrap_or(true);
                Command::SyncSnat(each_req("snats", &w.snats, |f, s| {
                    Ok((s.validate(f)?, enable && s.state.unwrap_or(true)))
                })?)
            }
            Endpoint::RemoveSnat => {
                let w: RemoveSnatCmd = decode(body, false)?;
                Command::RemoveSnat(each_req("natInfo", &w.nat_info, |f, s| s.validate(f))?)
            }
            Endpoint::SetDns | Endpoint::RemoveDns => {
                let w: DnsCmd = decode(body, false)?;
                let servers = each_req("dns", &w.dns, |f, d| {
                    let field = format!("{f}.dnsAddress");
                    let ip = fields::req_ipv4(&field, &d.dns_address)?;
                    if self == Endpoint::SetDns {
                        // Removing keeps working for whatever was stored before.
                        fields::dns_server(&field, &ip.to_string())?;
                    }
                    Ok(ip)
                })?;
                if self == Endpoint::SetDns {
                    Command::SetDns(servers)
                } else {
                    Command::RemoveDns(servers)
                }
            }
            Endpoint::CreateVip | Endpoint::RemoveVip => {
                let w: VipsCmd = decode(body, false)?;
                let vips = each_req("vips", &w.vips, |f, v| v.validate(f))?;
                if self == Endpoint::CreateVip {
                    Command::CreateVips(vips)
                } else {
                    Command::RemoveVips(vips)
                }
            }
            Endpoint::CreateEip | Endpoint::RemoveEip => {
                let w: EipCmd = decode(body, false)?;
                one("eip", &w.eip)?;
                let eip = w.eip.unwrap_or_default().validate("eip")?;
                if self == Endpoint::CreateEip {
                    Command::CreateEip(eip)
                } else {
                    Command::RemoveEip(eip)
                }
            }
            Endpoint::SyncEip => {
                let w: SyncEipCmd = decode(body, false)?;
                Command::SyncEips(each_req("eips", &w.eips, |f, e| e.validate(f))?)
            }
            Endpoint::CreatePortForwarding
            | Endpoint::RevokePortForwarding
            | Endpoint::SyncPortForwarding => {
                let w: PortForwardingCmd = decode(body, false)?;
                let rules = each_req("rules", &w.rules, |f, r| r.validate(f))?;
                match self {
                    Endpoint::CreatePortForwarding => Command::CreatePortForwards(rules),
                    Endpoint::RevokePortForwarding => Command::RevokePortForwards(rules),
                    _ => Command::SyncPortForwards(rules),
                }
            }
            Endpoint::RefreshFirewall => {
                let w: RefreshFirewallCmd = decode(body, false)?;
                Command::RefreshFirewall(each_req("rules", &w.rules, |f, r| r.validate(f))?)
            }
            Endpoint::LbRefresh | Endpoint::LbDelete => {
                let w: LbCmd = decode(body, false)?;
                if self == Endpoint::LbRefresh {
                    Command::RefreshLb(each_req("lbs", &w.lbs, |f, l| l.validate(f))?)
                } else {
                    Command::DeleteLb(each_req("lbs", &w.lbs, |f, l| l.validate_delete(f))?)
                }
            }
        };
        Ok((Request::Change(cmd), notes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(e: Endpoint, body: &str) -> String {
        e.parse(body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn paths_with_and_without_slash() {
        assert_eq!(Endpoint::from_path("/init/"), Some(Endpoint::Init));
        assert_eq!(
            Endpoint::from_path("/lb/refresh"),
            Some(Endpoint::LbRefresh)
        );
        assert_eq!(
            Endpoint::from_path("/appliancevm/echo/"),
            Some(Endpoint::Echo)
        );
        assert_eq!(Endpoint::from_path("/nope"), None);
        assert_eq!(Endpoint::from_path("/"), None);
    }

    #[test]
    fn bad_values_name_the_field() {
        assert_eq!(
            err(
                Endpoint::CreateEip,
                r#"{"eip":{"vipIp":"10.0.0.300","privateMac":"fa:7e:4b:ad:11:02","guestIp":"172.20.0.15"}}"#
            ),
            r#"eip.vipIp: "10.0.0.300" is not an IPv4 address"#
        );
        assert_eq!(
            err(
                Endpoint::CreateEip,
                r#"{"eip":{"vipIp":"10.0.0.3","privateMac":"fa:7e:4b:ad:11","guestIp":"172.20.0.15"}}"#
            ),
            r#"eip.privateMac: "fa:7e:4b:ad:11" is not a MAC address"#
        );
        let pf = r#"{"rules":[{"vipPortStart":70000,"vipPortEnd":8080,"privatePortStart":80,"privatePortEnd":80,"protocolType":"TCP","vipIp":"10.10.1.56","privateIp":"172.20.0.15","privateMac":"fa:7e:4b:ad:11:02"}]}"#;
        assert_eq!(
            err(Endpoint::CreatePortForwarding, pf),
            "rules[0].vipPortStart: 70000 is not a port (0-65535)"
        );
        let pf = pf.replace("70000", "9000");
        assert_eq!(
            err(Endpoint::CreatePortForwarding, &pf),
            "rules[0].vipPortStart: start 9000 is above vipPortEnd 8080"
        );
        let pf = pf.replace("9000", "8070");
        assert!(err(Endpoint::CreatePortForwarding, &pf).contains("differ in length"));
        assert_eq!(
            err(
                Endpoint::SetSnat,
                r#"{"snat":{"publicNicMac":"fa:7e:4b:ad:11:01","publicIp":"10.10.1.20","privateNicMac":"fa:7e:4b:ad:11:02","privateNicIp":"172.20.0.1","snatNetmask":"255.0.255.0"}}"#
            ),
            r#"snat.snatNetmask: "255.0.255.0" is not a contiguous netmask"#
        );
        assert_eq!(err(Endpoint::SetSnat, "{}"), "snat: missing");
        assert!(err(Endpoint::Init, r#"{"uuid": 5}"#).starts_with("uuid: invalid type"));
        assert!(err(Endpoint::Init, r#"{"uuid": "#).starts_with("malformed JSON body: EOF"));
        assert!(err(Endpoint::Init, "[]").contains("not a JSON object"));
        assert!(err(Endpoint::AddDhcp, r#"{"dhcpEntries":[{"ip":"1.2.3.4","mac":"fa:3c:91:5e:22:07","netmask":"255.255.255.0","hostname":"a,b"}]}"#).starts_with("dhcpEntries[0].hostname:"));
    }

    #[test]
    fn ha_settings_are_refused_naming_the_field() {
        let good = r#"{"keepalive":2,"heartbeatNic":"fa:7e:4b:ad:22:03","localIp":"192.168.77.11","localIpV6":"fe80::1","peerIp":"192.168.77.12","monitors":["10.10.1.100"],"vips":[{"nicMac":"fa:7e:4b:ad:22:02","nicVip":"172.20.0.1","netmask":"255.255.255.0","category":"Private","prefixLen":24}],"callbackUrl":"http://192.168.100.10:8080/cb"}"#;
        let Request::Change(Command::EnableHa(cfg)) =
            Endpoint::EnableVyosha.parse(good.as_bytes()).unwrap()
        else {
            panic!("not an HA command");
        };
        assert_eq!(cfg.advert_secs, 2);
        assert_eq!(cfg.vips[0].prefix.len(), 24);
        assert_eq!(
            cfg.monitors,
            vec!["10.10.1.100".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        let bad = |from: &str, to: &str| err(Endpoint::EnableVyosha, &good.replace(from, to));
        assert_eq!(
            bad(r#""keepalive":2"#, r#""keepalive":0"#),
            "keepalive: 0 is not an advert interval (1-60 s)"
        );
        assert_eq!(
            bad(r#""keepalive":2"#, r#""keepalive":86400"#),
            "keepalive: 86400 is not an advert interval (1-60 s)"
        );
        assert_eq!(bad(r#""keepalive":2,"#, ""), "keepalive: missing");
        assert_eq!(
            bad(r#""peerIp":"192.168.77.12""#, r#""peerIp":"192.168.77.11""#),
            r#"peerIp: "192.168.77.11" is localIp too: the peer must be another router"#
        );
        assert_eq!(
            bad(r#""localIp":"192.168.77.11""#, r#""localIp":"127.0.0.1""#),
            r#"localIp: "127.0.0.1" is a loopback address"#
        );
        assert_eq!(
            bad(r#""peerIp":"192.168.77.12""#, r#""peerIp":null"#),
            "peerIp: missing"
        );
        assert_eq!(
            bad(
                r#""heartbeatNic":"fa:7e:4b:ad:22:03""#,
                r#""heartbeatNic":"x""#
            ),
            r#"heartbeatNic: "x" is not a MAC address"#
        );
        assert_eq!(
            bad(r#"["10.10.1.100"]"#, r#"["224.0.0.18"]"#),
            r#"monitors[0]: "224.0.0.18" is a multicast address"#
        );
        assert_eq!(
            bad(r#""nicVip":"172.20.0.1""#, r#""nicVip":"172.20.0.255""#),
            r#"vips[0].nicVip: "172.20.0.255" is the broadcast address of 172.20.0.0/24"#
        );
        assert_eq!(
            bad(
                r#""callbackUrl":"http://192.168.100.10:8080/cb""#,
                r#""callbackUrl":"http://mn.example/cb""#
            ),
            r#"callbackUrl: callbackurl "http://mn.example/cb": host names are not resolved; give the management node's IP address"#
        );
        assert_eq!(bad(r#""vips":[{"#, r#""vipz":[{"#), "vips: missing");
    }

    #[test]
    fn unknown_and_missing_keys_are_fine() {
        let r = Endpoint::Init
            .parse(br#"{"uuid":"8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f","mgtCidr":"x","parms":{"a":1}}"#)
            .unwrap();
        assert_eq!(
            r,
            Request::Change(Command::Init {
                uuid: Some("8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f".into()),
                restart_dnsmasq_after: 0
            })
        );
        assert_eq!(Endpoint::Ping.parse(b"").unwrap(), Request::Ping);
        assert_eq!(
            Endpoint::RefreshFirewall.parse(br#"{"rules":[]}"#).unwrap(),
            Request::Change(Command::RefreshFirewall(vec![]))
        );
    }
}
