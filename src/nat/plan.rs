//! What one command changes in our tables, pure: a small transaction of element and chain
//! changes for single-entry commands (the same cost at 10 or 10,000 entries), or a replace of
//! both tables for sync commands; plus the conntrack entries to delete afterwards.

use super::conntrack::Flush;
use super::inputs::Inputs;
use super::model::{
    self, BindError, BoundEip, Elem, FILTER, NAT, Ruleset, bind_eip, bind_snat, check_pf,
    firewall_rule, guest_elements, pf_elements, resolve,
};
use super::render;
use crate::state::guests::GuestNics;
use crate::state::model::{Eip, PortForward, Snat};
use crate::state::types::MacAddr;
use crate::state::{Command, DesiredState};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The nft transaction and follow-up of one change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// nft input besides the element changes (rules, chains, whole tables); empty when
    /// there is none.
    pub text: String,
    /// The transaction replaces both tables.
    pub full: bool,
    /// Conntrack entries to delete once the transaction is in.
    pub flush: Vec<Flush>,
    /// Entries a full replace left out because their nics are missing.
    pub skipped: Vec<BindError>,
    /// The guest nic set the transaction installs, when it installs one.
    pub guest_ifs: Option<BTreeSet<String>>,
    /// When the change is made of set flushes and element deletes and adds only: those
    /// (for the netlink path; `nft` is the same change as text).
    pub elements: Option<ElementChange>,
}

impl Plan {
    /// The whole change as nft input: `text`, then the element changes. Rendered only when
    /// the change goes through nft (a fallback) or a golden file: the netlink path sends the
    /// elements as they are (100,000 elements are megabytes of text).
    pub fn nft(&self) -> String {
        match &self.elements {
            None => self.text.clone(),
            Some(c) => {
                let mut out = self.text.clone();
                out.push_str(&render::element_ops(&c.flush, &c.deletes, &c.adds));
                out
            }
        }
    }

    /// True when the plan changes something in our tables.
    pub fn has_work(&self) -> bool {
        !self.text.is_empty()
            || self
                .elements
                .as_ref()
                .is_some_and(|c| !(c.flush.is_empty() && c.deletes.is_empty() && c.adds.is_empty()))
    }
}

/// A transaction of set flushes, then element deletes, then element adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElementChange {
    /// Sets emptied first (table, set).
    pub flush: Vec<(&'static str, &'static str)>,
    /// Elements deleted.
    pub deletes: Vec<Elem>,
    /// Elements added.
    pub adds: Vec<Elem>,
}

/// A replace of both tables with `state`; entries with missing nics are left out.
pub fn full(state: &DesiredState, inputs: &Inputs) -> Plan {
    let (rs, skipped) = resolve(state, inputs);
    replace(rs, skipped)
}

/// [`full`] split in two: the rules of both tables rewritten in place, keeping every set and
/// its elements (nft text, one transaction; `found` are the chains our tables hold now, see
/// [`render::rules_in_place`]), and the contents of every set replaced (flush and add, for one
/// nfnetlink batch after it: one transaction, so no packet sees a set emptied). Neither step
/// leaves the data plane empty, and the element batch costs a fraction of the same elements
/// as nft text.
pub fn full_split(
    state: &DesiredState,
    inputs: &Inputs,
    found: &[render::FoundChain],
) -> (Plan, ElementChange) {
    let (mut rs, skipped) = resolve(state, inputs);
    let mut adds: Vec<Elem> = std::mem::take(&mut rs.elements).into_iter().collect();
    adds.extend(rs.guest_if_elements());
    let change = ElementChange {
        flush: super::sets::SETS
            .iter()
            .map(|s| (s.table, s.name))
            .collect(),
        deletes: Vec::new(),
        adds,
    };
    let p = Plan {
        text: render::rules_in_place(&rs, found),
        full: true,
        flush: Vec::new(),
        skipped,
        guest_ifs: Some(rs.guest_ifs),
        elements: None,
    };
    (p, change)
}

fn replace(rs: Ruleset, skipped: Vec<BindError>) -> Plan {
    Plan {
        text: render::full(&rs),
        full: true,
        flush: Vec::new(),
        skipped,
        guest_ifs: Some(rs.guest_ifs),
        elements: None,
    }
}

/// The plan of `cmd` on top of `before`. Every entry the command brings must resolve (else the
/// error names the field and MAC); entries already in the state that no longer resolve make the
/// plan a full replace that leaves them out. Sync commands empty and refill the sets they
/// cover, in one transaction.
pub fn plan(
    before: &DesiredState,
    after: &DesiredState,
    cmd: &Command,
    inputs: &Inputs,
) -> Result<Plan, BindError> {
    match cmd {
        Command::CreateEip(eip) => eip_change(before, inputs, eip.vip_ip, Some(eip)),
        Command::RemoveEip(eip) => eip_change(before, inputs, eip.vip_ip, None),
        Command::SyncEips(eips) => {
            for (i, e) in eips.iter().enumerate() {
                let bind = |field: &str| bind_eip(e, &before.vips, &before.nics, inputs, field);
                // the field is named only for an entry that does not bind
                bind("").or_else(|_| bind(&format!("eips[{i}]")))?;
            }
            if inputs.sets_hold_before
                && let Some(p) = eip_sync_delta(before, after, inputs)
            {
                return Ok(p);
            }
            let mut skipped = Vec::new();
            let adds = model::eip_set_elements(after, inputs, &mut skipped);
            let conntrack = changed_vips(&before.eips, &after.eips);
            Ok(replace_sets(model::EIP_SETS, adds, conntrack))
        }
        Command::CreatePortForwards(rules) => {
            let mut deletes = Vec::new();
            let mut adds = Vec::new();
            let mut flush = Vec::new();
            let mut ensured = Vec::new();
            let mut seen = BTreeSet::new();
            for (i, rule) in rules.iter().enumerate() {
                check_pf(rule, inputs, "")
                    .or_else(|_| check_pf(rule, inputs, &format!("rules[{i}]")))?;
                if !seen.insert(rule.key()) {
                    continue;
                }
                match before.port_forwards.get(&rule.key()) {
                    // an ensure: re-adding elements that are there changes nothing
                    Some(old) if old == rule => ensured.extend(pf_elements(rule)),
                    Some(old) => {
                        deletes.extend(pf_elements(old));
                        adds.extend(pf_elements(rule));
                        flush.push(Flush::of_forward(old));
                    }
                    None => adds.extend(pf_elements(rule)),
                }
            }
            let mut p = elements(deletes, adds, flush);
            if let Some(change) = p.elements.as_mut()
                && !ensured.is_empty()
            {
                change.adds.extend(ensured);
            }
            Ok(p)
        }
        Command::RevokePortForwards(rules) => {
            let mut deletes = Vec::new();
            let mut flush = Vec::new();
            let mut seen = BTreeSet::new();
            for rule in rules {
                if !seen.insert(rule.key()) {
                    continue;
                }
                if let Some(old) = before.port_forwards.get(&rule.key()) {
                    deletes.extend(pf_elements(old));
                    flush.push(Flush::of_forward(old));
                }
            }
            Ok(elements(deletes, Vec::new(), flush))
        }
        Command::SyncPortForwards(rules) => {
            for (i, rule) in rules.iter().enumerate() {
                check_pf(rule, inputs, "")
                    .or_else(|_| check_pf(rule, inputs, &format!("rules[{i}]")))?;
            }
            if inputs.sets_hold_before {
                return Ok(pf_sync_delta(before, after));
            }
            let mut skipped = Vec::new();
            let adds = model::pf_set_elements(after, inputs, &mut skipped);
            let conntrack = changed_forwards(&before.port_forwards, &after.port_forwards);
            Ok(replace_sets(model::PF_SETS, adds, conntrack))
        }
        Command::SetSnat(snat) => {
            bind_snat(snat, inputs, "snat")?;
            snat_change(before, inputs, std::slice::from_ref(snat), &[])
        }
        Command::SyncSnat(entries) => {
            for (i, (snat, enabled)) in entries.iter().enumerate() {
                if *enabled {
                    bind_snat(snat, inputs, &format!("snats[{i}]"))?;
                }
            }
            snat_rewrite(before, inputs, &after.snats)
        }
        Command::RemoveSnat(snats) => {
            let macs: Vec<MacAddr> = snats.iter().map(|s| s.private_nic_mac).collect();
            snat_change(before, inputs, &[], &macs)
        }
        Command::RefreshFirewall(rules) => {
            let mut lines = Vec::new();
            for (i, rule) in rules.iter().enumerate() {
                lines.push(firewall_rule(rule, inputs, &format!("rules[{i}]"))?);
            }
            Ok(Plan {
                text: render::chain_rewrite(FILTER, "appliance", &lines),
                ..Plan::default()
            })
        }
        _ => Ok(Plan::default()),
    }
}

fn elements(deletes: Vec<Elem>, adds: Vec<Elem>, flush: Vec<Flush>) -> Plan {
    let (deletes, adds) = diff(deletes, adds);
    let change = ElementChange {
        flush: Vec::new(),
        deletes,
        adds,
    };
    Plan {
        flush,
        elements: Some(change),
        ..Plan::default()
    }
}

/// Adds elements that the state already holds (an ensure after a drift): no deletes, no
/// conntrack flush.
fn ensure(adds: Vec<Elem>) -> Plan {
    elements(Vec::new(), adds, Vec::new())
}

/// Replaces the content of `sets` with `adds` in one transaction (a sync command: it replaces
/// everything it covers, whatever the kernel held).
fn replace_sets(sets: super::sets::Holds, mut adds: Vec<Elem>, flush: Vec<Flush>) -> Plan {
    adds.sort();
    adds.dedup();
    let change = ElementChange {
        flush: super::sets::holding(sets),
        deletes: Vec::new(),
        adds,
    };
    Plan {
        flush,
        elements: Some(change),
        ..Plan::default()
    }
}

/// Elements to delete and to add to go from `before` to `after`, leaving equal ones alone.
pub fn diff(before: Vec<Elem>, after: Vec<Elem>) -> (Vec<Elem>, Vec<Elem>) {
    let old: BTreeSet<Elem> = before.into_iter().collect();
    let new: BTreeSet<Elem> = after.into_iter().collect();
    let deletes = old.difference(&new).cloned().collect();
    let adds = new.difference(&old).cloned().collect();
    (deletes, adds)
}

/// One EIP created, replaced or removed: its VIP elements, and the guest elements of every
/// guest it touches (where several EIPs share a guest, the lowest VIP owns the SNAT).
fn eip_change(
    before: &DesiredState,
    inputs: &Inputs,
    vip: Ipv4Addr,
    new: Option<&Eip>,
) -> Result<Plan, BindError> {
    let bind = |e: &Eip, field: &str| bind_eip(e, &before.vips, &before.nics, inputs, field);
    let new = new.map(|e| bind(e, "eip")).transpose()?;
    let old = before.eips.get(&vip);
    // A command is an ensure: re-sending an entry the state already holds puts back its
    // elements should they have gone missing (adding an element that is there is a no-op).
    let unchanged = old == new.as_ref().map(|b| &b.eip);
    if unchanged && new.is_none() {
        return Ok(Plan::default());
    }
    let old = match old.map(|e| bind(e, &format!("eip {vip}"))).transpose() {
        Ok(o) => o,
        // The old entry's nic is gone: our tables may not hold it; replace them.
        Err(_) => {
            let mut after = before.clone();
            match &new {
                Some(b) => after.eips.insert(vip, b.eip.clone()),
                None => after.eips.remove(&vip),
            };
            let mut p = full(&after, inputs);
            p.flush = vec![Flush::Address(vip)];
            return Ok(p);
        }
    };
    let guests: BTreeSet<Ipv4Addr> = old
        .iter()
        .chain(new.iter())
        .map(|b| b.eip.guest_ip)
        .collect();
    let sharing: Vec<BoundEip> = guests
        .iter()
        .flat_map(|g| before.eips.of_guest(*g))
        .filter(|e| e.vip_ip != vip)
        .filter_map(|e| bind(e, "").ok())
        .collect();
    let mut before_elems: Vec<Elem> = old.iter().flat_map(BoundEip::vip_elements).collect();
    before_elems.extend(guest_elements(sharing.iter().chain(old.iter())));
    let mut after_elems: Vec<Elem> = new.iter().flat_map(BoundEip::vip_elements).collect();
    after_elems.extend(guest_elements(sharing.iter().chain(new.iter())));
    if unchanged {
        return Ok(ensure(after_elems));
    }
    let flush = if old.is_some() {
        vec![Flush::Address(vip)]
    } else {
        Vec::new()
    };
    Ok(elements(before_elems, after_elems, flush))
}

/// The entries of two maps that differ: (key, before, after), in key order, by one merge of
/// the two (O(n); nothing is allocated for equal entries).
fn changed<'a, K: Ord + Copy, V: PartialEq>(
    before: &'a crate::state::Table<K, V>,
    after: &'a crate::state::Table<K, V>,
) -> Vec<(K, Option<&'a V>, Option<&'a V>)> {
    let mut out = Vec::new();
    let mut b = before.iter().peekable();
    let mut a = after.iter().peekable();
    loop {
        match (b.peek(), a.peek()) {
            (None, None) => return out,
            (Some((kb, vb)), Some((ka, va))) if kb == ka => {
                if vb != va {
                    out.push((**kb, Some(*vb), Some(*va)));
                }
                b.next();
                a.next();
            }
            (Some((kb, vb)), Some((ka, _))) if kb < ka => {
                out.push((**kb, Some(*vb), None));
                b.next();
            }
            (Some((kb, vb)), None) => {
                out.push((**kb, Some(*vb), None));
                b.next();
            }
            (_, Some((ka, va))) => {
                out.push((**ka, None, Some(*va)));
                a.next();
            }
        }
    }
}

/// A sync of EIPs as the difference between the two states (the kernel holds `before`'s
/// elements): the VIP elements of each changed EIP, and the guest elements of every guest a
/// changed EIP has or had. `None` when an entry of `before` no longer binds (its nic is gone:
/// what the kernel holds for it cannot be told; the caller replaces the sets).
fn eip_sync_delta(before: &DesiredState, after: &DesiredState, inputs: &Inputs) -> Option<Plan> {
    let bind_before = |e: &Eip| bind_eip(e, &before.vips, &before.nics, inputs, "").ok();
    let bind_after = |e: &Eip| bind_eip(e, &after.vips, &after.nics, inputs, "").ok();
    let changes = changed(&before.eips, &after.eips);
    let mut guests = BTreeSet::new();
    let mut before_elems = Vec::new();
    let mut after_elems = Vec::new();
    let mut flush = Vec::new();
    for (vip, old, new) in &changes {
        if let Some(old) = old {
            before_elems.extend(bind_before(old)?.vip_elements());
            guests.insert(old.guest_ip);
            flush.push(Flush::Address(*vip));
        }
        if let Some(new) = new {
            // the command's entries were bound when it was checked
            after_elems.extend(bind_after(new)?.vip_elements());
            guests.insert(new.guest_ip);
        }
    }
    let mut old_sharing = Vec::new();
    let mut new_sharing = Vec::new();
    for g in &guests {
        for e in before.eips.of_guest(*g) {
            old_sharing.push(bind_before(e)?);
        }
        new_sharing.extend(after.eips.of_guest(*g).filter_map(bind_after));
    }
    before_elems.extend(guest_elements(&old_sharing));
    after_elems.extend(guest_elements(&new_sharing));
    Some(elements(before_elems, after_elems, flush))
}

/// A sync of port forwards as the difference between the two states (the kernel holds
/// `before`'s elements): the elements of each changed forward.
fn pf_sync_delta(before: &DesiredState, after: &DesiredState) -> Plan {
    let mut deletes = Vec::new();
    let mut adds = Vec::new();
    let mut flush = Vec::new();
    for (_, old, new) in changed(&before.port_forwards, &after.port_forwards) {
        if let Some(old) = old {
            deletes.extend(pf_elements(old));
            flush.push(Flush::of_forward(old));
        }
        if let Some(new) = new {
            adds.extend(pf_elements(new));
        }
    }
    elements(deletes, adds, flush)
}

fn snat_change(
    before: &DesiredState,
    inputs: &Inputs,
    set: &[Snat],
    unset: &[MacAddr],
) -> Result<Plan, BindError> {
    let mut snats = before.snats.clone();
    for s in set {
        snats.insert(s.private_nic_mac, s.clone());
    }
    for m in unset {
        snats.remove(m);
    }
    snat_rewrite(before, inputs, &snats)
}

/// Rewrites the SNAT chains of both tables and the guest nic set (a handful of rules, one per
/// guest nic). SNAT entries already in the state whose nics are missing are left out.
fn snat_rewrite(
    before: &DesiredState,
    inputs: &Inputs,
    snats: &crate::state::Table<MacAddr, Snat>,
) -> Result<Plan, BindError> {
    if *snats == before.snats {
        return Ok(Plan::default());
    }
    let mut nat_rules = Vec::new();
    let mut fwd_rules = Vec::new();
    let mut skipped = Vec::new();
    for s in snats.values() {
        match bind_snat(s, inputs, &format!("snat {}", s.private_nic_mac)) {
            Ok(b) => {
                nat_rules.push(b.nat_rule());
                fwd_rules.push(b.forward_rule());
            }
            Err(e) => skipped.push(e),
        }
    }
    let guests = GuestNics::of(&before.nics, snats.values(), &before.dhcp_hosts);
    let guest_ifs = model::guest_ifs(&guests, inputs);
    let mut nft = render::chain_rewrite(NAT, "snat_subnets", &nat_rules);
    nft.push_str(&render::chain_rewrite(FILTER, "snat_fwd", &fwd_rules));
    nft.push_str(&render::guest_ifs_rewrite(&guest_ifs));
    Ok(Plan {
        text: nft,
        skipped,
        guest_ifs: Some(guest_ifs),
        ..Plan::default()
    })
}

fn changed_vips(
    before: &crate::state::Table<Ipv4Addr, Eip>,
    after: &crate::state::Table<Ipv4Addr, Eip>,
) -> Vec<Flush> {
    before
        .iter()
        .filter(|(vip, e)| after.get(*vip) != Some(*e))
        .map(|(vip, _)| Flush::Address(*vip))
        .collect()
}

fn changed_forwards<K: Ord>(
    before: &crate::state::Table<K, PortForward>,
    after: &crate::state::Table<K, PortForward>,
) -> Vec<Flush> {
    before
        .iter()
        .filter(|(k, pf)| after.get(*k) != Some(*pf))
        .map(|(_, pf)| Flush::of_forward(pf))
        .collect()
}
