//! nft input text, pure: the two whole tables for a [`Ruleset`] (replacing ours in one
//! transaction), the same tables' rules rewritten in place with the sets left as they are
//! (their contents then go as one netlink batch), and the small transactions of single-entry
//! commands.

use super::model::{Elem, FILTER, MARK_PF, MARK_PF_MASQ, NAT, Ruleset};
use super::sets::{self, SetSpec};
use std::collections::BTreeSet;
use std::fmt::Write;

fn write_set(out: &mut String, spec: &SetSpec, elems: &[&Elem]) {
    let _ = writeln!(out, "\t{} {} {{", spec.kind(), spec.name);
    for line in spec.declaration() {
        let _ = writeln!(out, "\t\t{line}");
    }
    if !elems.is_empty() {
        out.push_str("\t\telements = {\n");
        let last = elems.len() - 1;
        for (i, e) in elems.iter().enumerate() {
            let sep = if i == last { "" } else { "," };
            let _ = writeln!(out, "\t\t\t{}{sep}", e.text());
        }
        out.push_str("\t\t}\n");
    }
    out.push_str("\t}\n");
}

/// Whether set declarations carry the ruleset's elements.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Contents {
    /// Every element, in the declaration.
    Elements,
    /// Declarations only: what a set holds is left as it is.
    Declarations,
}

fn write_sets(out: &mut String, table: &str, rs: &Ruleset, contents: Contents) {
    let guest_ifs: Vec<Elem> = match (contents, table == FILTER) {
        (Contents::Elements, true) => rs.guest_if_elements(),
        _ => Vec::new(),
    };
    for spec in sets::of_table(table) {
        let elems: Vec<&Elem> = match contents {
            Contents::Elements => rs
                .elements
                .iter()
                .chain(&guest_ifs)
                .filter(|e| e.table == table && e.set == spec.name)
                .collect(),
            Contents::Declarations => Vec::new(),
        };
        write_set(out, spec, &elems);
    }
}

fn write_chain(out: &mut String, name: &str, head: Option<&str>, rules: &[String]) {
    let _ = writeln!(out, "\tchain {name} {{");
    if let Some(h) = head {
        let _ = writeln!(out, "\t\t{h}");
    }
    for r in rules {
        let _ = writeln!(out, "\t\t{r}");
    }
    out.push_str("\t}\n");
}

fn quoted(names: &BTreeSet<String>) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Both tables, replacing whatever of ours is there, as one nft transaction.
pub fn full(rs: &Ruleset) -> String {
    // `delete table` of a missing table fails the batch: add it first.
    let mut out =
        format!("table {NAT}\ndelete table {NAT}\ntable {FILTER}\ndelete table {FILTER}\n");
    write_tables(&mut out, rs, Contents::Elements);
    out
}

/// A chain found in one of our tables (`nft list chains`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundChain {
    /// [`NAT`] or [`FILTER`].
    pub table: &'static str,
    /// The chain's name.
    pub name: String,
}

/// The chains of our tables.
pub const CHAINS: &[(&str, &str)] = &[
    (NAT, "prerouting"),
    (NAT, "postrouting"),
    (NAT, "snat_subnets"),
    (FILTER, "input"),
    (FILTER, "appliance"),
    (FILTER, "forward"),
    (FILTER, "snat_fwd"),
];

/// Both tables' rules rewritten as one nft transaction that keeps every set and its elements:
/// the tables are added if missing, their rules flushed, chains of theirs that are not ours
/// (`found` minus [`CHAINS`]) deleted, then every set declared (a no-op when it is there with
/// this type) and every chain and rule added. Packets see the old rules or the new ones;
/// set contents are not touched (a netlink batch replaces them after).
pub fn rules_in_place(rs: &Ruleset, found: &[FoundChain]) -> String {
    let mut out = format!("table {NAT}\nflush table {NAT}\ntable {FILTER}\nflush table {FILTER}\n");
    for c in found {
        if !CHAINS.contains(&(c.table, c.name.as_str())) {
            let _ = writeln!(out, "delete chain {} {}", c.table, c.name);
        }
    }
    write_tables(&mut out, rs, Contents::Declarations);
    out
}

fn write_tables(out: &mut String, rs: &Ruleset, contents: Contents) {
    let _ = writeln!(out, "table {NAT} {{");
    write_sets(out, NAT, rs, contents);
    let s = |x: &str| x.to_string();
    write_chain(
        out,
        "prerouting",
        Some("type nat hook prerouting priority dstnat; policy accept;"),
        &[
            s("dnat ip to ip daddr map @eip_dnat"),
            s(
                "ip daddr . meta l4proto . th dport @pf_restricted ip daddr . meta l4proto . th dport . ip saddr != @pf_allowed return",
            ),
            s("ct mark set ip daddr . meta l4proto . th dport map @pf_mark"),
            s("meta l4proto tcp dnat ip to ip daddr . tcp dport map @pf_tcp"),
            s("meta l4proto tcp dnat ip to ip daddr . tcp dport map @pf_tcp_range"),
            s("meta l4proto udp dnat ip to ip daddr . udp dport map @pf_udp"),
            s("meta l4proto udp dnat ip to ip daddr . udp dport map @pf_udp_range"),
        ],
    );
    let mut postrouting = Vec::new();
    if rs.ha.is_some() {
        // VRRP adverts leave with the heartbeat address, never a NAT address.
        postrouting.push(s("ip protocol vrrp accept comment \"ha: no nat for vrrp\""));
    }
    postrouting.extend([
        s("ct status dnat ct original ip daddr @eip_masq masquerade"),
        format!("ct status dnat ct mark & 0x{MARK_PF_MASQ:08x} == 0x{MARK_PF_MASQ:08x} masquerade"),
        s("snat ip to ip saddr . oifname map @eip_snat"),
        s("jump snat_subnets"),
    ]);
    write_chain(
        out,
        "postrouting",
        Some("type nat hook postrouting priority srcnat; policy accept;"),
        &postrouting,
    );
    write_chain(out, "snat_subnets", None, &rs.snat_rules);
    out.push_str("}\n");

    let _ = writeln!(out, "table {FILTER} {{");
    write_sets(out, FILTER, rs, contents);
    // Without a known management nic nothing is dropped (mgmt_guard): the chains keep their
    // accepts and sets, so every command applies, but cannot cut the machine's ssh.
    let enforcing = !rs.mgmt_unknown;
    let policy = if enforcing { "drop" } else { "accept" };
    let mut input = vec![s("ct state established,related accept")];
    if enforcing {
        input.push(s("ct state invalid drop"));
    }
    input.push(s("iif \"lo\" accept"));
    input.push(s("meta l4proto { icmp, icmpv6 } accept"));
    let mut ports = vec![22u16];
    ports.extend(rs.agent_ports.iter().copied().filter(|p| *p != 0));
    ports.sort_unstable();
    ports.dedup();
    let ports = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    // ssh and the agent only on the management nic, whatever the appliance rules say
    input.push(format!(
        "iifname \"{}\" tcp dport {{ {ports} }} accept",
        rs.mgmt_nic
    ));
    if enforcing {
        input.push(format!("tcp dport {{ {ports} }} drop"));
    }
    if let Some(ha) = &rs.ha {
        // The pair's VRRP and conntrackd sync: from the peer, on the heartbeat nic only.
        input.push(format!(
            "iifname \"{}\" ip saddr {} ip protocol vrrp accept comment \"ha: vrrp\"",
            ha.nic, ha.peer
        ));
        input.push(format!(
            "iifname \"{}\" ip saddr {} udp dport {} accept comment \"ha: conntrackd\"",
            ha.nic,
            ha.peer,
            super::model::CONNTRACKD_PORT
        ));
    }
    input.push(s("iifname @guest_ifs udp dport { 53, 67 } accept"));
    input.push(s("iifname @guest_ifs tcp dport 53 accept"));
    input.push(s(
        "ip daddr . meta l4proto . th dport @lb_accept accept comment \"load balancer listeners\"",
    ));
    input.push(s("jump appliance"));
    write_chain(
        out,
        "input",
        Some(&format!(
            "type filter hook input priority filter; policy {policy};"
        )),
        &input,
    );
    write_chain(out, "appliance", None, &rs.appliance);
    let forward = forward_rules(rs);
    write_chain(
        out,
        "forward",
        Some(&format!(
            "type filter hook forward priority filter; policy {policy};"
        )),
        &forward,
    );
    write_chain(out, "snat_fwd", None, &rs.snat_forward);
    out.push_str("}\n");
}

/// The rules of the filter table's `forward` chain (a backup of an HA pair drops first).
pub fn forward_rules(rs: &Ruleset) -> Vec<String> {
    let s = |x: &str| x.to_string();
    let enforcing = !rs.mgmt_unknown;
    let mut forward = Vec::new();
    if rs.ha.as_ref().is_some_and(|h| h.standby) {
        forward.push(s("counter drop comment \"ha: a backup forwards nothing\""));
    }
    forward.push(s("ct state established,related accept"));
    if enforcing {
        forward.push(s("ct state invalid drop"));
    }
    forward.extend([
        s("ct status dnat ct original ip daddr @eip_vips accept comment \"eip inbound\""),
        format!(
            "ct status dnat ct mark & 0x{MARK_PF:08x} == 0x{MARK_PF:08x} accept comment \"port forwarding inbound\""
        ),
        s("ip saddr . oifname @eip_out accept comment \"eip outbound\""),
        s("jump snat_fwd"),
    ]);
    forward
}

/// Set flushes, element deletes, then adds, as one transaction's text (runs of one set on
/// one line).
pub fn element_ops(flush: &[(&str, &str)], deletes: &[Elem], adds: &[Elem]) -> String {
    let mut out = String::new();
    for (table, set) in flush {
        let kind = sets::find(table, set).map_or("set", SetSpec::kind);
        let _ = writeln!(out, "flush {kind} {table} {set}");
    }
    for (verb, elems) in [("delete", deletes), ("add", adds)] {
        let mut i = 0;
        while i < elems.len() {
            let (table, set) = (elems[i].table, elems[i].set);
            let mut j = i;
            let mut items = Vec::new();
            while j < elems.len() && elems[j].table == table && elems[j].set == set {
                items.push(if verb == "delete" {
                    elems[j].key_text()
                } else {
                    elems[j].text()
                });
                j += 1;
            }
            let _ = writeln!(
                out,
                "{verb} element {table} {set} {{ {} }}",
                items.join(", ")
            );
            i = j;
        }
    }
    out
}

/// Replaces the rules of one regular chain of ours.
pub fn chain_rewrite(table: &str, chain: &str, rules: &[String]) -> String {
    let mut out = format!("flush chain {table} {chain}\n");
    for r in rules {
        let _ = writeln!(out, "add rule {table} {chain} {r}");
    }
    out
}

/// Replaces the guest nic set.
pub fn guest_ifs_rewrite(names: &BTreeSet<String>) -> String {
    let mut out = format!("flush set {FILTER} guest_ifs\n");
    if !names.is_empty() {
        let _ = writeln!(
            out,
            "add element {FILTER} guest_ifs {{ {} }}",
            quoted(names)
        );
    }
    out
}
