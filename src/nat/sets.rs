//! The sets and maps of our two tables, in one typed table: the renderer declares them from it
//! (`type ... : ...; flags interval`), the netlink encoder takes each element's key layout and
//! interval flag from it, and the model names the sets a sync command replaces.

use super::model::{FILTER, Field, NAT};

/// The type of one field of a key or value (a concatenation has several).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// `ipv4_addr`: 4 bytes, network order (also a prefix, as its range).
    Ipv4Addr,
    /// `inet_service`: a port, 2 bytes in network order (padded to 4 in a concatenation).
    InetService,
    /// `inet_proto`: 1 byte (padded to 4).
    InetProto,
    /// `ifname`: 16 bytes, NUL padded.
    Ifname,
    /// `mark`: 4 bytes, host order.
    Mark,
}

impl FieldKind {
    /// The type's name in nft syntax.
    pub fn nft_name(self) -> &'static str {
        match self {
            FieldKind::Ipv4Addr => "ipv4_addr",
            FieldKind::InetService => "inet_service",
            FieldKind::InetProto => "inet_proto",
            FieldKind::Ifname => "ifname",
            FieldKind::Mark => "mark",
        }
    }

    /// True when `field` is a value of this type.
    pub fn accepts(self, field: &Field) -> bool {
        matches!(
            (self, field),
            (FieldKind::Ipv4Addr, Field::Addr(_) | Field::Net(_))
                | (FieldKind::InetService, Field::Port(_) | Field::Ports(..))
                | (FieldKind::InetProto, Field::Proto(_))
                | (FieldKind::Ifname, Field::Ifname(_))
                | (FieldKind::Mark, Field::Mark(_))
        )
    }
}

/// Which desired-state entries a set holds: a sync command of that kind replaces every set
/// holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holds {
    /// EIPs.
    Eips,
    /// Port forwards.
    PortForwards,
    /// The guest nics (DHCP and DNS are accepted there).
    GuestNics,
    /// Load-balancer listeners (their VIP . protocol . port is accepted from every side).
    Listeners,
}

/// One set or map of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetSpec {
    /// [`NAT`] or [`FILTER`] (family and name, as nft commands spell it).
    pub table: &'static str,
    /// Set or map name.
    pub name: &'static str,
    /// Key fields (a concatenation when more than one).
    pub key: &'static [FieldKind],
    /// Value fields of a map; `None` for a set.
    pub value: Option<&'static [FieldKind]>,
    /// Elements are ranges (`flags interval`): each carries an end key as well.
    pub interval: bool,
    /// What it holds.
    pub holds: Holds,
}

impl SetSpec {
    /// `map` or `set`, as nft commands spell it.
    pub fn kind(&self) -> &'static str {
        if self.value.is_some() { "map" } else { "set" }
    }

    /// The declaration's lines: `type K : V` and, for ranges, `flags interval`.
    pub fn declaration(&self) -> Vec<String> {
        let mut ty = format!("type {}", concat(self.key));
        if let Some(v) = self.value {
            ty.push_str(" : ");
            ty.push_str(&concat(v));
        }
        let mut out = vec![ty];
        if self.interval {
            out.push("flags interval".to_string());
        }
        out
    }

    /// True when `key` and `value` have this set's layout.
    pub fn fits(&self, key: &[Field], value: Option<&[Field]>) -> bool {
        fn fit(kinds: &[FieldKind], fields: &[Field]) -> bool {
            kinds.len() == fields.len() && kinds.iter().zip(fields).all(|(k, f)| k.accepts(f))
        }
        fit(self.key, key)
            && match (self.value, value) {
                (Some(kinds), Some(fields)) => fit(kinds, fields),
                (None, None) => true,
                _ => false,
            }
    }
}

fn concat(kinds: &[FieldKind]) -> String {
    kinds
        .iter()
        .map(|k| k.nft_name())
        .collect::<Vec<_>>()
        .join(" . ")
}

use FieldKind::{Ifname, InetProto, InetService, Ipv4Addr, Mark};

const fn spec(
    table: &'static str,
    name: &'static str,
    key: &'static [FieldKind],
    value: Option<&'static [FieldKind]>,
    interval: bool,
    holds: Holds,
) -> SetSpec {
    SetSpec {
        table,
        name,
        key,
        value,
        interval,
        holds,
    }
}

/// Every set and map of ours, in the order the tables declare them.
pub const SETS: &[SetSpec] = &[
    // vip -> guest
    spec(
        NAT,
        "eip_dnat",
        &[Ipv4Addr],
        Some(&[Ipv4Addr]),
        false,
        Holds::Eips,
    ),
    // guest . public nic -> vip
    spec(
        NAT,
        "eip_snat",
        &[Ipv4Addr, Ifname],
        Some(&[Ipv4Addr]),
        false,
        Holds::Eips,
    ),
    // vips whose inbound traffic is also source-NATed to the router's guest address
    spec(NAT, "eip_masq", &[Ipv4Addr], None, false, Holds::Eips),
    // vip . port -> guest . port (one element per port: offsets preserved)
    spec(
        NAT,
        "pf_tcp",
        &[Ipv4Addr, InetService],
        Some(&[Ipv4Addr, InetService]),
        false,
        Holds::PortForwards,
    ),
    spec(
        NAT,
        "pf_udp",
        &[Ipv4Addr, InetService],
        Some(&[Ipv4Addr, InetService]),
        false,
        Holds::PortForwards,
    ),
    // vip . port range -> guest, for ranges forwarded to the same ports
    spec(
        NAT,
        "pf_tcp_range",
        &[Ipv4Addr, InetService],
        Some(&[Ipv4Addr]),
        true,
        Holds::PortForwards,
    ),
    spec(
        NAT,
        "pf_udp_range",
        &[Ipv4Addr, InetService],
        Some(&[Ipv4Addr]),
        true,
        Holds::PortForwards,
    ),
    // vip . protocol . ports -> ct mark of the forwarded connection
    spec(
        NAT,
        "pf_mark",
        &[Ipv4Addr, InetProto, InetService],
        Some(&[Mark]),
        true,
        Holds::PortForwards,
    ),
    // forwards limited to an allowed source prefix, and the allowed prefixes
    spec(
        NAT,
        "pf_restricted",
        &[Ipv4Addr, InetProto, InetService],
        None,
        true,
        Holds::PortForwards,
    ),
    spec(
        NAT,
        "pf_allowed",
        &[Ipv4Addr, InetProto, InetService, Ipv4Addr],
        None,
        true,
        Holds::PortForwards,
    ),
    spec(
        FILTER,
        "guest_ifs",
        &[Ifname],
        None,
        false,
        Holds::GuestNics,
    ),
    spec(FILTER, "eip_vips", &[Ipv4Addr], None, false, Holds::Eips),
    spec(
        FILTER,
        "eip_out",
        &[Ipv4Addr, Ifname],
        None,
        false,
        Holds::Eips,
    ),
    // vip . protocol . port of each load balancer listener, accepted from every side
    spec(
        FILTER,
        "lb_accept",
        &[Ipv4Addr, InetProto, InetService],
        None,
        false,
        Holds::Listeners,
    ),
];

/// The set or map `name` of `table`.
pub fn find(table: &str, name: &str) -> Option<&'static SetSpec> {
    SETS.iter().find(|s| s.table == table && s.name == name)
}

/// The sets of `table`, in declaration order.
pub fn of_table(table: &str) -> impl Iterator<Item = &'static SetSpec> + '_ {
    SETS.iter().filter(move |s| s.table == table)
}

/// (table, name) of every set holding `what`.
pub fn holding(what: Holds) -> Vec<(&'static str, &'static str)> {
    SETS.iter()
        .filter(|s| s.holds == what)
        .map(|s| (s.table, s.name))
        .collect()
}

/// An nft table name split for netlink: its address family and its bare name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `ip`: IPv4 only.
    Ip,
    /// `inet`: IPv4 and IPv6.
    Inet,
}

/// `inet vr_filter` -> (Inet, "vr_filter"); a bare name is an `ip` table, as in nft.
pub fn split_table(table: &str) -> (Family, &str) {
    match table.split_once(' ') {
        Some(("inet", t)) => (Family::Inet, t),
        Some((_, t)) => (Family::Ip, t),
        None => (Family::Ip, table),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_declarations_read_as_nft_types() {
        for (i, a) in SETS.iter().enumerate() {
            assert!(
                SETS[i + 1..]
                    .iter()
                    .all(|b| (a.table, a.name) != (b.table, b.name)),
                "{} declared twice",
                a.name
            );
        }
        let mark = find(NAT, "pf_mark").unwrap();
        assert_eq!(
            mark.declaration(),
            [
                "type ipv4_addr . inet_proto . inet_service : mark",
                "flags interval"
            ]
        );
        assert_eq!(mark.kind(), "map");
        assert_eq!(find(FILTER, "eip_vips").unwrap().kind(), "set");
        assert_eq!(find(NAT, "eip_vips"), None);
        assert_eq!(split_table(FILTER), (Family::Inet, "vr_filter"));
        assert_eq!(split_table(NAT), (Family::Ip, "vr_nat"));
    }

    #[test]
    fn sync_commands_cover_the_sets_of_their_entries() {
        assert_eq!(
            holding(Holds::Eips),
            [
                (NAT, "eip_dnat"),
                (NAT, "eip_snat"),
                (NAT, "eip_masq"),
                (FILTER, "eip_vips"),
                (FILTER, "eip_out")
            ]
        );
        assert_eq!(holding(Holds::PortForwards).len(), 7);
        assert_eq!(holding(Holds::GuestNics), [(FILTER, "guest_ifs")]);
    }
}
