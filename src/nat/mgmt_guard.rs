//! Whether the drop-policy firewall may go in: only when some nic is known to be the
//! management nic, i.e. the cached bootstrap info names one, or a nic of the `--mgmt-nic` name
//! exists. Otherwise `inet vr_filter` is installed without its drop policies and drop rules
//! (its sets and accept rules stay, so every command still applies): an agent started on the
//! wrong machine, a developer's with `ens3` and a docker bridge, must not cut that machine's
//! ssh and forwarded traffic. The reason is logged and shown in `/ping` `healthDetail`.

use crate::bootstrap::info::{BootstrapInfo, InfoError};
use crate::health::Health;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Health source while the firewall is installed without its drop policies.
pub const HEALTH_FIREWALL: &str = "firewall";

/// What is known about the management nic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MgmtNic {
    /// The cached bootstrap info names it (the appliance: bootstrap renames it).
    Bootstrap,
    /// A nic of the `--mgmt-nic` name exists.
    Named,
    /// Neither; the sentence says why.
    Unknown(String),
}

/// Decides from what was read: the cached bootstrap info (`None`: no file) and whether a nic
/// of the `--mgmt-nic` name exists.
pub fn decide(
    bootstrap: Option<Result<Option<BootstrapInfo>, InfoError>>,
    cache: Option<&Path>,
    named: std::io::Result<bool>,
    mgmt_nic: &str,
) -> MgmtNic {
    let info = match bootstrap {
        Some(Ok(Some(_))) => return MgmtNic::Bootstrap,
        Some(Ok(None)) => match cache {
            Some(p) => format!("no bootstrap info at {}", p.display()),
            None => "no bootstrap info".to_string(),
        },
        Some(Err(e)) => format!("the bootstrap info is unreadable ({e})"),
        None => "no bootstrap info".to_string(),
    };
    let nic = match named {
        Ok(true) => return MgmtNic::Named,
        Ok(false) => format!("no nic named {mgmt_nic:?} (--mgmt-nic)"),
        Err(e) => format!("the nics could not be listed ({e})"),
    };
    MgmtNic::Unknown(format!(
        "no management nic known: {info} and {nic}; the drop-policy firewall (inet vr_filter) \
         is not installed, its input and forward chains accept"
    ))
}

/// Reads the system and remembers the last decision, which every rendering of the filter
/// table follows until the next [`Guard::refresh`].
#[derive(Debug)]
pub struct Guard {
    mgmt_nic: String,
    bootstrap_cache: Option<PathBuf>,
    health: Arc<Health>,
    last: Option<MgmtNic>,
}

impl Guard {
    /// A guard for the nic named `mgmt_nic` and the bootstrap info cached at
    /// `bootstrap_cache` (if the agent has a state directory).
    pub fn new(mgmt_nic: String, bootstrap_cache: Option<PathBuf>, health: Arc<Health>) -> Guard {
        Guard {
            mgmt_nic,
            bootstrap_cache,
            health,
            last: None,
        }
    }

    /// Reads the bootstrap info and the nics again; true when the decision changed (the
    /// filter table must then be rendered again). Health and the log follow.
    pub fn refresh(&mut self) -> bool {
        let bootstrap = self
            .bootstrap_cache
            .as_deref()
            .map(BootstrapInfo::load_cached);
        let named = crate::link::view::current()
            .map(|s| !s.interfaces_of(&[], &[self.mgmt_nic.as_str()]).is_empty());
        let now = decide(
            bootstrap,
            self.bootstrap_cache.as_deref(),
            named,
            &self.mgmt_nic,
        );
        let changed = self.last.as_ref() != Some(&now);
        match &now {
            MgmtNic::Unknown(why) => {
                if changed {
                    tracing::warn!(%why, "firewall without drop policies");
                }
                self.health.set(HEALTH_FIREWALL, why.clone());
            }
            known => {
                if changed && self.last.is_some() {
                    tracing::info!(mgmt_nic = %self.mgmt_nic, ?known, "management nic known: drop-policy firewall");
                }
                self.health.clear(HEALTH_FIREWALL);
            }
        }
        let first = self.last.is_none();
        self.last = Some(now);
        changed && !first
    }

    /// True while the filter table goes in without its drop policies (no management nic
    /// known at the last refresh). Before any refresh: false.
    pub fn open(&self) -> bool {
        matches!(self.last, Some(MgmtNic::Unknown(_)))
    }

    /// What the last refresh found, for the log of a change.
    pub fn describe(&self) -> String {
        match &self.last {
            Some(MgmtNic::Unknown(why)) => why.clone(),
            Some(MgmtNic::Bootstrap) => {
                "management nic known from the bootstrap info: drop-policy firewall installed"
                    .into()
            }
            Some(MgmtNic::Named) => format!(
                "management nic {:?} found: drop-policy firewall installed",
                self.mgmt_nic
            ),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_by_bootstrap_or_name_else_unknown_with_the_reason() {
        let info = BootstrapInfo {
            nics: Vec::new(),
            public_key: None,
        };
        let cache = Path::new("/s/bootstrap-info.json");
        assert_eq!(
            decide(Some(Ok(Some(info))), Some(cache), Ok(false), "eth0"),
            MgmtNic::Bootstrap
        );
        assert_eq!(
            decide(Some(Ok(None)), Some(cache), Ok(true), "eth0"),
            MgmtNic::Named
        );
        assert_eq!(
            decide(Some(Ok(None)), Some(cache), Ok(false), "eth0"),
            MgmtNic::Unknown(
                "no management nic known: no bootstrap info at /s/bootstrap-info.json and no nic \
                 named \"eth0\" (--mgmt-nic); the drop-policy firewall (inet vr_filter) is not \
                 installed, its input and forward chains accept"
                    .into()
            )
        );
        let listing = std::io::Error::other("EPERM");
        assert!(matches!(
            decide(None, None, Err(listing), "eth0"),
            MgmtNic::Unknown(w) if w.contains("the nics could not be listed (EPERM)")
        ));
    }
}
