//! Load balancer listeners in the desired state: the typed listener configuration parsed from
//! the management node's `key::value` parameters, and the pure checks and transitions of
//! `/lb/refresh` (replace the listener set of each named load balancer) and `/lb/delete`.

use super::model::{L4Proto, PortForward, PortForwardKey};
use super::types::PortRange;
use super::{DesiredState, Invalid};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// How a listener speaks to its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Plain TCP proxying.
    Tcp,
    /// HTTP proxying; the backends see the client in `X-Forwarded-For`.
    Http,
}

impl Mode {
    /// The name haproxy and the wire use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Http => "http",
        }
    }
}

/// How connections are spread over the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// In turn, by weight.
    RoundRobin,
    /// To the backend with the fewest connections.
    LeastConn,
    /// By a hash of the client address.
    Source,
    /// In turn by the `balancerWeight` weights (a round robin whose weights change at run time).
    WeightRoundRobin,
}

impl Algorithm {
    /// True when haproxy takes any weight change at run time (dynamic algorithms); the static
    /// `source` hash only takes 0 or 100 %, so its weight changes need a reload.
    pub fn weights_at_runtime(self) -> bool {
        !matches!(self, Algorithm::Source)
    }
}

/// What a health check connects to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthTarget {
    /// A TCP connect to the port (`None`: the listener's `instancePort`).
    Tcp {
        /// Port checked, when not the instance port.
        port: Option<u16>,
    },
    /// An HTTP request that must be answered 2xx or 3xx.
    Http {
        /// Port checked, when not the instance port.
        port: Option<u16>,
        /// `GET` or `HEAD`.
        method: String,
        /// Path requested.
        uri: String,
    },
}

/// A listener's settings, from its parameters (defaults: what a 1.0 management node sets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerConfig {
    /// `balancerAlgorithm`
    pub algorithm: Algorithm,
    /// `connectionIdleTimeout`, seconds.
    pub idle_timeout_s: u32,
    /// `healthCheckInterval`, seconds.
    pub check_interval_s: u32,
    /// `healthCheckTimeout`, seconds.
    pub check_timeout_s: u32,
    /// `healthyThreshold`: checks passed in a row to be taken in.
    pub healthy_threshold: u32,
    /// `unhealthyThreshold`: checks failed in a row to be taken out.
    pub unhealthy_threshold: u32,
    /// `maxConnection`: connections the listener serves at once.
    pub max_connections: u32,
    /// `healthCheckTarget` (with `healthCheckURI`, `healthCheckMethod` for http).
    pub health_target: HealthTarget,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            algorithm: Algorithm::RoundRobin,
            idle_timeout_s: 60,
            check_interval_s: 5,
            check_timeout_s: 2,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            max_connections: 5000,
            health_target: HealthTarget::Tcp { port: None },
        }
    }
}

/// Weight of a backend when none is given (`balancerWeight` weights are 0-100).
pub const DEFAULT_WEIGHT: u8 = 100;
/// Largest `balancerWeight`.
pub const MAX_WEIGHT: u8 = 100;

/// One backend server of a listener.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendServer {
    /// Its address (the VM nic).
    pub ip: Ipv4Addr,
    /// Relative share of the connections, 0-100 (0: none).
    pub weight: u8,
}

/// Identity of a listener.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LbKey {
    /// Load balancer uuid.
    pub lb_uuid: String,
    /// Listener uuid.
    pub listener_uuid: String,
}

/// A load balancer listener: VIP:`load_balancer_port` -> every backend at `instance_port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbListener {
    /// Load balancer uuid.
    pub lb_uuid: String,
    /// Listener uuid.
    pub listener_uuid: String,
    /// The VIP it listens on.
    pub vip: Ipv4Addr,
    /// Listening port.
    pub load_balancer_port: u16,
    /// Backend port.
    pub instance_port: u16,
    /// `tcp` or `http`.
    pub mode: Mode,
    /// Backends by address, in address order, each once.
    pub backends: Vec<BackendServer>,
    /// Settings from the parameters.
    pub config: ListenerConfig,
}

impl LbListener {
    /// Its identity.
    pub fn key(&self) -> LbKey {
        LbKey {
            lb_uuid: self.lb_uuid.clone(),
            listener_uuid: self.listener_uuid.clone(),
        }
    }

    /// True when the listener serves (a listener without backends is not served, as the
    /// incumbent treats an empty `nicIps`).
    pub fn serves(&self) -> bool {
        !self.backends.is_empty()
    }

    fn describe(&self) -> String {
        format!(
            "listener {} of load balancer {} ({}:{})",
            self.listener_uuid, self.lb_uuid, self.vip, self.load_balancer_port
        )
    }
}

/// What `/lb/delete` names: a listener, or (without a listener uuid) every listener of a load
/// balancer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbDelete {
    /// Load balancer uuid.
    pub lb_uuid: String,
    /// Listener uuid; `None`: all of the load balancer's.
    pub listener_uuid: Option<String>,
}

/// Parameters are refused when longer than this (the real ones are a few dozen bytes).
const MAX_PARAMETER: usize = 1024;

fn bad(at: &str, listener: &str, key: &str, value: &str, why: &str) -> Invalid {
    Invalid::new(
        at,
        format!(
            "listener {listener}: {key} {} {why}",
            crate::protocol::fields::quote(value)
        ),
    )
}

fn number(
    at: &str,
    listener: &str,
    key: &str,
    value: &str,
    lo: u32,
    hi: u32,
) -> Result<u32, Invalid> {
    let n: u64 = value
        .parse()
        .map_err(|_| bad(at, listener, key, value, "is not a number"))?;
    if n < u64::from(lo) || n > u64::from(hi) {
        return Err(bad(
            at,
            listener,
            key,
            value,
            &format!("is out of range ({lo}-{hi})"),
        ));
    }
    Ok(n as u32)
}

fn check_port(at: &str, listener: &str, key: &str, value: &str) -> Result<Option<u16>, Invalid> {
    if value == "default" {
        return Ok(None);
    }
    number(at, listener, key, value, 1, 65535).map(|p| Some(p as u16))
}

/// Parses a listener's `key::value` parameters (split on the first `::`) into its settings
/// and the weights `balancerWeight::<ip>::<weight>` give. Unknown keys are ignored; a bad
/// value of a known key is refused naming `at[i]` (the parameter), the listener and the key.
/// Newlines and `#` are refused in every parameter: they could end up in haproxy's file.
pub fn parse_parameters(
    at: &str,
    listener: &str,
    params: &[String],
) -> Result<(ListenerConfig, BTreeMap<Ipv4Addr, u8>), Invalid> {
    let mut c = ListenerConfig::default();
    let mut weights = BTreeMap::new();
    let (mut http_port, mut http, mut uri, mut method) = (None, false, None, None);
    for (i, p) in params.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let (key, value) = p.split_once("::").unwrap_or((p.as_str(), ""));
        if p.len() > MAX_PARAMETER {
            return Err(bad(&at, listener, key, value, "is too long"));
        }
        if p.chars().any(|ch| ch.is_control() || ch == '#') {
            return Err(bad(
                &at,
                listener,
                key,
                value,
                "holds a control character or '#'",
            ));
        }
        let num = |lo, hi| number(&at, listener, key, value, lo, hi);
        match key {
            "balancerAlgorithm" => {
                c.algorithm = match value {
                    "roundrobin" => Algorithm::RoundRobin,
                    "leastconn" => Algorithm::LeastConn,
                    "source" => Algorithm::Source,
                    "weightroundrobin" => Algorithm::WeightRoundRobin,
                    _ => {
                        return Err(bad(
                            &at,
                            listener,
                            key,
                            value,
                            "is not roundrobin, leastconn, source or weightroundrobin",
                        ));
                    }
                }
            }
            "connectionIdleTimeout" => c.idle_timeout_s = num(1, 86_400)?,
            "healthCheckInterval" => c.check_interval_s = num(1, 3_600)?,
            "healthCheckTimeout" => c.check_timeout_s = num(1, 3_600)?,
            "healthyThreshold" => c.healthy_threshold = num(1, 100)?,
            "unhealthyThreshold" => c.unhealthy_threshold = num(1, 100)?,
            "maxConnection" => c.max_connections = num(1, 1_000_000)?,
            "healthCheckTarget" => {
                let (proto, port) = value.split_once(':').unwrap_or((value, ""));
                match proto {
                    "tcp" => {
                        http = false;
                        c.health_target = HealthTarget::Tcp {
                            port: check_port(&at, listener, key, port)?,
                        };
                    }
                    "http" => {
                        http = true;
                        http_port = check_port(&at, listener, key, port)?;
                    }
                    _ => {
                        return Err(bad(
                            &at,
                            listener,
                            key,
                            value,
                            "is not tcp:default, tcp:<port>, http:default or http:<port>",
                        ));
                    }
                }
            }
            "healthCheckURI" => {
                // haproxy's file quotes and escapes with these: keep them out
                if !value.starts_with('/')
                    || value
                        .chars()
                        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\'))
                {
                    return Err(bad(
                        &at,
                        listener,
                        key,
                        value,
                        "is not a path (/..., without spaces, quotes or backslashes)",
                    ));
                }
                uri = Some(value.to_string());
            }
            "healthCheckMethod" => {
                let m = value.to_ascii_uppercase();
                if m != "GET" && m != "HEAD" {
                    return Err(bad(&at, listener, key, value, "is not GET or HEAD"));
                }
                method = Some(m);
            }
            "balancerWeight" => {
                let (ip, w) = value
                    .split_once("::")
                    .ok_or_else(|| bad(&at, listener, key, value, "is not <ip>::<weight>"))?;
                let ip: Ipv4Addr = ip.parse().map_err(|_| {
                    bad(
                        &at,
                        listener,
                        key,
                        value,
                        "does not start with an IPv4 address",
                    )
                })?;
                let w = number(&at, listener, key, w, 0, u32::from(MAX_WEIGHT))?;
                weights.insert(ip, w as u8);
            }
            _ => {}
        }
    }
    if http {
        c.health_target = HealthTarget::Http {
            port: http_port,
            method: method.unwrap_or_else(|| "GET".into()),
            uri: uri.unwrap_or_else(|| "/".into()),
        };
    }
    Ok((c, weights))
}

/// The ports a listener claims, as a port forward's key would (for conflict checks).
fn claim(l: &LbListener) -> PortForwardKey {
    PortForwardKey {
        vip_ip: l.vip,
        protocol: L4Proto::Tcp,
        vip_ports: PortRange {
            start: l.load_balancer_port,
            end: l.load_balancer_port,
        },
    }
}

/// The port forward on the same VIP, protocol and port as `l`, if any.
fn forward_on<'a>(
    forwards: &'a crate::state::Table<PortForwardKey, PortForward>,
    l: &LbListener,
) -> Option<&'a PortForward> {
    let k = claim(l);
    // one ordered lookup, whatever the number of forwards
    super::apply::overlapping(forwards, k.vip_ip, k.protocol, k.vip_ports).next()
}

fn describe_forward(pf: &PortForward) -> String {
    format!(
        "the port forward {} {}:{}-{} to {}",
        pf.protocol.name(),
        pf.vip_ip,
        pf.vip_ports.start,
        pf.vip_ports.end,
        pf.private_ip
    )
}

impl DesiredState {
    /// The listeners after a refresh with `lbs`: those of load balancers it does not name,
    /// plus `lbs`.
    fn refreshed<'a>(&'a self, lbs: &'a [LbListener]) -> impl Iterator<Item = &'a LbListener> {
        let named: BTreeSet<&str> = lbs.iter().map(|l| l.lb_uuid.as_str()).collect();
        self.lb_listeners
            .values()
            .filter(move |l| !named.contains(l.lb_uuid.as_str()))
            .chain(lbs.iter())
    }

    /// Refuses a refresh that names a listener twice differently, puts two listeners on one
    /// VIP and port, or a listener on a port forward's VIP, protocol and port.
    pub fn check_lb_refresh(&self, lbs: &[LbListener]) -> Result<(), Invalid> {
        let mut seen: BTreeMap<LbKey, usize> = BTreeMap::new();
        for (i, l) in lbs.iter().enumerate() {
            if let Some(j) = seen.insert(l.key(), i)
                && lbs[j] != *l
            {
                return Err(Invalid::new(
                    format!("lbs[{i}]"),
                    format!("{} is given twice, differently (lbs[{j}])", l.describe()),
                ));
            }
        }
        let mut on_port: BTreeMap<(Ipv4Addr, u16), &LbListener> = BTreeMap::new();
        for l in self.refreshed(lbs) {
            if let Some(other) = on_port.insert((l.vip, l.load_balancer_port), l)
                && other.key() != l.key()
            {
                let at = lbs
                    .iter()
                    .position(|x| x.key() == l.key() || x.key() == other.key())
                    .unwrap_or(0);
                return Err(Invalid::new(
                    format!("lbs[{at}]"),
                    format!(
                        "{} and {} listen on the same VIP and port",
                        other.describe(),
                        l.describe()
                    ),
                ));
            }
        }
        for (i, l) in lbs.iter().enumerate() {
            if let Some(pf) = forward_on(&self.port_forwards, l) {
                return Err(Invalid::new(
                    format!("lbs[{i}]"),
                    format!("{} conflicts with {}", l.describe(), describe_forward(pf)),
                ));
            }
        }
        Ok(())
    }

    /// Refuses port forwards that claim a listener's VIP, protocol and port.
    pub fn check_forwards_against_listeners(&self, rules: &[PortForward]) -> Result<(), Invalid> {
        if self.lb_listeners.is_empty() {
            return Ok(());
        }
        for (i, pf) in rules.iter().enumerate() {
            let one = crate::state::Table::unit(pf.key(), pf.clone());
            if let Some(l) = self
                .lb_listeners
                .values()
                .find(|l| forward_on(&one, l).is_some())
            {
                return Err(Invalid::new(
                    format!("rules[{i}]"),
                    format!("{} conflicts with {}", describe_forward(pf), l.describe()),
                ));
            }
        }
        Ok(())
    }

    /// `/lb/refresh`: each named load balancer's listeners become exactly those given.
    pub fn apply_lb_refresh(&mut self, lbs: &[LbListener]) {
        let named: BTreeSet<&str> = lbs.iter().map(|l| l.lb_uuid.as_str()).collect();
        let gone: Vec<LbKey> = self
            .lb_listeners
            .keys()
            .filter(|k| named.contains(k.lb_uuid.as_str()))
            .cloned()
            .collect();
        for k in gone {
            self.lb_listeners.remove(&k);
        }
        for l in lbs {
            self.lb_listeners.insert(l.key(), l.clone());
        }
    }

    /// `/lb/delete`: the named listeners (or load balancers) are gone.
    pub fn apply_lb_delete(&mut self, names: &[LbDelete]) {
        for d in names {
            let gone: Vec<LbKey> = self
                .lb_listeners
                .keys()
                .filter(|k| {
                    k.lb_uuid == d.lb_uuid
                        && d.listener_uuid
                            .as_ref()
                            .is_none_or(|u| *u == k.listener_uuid)
                })
                .cloned()
                .collect();
            for k in gone {
                self.lb_listeners.remove(&k);
            }
        }
    }
}

/// Stored as a list (JSON keys must be strings).
pub(super) mod listener_list {
    use super::{LbKey, LbListener};
    use crate::state::Table;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        map: &Table<LbKey, LbListener>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Table<LbKey, LbListener>, D::Error> {
        let list = Vec::<LbListener>::deserialize(d)?;
        Ok(list.into_iter().map(|l| (l.key(), l)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn params(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    pub(crate) fn listener(lb: &str, id: &str, vip: &str, port: u16) -> LbListener {
        LbListener {
            lb_uuid: lb.into(),
            listener_uuid: id.into(),
            vip: vip.parse().unwrap(),
            load_balancer_port: port,
            instance_port: 8080,
            mode: Mode::Tcp,
            backends: vec![BackendServer {
                ip: "172.20.0.15".parse().unwrap(),
                weight: DEFAULT_WEIGHT,
            }],
            config: ListenerConfig::default(),
        }
    }

    #[test]
    fn parameters_of_a_1_0_node_parse() {
        let (c, w) = parse_parameters(
            "lbs[0].parameters",
            "l1",
            &params(&[
                "balancerAlgorithm::leastconn",
                "connectionIdleTimeout::61",
                "healthCheckInterval::3",
                "healthyThreshold::4",
                "unhealthyThreshold::5",
                "maxConnection::2000",
                "healthCheckTarget::tcp:8081",
                "healthCheckTimeout::7",
                "someFutureTag::x::y",
                "balancerWeight::172.20.0.16::30",
            ]),
        )
        .unwrap();
        assert_eq!(
            c,
            ListenerConfig {
                algorithm: Algorithm::LeastConn,
                idle_timeout_s: 61,
                check_interval_s: 3,
                check_timeout_s: 7,
                healthy_threshold: 4,
                unhealthy_threshold: 5,
                max_connections: 2000,
                health_target: HealthTarget::Tcp { port: Some(8081) },
            }
        );
        assert_eq!(w, BTreeMap::from([("172.20.0.16".parse().unwrap(), 30)]));
        let (c, _) = parse_parameters(
            "p",
            "l1",
            &params(&["healthCheckTarget::http:default", "healthCheckURI::/health"]),
        )
        .unwrap();
        assert_eq!(
            c.health_target,
            HealthTarget::Http {
                port: None,
                method: "GET".into(),
                uri: "/health".into()
            }
        );
    }

    #[test]
    fn bad_parameters_name_the_listener_and_the_parameter() {
        let err = |p: &str| {
            parse_parameters(
                "lbs[0].parameters",
                "l1",
                &params(&["maxConnection::10", p]),
            )
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            err("healthCheckInterval::abc"),
            r#"lbs[0].parameters[1]: listener l1: healthCheckInterval "abc" is not a number"#
        );
        assert_eq!(
            err("unhealthyThreshold::0"),
            r#"lbs[0].parameters[1]: listener l1: unhealthyThreshold "0" is out of range (1-100)"#
        );
        assert_eq!(
            err("balancerAlgorithm::random"),
            r#"lbs[0].parameters[1]: listener l1: balancerAlgorithm "random" is not roundrobin, leastconn, source or weightroundrobin"#
        );
        assert_eq!(
            err("healthCheckURI::/a\nb"),
            r#"lbs[0].parameters[1]: listener l1: healthCheckURI "/a\nb" holds a control character or '#'"#
        );
        assert!(err("healthCheckURI::/a#b").contains("'#'"));
        assert!(err("healthCheckURI::/a\"b").contains("without spaces, quotes"));
        assert!(err("healthCheckURI::health").contains("is not a path"));
        assert_eq!(
            err("balancerWeight::172.20.0.16::101"),
            r#"lbs[0].parameters[1]: listener l1: balancerWeight "101" is out of range (0-100)"#
        );
        assert!(err("balancerWeight::172.20.0.16").contains("is not <ip>::<weight>"));
        assert!(err("healthCheckTarget::udp:1").contains("healthCheckTarget"));
        assert!(err("maxConnection::-1").contains("is not a number"));
    }

    #[test]
    fn refresh_replaces_each_named_lb_and_empty_changes_nothing() {
        let mut s = DesiredState::default();
        let a1 = listener("A", "1", "10.10.1.57", 80);
        let a2 = listener("A", "2", "10.10.1.57", 81);
        let b1 = listener("B", "1", "10.10.1.58", 80);
        s.apply(&Command::RefreshLb(vec![
            a1.clone(),
            a2.clone(),
            b1.clone(),
        ]))
        .unwrap();
        assert_eq!(s.lb_listeners.len(), 3);
        let before = s.clone();
        s.apply(&Command::RefreshLb(vec![])).unwrap();
        assert_eq!(s, before);
        // A 1.0 node deletes listener A/2 by leaving it out; B is untouched.
        s.apply(&Command::RefreshLb(vec![a1.clone()])).unwrap();
        let keys: Vec<String> = s
            .lb_listeners
            .keys()
            .map(|k| format!("{}/{}", k.lb_uuid, k.listener_uuid))
            .collect();
        assert_eq!(keys, ["A/1", "B/1"]);
        s.apply(&Command::DeleteLb(vec![LbDelete {
            lb_uuid: "B".into(),
            listener_uuid: Some("1".into()),
        }]))
        .unwrap();
        s.apply(&Command::DeleteLb(vec![LbDelete {
            lb_uuid: "A".into(),
            listener_uuid: None,
        }]))
        .unwrap();
        assert!(s.lb_listeners.is_empty());
        // stored and read back whole
        s.apply(&Command::RefreshLb(vec![a1, a2])).unwrap();
        let text = serde_json::to_string(&s).unwrap();
        let back: DesiredState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn conflicts_name_both_and_change_nothing() {
        let mut s = DesiredState::default();
        s.apply(&Command::RefreshLb(vec![listener(
            "A",
            "1",
            "10.10.1.57",
            80,
        )]))
        .unwrap();
        let before = s.clone();
        let e = s
            .apply(&Command::RefreshLb(vec![listener(
                "B",
                "9",
                "10.10.1.57",
                80,
            )]))
            .unwrap_err();
        assert_eq!(e.field, "lbs[0]");
        assert!(e.reason.contains("listener 1 of load balancer A"), "{e}");
        assert!(e.reason.contains("listener 9 of load balancer B"), "{e}");
        assert_eq!(s, before);
        // moving a listener of the same LB onto the port of one it replaces is fine
        s.apply(&Command::RefreshLb(vec![listener(
            "A",
            "2",
            "10.10.1.57",
            80,
        )]))
        .unwrap();
        let pf = PortForward {
            vip_ip: "10.10.1.57".parse().unwrap(),
            protocol: L4Proto::Tcp,
            vip_ports: PortRange::new(70, 90).unwrap(),
            private_ip: "172.20.0.9".parse().unwrap(),
            private_ports: PortRange::new(70, 90).unwrap(),
            private_mac: "fa:7e:4b:ad:11:02".parse().unwrap(),
            allowed_cidr: None,
            snat_inbound: false,
        };
        let before = s.clone();
        let e = s
            .apply(&Command::CreatePortForwards(vec![pf.clone()]))
            .unwrap_err();
        assert!(
            e.reason.contains("port forward tcp 10.10.1.57:70-90"),
            "{e}"
        );
        assert!(e.reason.contains("listener 2 of load balancer A"), "{e}");
        assert_eq!(s, before);
        s.apply(&Command::DeleteLb(vec![LbDelete {
            lb_uuid: "A".into(),
            listener_uuid: None,
        }]))
        .unwrap();
        s.apply(&Command::CreatePortForwards(vec![pf])).unwrap();
        let e = s
            .apply(&Command::RefreshLb(vec![listener(
                "A",
                "3",
                "10.10.1.57",
                85,
            )]))
            .unwrap_err();
        assert!(e.reason.contains("conflicts with the port forward"), "{e}");
    }

    #[test]
    fn the_vip_must_be_held_or_covered_by_a_nic() {
        use crate::state::facts::SystemFacts;
        use crate::state::types::Cidr;
        let s = DesiredState::default();
        let cmd = Command::RefreshLb(vec![listener("A", "1", "10.10.1.57", 80)]);
        let e = s.check_with(&cmd, &SystemFacts::default()).unwrap_err();
        assert_eq!(e.field, "lbs[0].vip");
        assert!(
            e.reason
                .contains("listener 1: no nic of the router carries \"10.10.1.57\""),
            "{e}"
        );
        let mut facts = SystemFacts::default();
        facts.nic_addrs.insert(
            "fa:7e:4b:ad:11:01".parse().unwrap(),
            vec!["10.10.1.2/24".parse::<Cidr>().unwrap()],
        );
        s.check_with(&cmd, &facts).unwrap();
        facts.mgmt_addrs.push("10.10.1.57/24".parse().unwrap());
        facts.protected_ports.push(80);
        let e = s.check_with(&cmd, &facts).unwrap_err();
        assert!(e.reason.contains("management nic"), "{e}");
    }
}
