//! Router HA: `/enableVyosha`, `/syncVpcRouterHa`, `/restartKeepalived`.

use super::core::PingCmd;
use super::{bounded, each, each_req, netmask_or_prefix};
use crate::protocol::fields::*;
use crate::protocol::{Request, RequestError, Route, decode};
use crate::state::ha::{HaConfig, HaVip, MAX_ADVERT_SECS};
use crate::state::{Command, Invalid};
use serde::Deserialize;

/// The paths of this module.
pub const ROUTES: &[Route] = &[
    Route::new("/enableVyosha", enable_ha),
    Route::new("/syncVpcRouterHa", ha_status),
    Route::new("/restartKeepalived", restart_keepalived),
];

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

fn enable_ha(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: EnableHaCmd = decode(body, false)?;
    Ok(Request::Change(Command::EnableHa(w.validate()?)))
}

/// `/syncVpcRouterHa`: this node's HA role, a read answered without waiting for the writer.
fn ha_status(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let _: PingCmd = decode(body, true)?;
    Ok(Request::HaStatus)
}

/// `/restartKeepalived`: the management node's remedy for a split brain.
fn restart_keepalived(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let _: PingCmd = decode(body, true)?;
    Ok(Request::RestartKeepalived)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha_settings_are_refused_naming_the_field() {
        let good = r#"{"keepalive":2,"heartbeatNic":"fa:7e:4b:ad:22:03","localIp":"192.168.77.11","localIpV6":"fe80::1","peerIp":"192.168.77.12","monitors":["10.10.1.100"],"vips":[{"nicMac":"fa:7e:4b:ad:22:02","nicVip":"172.20.0.1","netmask":"255.255.255.0","category":"Private","prefixLen":24}],"callbackUrl":"http://192.168.100.10:8080/cb"}"#;
        let Request::Change(Command::EnableHa(cfg)) =
            enable_ha(good.as_bytes(), &mut Vec::new()).unwrap()
        else {
            panic!("not an HA command");
        };
        assert_eq!(cfg.advert_secs, 2);
        assert_eq!(cfg.vips[0].prefix.len(), 24);
        assert_eq!(
            cfg.monitors,
            vec!["10.10.1.100".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        let bad = |from: &str, to: &str| {
            enable_ha(good.replace(from, to).as_bytes(), &mut Vec::new())
                .unwrap_err()
                .to_string()
        };
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
}
