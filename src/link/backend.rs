//! The interfaces backend: `/configurenic`, `/removenic`, `/createvip`, `/removevip`, and the
//! re-apply of cached bootstrap nics, configured nics and VIPs at start.
//!
//! The bootstrap nics come from a loader its constructor is given ([`BootstrapNics`]; the
//! server passes `bootstrap::cached_nics`): bootstrap feeds this module, never the other way.

use super::error::LinkError;
use super::garp;
use super::netlink::{Link, Netlink, NetlinkError};
use super::plan::{self, Wanted};
use super::sync::{self, SyncOptions};
use crate::backend::{Backend, BackendError};
use crate::health::Health;
use crate::state::ha::Role;
use crate::state::model::{Nic, Vip};
use crate::state::types::MacAddr;
use crate::state::{Change, Command, DesiredState, Feature, Parts};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Health source for nics that are missing at start.
pub const HEALTH_NICS: &str = "nics";
/// Health source for an unreadable cached bootstrap info.
pub const HEALTH_BOOTSTRAP: &str = "bootstrap";

/// Reads the bootstrap nics: called at every resync, so a bootstrap info cached since the
/// start is seen. `Ok` with no nics when there is none; an error says why it cannot be read
/// (shown in health under [`HEALTH_BOOTSTRAP`], the nics last read are kept).
pub type BootstrapNics =
    Box<dyn Fn() -> Result<Vec<Nic>, Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// Nics and VIPs over netlink.
pub struct LinksBackend {
    load_bootstrap: BootstrapNics,
    bootstrap: Vec<Nic>,
    health: Arc<Health>,
    nl: Option<Netlink>,
    announcer: garp::Announcer,
    /// Nics of the state the last sync could not find.
    missing: Vec<String>,
    /// The node's HA role: a backup carries neither VIPs nor HA addresses.
    role: Role,
}

impl LinksBackend {
    /// A backend that reads the bootstrap nics through `load_bootstrap` at each resync.
    pub fn new(load_bootstrap: BootstrapNics, health: Arc<Health>) -> Self {
        LinksBackend {
            load_bootstrap,
            bootstrap: Vec::new(),
            health,
            nl: None,
            announcer: garp::Announcer::default(),
            missing: Vec::new(),
            role: Role::NoHa,
        }
    }

    /// What the interfaces should be for `state` in this node's role.
    fn wanted(&self, state: &DesiredState) -> Wanted {
        Wanted::for_role(&self.bootstrap, state, self.role.carries_data_plane())
    }

    /// `/enableVyosha`: every MAC it names must be one nic (before anything changes), then
    /// the addresses follow the role.
    async fn enable_ha(&mut self, after: &DesiredState) -> Result<(), BackendError> {
        let Some(ha) = &after.ha else {
            return Ok(());
        };
        let nl = self.netlink()?;
        let links = nl.links().await.map_err(LinkError::Read)?;
        plan::find(&links, ha.heartbeat_mac).map_err(|source| LinkError::Nic {
            field: "heartbeatNic".into(),
            source,
        })?;
        for (i, v) in ha.vips.iter().enumerate() {
            plan::find(&links, v.mac).map_err(|source| LinkError::Nic {
                field: format!("vips[{i}].nicMac"),
                source,
            })?;
        }
        self.follow_role(after).await
    }

    /// Syncs the nics to the role's plan: a backup first loses the addresses only a master
    /// carries (also on nics the state does not describe, which a sync does not prune); a
    /// master gets them back, with gratuitous ARPs.
    async fn follow_role(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        let report = self.resync(state, true).await?;
        tracing::info!(
            role = self.role.wire(),
            added = report.added,
            removed = report.removed,
            "interfaces follow the HA role"
        );
        Ok(())
    }

    /// Removes from the kernel every address only a master carries (a backup's re-apply).
    async fn drop_master_addresses(
        &mut self,
        nl: &Netlink,
        state: &DesiredState,
    ) -> Result<usize, NetlinkError> {
        let links = nl.links().await?;
        let mut removed = 0;
        for (mac, addrs) in plan::master_addresses(state) {
            let Ok(link) = plan::find(&links, mac) else {
                continue;
            };
            let primary = self.primary(state, mac);
            let current: BTreeSet<(Ipv4Addr, u8)> = nl
                .addrs(link.index)
                .await?
                .into_iter()
                .map(|a| (a.ip, a.prefix))
                .collect();
            // Newest first: a subnet's first address is its primary, and removing a primary
            // makes the kernel promote (and re-route) the next one each time.
            for (ip, prefix) in addrs.into_iter().rev() {
                if primary == Some((ip, prefix)) || !current.contains(&(ip, prefix)) {
                    continue;
                }
                if nl.del_addr(link, ip, prefix).await? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn netlink(&mut self) -> Result<Netlink, LinkError> {
        if let Some(nl) = &self.nl
            && nl.is_alive()
        {
            return Ok(nl.clone());
        }
        let nl = Netlink::connect().map_err(LinkError::Connect)?;
        self.nl = Some(nl.clone());
        Ok(nl)
    }

    /// Reads the bootstrap nics anew; an unreadable source keeps the nics last read.
    fn load_bootstrap(&mut self) {
        match (self.load_bootstrap)() {
            Ok(nics) => {
                self.bootstrap = nics;
                self.health.clear(HEALTH_BOOTSTRAP);
            }
            Err(e) => {
                self.health
                    .set(HEALTH_BOOTSTRAP, crate::error::chain(e.as_ref()));
            }
        }
    }

    /// The primary address of the nic with `mac` in `state` (or the bootstrap info).
    fn primary(&self, state: &DesiredState, mac: MacAddr) -> Option<(Ipv4Addr, u8)> {
        state
            .nics
            .get(&mac)
            .or_else(|| self.bootstrap.iter().find(|n| n.mac == mac))
            .map(|n| (n.ip, n.prefix.len()))
    }

    async fn configure(
        &mut self,
        before: &DesiredState,
        after: &DesiredState,
        nics: &[Nic],
    ) -> Result<(), BackendError> {
        let nl = self.netlink()?;
        // Every MAC must resolve to exactly one link before anything changes.
        sync::find_links(&nl, nics.iter().map(|n| n.mac))
            .await
            .map_err(LinkError::Check)?;
        let scope: BTreeSet<MacAddr> = nics.iter().map(|n| n.mac).collect();
        let opts = SyncOptions {
            prune: true,
            strict: true,
            scope: Some(scope),
        };
        let wanted = self.wanted(after);
        let result = sync::sync(&nl, &mut self.announcer, &wanted, &opts).await;
        if let Err(source) = result {
            let e = BackendError::from(LinkError::Step {
                step: "configuring the nics",
                source,
            });
            return Err(if self.undo(&nl, before, opts.scope).await {
                e.unchanged()
            } else {
                e
            });
        }
        Ok(())
    }

    async fn remove_nics(
        &mut self,
        before: &DesiredState,
        after: &DesiredState,
        macs: &[MacAddr],
    ) -> Result<(), BackendError> {
        let nl = self.netlink()?;
        let links = nl.links().await.map_err(LinkError::Read)?;
        let wanted = self.wanted(after);
        let mut keep = BTreeSet::new();
        let mut removed: Vec<Undo> = Vec::new();
        let mut result: Result<(), LinkError> = Ok(());
        let step = "removing nics";
        let mut undone = true;
        for mac in macs {
            // A nic that is gone has no address left to remove.
            let Ok(link) = plan::find(&links, *mac) else {
                continue;
            };
            if wanted.nics.contains_key(mac) {
                // Still described by the bootstrap info: back to that.
                keep.insert(*mac);
            } else if let Some((ip, prefix)) = self.primary(before, *mac)
                && !after.vips.contains_key(&ip)
            {
                if let Err(e) = nl.del_addr(link, ip, prefix).await {
                    result = Err(LinkError::Step {
                        step,
                        source: e.into(),
                    });
                    break;
                }
                removed.push(Undo::Add(link.clone(), ip, prefix));
            }
        }
        if result.is_ok() && !keep.is_empty() {
            let opts = SyncOptions {
                prune: true,
                strict: false,
                scope: Some(keep.clone()),
            };
            if let Err(source) = sync::sync(&nl, &mut self.announcer, &wanted, &opts).await {
                undone = self.undo(&nl, before, Some(keep)).await;
                result = Err(LinkError::Step { step, source });
            }
        }
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                // All or nothing: put back the addresses this command already removed.
                undone &= run_undo(&nl, removed).await;
                let e = BackendError::from(e);
                Err(if undone { e.unchanged() } else { e })
            }
        }
    }

    async fn create_vips(
        &mut self,
        before: &DesiredState,
        vips: &[Vip],
    ) -> Result<(), BackendError> {
        let nl = self.netlink()?;
        let macs: BTreeSet<MacAddr> = vips.iter().map(|v| v.owner_mac).collect();
        let all_links = nl.links().await.map_err(LinkError::Read)?;
        let links: BTreeMap<MacAddr, Link> = plan::find_all(&all_links, macs.iter().copied())
            .map_err(|e| LinkError::Check(e.into()))?
            .into_iter()
            .map(|(m, l)| (m, l.clone()))
            .collect();
        if !self.role.carries_data_plane() {
            // A backup holds the VIP in its state only; it goes up when this node is master.
            return Ok(());
        }
        // VIPs that move to another nic or prefix leave their old place first.
        let moved: Vec<&Vip> = vips
            .iter()
            .filter_map(|v| before.vips.get(&v.ip).filter(|old| *old != v))
            .collect();
        let mut undo: Vec<Undo> = Vec::new();
        let result = async {
            for old in &moved {
                if let Ok(link) = plan::find(&all_links, old.owner_mac)
                    && self.primary(before, old.owner_mac) != Some((old.ip, old.prefix.len()))
                    && nl.del_addr(link, old.ip, old.prefix.len()).await?
                {
                    undo.push(Undo::Add(link.clone(), old.ip, old.prefix.len()));
                }
            }
            let mut announce: BTreeMap<MacAddr, Vec<Ipv4Addr>> = BTreeMap::new();
            for (mac, link) in &links {
                nl.promote_secondaries(link).await?;
                announce.insert(*mac, Vec::new());
            }
            for vip in vips {
                let link = &links[&vip.owner_mac];
                let addr = (vip.ip, vip.prefix.len());
                if self.primary(before, vip.owner_mac) == Some(addr) {
                    continue;
                }
                nl.add_addr(link, vip.ip, vip.prefix.len()).await?;
                if before.vips.get(&vip.ip) != Some(vip) {
                    undo.push(Undo::Del(link.clone(), vip.ip, vip.prefix.len()));
                }
                announce.entry(vip.owner_mac).or_default().push(vip.ip);
            }
            Ok::<_, NetlinkError>(announce)
        }
        .await;
        match result {
            Ok(announce) => {
                for (mac, ips) in announce {
                    let link = &links[&mac];
                    if let Err(e) = self
                        .announcer
                        .announce_paced(link.index, &link.name, mac, &ips)
                        .await
                    {
                        tracing::warn!(error = %e, "gratuitous ARP not sent");
                    }
                }
                Ok(())
            }
            Err(e) => {
                let e = BackendError::from(LinkError::Step {
                    step: "adding VIPs",
                    source: e.into(),
                });
                Err(if run_undo(&nl, undo).await {
                    e.unchanged()
                } else {
                    e
                })
            }
        }
    }

    async fn remove_vips(
        &mut self,
        before: &DesiredState,
        vips: &[Vip],
    ) -> Result<(), BackendError> {
        let nl = self.netlink()?;
        let links = nl.links().await.map_err(LinkError::Read)?;
        let mut undo: Vec<Undo> = Vec::new();
        let mut promoted: BTreeSet<u32> = BTreeSet::new();
        let result = async {
            for vip in vips {
                let known = before.vips.get(&vip.ip).unwrap_or(vip);
                // A nic that is gone carries no address any more.
                let Ok(link) = plan::find(&links, known.owner_mac) else {
                    continue;
                };
                let primary = self.primary(before, known.owner_mac);
                if primary.map(|p| p.0) == Some(vip.ip) {
                    continue;
                }
                if promoted.insert(link.index) {
                    nl.promote_secondaries(link).await?;
                }
                let mut prefixes = vec![known.prefix.len()];
                if vip.prefix != known.prefix {
                    prefixes.push(vip.prefix.len());
                }
                for prefix in prefixes {
                    if nl.del_addr(link, vip.ip, prefix).await? {
                        undo.push(Undo::Add(link.clone(), vip.ip, prefix));
                    }
                }
            }
            Ok::<_, NetlinkError>(())
        }
        .await;
        if let Err(e) = result {
            let e = BackendError::from(LinkError::Step {
                step: "removing VIPs",
                source: e.into(),
            });
            return Err(if run_undo(&nl, undo).await {
                e.unchanged()
            } else {
                e
            });
        }
        Ok(())
    }

    /// Best effort: puts the nics in `scope` back as `before` describes them; true when it
    /// did.
    async fn undo(
        &mut self,
        nl: &Netlink,
        before: &DesiredState,
        scope: Option<BTreeSet<MacAddr>>,
    ) -> bool {
        let opts = SyncOptions {
            prune: true,
            strict: false,
            scope,
        };
        let wanted = self.wanted(before);
        match sync::sync(nl, &mut self.announcer, &wanted, &opts).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "could not restore the nics after a failed change");
                false
            }
        }
    }
}

enum Undo {
    Add(Link, Ipv4Addr, u8),
    Del(Link, Ipv4Addr, u8),
}

/// Takes back the address changes in `undo`, newest first; true when every one was.
async fn run_undo(nl: &Netlink, undo: Vec<Undo>) -> bool {
    let mut undone = true;
    for u in undo.into_iter().rev() {
        let r = match &u {
            Undo::Add(link, ip, prefix) => nl.add_addr(link, *ip, *prefix).await,
            Undo::Del(link, ip, prefix) => nl.del_addr(link, *ip, *prefix).await.map(|_| ()),
        };
        if let Err(e) = r {
            tracing::error!(error = %crate::error::chain(&e), "could not undo an address change");
            undone = false;
        }
    }
    undone
}

impl Backend for LinksBackend {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Links]
    }

    fn concerns(&self, parts: Parts) -> bool {
        parts.intersects(Parts::NICS | Parts::VIPS | Parts::HA)
    }

    fn note_role(&mut self, role: Role) {
        self.role = role;
    }

    async fn set_role(&mut self, state: &DesiredState, role: Role) -> Result<(), BackendError> {
        self.role = role;
        self.follow_role(state).await
    }

    async fn apply(&mut self, change: &Change<'_>) -> Result<(), BackendError> {
        let before = change.before;
        match change.cmd {
            Command::ConfigureNics(nics) => self.configure(before, change.after, nics).await,
            Command::RemoveNics(macs) => self.remove_nics(before, change.after, macs).await,
            Command::CreateVips(vips) => self.create_vips(before, vips).await,
            Command::RemoveVips(vips) => self.remove_vips(before, vips).await,
            // Every MAC is checked before the first change; the agent rolls back the rest.
            Command::EnableHa(_) => self.enable_ha(change.after).await,
            other => Err(LinkError::Unexpected(other.feature().name()).into()),
        }
    }

    async fn reconcile(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        self.resync(state, true).await.map(|_| ())
    }

    /// The re-apply without removing addresses the state does not know.
    async fn reconcile_keeping(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        self.resync(state, false).await.map(|_| ())
    }

    async fn check_and_repair(
        &mut self,
        state: &DesiredState,
    ) -> Result<Option<String>, BackendError> {
        {
            let missing_before = self.missing.clone();
            let report = self.resync(state, true).await?;
            let mut what = Vec::new();
            if report.added > 0 {
                what.push(format!("{} address(es) missing, put back", report.added));
            }
            if report.removed > 0 {
                what.push(format!("{} unknown address(es) removed", report.removed));
            }
            if report.fixed > 0 {
                what.push(format!(
                    "{} nic setting(s) (name, MTU, up, default route) restored",
                    report.fixed
                ));
            }
            if self.missing != missing_before {
                what.push(if self.missing.is_empty() {
                    "every nic is back".to_string()
                } else {
                    format!("nics missing: {}", self.missing.join("; "))
                });
            }
            Ok((!what.is_empty()).then(|| format!("interfaces drifted: {}", what.join(", "))))
        }
    }
}

impl LinksBackend {
    /// Brings the nics and addresses in line with `state` (with `prune`, removing unknown
    /// addresses of nics whose primary address is known) and reports what it did.
    async fn resync(
        &mut self,
        state: &DesiredState,
        prune: bool,
    ) -> Result<sync::SyncReport, BackendError> {
        self.load_bootstrap();
        let nl = self.netlink()?;
        let dropped = if self.role.carries_data_plane() {
            0
        } else {
            self.drop_master_addresses(&nl, state)
                .await
                .map_err(|e| LinkError::Step {
                    step: "removing the addresses only a master carries",
                    source: e.into(),
                })?
        };
        let wanted = self.wanted(state);
        let opts = SyncOptions {
            prune,
            strict: false,
            scope: None,
        };
        let mut report = sync::sync(&nl, &mut self.announcer, &wanted, &opts)
            .await
            .map_err(|source| LinkError::Step {
                step: "re-applying the interfaces",
                source,
            })?;
        report.removed += dropped;
        self.missing = report.missing.iter().map(|p| p.to_string()).collect();
        if self.missing.is_empty() {
            self.health.clear(HEALTH_NICS);
        } else {
            self.health.set(HEALTH_NICS, self.missing.join("; "));
        }
        tracing::info!(
            nics = wanted.nics.len(),
            added = report.added,
            removed = report.removed,
            fixed = report.fixed,
            missing = report.missing.len(),
            prune,
            "interfaces re-applied"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn bootstrap_nics_are_read_at_each_load_and_an_unreadable_source_is_a_health_problem() {
        let nic = Nic {
            mac: "fa:7e:00:00:00:01".parse().unwrap(),
            ip: "192.168.100.20".parse().unwrap(),
            prefix: crate::state::types::PrefixLen::new(24).unwrap(),
            gateway: None,
            is_default_route: false,
            mtu: None,
            device_name: Some("eth0".into()),
        };
        let readable = Arc::new(AtomicBool::new(true));
        let health = Arc::new(Health::default());
        let (r, n) = (Arc::clone(&readable), nic.clone());
        let mut b = LinksBackend::new(
            Box::new(move || {
                if r.load(Ordering::SeqCst) {
                    Ok(vec![n.clone()])
                } else {
                    Err("reading /s/bootstrap-info.json: permission denied".into())
                }
            }),
            Arc::clone(&health),
        );
        // 1. read: the nics are wanted, health is clear
        b.load_bootstrap();
        assert_eq!(b.bootstrap, std::slice::from_ref(&nic));
        assert!(health.problems().is_empty());
        // 2. unreadable: the problem is reported, the nics last read are kept
        readable.store(false, Ordering::SeqCst);
        b.load_bootstrap();
        assert_eq!(b.bootstrap, [nic]);
        assert_eq!(
            health.problems(),
            [(
                HEALTH_BOOTSTRAP.to_string(),
                "reading /s/bootstrap-info.json: permission denied".to_string()
            )]
        );
        // 3. readable again: cleared
        readable.store(true, Ordering::SeqCst);
        b.load_bootstrap();
        assert!(health.problems().is_empty());
    }
}
