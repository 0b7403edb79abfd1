//! Resolution: desired-state entries bound to interface names, as the set elements and the
//! few rules of our two tables. Pure: the system is seen only through [`Inputs`].

use super::inputs::Inputs;
use super::sets::Holds;
use crate::link::plan::NicProblem;
use crate::link::system::name_of;
use crate::state::DesiredState;
use crate::state::guests::GuestNics;
use crate::state::model::{Eip, FirewallProto, FirewallRule, L4Proto, Nic, PortForward, Snat, Vip};
use crate::state::types::{Cidr, MacAddr};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

/// The NAT table (family and name, as nft commands spell it).
pub const NAT: &str = "ip vr_nat";
/// The filter table.
pub const FILTER: &str = "inet vr_filter";

/// `ct mark` bit of connections a port forward translated (accepted in forward).
pub const MARK_PF: u32 = 0x100;
/// `ct mark` bit of port-forwarded connections that are also source-NATed inbound.
pub const MARK_PF_MASQ: u32 = 0x200;

/// Why an entry cannot be bound to the router's nics (found before any change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// A MAC of the request names no (or more than one) nic of the router.
    #[error("{field}: {reason}")]
    Nic {
        /// The field that carries the MAC.
        field: String,
        /// What is wrong with it (names the MAC; the words the interfaces backend uses).
        reason: NicProblem,
    },
    /// No nic carries an EIP's VIP.
    #[error(
        "eip {vip}: no nic of the router carries the VIP or a subnet containing it (create the VIP first)"
    )]
    NoPublicNic {
        /// The VIP.
        vip: Ipv4Addr,
    },
}

/// One field of an element's key or value, in a concatenation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// An IPv4 address.
    Addr(Ipv4Addr),
    /// A port.
    Port(u16),
    /// An inclusive port range (one port when both ends are equal).
    Ports(u16, u16),
    /// A layer-4 protocol.
    Proto(L4Proto),
    /// An interface name.
    Ifname(String),
    /// An address prefix (as its network).
    Net(Cidr),
    /// A `ct mark` value.
    Mark(u32),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Addr(a) => write!(f, "{a}"),
            Field::Port(p) => write!(f, "{p}"),
            Field::Ports(lo, hi) if lo == hi => write!(f, "{lo}"),
            Field::Ports(lo, hi) => write!(f, "{lo}-{hi}"),
            Field::Proto(p) => f.write_str(p.name()),
            Field::Ifname(n) => write!(f, "\"{n}\""),
            Field::Net(c) => write!(f, "{}", c.network()),
            Field::Mark(m) => write!(f, "0x{m:08x}"),
        }
    }
}

fn concat(fields: &[Field]) -> String {
    fields
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" . ")
}

/// One element of a set or map of ours.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Elem {
    /// [`NAT`] or [`FILTER`].
    pub table: &'static str,
    /// Set or map name.
    pub set: &'static str,
    /// Key fields.
    pub key: Vec<Field>,
    /// Value fields (maps only).
    pub value: Option<Vec<Field>>,
}

impl Elem {
    /// The key in nft syntax.
    pub fn key_text(&self) -> String {
        concat(&self.key)
    }

    /// `key` or `key : value` in nft syntax.
    pub fn text(&self) -> String {
        match &self.value {
            Some(v) => format!("{} : {}", concat(&self.key), concat(v)),
            None => concat(&self.key),
        }
    }
}

fn elem(
    table: &'static str,
    set: &'static str,
    key: Vec<Field>,
    value: Option<Vec<Field>>,
) -> Elem {
    Elem {
        table,
        set,
        key,
        value,
    }
}

/// The name of the nic with `mac`, or the error naming `field` and the MAC.
pub fn nic(inputs: &Inputs, mac: MacAddr, field: &str) -> Result<String, BindError> {
    nic_at(inputs, mac, || field.to_string())
}

/// [`nic`], naming the field only when the MAC does not resolve (a sync binds every entry:
/// no string is built for those that do).
fn nic_at(
    inputs: &Inputs,
    mac: MacAddr,
    field: impl FnOnce() -> String,
) -> Result<String, BindError> {
    name_of(&inputs.names, mac)
        .map(str::to_string)
        .map_err(|reason| BindError::Nic {
            field: field(),
            reason,
        })
}

/// An EIP bound to its public nic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundEip {
    /// The entry.
    pub eip: Eip,
    /// Name of the nic that carries the VIP (guest traffic leaving there is SNATed to it).
    pub public_if: String,
}

impl BoundEip {
    /// Key of the guest-side elements (`guest . "public nic"`), shared by EIPs of one guest.
    pub fn guest_key(&self) -> (Ipv4Addr, &str) {
        (self.eip.guest_ip, self.public_if.as_str())
    }

    /// Elements keyed by the VIP (exclusively this EIP's).
    pub fn vip_elements(&self) -> Vec<Elem> {
        let vip = || vec![Field::Addr(self.eip.vip_ip)];
        let mut out = vec![
            elem(
                NAT,
                "eip_dnat",
                vip(),
                Some(vec![Field::Addr(self.eip.guest_ip)]),
            ),
            elem(FILTER, "eip_vips", vip(), None),
        ];
        if self.eip.snat_inbound {
            out.push(elem(NAT, "eip_masq", vip(), None));
        }
        out
    }

    /// Elements keyed by guest and public nic (owned by the lowest VIP of that guest there).
    pub fn guest_elements(&self) -> Vec<Elem> {
        let key = || {
            vec![
                Field::Addr(self.eip.guest_ip),
                Field::Ifname(self.public_if.clone()),
            ]
        };
        vec![
            elem(
                NAT,
                "eip_snat",
                key(),
                Some(vec![Field::Addr(self.eip.vip_ip)]),
            ),
            elem(FILTER, "eip_out", key(), None),
        ]
    }
}

/// The public nic of an EIP: the owner of its VIP in the desired state, else a nic of the
/// desired state whose subnet holds it, else the nic that holds it in the kernel.
pub fn bind_eip(
    eip: &Eip,
    vips: &crate::state::Table<Ipv4Addr, Vip>,
    nics: &crate::state::Table<MacAddr, Nic>,
    inputs: &Inputs,
    field: &str,
) -> Result<BoundEip, BindError> {
    name_of(&inputs.names, eip.private_mac).map_err(|reason| BindError::Nic {
        field: format!("{field}.privateMac"),
        reason,
    })?;
    let by_state = vips.get(&eip.vip_ip).map(|v| v.owner_mac).or_else(|| {
        nics.values()
            .filter(|n| Cidr::new(n.ip, n.prefix).contains(eip.vip_ip))
            .max_by_key(|n| n.prefix.len())
            .map(|n| n.mac)
    });
    let public_if = match by_state {
        Some(mac) => nic_at(inputs, mac, || format!("vip {} owner", eip.vip_ip))?,
        None => inputs
            .nic_holding(eip.vip_ip)
            .map(str::to_string)
            .ok_or(BindError::NoPublicNic { vip: eip.vip_ip })?,
    };
    Ok(BoundEip {
        eip: eip.clone(),
        public_if,
    })
}

/// Guest-side elements of a set of bound EIPs: for each `guest . nic`, the lowest VIP wins.
pub fn guest_elements<'a>(eips: impl IntoIterator<Item = &'a BoundEip>) -> Vec<Elem> {
    let mut owners: BTreeMap<(Ipv4Addr, &str), &BoundEip> = BTreeMap::new();
    for e in eips {
        owners
            .entry(e.guest_key())
            .and_modify(|o| {
                if e.eip.vip_ip < o.eip.vip_ip {
                    *o = e;
                }
            })
            .or_insert(e);
    }
    owners.values().flat_map(|e| e.guest_elements()).collect()
}

/// Elements of one port forward (all keyed by its VIP ports, which no other forward shares).
pub fn pf_elements(pf: &PortForward) -> Vec<Elem> {
    let vp = pf.vip_ports;
    let claim = || {
        vec![
            Field::Addr(pf.vip_ip),
            Field::Proto(pf.protocol),
            Field::Ports(vp.start, vp.end),
        ]
    };
    let mark = if pf.snat_inbound {
        MARK_PF | MARK_PF_MASQ
    } else {
        MARK_PF
    };
    let mut out = vec![elem(NAT, "pf_mark", claim(), Some(vec![Field::Mark(mark)]))];
    if let Some(cidr) = pf.allowed_cidr {
        let mut allowed = claim();
        allowed.push(Field::Net(cidr));
        out.push(elem(NAT, "pf_allowed", allowed, None));
        out.push(elem(NAT, "pf_restricted", claim(), None));
    }
    let (exact, ranged) = match pf.protocol {
        L4Proto::Tcp => ("pf_tcp", "pf_tcp_range"),
        L4Proto::Udp => ("pf_udp", "pf_udp_range"),
    };
    if pf.vip_ports == pf.private_ports && vp.start != vp.end {
        out.push(elem(
            NAT,
            ranged,
            vec![Field::Addr(pf.vip_ip), Field::Ports(vp.start, vp.end)],
            Some(vec![Field::Addr(pf.private_ip)]),
        ));
    } else {
        // A shifted range keeps each port's offset: one element per port.
        for (v, p) in (vp.start..=vp.end).zip(pf.private_ports.start..=pf.private_ports.end) {
            out.push(elem(
                NAT,
                exact,
                vec![Field::Addr(pf.vip_ip), Field::Port(v)],
                Some(vec![Field::Addr(pf.private_ip), Field::Port(p)]),
            ));
        }
    }
    out
}

/// Checks that a port forward's guest nic exists.
pub fn check_pf(pf: &PortForward, inputs: &Inputs, field: &str) -> Result<(), BindError> {
    name_of(&inputs.names, pf.private_mac)
        .map(|_| ())
        .map_err(|reason| BindError::Nic {
            field: format!("{field}.privateMac"),
            reason,
        })
}

/// Source NAT of one guest subnet, bound to nic names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundSnat {
    /// Public nic.
    pub public_if: String,
    /// Guest nic.
    pub private_if: String,
    /// The entry.
    pub snat: Snat,
}

impl BoundSnat {
    /// The rule of the `snat_subnets` chain (NAT table).
    pub fn nat_rule(&self) -> String {
        format!(
            "oifname \"{}\" ip saddr {} snat ip to {}",
            self.public_if,
            self.snat.private_net.network(),
            self.snat.public_ip
        )
    }

    /// The rule of the `snat_fwd` chain (filter table): guest -> public is forwarded.
    pub fn forward_rule(&self) -> String {
        format!(
            "iifname \"{}\" oifname \"{}\" ip saddr {} accept",
            self.private_if,
            self.public_if,
            self.snat.private_net.network()
        )
    }
}

/// Binds a SNAT entry to its nics.
pub fn bind_snat(snat: &Snat, inputs: &Inputs, field: &str) -> Result<BoundSnat, BindError> {
    Ok(BoundSnat {
        public_if: nic(
            inputs,
            snat.public_nic_mac,
            &format!("{field}.publicNicMac"),
        )?,
        private_if: nic(
            inputs,
            snat.private_nic_mac,
            &format!("{field}.privateNicMac"),
        )?,
        snat: snat.clone(),
    })
}

/// The rule of the `appliance` chain for one firewall rule.
pub fn firewall_rule(
    rule: &FirewallRule,
    inputs: &Inputs,
    field: &str,
) -> Result<String, BindError> {
    let ifname = nic(inputs, rule.nic_mac, &format!("{field}.nicMac"))?;
    let mut r = format!("iifname \"{ifname}\"");
    for (what, cidr) in [
        ("saddr", rule.source),
        ("daddr", rule.dest),
        ("saddr", rule.allow_cidr),
    ] {
        if let Some(c) = cidr {
            r.push_str(&format!(" ip {what} {}", c.network()));
        }
    }
    let ports = if rule.ports.start == rule.ports.end {
        rule.ports.start.to_string()
    } else {
        format!("{}-{}", rule.ports.start, rule.ports.end)
    };
    match rule.protocol {
        FirewallProto::Tcp => r.push_str(&format!(" tcp dport {ports}")),
        FirewallProto::Udp => r.push_str(&format!(" udp dport {ports}")),
        FirewallProto::All => r.push_str(&format!(" meta l4proto {{ tcp, udp }} th dport {ports}")),
    }
    r.push_str(" accept");
    Ok(r)
}

/// The names of the router's guest nics, where the firewall accepts DHCP and DNS: every nic
/// of [`GuestNics`] the router has, SNAT guest nics included whether or not upstream DNS
/// servers are set (dnsmasq listens there only while they are; accepting DNS on a nic where
/// nothing listens yet costs nothing and spares a rewrite when servers are set). A DHCP host
/// the desired state places on no nic of the router is placed by address, as dnsmasq does.
pub fn guest_ifs(guests: &GuestNics, inputs: &Inputs) -> BTreeSet<String> {
    guests.resolve(
        true,
        |m| name_of(&inputs.names, m).ok().map(str::to_string),
        |ip| inputs.nic_holding(ip).map(str::to_string),
    )
}

/// Everything our two tables hold for one desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Set and map elements.
    pub elements: BTreeSet<Elem>,
    /// Rules of `snat_subnets` (NAT table).
    pub snat_rules: Vec<String>,
    /// Rules of `snat_fwd` (filter table).
    pub snat_forward: Vec<String>,
    /// Rules of `appliance` (filter table).
    pub appliance: Vec<String>,
    /// Guest nic names.
    pub guest_ifs: BTreeSet<String>,
    /// Management nic name.
    pub mgmt_nic: String,
    /// Agent ports.
    pub agent_ports: Vec<u16>,
    /// No management nic known: input and forward accept by default, no drop rules.
    pub mgmt_unknown: bool,
    /// Router HA: the heartbeat nic and the peer's address there (VRRP and conntrackd are
    /// accepted from it, on that nic only).
    pub ha: Option<HaPeer>,
}

/// The HA peer as the firewall sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaPeer {
    /// Name of the heartbeat nic.
    pub nic: String,
    /// The peer's address on it.
    pub peer: std::net::Ipv4Addr,
    /// This node is the backup: forwarded packets are dropped.
    pub standby: bool,
}

/// UDP port conntrackd's sync channel uses on the heartbeat nic.
pub const CONNTRACKD_PORT: u16 = 3780;

impl Ruleset {
    /// The guest nic names as elements of the `guest_ifs` set.
    pub fn guest_if_elements(&self) -> Vec<Elem> {
        self.guest_ifs
            .iter()
            .map(|n| elem(FILTER, "guest_ifs", vec![Field::Ifname(n.clone())], None))
            .collect()
    }
}

/// The sets and maps that hold EIPs (replaced by `/synceip`).
pub const EIP_SETS: Holds = Holds::Eips;

/// The sets and maps that hold port forwards (replaced by `/syncportforwarding`).
pub const PF_SETS: Holds = Holds::PortForwards;

/// Every EIP element of `state`; EIPs that do not resolve go to `skipped`.
pub fn eip_set_elements(
    state: &DesiredState,
    inputs: &Inputs,
    skipped: &mut Vec<BindError>,
) -> Vec<Elem> {
    let mut bound = Vec::new();
    for eip in state.eips.values() {
        let bind = |field: &str| bind_eip(eip, &state.vips, &state.nics, inputs, field);
        // the field is named only for an entry that does not bind
        match bind("").or_else(|_| bind(&format!("eip {}", eip.vip_ip))) {
            Ok(b) => bound.push(b),
            Err(e) => skipped.push(e),
        }
    }
    let mut out: Vec<Elem> = bound.iter().flat_map(BoundEip::vip_elements).collect();
    out.extend(guest_elements(&bound));
    out
}

/// Every port forward element of `state`; forwards that do not resolve go to `skipped`.
pub fn pf_set_elements(
    state: &DesiredState,
    inputs: &Inputs,
    skipped: &mut Vec<BindError>,
) -> Vec<Elem> {
    let mut out = Vec::new();
    for pf in state.port_forwards.values() {
        let field = || {
            format!(
                "port forward {} {}:{}-{}",
                pf.protocol.name(),
                pf.vip_ip,
                pf.vip_ports.start,
                pf.vip_ports.end
            )
        };
        // the field is named only for a forward that does not resolve
        match check_pf(pf, inputs, "").or_else(|_| check_pf(pf, inputs, &field())) {
            Ok(()) => out.extend(pf_elements(pf)),
            Err(e) => skipped.push(e),
        }
    }
    out
}

/// The set the load balancer listeners' VIP ports are accepted through.
pub const LB_SET: (&str, &str) = (FILTER, "lb_accept");

/// The firewall elements of the listeners that serve (`vip . tcp . port`).
pub fn lb_elements(state: &DesiredState) -> BTreeSet<Elem> {
    state
        .lb_listeners
        .values()
        .filter(|l| l.serves())
        .map(|l| {
            elem(
                LB_SET.0,
                LB_SET.1,
                vec![
                    Field::Addr(l.vip),
                    Field::Proto(L4Proto::Tcp),
                    Field::Port(l.load_balancer_port),
                ],
                None,
            )
        })
        .collect()
}

/// Resolves a whole desired state. Entries whose nics cannot be found are left out and
/// returned with the reason, so the rest still applies.
pub fn resolve(state: &DesiredState, inputs: &Inputs) -> (Ruleset, Vec<BindError>) {
    let mut skipped = Vec::new();
    let mut rs = Ruleset {
        mgmt_nic: inputs.mgmt_nic.clone(),
        agent_ports: inputs.agent_ports.clone(),
        mgmt_unknown: inputs.mgmt_unknown,
        ..Ruleset::default()
    };
    rs.elements
        .extend(eip_set_elements(state, inputs, &mut skipped));
    rs.elements
        .extend(pf_set_elements(state, inputs, &mut skipped));
    rs.elements.extend(lb_elements(state));
    for snat in state.snats.values() {
        match bind_snat(snat, inputs, &format!("snat {}", snat.private_nic_mac)) {
            Ok(b) => {
                rs.snat_rules.push(b.nat_rule());
                rs.snat_forward.push(b.forward_rule());
            }
            Err(e) => skipped.push(e),
        }
    }
    for (i, rule) in state.firewall.iter().enumerate() {
        match firewall_rule(rule, inputs, &format!("firewall rule {i}")) {
            Ok(r) => rs.appliance.push(r),
            Err(e) => skipped.push(e),
        }
    }
    rs.guest_ifs = guest_ifs(&state.guest_nics(), inputs);
    if let Some(ha) = &state.ha {
        match nic(inputs, ha.heartbeat_mac, "ha.heartbeatNic") {
            Ok(name) => {
                rs.ha = Some(HaPeer {
                    nic: name,
                    peer: ha.peer_ip,
                    standby: inputs.ha_standby,
                });
            }
            Err(e) => skipped.push(e),
        }
    }
    (rs, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dnsmasq::render::{self, Iface, Paths};
    use crate::state::guests::fixtures::{host, mac};
    use crate::state::types::PrefixLen;

    /// eth1 public, eth2..eth5 guest networks; only eth2 is a nic of the desired state (the
    /// others come from the bootstrap info, known to the system only).
    fn router() -> (DesiredState, Inputs, Vec<Iface>) {
        let mut s = DesiredState::default();
        let eth2 = Nic {
            mac: mac(2),
            ip: "172.20.0.1".parse().unwrap(),
            prefix: PrefixLen::new(24).unwrap(),
            gateway: None,
            is_default_route: false,
            mtu: None,
            device_name: None,
        };
        s.nics.insert(eth2.mac, eth2);
        for h in [
            // by vrNicMac
            host(1, "172.20.0.10", Some("172.20.0.1"), Some(2)),
            // no gateway: by its own address, on a nic the state does not have
            host(2, "172.21.0.10", None, None),
            // by the gateway's address, on a nic the state does not have
            host(3, "172.22.0.10", Some("172.22.0.1"), None),
        ] {
            s.dhcp_hosts.insert(h.mac, h);
        }
        s.snats.insert(
            mac(5),
            Snat {
                public_nic_mac: mac(1),
                public_ip: "10.10.1.20".parse().unwrap(),
                private_nic_mac: mac(5),
                private_net: "172.23.0.1/24".parse().unwrap(),
            },
        );
        let nets = [
            (1, "10.10.1.20/24"),
            (2, "172.20.0.1/24"),
            (3, "172.21.0.1/24"),
            (4, "172.22.0.1/24"),
            (5, "172.23.0.1/24"),
        ];
        let ifaces: Vec<Iface> = nets
            .iter()
            .map(|(n, c)| Iface {
                name: format!("eth{n}"),
                mac: Some(mac(*n)),
                addrs: vec![c.parse().unwrap()],
            })
            .collect();
        let inputs = Inputs {
            names: ifaces
                .iter()
                .map(|i| (i.mac.unwrap(), vec![i.name.clone()]))
                .collect(),
            addrs: ifaces
                .iter()
                .map(|i| (i.name.clone(), i.addrs[0]))
                .collect(),
            ..Inputs::default()
        };
        (s, inputs, ifaces)
    }

    fn dnsmasq_listens(s: &DesiredState, ifaces: &[Iface]) -> BTreeSet<String> {
        let r = render::render(&Paths::new("/x"), s, ifaces);
        r.conf
            .lines()
            .filter_map(|l| l.strip_prefix("interface="))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_firewall_opens_where_dnsmasq_listens_and_on_snat_guest_nics() {
        let (mut s, inputs, ifaces) = router();
        let names = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|n| n.to_string()).collect() };
        // 1. hosts are placed alike by both: by vrNicMac, by address without a gateway, on
        //    nics only the system knows
        assert_eq!(
            guest_ifs(&s.guest_nics(), &inputs),
            names(&["eth2", "eth3", "eth4", "eth5"])
        );
        // 2. without upstream DNS servers dnsmasq does not listen on the SNAT guest nic
        assert_eq!(
            dnsmasq_listens(&s, &ifaces),
            names(&["eth2", "eth3", "eth4"])
        );
        // 3. with them it listens exactly where the firewall accepts
        s.dns_servers = vec!["8.8.8.8".parse().unwrap()];
        assert_eq!(
            dnsmasq_listens(&s, &ifaces),
            guest_ifs(&s.guest_nics(), &inputs)
        );
    }

    #[test]
    fn a_missing_vr_nic_falls_back_to_the_subnets_nic_in_both() {
        let (mut s, inputs, ifaces) = router();
        s.dhcp_hosts.clear();
        s.snats.clear();
        let h = host(9, "172.20.0.19", Some("172.20.0.1"), Some(7));
        s.dhcp_hosts.insert(h.mac, h);
        let eth2 = BTreeSet::from(["eth2".to_string()]);
        assert_eq!(guest_ifs(&s.guest_nics(), &inputs), eth2);
        assert_eq!(dnsmasq_listens(&s, &ifaces), eth2);
    }
}
