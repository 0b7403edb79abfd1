//! `/init`, `/ping`, `/echo` and `/appliancevm/init`: the agent's own life cycle.

use super::bounded;
use serde::Deserialize;

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
