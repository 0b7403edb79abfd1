//! The management node's paths and request bodies, and their translation into typed requests.
//!
//! Each module of [`wire`] declares the paths it answers (a [`Route`] table) next to the wire
//! types their bodies are decoded into and the function that turns a body into a [`Request`].
//! [`route`] finds a path's route in those tables.

pub mod fields;
pub mod wire;

use crate::state::{Command, Invalid};
use serde::de::DeserializeOwned;

/// Decodes and validates a request body into a [`Request`]; what was accepted but not taken as
/// sent is noted in the `Vec` (see [`Route::parse_noted`]).
pub type Parser = fn(&[u8], &mut Vec<String>) -> Result<Request, RequestError>;

/// What the HTTP side does with a path before it reads the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Synchronous liveness (`/echo`): an empty `200` at once, the body is not read.
    Echo,
    /// `/ping`: served on an overflow connection (above the connection cap) too.
    Ping,
    /// The body is read and parsed; a command goes through the writer.
    Request,
}

/// A path the agent answers (section 2 of the protocol, plus `/removenic`).
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// The path, without a trailing `/`.
    pub path: &'static str,
    /// What the HTTP side does with it before the body.
    pub kind: Kind,
    /// Decodes and validates its body.
    pub parser: Parser,
}

impl Route {
    /// A route of [`Kind::Request`].
    pub const fn new(path: &'static str, parser: Parser) -> Route {
        Route {
            path,
            kind: Kind::Request,
            parser,
        }
    }

    /// Parses and validates a body sent to this path.
    pub fn parse(&self, body: &[u8]) -> Result<Request, RequestError> {
        (self.parser)(body, &mut Vec::new())
    }

    /// [`Route::parse`], plus notes on what was accepted but not taken as sent (a DHCP
    /// hostname dnsmasq would misread is dropped): the reply and the log carry them.
    pub fn parse_noted(&self, body: &[u8]) -> Result<(Request, Vec<String>), RequestError> {
        let mut notes = Vec::new();
        let request = (self.parser)(body, &mut notes)?;
        Ok((request, notes))
    }
}

/// The route tables of the wire modules.
const TABLES: &[&[Route]] = &[
    wire::core::ROUTES,
    wire::nics::ROUTES,
    wire::dhcp::ROUTES,
    wire::nat::ROUTES,
    wire::firewall::ROUTES,
    wire::lb::ROUTES,
    wire::ha::ROUTES,
];

/// Every route.
pub fn routes() -> impl Iterator<Item = &'static Route> {
    TABLES.iter().flat_map(|t| t.iter())
}

/// The route of a request path, with or without a trailing `/`.
pub fn route(path: &str) -> Option<&'static Route> {
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };
    routes().find(|r| r.path == path)
}

/// All routed paths.
pub fn paths() -> impl Iterator<Item = &'static str> {
    routes().map(|r| r.path)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(path: &str, body: &str) -> String {
        route(path)
            .unwrap()
            .parse(body.as_bytes())
            .unwrap_err()
            .to_string()
    }

    fn found(path: &str) -> Option<(&'static str, Kind)> {
        route(path).map(|r| (r.path, r.kind))
    }

    #[test]
    fn paths_with_and_without_slash() {
        assert_eq!(found("/init/"), Some(("/init", Kind::Request)));
        assert_eq!(found("/lb/refresh"), Some(("/lb/refresh", Kind::Request)));
        assert_eq!(
            found("/appliancevm/echo/"),
            Some(("/appliancevm/echo", Kind::Echo))
        );
        assert_eq!(found("/echo"), Some(("/echo", Kind::Echo)));
        assert_eq!(found("/ping/"), Some(("/ping", Kind::Ping)));
        assert_eq!(found("/init//"), None);
        assert_eq!(found("/Init"), None);
        assert_eq!(found("/nope"), None);
        assert_eq!(found("/"), None);
        assert_eq!(found(""), None);
    }

    #[test]
    fn the_routed_paths_are_the_protocols() {
        let mut paths: Vec<&str> = paths().collect();
        paths.sort_unstable();
        let mut expected = vec![
            "/echo",
            "/init",
            "/ping",
            "/configurenic",
            "/removenic",
            "/adddhcp",
            "/removedhcp",
            "/setsnat",
            "/syncsnat",
            "/removesnat",
            "/setdns",
            "/removedns",
            "/createvip",
            "/removevip",
            "/createeip",
            "/removeeip",
            "/synceip",
            "/createportforwarding",
            "/revokeportforwarding",
            "/syncportforwarding",
            "/lb/refresh",
            "/lb/delete",
            "/appliancevm/echo",
            "/appliancevm/init",
            "/appliancevm/refreshfirewall",
            "/enableVyosha",
            "/syncVpcRouterHa",
            "/restartKeepalived",
        ];
        expected.sort_unstable();
        // Sorted: a path in two tables would show twice.
        assert_eq!(paths, expected);
        assert!(paths.iter().all(|p| p.len() > 1 && !p.ends_with('/')));
        let kinds = |k: Kind| {
            let mut v: Vec<&str> = routes().filter(|r| r.kind == k).map(|r| r.path).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(kinds(Kind::Echo), ["/appliancevm/echo", "/echo"]);
        assert_eq!(kinds(Kind::Ping), ["/ping"]);
    }

    #[test]
    fn bad_values_name_the_field() {
        assert_eq!(
            err(
                "/createeip",
                r#"{"eip":{"vipIp":"10.0.0.300","privateMac":"fa:7e:4b:ad:11:02","guestIp":"172.20.0.15"}}"#
            ),
            r#"eip.vipIp: "10.0.0.300" is not an IPv4 address"#
        );
        assert_eq!(
            err(
                "/createeip",
                r#"{"eip":{"vipIp":"10.0.0.3","privateMac":"fa:7e:4b:ad:11","guestIp":"172.20.0.15"}}"#
            ),
            r#"eip.privateMac: "fa:7e:4b:ad:11" is not a MAC address"#
        );
        let pf = r#"{"rules":[{"vipPortStart":70000,"vipPortEnd":8080,"privatePortStart":80,"privatePortEnd":80,"protocolType":"TCP","vipIp":"10.10.1.56","privateIp":"172.20.0.15","privateMac":"fa:7e:4b:ad:11:02"}]}"#;
        assert_eq!(
            err("/createportforwarding", pf),
            "rules[0].vipPortStart: 70000 is not a port (0-65535)"
        );
        let pf = pf.replace("70000", "9000");
        assert_eq!(
            err("/createportforwarding", &pf),
            "rules[0].vipPortStart: start 9000 is above vipPortEnd 8080"
        );
        let pf = pf.replace("9000", "8070");
        assert!(err("/createportforwarding", &pf).contains("differ in length"));
        assert_eq!(
            err(
                "/setsnat",
                r#"{"snat":{"publicNicMac":"fa:7e:4b:ad:11:01","publicIp":"10.10.1.20","privateNicMac":"fa:7e:4b:ad:11:02","privateNicIp":"172.20.0.1","snatNetmask":"255.0.255.0"}}"#
            ),
            r#"snat.snatNetmask: "255.0.255.0" is not a contiguous netmask"#
        );
        assert_eq!(err("/setsnat", "{}"), "snat: missing");
        assert!(err("/init", r#"{"uuid": 5}"#).starts_with("uuid: invalid type"));
        assert!(err("/init", r#"{"uuid": "#).starts_with("malformed JSON body: EOF"));
        assert!(err("/init", "[]").contains("not a JSON object"));
        assert!(err("/adddhcp", r#"{"dhcpEntries":[{"ip":"1.2.3.4","mac":"fa:3c:91:5e:22:07","netmask":"255.255.255.0","hostname":"a,b"}]}"#).starts_with("dhcpEntries[0].hostname:"));
    }

    #[test]
    fn unknown_and_missing_keys_are_fine() {
        let r = route("/init")
            .unwrap()
            .parse(br#"{"uuid":"8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f","mgtCidr":"x","parms":{"a":1}}"#)
            .unwrap();
        assert_eq!(
            r,
            Request::Change(Command::Init {
                uuid: Some("8d3c0f6e2b7a4d1f9c5e0a2b4c6d8e0f".into()),
                restart_dnsmasq_after: 0
            })
        );
        assert_eq!(route("/ping").unwrap().parse(b"").unwrap(), Request::Ping);
        assert_eq!(
            route("/appliancevm/refreshfirewall")
                .unwrap()
                .parse(br#"{"rules":[]}"#)
                .unwrap(),
            Request::Change(Command::RefreshFirewall(vec![]))
        );
    }
}
