//! nft input text, pure: the two whole tables for a [`Ruleset`] (replacing ours in one
//! transaction), and the small transactions of single-entry commands.

use super::model::{Elem, FILTER, Field, MARK_PF, MARK_PF_MASQ, NAT, Ruleset};
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

fn write_sets(out: &mut String, table: &str, rs: &Ruleset) {
    for spec in sets::of_table(table) {
        let elems: Vec<&Elem> = rs
            .elements
            .iter()
            .filter(|e| e.table == table && e.set == spec.name)
            .collect();
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
    let _ = writeln!(out, "table {NAT} {{");
    write_sets(&mut out, NAT, rs);
    let s = |x: &str| x.to_string();
    write_chain(
        &mut out,
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
    write_chain(
        &mut out,
        "postrouting",
        Some("type nat hook postrouting priority srcnat; policy accept;"),
        &[
            s("ct status dnat ct original ip daddr @eip_masq masquerade"),
            format!(
                "ct status dnat ct mark & 0x{MARK_PF_MASQ:08x} == 0x{MARK_PF_MASQ:08x} masquerade"
            ),
            s("snat ip to ip saddr . oifname map @eip_snat"),
            s("jump snat_subnets"),
        ],
    );
    write_chain(&mut out, "snat_subnets", None, &rs.snat_rules);
    out.push_str("}\n");

    let _ = writeln!(out, "table {FILTER} {{");
    let mut filter_sets = rs.clone();
    filter_sets
        .elements
        .extend(rs.guest_ifs.iter().map(|n| Elem {
            table: FILTER,
            set: "guest_ifs",
            key: vec![Field::Ifname(n.clone())],
            value: None,
        }));
    write_sets(&mut out, FILTER, &filter_sets);
    let mut input = vec![
        s("ct state established,related accept"),
        s("ct state invalid drop"),
        s("iif \"lo\" accept"),
        s("meta l4proto { icmp, icmpv6 } accept"),
    ];
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
    input.push(format!("tcp dport {{ {ports} }} drop"));
    input.push(s("iifname @guest_ifs udp dport { 53, 67 } accept"));
    input.push(s("iifname @guest_ifs tcp dport 53 accept"));
    input.push(s("jump appliance"));
    write_chain(
        &mut out,
        "input",
        Some("type filter hook input priority filter; policy drop;"),
        &input,
    );
    write_chain(&mut out, "appliance", None, &rs.appliance);
    write_chain(
        &mut out,
        "forward",
        Some("type filter hook forward priority filter; policy drop;"),
        &[
            s("ct state established,related accept"),
            s("ct state invalid drop"),
            s("ct status dnat ct original ip daddr @eip_vips accept comment \"eip inbound\""),
            format!(
                "ct status dnat ct mark & 0x{MARK_PF:08x} == 0x{MARK_PF:08x} accept comment \"port forwarding inbound\""
            ),
            s("ip saddr . oifname @eip_out accept comment \"eip outbound\""),
            s("jump snat_fwd"),
        ],
    );
    write_chain(&mut out, "snat_fwd", None, &rs.snat_forward);
    out.push_str("}\n");
    out
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
