//! Load balancer listeners: `/lb/refresh`, `/lb/delete`.

use super::{bounded, each, each_req};
use crate::protocol::fields::*;
use crate::protocol::{Request, RequestError, Route, decode};
use crate::state::lb::{
    BackendServer, DEFAULT_WEIGHT, LbDelete, MAX_WEIGHT, Mode, parse_parameters,
};
use crate::state::model::LbListener;
use crate::state::{Command, Invalid};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The paths of this module.
pub const ROUTES: &[Route] = &[
    Route::new("/lb/refresh", refresh_lbs),
    Route::new("/lb/delete", delete_lbs),
];

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

fn refresh_lbs(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: LbCmd = decode(body, false)?;
    let listeners = each_req("lbs", &w.lbs, |f, l| l.validate(f))?;
    Ok(Request::Change(Command::RefreshLb(listeners)))
}

fn delete_lbs(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: LbCmd = decode(body, false)?;
    let deletes = each_req("lbs", &w.lbs, |f, l| l.validate_delete(f))?;
    Ok(Request::Change(Command::DeleteLb(deletes)))
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

fn nonzero_port(field: &str, v: &Option<i64>) -> Result<u16, Invalid> {
    match port(field, v)? {
        0 => Err(Invalid::new(field, "0 is not a port a listener can use")),
        p => Ok(p),
    }
}
