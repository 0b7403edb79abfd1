//! The bootstrap information the management node hands the router through the virtio-serial
//! port (protocol section 6): `managementNic`, `additionalNics`, `publicKey`.

use crate::protocol::wire::nics::NicInfo;
use crate::state::Invalid;
use crate::state::model::Nic;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Why the bootstrap information is unusable.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    /// Not JSON, or a field of the wrong type.
    #[error("bootstrap info is not valid JSON: {0}")]
    Json(String),
    /// A field value is refused.
    #[error("bootstrap info: {0}")]
    Invalid(#[from] Invalid),
    /// The cached copy could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InfoWire {
    management_nic: Option<NicInfo>,
    additional_nics: Option<Vec<NicInfo>>,
    public_key: Option<String>,
}

/// Validated bootstrap information.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapInfo {
    /// The management nic first, then the additional nics in the order given.
    pub nics: Vec<Nic>,
    /// The management node's ssh public key for root, if given.
    pub public_key: Option<String>,
}

impl BootstrapInfo {
    /// Parses and validates the JSON text. Refuses a missing management nic, a MAC or
    /// device name given twice, and more than one default-route nic.
    pub fn parse(bytes: &[u8]) -> Result<BootstrapInfo, InfoError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let wire: InfoWire = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            InfoError::Json(format!("{path}: {}", e.into_inner()))
        })?;
        let mgmt = wire
            .management_nic
            .as_ref()
            .ok_or_else(|| Invalid::new("managementNic", "missing"))?;
        let mut nics = vec![mgmt.validate("managementNic")?];
        for (i, n) in wire.additional_nics.iter().flatten().enumerate() {
            nics.push(n.validate(&format!("additionalNics[{i}]"))?);
        }
        let mut macs = BTreeMap::new();
        let mut names = BTreeMap::new();
        for (i, nic) in nics.iter().enumerate() {
            let at = field(i);
            if let Some(first) = macs.insert(nic.mac, i) {
                return Err(Invalid::new(
                    format!("{at}.mac"),
                    format!("{} is also the MAC of {}", nic.mac, field(first)),
                )
                .into());
            }
            if let Some(name) = &nic.device_name
                && let Some(first) = names.insert(name.clone(), i)
            {
                return Err(Invalid::new(
                    format!("{at}.deviceName"),
                    format!("{name} is also the name of {}", field(first)),
                )
                .into());
            }
        }
        let defaults: Vec<usize> = (0..nics.len())
            .filter(|&i| nics[i].is_default_route)
            .collect();
        if let [first, second, ..] = defaults.as_slice() {
            return Err(Invalid::new(
                format!("{}.isDefaultRoute", field(*second)),
                format!("{} already has the default route", field(*first)),
            )
            .into());
        }
        for &i in &defaults {
            if nics[i].gateway.is_none() {
                return Err(Invalid::new(
                    format!("{}.gateway", field(i)),
                    "missing on the default-route nic",
                )
                .into());
            }
        }
        let public_key = wire
            .public_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(String::from);
        if let Some(k) = &public_key
            && k.contains('\n')
        {
            return Err(Invalid::new("publicKey", "holds more than one line").into());
        }
        Ok(BootstrapInfo { nics, public_key })
    }

    /// The cached copy at `path`, if there is one.
    pub fn load_cached(path: &Path) -> Result<Option<BootstrapInfo>, InfoError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(InfoError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

fn field(i: usize) -> String {
    if i == 0 {
        "managementNic".to_string()
    } else {
        format!("additionalNics[{}]", i - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../fixtures/bootstrap-info.json");

    #[test]
    fn parses_the_fixture() {
        let info = BootstrapInfo::parse(FIXTURE.as_bytes()).unwrap();
        assert_eq!(info.nics.len(), 3);
        let names: Vec<_> = info
            .nics
            .iter()
            .map(|n| n.device_name.clone().unwrap())
            .collect();
        assert_eq!(names, ["eth0", "eth1", "eth2"]);
        assert_eq!(info.nics[0].mac.to_string(), "fa:7e:4b:ad:11:00");
        assert_eq!(info.nics[0].ip.to_string(), "192.168.100.20");
        assert_eq!(info.nics[0].prefix.len(), 24);
        assert!(!info.nics[0].is_default_route);
        assert!(info.nics[1].is_default_route);
        assert_eq!(
            info.nics[1].gateway.map(|g| g.to_string()).as_deref(),
            Some("10.10.1.1")
        );
        assert_eq!(info.public_key.as_deref(), Some("ssh-rsa AAAA... root@mn"));
    }

    #[test]
    fn optional_fields_and_unknown_keys() {
        let text = r#"{"managementNic":{"ip":"192.168.0.2","netmask":"255.255.0.0","mac":"fa:7e:00:00:00:01","deviceName":"eth0","isDefaultRoute":true,"gateway":"192.168.0.1","mtu":9000,"metaData":"x"},"extra":1}"#;
        let info = BootstrapInfo::parse(text.as_bytes()).unwrap();
        assert_eq!(info.nics.len(), 1);
        assert_eq!(info.nics[0].mtu, Some(9000));
        assert_eq!(info.nics[0].prefix.len(), 16);
        assert_eq!(info.public_key, None);
    }

    #[test]
    fn refusals_name_the_field() {
        let err = |t: &str| BootstrapInfo::parse(t.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"additionalNics":[]}"#),
            "bootstrap info: managementNic: missing"
        );
        assert!(err("not json").starts_with("bootstrap info is not valid JSON"));
        assert_eq!(
            err(
                r#"{"managementNic":{"ip":"10.0.0.300","netmask":"255.255.255.0","mac":"fa:7e:00:00:00:01"}}"#
            ),
            r#"bootstrap info: managementNic.ip: "10.0.0.300" is not an IPv4 address"#
        );
        let m = r#""managementNic":{"ip":"10.0.0.2","netmask":"255.255.255.0","mac":"fa:7e:00:00:00:01","deviceName":"eth0","gateway":"10.0.0.1","isDefaultRoute":true}"#;
        assert_eq!(
            err(&format!(
                r#"{{{m},"additionalNics":[{{"ip":"10.1.0.2","netmask":"255.255.255.0","mac":"FA:7E:00:00:00:01"}}]}}"#
            )),
            "bootstrap info: additionalNics[0].mac: fa:7e:00:00:00:01 is also the MAC of managementNic"
        );
        assert_eq!(
            err(&format!(
                r#"{{{m},"additionalNics":[{{"ip":"10.1.0.2","netmask":"255.255.255.0","mac":"fa:7e:00:00:00:02","deviceName":"eth0"}}]}}"#
            )),
            "bootstrap info: additionalNics[0].deviceName: eth0 is also the name of managementNic"
        );
        assert_eq!(
            err(&format!(
                r#"{{{m},"additionalNics":[{{"ip":"10.1.0.2","netmask":"255.255.255.0","mac":"fa:7e:00:00:00:02","gateway":"10.1.0.1","isDefaultRoute":true}}]}}"#
            )),
            "bootstrap info: additionalNics[0].isDefaultRoute: managementNic already has the default route"
        );
        assert_eq!(
            err(
                r#"{"managementNic":{"ip":"10.0.0.2","netmask":"255.255.255.0","mac":"fa:7e:00:00:00:01","isDefaultRoute":true}}"#
            ),
            "bootstrap info: managementNic.gateway: missing on the default-route nic"
        );
    }
}
