//! `/init`, `/ping`, `/echo` and `/appliancevm/init`: the agent's own life cycle.

use super::bounded;
use crate::protocol::{Kind, Request, RequestError, Route, decode, fields};
use crate::state::{Command, Invalid};
use serde::Deserialize;

/// The paths of this module.
pub const ROUTES: &[Route] = &[
    Route {
        kind: Kind::Echo,
        ..Route::new("/echo", ping)
    },
    Route {
        kind: Kind::Echo,
        ..Route::new("/appliancevm/echo", ping)
    },
    Route::new("/init", init),
    Route {
        kind: Kind::Ping,
        ..Route::new("/ping", ping)
    },
    Route::new("/appliancevm/init", appliance_init),
];

/// `/init`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitCmd {
    #[serde(default, deserialize_with = "bounded::text")]
    pub uuid: Option<String>,
    #[serde(rename = "restartDnsmasqAfterNumberOfSIGUSER1")]
    pub restart_dnsmasq_after_number_of_siguser1: Option<i64>,
}

fn init(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let w: InitCmd = decode(body, false)?;
    let n = w.restart_dnsmasq_after_number_of_siguser1.unwrap_or(0);
    let restart_dnsmasq_after = u32::try_from(n).map_err(|_| {
        Invalid::new(
            "restartDnsmasqAfterNumberOfSIGUSER1",
            format!("{n} is not a count (0 or more)"),
        )
    })?;
    Ok(Request::Change(Command::Init {
        uuid: fields::opt_token("uuid", &w.uuid)?,
        restart_dnsmasq_after,
    }))
}

/// `/ping`; also the (ignored) body of `/echo`, `/appliancevm/init`, `/syncVpcRouterHa` and
/// `/restartKeepalived`: a blank body is fine.
#[derive(Debug, Default, Deserialize)]
pub struct PingCmd {
    #[serde(default, deserialize_with = "bounded::text")]
    pub uuid: Option<String>,
}

/// `/ping` (and `/echo`, whose body is never read): a read, answered without the writer.
fn ping(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let _: PingCmd = decode(body, true)?;
    Ok(Request::Ping)
}

/// `/appliancevm/init`: the appliance firewall's base rules, through the writer.
fn appliance_init(body: &[u8], _: &mut Vec<String>) -> Result<Request, RequestError> {
    let _: PingCmd = decode(body, true)?;
    Ok(Request::Change(Command::ApplianceInit))
}
