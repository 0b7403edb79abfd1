//! Router HA: `/enableVyosha`.

use super::{bounded, each, each_req, netmask_or_prefix};
use crate::protocol::fields::*;
use crate::state::Invalid;
use crate::state::ha::{HaConfig, HaVip, MAX_ADVERT_SECS};
use serde::Deserialize;

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
