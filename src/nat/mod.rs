//! NAT (SNAT, EIP, port forwarding) and the appliance firewall on nftables, in two tables of
//! our own (`ip vr_nat`, `inet vr_filter`) built around maps and sets, so a command and a
//! forwarded packet cost the same at 10 or 10,000 entries.
//!
//! desired state + [`inputs::Inputs`] -> [`model`] (entries bound to nic names) -> [`render`]
//! (nft text) / [`plan`] (what one command changes) -> [`nft`] (one transaction) ->
//! [`conntrack`] (forget flows of removed or remapped entries).

pub mod conntrack;
pub mod error;
pub mod flows;
pub mod inputs;
pub mod mgmt_guard;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod plan;
pub mod render;
pub mod sets;

use crate::backend::{Backend, BackendError};
use crate::config::Config;
use crate::health::Health;
use crate::state::ha::Role;
use crate::state::model::Eip;
use crate::state::{Change, Command, DesiredState, Feature, Parts};
pub use error::NatError;
use inputs::Inputs;
use nft::NftError;
use plan::Plan;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Health source while entries are left out for missing nics.
pub const HEALTH_SKIPPED: &str = "nat";
/// Health source while the guest nic set could not follow a change of nics or DHCP hosts.
pub const HEALTH_GUESTS: &str = "nat:guest nics";

/// The nftables backend of the NAT and firewall features.
pub struct NatBackend {
    mgmt_nic: String,
    agent_ports: Vec<u16>,
    health: Arc<Health>,
    /// The last replace left entries out: the tables may lack what the state holds, so the
    /// next change replaces them again instead of patching.
    degraded: bool,
    /// The count of foreign changes of our tables ([`crate::drift::nft_events::foreign_generation`])
    /// at which our sets last held exactly the desired state's elements (after a full
    /// re-apply, kept by every change of ours since). While it is current, syncs send the
    /// difference between the states instead of dumping the sets.
    known_at: Option<u64>,
    /// The guest nic set last installed (DHCP and DNS are accepted there). Commands of other
    /// features (DHCP hosts, nics) change it without reaching this backend, so every change
    /// of ours brings it up to date.
    guest_ifs: Option<BTreeSet<String>>,
    /// The nfnetlink socket of element updates, opened on first use.
    nfnl: Option<netlink::Nfnl>,
    /// Guest nics (as the desired state names them) last seen by [`Backend::observe`], to
    /// skip unchanged states cheaply.
    observed_guests: Option<crate::state::guests::GuestNics>,
    /// The index of our VIPs' flows (conntrack events), started on first use.
    flows: Option<Arc<flows::Tracker>>,
    /// Whether to keep that index (`--conntrack-events`).
    conntrack_events: bool,
    /// The index failed to start: when to try again (not at every command).
    flows_retry_at: Option<std::time::Instant>,
    /// Whether a management nic is known (else no drop policies).
    guard: mgmt_guard::Guard,
    /// Counts nft transactions and nfnetlink batches.
    metrics: crate::metrics::Metrics,
    /// The node's HA role: a backup's forward chain drops everything.
    role: Role,
}

impl NatBackend {
    /// A backend for this agent's settings.
    pub fn new(config: &Config, health: Arc<Health>) -> NatBackend {
        let mut b = NatBackend::with(
            config.mgmt_nic.clone(),
            vec![config.vr_listen.port(), config.appliance_listen.port()],
            health,
        );
        b.conntrack_events = config.conntrack_events;
        b.guard = mgmt_guard::Guard::new(
            config.mgmt_nic.clone(),
            Some(crate::bootstrap::cache_path(&config.state_dir)),
            Arc::clone(&b.health),
        );
        b
    }

    /// A backend with this management nic and these agent ports.
    pub fn with(mgmt_nic: String, agent_ports: Vec<u16>, health: Arc<Health>) -> NatBackend {
        NatBackend {
            guard: mgmt_guard::Guard::new(mgmt_nic.clone(), None, Arc::clone(&health)),
            mgmt_nic,
            agent_ports,
            health,
            degraded: false,
            known_at: None,
            guest_ifs: None,
            nfnl: None,
            observed_guests: None,
            flows: None,
            conntrack_events: true,
            flows_retry_at: None,
            metrics: crate::metrics::Metrics::default(),
            role: Role::NoHa,
        }
    }

    /// Counts into `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> NatBackend {
        self.metrics = metrics;
        self
    }

    /// [`nft::apply`], counted.
    async fn nft(&self, text: &str) -> Result<(), NftError> {
        let r = nft::apply(text).await;
        self.metrics.nft_transaction(r.is_ok());
        r
    }

    /// Points the flow index at the VIPs of `state` and `extra` (starting it if needed).
    fn watch_flows(&mut self, state: &DesiredState, extra: &[Ipv4Addr]) {
        if !self.conntrack_events {
            return;
        }
        if self.flows.is_none()
            && self
                .flows_retry_at
                .is_some_and(|at| std::time::Instant::now() < at)
        {
            // the index could not start a moment ago: not again for every command
            return;
        }
        let vips: std::collections::HashSet<Ipv4Addr> = state
            .eips
            .values()
            .map(|e| e.vip_ip)
            .chain(state.port_forwards.values().map(|pf| pf.vip_ip))
            .chain(extra.iter().copied())
            .collect();
        match &self.flows {
            Some(t) => t.watch(vips),
            None => match flows::Tracker::start(vips) {
                Ok(t) => {
                    self.flows = Some(t);
                    self.flows_retry_at = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no conntrack flow index; deletions use dumps (retried in a minute)");
                    self.flows_retry_at =
                        Some(std::time::Instant::now() + std::time::Duration::from_secs(60));
                }
            },
        }
    }

    /// What the renderer needs from the system: nic names and the view of the addresses
    /// (kept current by notifications: no dump per command, whatever the number of VIPs).
    fn inputs(&self, state: &DesiredState) -> Result<Inputs, NatError> {
        let system = crate::link::view::current().map_err(NatError::Nics)?;
        Ok(Inputs {
            names: system.names(),
            system: Some(system),
            mgmt_nic: self.mgmt_nic.clone(),
            agent_ports: self.agent_ports.clone(),
            mgmt_unknown: self.guard.open(),
            ha_standby: state.ha.is_some() && !self.role.carries_data_plane(),
            ..Inputs::default()
        })
    }

    /// Rewrites the forward chain for this node's HA role (one small transaction: a backup
    /// drops every forwarded packet, a master forwards as usual).
    async fn follow_role(&mut self, state: &DesiredState) -> Result<(), NatError> {
        let Some(ha) = &state.ha else {
            return Ok(());
        };
        let names = crate::link::view::current()
            .map_err(NatError::Nics)?
            .names();
        let rs = model::Ruleset {
            mgmt_unknown: self.guard.open(),
            ha: Some(model::HaPeer {
                nic: crate::link::system::name_of(&names, ha.heartbeat_mac)
                    .unwrap_or_default()
                    .to_string(),
                peer: ha.peer_ip,
                standby: !self.role.carries_data_plane(),
            }),
            ..model::Ruleset::default()
        };
        let text = render::chain_rewrite(model::FILTER, "forward", &render::forward_rules(&rs));
        self.nft(&text).await.map_err(NatError::Role)
    }

    fn note_skipped(&mut self, plan: &Plan) {
        if !plan.full {
            return;
        }
        self.degraded = !plan.skipped.is_empty();
        if plan.skipped.is_empty() {
            self.health.clear(HEALTH_SKIPPED);
        } else {
            let reasons: Vec<String> = plan.skipped.iter().map(ToString::to_string).collect();
            self.health.set(
                HEALTH_SKIPPED,
                format!("left out for missing nics: {}", reasons.join("; ")),
            );
        }
    }

    /// Runs a plan's transaction: element changes over nfnetlink (no process), the rest
    /// through `nft`. A socket problem falls back to `nft`; a refusal is returned.
    async fn transact(&mut self, p: &Plan) -> Result<(), NatError> {
        if let Some(change) = &p.elements {
            self.open_nfnl();
            if let Some(sock) = self.nfnl.as_mut() {
                let sent = match (change.flush.is_empty(), change.deletes.is_empty()) {
                    // a sync: only the difference to what the sets hold goes to the kernel
                    (false, true) => replace_contents(sock, change).map(drop),
                    _ => sock.apply(&change.flush, &change.deletes, &change.adds),
                };
                self.metrics.netlink_batch(sent.is_ok());
                match sent {
                    Ok(()) => return Ok(()),
                    Err(refused @ netlink::NfnlError::Refused { .. }) => {
                        return Err(refused.into());
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::error::chain(&e), "nfnetlink failed; using nft");
                        self.nfnl = None;
                    }
                }
            }
        }
        Ok(self.nft(&p.nft()).await?)
    }

    /// The guest nic set (DHCP and DNS accepted there) `after` calls for, when it differs from
    /// the one installed.
    fn guest_ifs_changed(&self, after: &DesiredState, inputs: &Inputs) -> Option<BTreeSet<String>> {
        let now = model::guest_ifs(&after.guest_nics(), inputs);
        (self.guest_ifs.as_ref() != Some(&now)).then_some(now)
    }

    /// True while our sets are known to hold exactly the state the agent last applied.
    fn sets_known(&self) -> bool {
        !self.degraded
            && self.known_at.is_some()
            && self.known_at == crate::drift::nft_events::foreign_generation()
    }

    async fn change(
        &mut self,
        before: &DesiredState,
        after: &DesiredState,
        cmd: &Command,
    ) -> Result<(), NatError> {
        let known = self.sets_known();
        let r = self.change_sets(before, after, cmd, known).await;
        if r.is_err() || !known {
            // what a failed or dump-based change left in the other sets is not known
            self.known_at = None;
        }
        r
    }

    async fn change_sets(
        &mut self,
        before: &DesiredState,
        after: &DesiredState,
        cmd: &Command,
        known: bool,
    ) -> Result<(), NatError> {
        let cmd_eips: Vec<&Eip> = match cmd {
            Command::CreateEip(e) | Command::RemoveEip(e) => vec![e],
            Command::SyncEips(new) => new.iter().collect(),
            _ => Vec::new(),
        };
        let replaces =
            self.degraded || matches!(cmd, Command::SyncEips(_) | Command::SyncPortForwards(_));
        let mut cmd_vips: Vec<Ipv4Addr> = cmd_eips.iter().map(|e| e.vip_ip).collect();
        match cmd {
            Command::CreatePortForwards(pfs) | Command::SyncPortForwards(pfs) => {
                cmd_vips.extend(pfs.iter().map(|pf| pf.vip_ip));
            }
            _ => {}
        }
        match (&self.flows, replaces) {
            // a command adds its VIPs to those watched, at a cost that does not grow with them
            (Some(t), false) => t.watch_also(&cmd_vips),
            _ => self.watch_flows(before, &cmd_vips),
        }
        let mut inputs = self.inputs(before)?;
        inputs.sets_hold_before = known;
        let mut p = plan::plan(before, after, cmd, &inputs)?;
        if self.degraded && !p.full && p.has_work() {
            p = replace_plan(before, after, cmd, &inputs)?;
        }
        if p.guest_ifs.is_none()
            && let Some(now) = self.guest_ifs_changed(after, &inputs)
        {
            // the set rewrite is not an element change: this one goes through nft
            p.text = p.nft();
            p.elements = None;
            p.text.push_str(&render::guest_ifs_rewrite(&now));
            p.guest_ifs = Some(now);
        }
        if p.has_work() {
            let elements = p
                .elements
                .as_ref()
                .map_or(0, |c| c.deletes.len() + c.adds.len());
            if p.text.len() <= 4096 && elements <= 64 {
                tracing::debug!(full = p.full, nft = %p.nft(), "nft transaction");
            } else {
                tracing::debug!(
                    full = p.full,
                    bytes = p.text.len(),
                    elements,
                    "nft transaction"
                );
            }
            if let Err(e) = self.transact(&p).await {
                if p.full {
                    return Err(e);
                }
                // Our tables may have drifted from the state (changed by hand): replace them.
                tracing::warn!(error = %crate::error::chain(&e), "element update refused; replacing our tables");
                let full = replace_plan(before, after, cmd, &inputs)?;
                if let Err(replace) = self.nft(&full.text).await {
                    // the first refusal says what is wrong, unless the replace may have
                    // changed the tables
                    return Err(if replace.left_unchanged() {
                        e
                    } else {
                        replace.into()
                    });
                }
                p.full = true;
                p.skipped = full.skipped;
                p.guest_ifs = full.guest_ifs;
            }
        }
        self.note_skipped(&p);
        if p.guest_ifs.is_some() {
            self.guest_ifs = p.guest_ifs.take();
        }
        let problems = conntrack::run(&p.flush, self.flows.clone()).await;
        for problem in problems {
            tracing::warn!(%problem, "stale flows may keep their old translation");
        }
        Ok(())
    }
}

impl NatBackend {
    /// Re-applies the whole state in two transactions, neither of which leaves the data plane
    /// empty: the rules of both tables rewritten in place through nft (the sets keep their
    /// elements; tables missing are created), then every set's contents replaced by one
    /// nfnetlink batch (flush and add in one transaction). An nft text of 100,000 elements
    /// takes seconds to parse; the batch a fraction of that. `None` when either step failed
    /// (nothing of that step applied; the caller then replaces both tables through nft).
    async fn load_split(&mut self, state: &DesiredState, inputs: &Inputs) -> Option<Plan> {
        let found = match nft::ours().await {
            Ok(ours) => ours.chains,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot list our chains; using the full nft path");
                return None;
            }
        };
        let (p, change) = plan::full_split(state, inputs, &found);
        let rules = std::time::Instant::now();
        if let Err(e) = self.nft(&p.text).await {
            tracing::warn!(error = %crate::error::chain(&e), "rules in place refused; using the full nft path");
            return None;
        }
        let rules_ms = rules.elapsed().as_millis() as u64;
        self.open_nfnl();
        let sock = self.nfnl.as_mut()?;
        let elements = std::time::Instant::now();
        let sent = replace_contents(sock, &change);
        self.metrics.netlink_batch(sent.is_ok());
        match sent {
            Ok((deleted, added)) => {
                tracing::debug!(
                    rules_ms,
                    elements = change.adds.len(),
                    deleted,
                    added,
                    elements_ms = elements.elapsed().as_millis() as u64,
                    "rules in place, set contents replaced"
                );
                Some(p)
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "element batch refused; using the full nft path");
                self.nfnl = None;
                None
            }
        }
    }
}

/// Makes the sets `change` flushes hold exactly its adds, by a dump and a diff (one
/// transaction of deletes and adds; flushing sets of concatenated ranges is quadratic in the
/// kernel). Returns (deleted, added).
fn replace_contents(
    sock: &mut netlink::Nfnl,
    change: &plan::ElementChange,
) -> Result<(usize, usize), netlink::NfnlError> {
    let specs = change
        .flush
        .iter()
        .map(|(table, set)| netlink::batch::spec_of(table, set))
        .collect::<Result<Vec<_>, _>>()?;
    sock.replace_contents(&specs, &change.adds)
}

/// A full replace with the state after `cmd`.
fn replace_plan(
    before: &DesiredState,
    after: &DesiredState,
    cmd: &Command,
    inputs: &Inputs,
) -> Result<Plan, NatError> {
    let flush = plan::plan(before, after, cmd, inputs)?.flush;
    let mut p = plan::full(after, inputs);
    p.flush = flush;
    Ok(p)
}

impl Backend for NatBackend {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Nat, Feature::Firewall]
    }

    /// Its tables and sets, nothing of dnsmasq's (the load balancer's listener set is
    /// also written by the load balancer, which re-applies after it).
    fn reapplies_alongside(&self) -> bool {
        true
    }

    /// Our tables absent (a fresh boot): the full replace, nothing to wipe. Present: the
    /// state's set and map elements are added in one transaction and nothing is deleted (rules
    /// of chains are left as they are); if the kernel refuses (an element holds another value),
    /// the tables are left exactly as they are and the refusal is returned for health.
    fn concerns(&self, parts: Parts) -> bool {
        // nics: names and addresses bind every entry; DHCP hosts: the guest nic set
        parts.intersects(
            Parts::NICS
                | Parts::SNATS
                | Parts::EIPS
                | Parts::PORT_FORWARDS
                | Parts::FIREWALL
                | Parts::DHCP_HOSTS
                | Parts::HA,
        )
    }

    async fn reconcile_keeping(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        {
            // elements beyond the state are kept: the sets are not known to hold it exactly
            self.known_at = None;
            let present = nft::ours().await.map_err(NatError::List)?;
            if present.tables.is_empty() {
                return self.reconcile(state).await;
            }
            let started = std::time::Instant::now();
            let inputs = self.inputs(state)?;
            let (rs, skipped) = model::resolve(state, &inputs);
            let adds: Vec<model::Elem> = rs.elements.into_iter().collect();
            tracing::debug!(
                model_ms = started.elapsed().as_millis() as u64,
                "stored state resolved"
            );
            let left_as_they_are = |e: NatError| NatError::Keeping {
                elements: adds.len(),
                source: Box::new(e),
            };
            // one nfnetlink transaction adding what a dump of the sets lacks; through nft
            // only when the socket fails
            self.open_nfnl();
            let specs: Vec<&sets::SetSpec> = sets::SETS.iter().collect();
            let sent = match self.nfnl.as_mut().map(|s| s.add_missing(&specs, &adds)) {
                Some(Ok(added)) => {
                    tracing::debug!(added, "elements the kernel lacked added");
                    true
                }
                Some(Err(refused @ netlink::NfnlError::Refused { .. })) => {
                    return Err(left_as_they_are(refused.into()).into());
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %crate::error::chain(&e), "nfnetlink failed; using nft");
                    self.nfnl = None;
                    false
                }
                None => false,
            };
            if !sent && !adds.is_empty() {
                let text = render::element_ops(&[], &[], &adds);
                self.nft(&text)
                    .await
                    .map_err(|e| left_as_they_are(e.into()))?;
            }
            tracing::info!(
                elements = adds.len(),
                skipped = skipped.len(),
                "nat and firewall elements added; nothing removed"
            );
            Ok(())
        }
    }

    fn note_role(&mut self, role: Role) {
        self.role = role;
    }

    async fn set_role(&mut self, state: &DesiredState, role: Role) -> Result<(), BackendError> {
        self.role = role;
        Ok(self.follow_role(state).await?)
    }

    async fn apply(&mut self, change: &Change<'_>) -> Result<(), BackendError> {
        if change.touches(Parts::NICS | Parts::HA) {
            // Names and addresses may have moved (or the HA peer's accepts): every entry
            // binds anew.
            return if change.preserve {
                self.reconcile_keeping(change.after).await
            } else {
                self.reconcile(change.after).await
            };
        }
        if !change.touches(Parts::SNATS | Parts::EIPS | Parts::PORT_FORWARDS | Parts::FIREWALL) {
            // Only the DHCP hosts changed: the nics they use may open or close.
            return self.follow_guests(change.after).await;
        }
        Ok(self.change(change.before, change.after, change.cmd).await?)
    }

    async fn check_and_repair(
        &mut self,
        state: &DesiredState,
    ) -> Result<Option<String>, BackendError> {
        {
            if self.guard.refresh() {
                self.reconcile(state).await?;
                return Ok(Some(self.guard.describe()));
            }
            // Changes inside our tables are caught at once through notifications; this safety
            // net checks that the tables themselves are there.
            // (`nft list chains`: `nft list tables` reads every element first)
            let present = nft::ours().await.map_err(NatError::List)?;
            let missing: Vec<String> = [model::NAT, model::FILTER]
                .into_iter()
                .filter(|t| !present.tables.contains(t))
                .map(|t| format!("table {t}"))
                .collect();
            if missing.is_empty() {
                return Ok(None);
            }
            self.reconcile(state).await?;
            Ok(Some(format!(
                "nftables: {} missing, re-created",
                missing.join(" and ")
            )))
        }
    }

    async fn reconcile(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        {
            // read before the sets are written: a foreign change during the re-apply makes
            // the next command dump the sets again
            let generation = crate::drift::nft_events::foreign_generation();
            self.known_at = None;
            self.guard.refresh();
            let inputs = self.inputs(state)?;
            self.watch_flows(state, &[]);
            let started = std::time::Instant::now();
            let split = self.load_split(state, &inputs).await;
            let loaded_by = if split.is_some() {
                "nft rules in place + one nfnetlink set batch"
            } else {
                "nft"
            };
            let p = match split {
                Some(p) => p,
                None => {
                    let p = plan::full(state, &inputs);
                    self.nft(&p.text).await.map_err(NatError::Reapply)?;
                    p
                }
            };
            self.note_skipped(&p);
            self.guest_ifs = p.guest_ifs;
            if p.skipped.is_empty() {
                self.known_at = generation;
            }
            tracing::info!(
                eips = state.eips.len(),
                port_forwards = state.port_forwards.len(),
                snats = state.snats.len(),
                firewall_rules = state.firewall.len(),
                skipped = p.skipped.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                loaded_by,
                "nat and firewall tables replaced"
            );
            Ok(())
        }
    }
}

impl NatBackend {
    /// Opens the nfnetlink socket of element updates if it is not open (callers fall back to
    /// nft when it cannot be).
    fn open_nfnl(&mut self) {
        if self.nfnl.is_none() {
            self.nfnl = netlink::Nfnl::open()
                .map_err(
                    |e| tracing::warn!(error = %crate::error::chain(&e), "no nfnetlink socket"),
                )
                .ok();
        }
    }

    /// Brings the guest nic set (DHCP and DNS accepted there) in line with `after`, whose
    /// DHCP hosts changed.
    async fn follow_guests(&mut self, after: &DesiredState) -> Result<(), BackendError> {
        let guests = after.guest_nics();
        if self.observed_guests.as_ref() == Some(&guests) {
            return Ok(());
        }
        let system = crate::link::view::current().map_err(NatError::Nics)?;
        let inputs = Inputs {
            names: system.names(),
            system: Some(system),
            ..Inputs::default()
        };
        if let Some(now) = self.guest_ifs_changed(after, &inputs) {
            self.nft(&render::guest_ifs_rewrite(&now))
                .await
                .map_err(NatError::GuestNics)?;
            tracing::info!(guest_nics = ?now, "guest nics updated");
            self.guest_ifs = Some(now);
        }
        self.health.clear(HEALTH_GUESTS);
        self.observed_guests = Some(guests);
        Ok(())
    }
}
