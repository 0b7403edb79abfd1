//! Brings links in line with a [`Wanted`] plan: names, MTU, up, addresses (primary first),
//! the default route, then a gratuitous ARP for every address added. Every check that can
//! refuse the plan (MACs, names) runs before the first change.

use super::garp;
use super::netlink::{Addr, Link, Netlink, NetlinkError};
use super::plan::{self, NicProblem, Wanted};
use crate::state::types::MacAddr;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Why a sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A nic cannot be found or named as asked (nothing was changed).
    #[error(transparent)]
    Nic(#[from] NicProblem),
    /// The kernel refused a change.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// How far a sync goes.
#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    /// Remove IPv4 addresses that are not wanted from nics whose primary address is known.
    pub prune: bool,
    /// A missing or shared MAC fails the sync before any change (else it is only reported).
    pub strict: bool,
    /// Only these MACs (and the default route only if its nic is among them).
    pub scope: Option<BTreeSet<MacAddr>>,
}

/// What a sync did and could not do.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Nics that could not be found (only when not strict).
    pub missing: Vec<NicProblem>,
    /// Addresses added, by interface.
    pub added: usize,
    /// Addresses removed.
    pub removed: usize,
    /// Other changes made: renames, MTU, link up, default route.
    pub fixed: usize,
}

impl SyncReport {
    /// True when the sync changed anything.
    pub fn changed(&self) -> bool {
        self.added + self.removed + self.fixed > 0
    }
}

/// Applies `wanted` to the links of the current namespace.
pub async fn sync(
    nl: &Netlink,
    announcer: &mut garp::Announcer,
    wanted: &Wanted,
    opts: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let mut report = SyncReport::default();
    let macs: Vec<MacAddr> = wanted
        .macs()
        .into_iter()
        .filter(|m| opts.scope.as_ref().is_none_or(|s| s.contains(m)))
        .collect();
    let mut links = nl.links().await?;
    let mut found_macs = Vec::new();
    for mac in &macs {
        match plan::find(&links, *mac) {
            Ok(_) => found_macs.push(*mac),
            Err(p) if opts.strict => return Err(p.into()),
            Err(p) => report.missing.push(p),
        }
    }
    let found = plan::find_all(&links, found_macs.iter().copied())?;
    let renames: Vec<(Link, String)> = plan::renames(&links, &found, &wanted.nics)?
        .into_iter()
        .map(|(l, n)| (l.clone(), n))
        .collect();
    if !renames.is_empty() {
        // Two steps, so that names can be swapped (eth0 <-> eth1).
        for (link, _) in &renames {
            nl.set_down(link).await?;
            nl.rename(link, &format!("vrtmp{}", link.index)).await?;
        }
        for (link, to) in &renames {
            let tmp = Link {
                name: format!("vrtmp{}", link.index),
                ..link.clone()
            };
            nl.rename(&tmp, to).await?;
            tracing::info!(from = %link.name, to = %to, "renamed nic");
        }
        report.fixed += renames.len();
        links = nl.links().await?;
    }
    let found = plan::find_all(&links, found_macs.iter().copied())?;
    for (mac, link) in &found {
        sync_link(nl, announcer, wanted, *mac, link, opts.prune, &mut report).await?;
    }
    if let Some((mac, gw)) = wanted.default_route
        && let Some(link) = found.get(&mac)
    {
        let routes = nl.default_routes().await?;
        if routes != [(Some(gw), Some(link.index))] {
            nl.replace_default_route(link, gw).await?;
            report.fixed += 1;
            tracing::info!(via = %gw, dev = %link.name, "default route set");
        }
    }
    Ok(report)
}

async fn sync_link(
    nl: &Netlink,
    announcer: &mut garp::Announcer,
    wanted: &Wanted,
    mac: MacAddr,
    link: &Link,
    prune: bool,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    nl.promote_secondaries(link).await?;
    if let Some(mtu) = wanted.nics.get(&mac).and_then(|n| n.mtu)
        && link.mtu != Some(mtu)
    {
        nl.set_mtu(link, mtu).await?;
        report.fixed += 1;
    }
    if !link.up {
        nl.set_up(link).await?;
        report.fixed += 1;
    }
    let current = addrs_now(nl, link.index).await?;
    let want = wanted.addrs(mac);
    // Not pruning: addresses the state does not know stay, even around a primary fix.
    let keep_unknown = !prune;
    let prune = prune && wanted.nics.contains_key(&mac);
    let (add, remove) = plan::addr_changes(&current, &want, prune);
    for (ip, prefix) in &add {
        nl.add_addr(link, *ip, *prefix).await?;
    }
    for (ip, prefix) in &remove {
        if nl.del_addr(link, *ip, *prefix).await? {
            tracing::info!(address = %format!("{ip}/{prefix}"), dev = %link.name, "removed an address that is not wanted");
        }
    }
    report.added += add.len();
    report.removed += remove.len();
    if let Some(primary) = wanted.primary(mac) {
        make_primary(nl, link, primary, &want, keep_unknown).await?;
    }
    let ips: Vec<Ipv4Addr> = add.iter().map(|(ip, _)| *ip).collect();
    if let Err(e) = announcer
        .announce_paced(link.index, &link.name, mac, &ips)
        .await
    {
        tracing::warn!(error = %e, "gratuitous ARP not sent");
    }
    Ok(())
}

/// Makes `primary` the kernel's primary address of its subnet on `link` (it ends up
/// secondary when a VIP of the same subnet was there first): removes the other addresses of
/// that subnet, then adds back those that are wanted (all of them with `keep_unknown`).
async fn make_primary(
    nl: &Netlink,
    link: &Link,
    primary: (Ipv4Addr, u8),
    want: &[(Ipv4Addr, u8)],
    keep_unknown: bool,
) -> Result<(), SyncError> {
    let current = addrs_now(nl, link.index).await?;
    let is_secondary = current
        .iter()
        .any(|a| (a.ip, a.prefix) == primary && a.secondary);
    if !is_secondary {
        return Ok(());
    }
    let (ip, prefix) = primary;
    let mut mates: Vec<Addr> = current
        .into_iter()
        .filter(|a| a.prefix == prefix && a.ip != ip && plan::same_subnet(a.ip, ip, prefix))
        .collect();
    // Secondaries first, so each removal leaves the others alone; the last primary goes
    // last and promotes ours (promote_secondaries is set).
    mates.sort_by_key(|a| !a.secondary);
    for a in &mates {
        nl.del_addr(link, a.ip, a.prefix).await?;
    }
    let wanted: BTreeSet<(Ipv4Addr, u8)> = want.iter().copied().collect();
    for a in &mates {
        if keep_unknown || wanted.contains(&(a.ip, a.prefix)) {
            nl.add_addr(link, a.ip, a.prefix).await?;
        }
    }
    tracing::info!(address = %format!("{ip}/{prefix}"), dev = %link.name, "made the nic's own address primary");
    Ok(())
}

/// The IPv4 addresses of link `index` now: from the process's interface view (kept by
/// notifications: O(the link's addresses), where a filtered dump walks every address of the
/// namespace), or by a dump when the view cannot be read.
async fn addrs_now(nl: &Netlink, index: u32) -> Result<Vec<Addr>, NetlinkError> {
    match super::view::current() {
        Ok(snap) => Ok(snap.addrs_of(index)),
        Err(_) => nl.addrs(index).await,
    }
}

/// Finds the link of every MAC, or names the first missing or shared one.
pub async fn find_links(
    nl: &Netlink,
    macs: impl IntoIterator<Item = MacAddr>,
) -> Result<BTreeMap<MacAddr, Link>, SyncError> {
    let links = nl.links().await?;
    Ok(plan::find_all(&links, macs)?
        .into_iter()
        .map(|(m, l)| (m, l.clone()))
        .collect())
}
