//! `/configurenic`, `/removenic` and the VIPs (`/createvip`, `/removevip`).

use super::{bounded, each_req, netmask_or_prefix};
use crate::protocol::fields::*;
use crate::protocol::{Request, RequestError, Route, decode};
use crate::state::model::{Nic, Vip};
use crate::state::{Command, Invalid};
use serde::Deserialize;

/// The paths of this module.
pub const ROUTES: &[Route] = &[
    Route::new("/configurenic", configure_nics),
    Route::new("/removenic", remove_nics),
    Route::new("/createvip", create_vips),
    Route::new("/removevip", remove_vips),
];

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

/// `/configurenic`, `/removenic`
#[derive(Debug, Default, Deserialize)]
pub struct NicsCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub nics: Option<Vec<NicInfo>>,
}

fn configure_nics(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: NicsCmd = decode(body, false)?;
    let nics = each_req("nics", &w.nics, |f, n| n.validate(f))?;
    Ok(Request::Change(Command::ConfigureNics(nics)))
}

/// `/removenic` looks at each nic's `mac` only.
fn remove_nics(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: NicsCmd = decode(body, false)?;
    let macs = each_req("nics", &w.nics, |f, n| req_mac(&format!("{f}.mac"), &n.mac))?;
    Ok(Request::Change(Command::RemoveNics(macs)))
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

/// `/createvip`, `/removevip`
#[derive(Debug, Default, Deserialize)]
pub struct VipsCmd {
    #[serde(default, deserialize_with = "bounded::list")]
    pub vips: Option<Vec<VipTo>>,
}

fn create_vips(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: VipsCmd = decode(body, false)?;
    let vips = each_req("vips", &w.vips, |f, v| v.validate(f))?;
    Ok(Request::Change(Command::CreateVips(vips)))
}

fn remove_vips(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: VipsCmd = decode(body, false)?;
    let vips = each_req("vips", &w.vips, |f, v| v.validate(f))?;
    Ok(Request::Change(Command::RemoveVips(vips)))
}
