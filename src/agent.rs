//! The single writer: commands that change state are applied one at a time, in arrival order.
//!
//! For each command: `after = desired.apply(cmd)` (pure, validated, computed once; the state's
//! maps are persistent, so the copy is cheap) -> every backend whose parts the command touches
//! makes the system follow the [`Change`] -> the command is journaled durably ->
//! `desired = after` -> reply. A failure at any step leaves both the system and the desired
//! state as they were (the failing backend, when its error says it may have changed
//! something, and the backends that already followed are brought back); the reply says
//! "nothing was changed" exactly when that worked.

use crate::backend::{Backend, BackendError, Engine};
use crate::facts::FactsSource;
use crate::health::Health;
use crate::state::facts::SystemFacts;
use crate::state::ha::Role;
use crate::state::store::{Store, StoreError};
use crate::state::{Change, Command, DesiredState, Feature, Invalid};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, Span};

/// Health source set when the stored state could not be read whole (what was dropped, and
/// that the system is preserved until `/init`).
pub const HEALTH_STATE: &str = "state";
/// Health source prefix of a drift being repaired (`drift:<feature>`).
pub const HEALTH_DRIFT: &str = "drift";
/// Health source while the stored state is being re-applied after a start.
pub const HEALTH_REAPPLY: &str = "startup";
/// Health source set while the state directory refuses writes or a snapshot failed.
pub const HEALTH_STORE: &str = "store";
/// Health source prefix of a backend that could not follow an HA role change (`ha:<feature>`).
pub const HEALTH_HA: &str = "ha";

/// Why a command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The request contradicts itself or the state.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The feature is not part of this agent yet.
    #[error("{path}: {feature} is not supported by this agent yet; nothing was changed")]
    Unsupported {
        /// Feature name.
        feature: &'static str,
        /// The request path.
        path: &'static str,
    },
    /// The kernel or a helper process refused the change. The backend that failed was
    /// brought back when it may have changed something, and the backends that had followed
    /// were; the message says whether the router is as it was, and prints the chain of
    /// causes (this is where it is printed).
    #[error("{}", backend_failure(source, restore.as_deref(), rollback.as_deref()))]
    Backend {
        /// What the backend said (marked unchanged once what it had changed was put back).
        source: BackendError,
        /// Why putting back what the failing backend had changed failed, if it did.
        restore: Option<String>,
        /// Why bringing the others back failed, if it did.
        rollback: Option<String>,
    },
    /// The change was applied but could not be recorded, and was rolled back; `rollback`
    /// says what failed in that, if anything.
    #[error("{}", persist_failure(source, rollback.as_deref()))]
    Persist {
        /// Why the store did not take it.
        source: StoreError,
        /// Why bringing the backends back failed, if it did.
        rollback: Option<String>,
    },
    /// The state directory takes no writes: the command was refused before any change.
    #[error("{0}: nothing was changed")]
    Unwritable(#[source] StoreError),
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// The reply for a backend's refusal: the chain of causes, then whether the router is as it
/// was ("nothing was changed" exactly when it is).
fn backend_failure(source: &BackendError, restore: Option<&str>, rollback: Option<&str>) -> String {
    let mut said = source.report();
    if restore.is_none() && rollback.is_none() && source.left_unchanged() {
        said.push_str("; nothing was changed");
        return said;
    }
    if let Some(restore) = restore {
        said.push_str(&format!(
            "; putting back what it changed failed ({restore})"
        ));
    }
    if let Some(undo) = rollback {
        said.push_str(&format!(
            "; bringing the other parts back failed too ({undo})"
        ));
    }
    said.push_str(
        ": the router may differ from its last acknowledged state until /init or the next repair",
    );
    said
}

/// The reply for a change the store did not take: rolled back, and whether that worked.
fn persist_failure(source: &StoreError, rollback: Option<&str>) -> String {
    let said = crate::error::chain(source);
    match rollback {
        None => format!("could not persist the change, rolled back: {said}; nothing was changed"),
        Some(undo) => format!(
            "could not persist the change: {said}; rolling it back failed ({undo}): the router may differ from its last acknowledged state until /init or the next repair"
        ),
    }
}

/// What readers may see without waiting for the writer.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The uuid `/ping` answers with.
    pub uuid: Option<String>,
    /// Entries by kind (`/metrics`, `/status`).
    pub counts: crate::state::counts::EntryCounts,
    /// Bytes in the current journal, and compactions since the start.
    pub journal: (u64, u64),
    /// This node's HA role (`/ping` `haStatus`, `/syncVpcRouterHa`).
    pub ha_status: Option<Role>,
}

struct Job {
    cmd: Command,
    path: &'static str,
    /// The management node's address, when the request tells it (its callback host).
    origin: Option<std::net::Ipv4Addr>,
    span: Span,
    reply: oneshot::Sender<Result<(), ApplyError>>,
}

/// Upkeep the writer does between commands, when the system drifted (or may have).
enum Upkeep {
    /// Replace what `feature`'s backend owns: it is known to have changed behind our back.
    Repair {
        /// The feature whose backend repairs.
        feature: Feature,
        /// What changed, for health and the log.
        what: String,
    },
    /// Ask backends (all, or one feature's) to compare the system with the state and repair.
    Verify {
        /// Only this feature's backend.
        only: Option<Feature>,
        /// Why now.
        trigger: String,
    },
}

enum Work {
    Command(Job),
    Upkeep(Upkeep, oneshot::Sender<()>),
    /// keepalived decided this node's role (or the agent saw it die: backup).
    Vrrp(Role, String),
    /// `/restartKeepalived`.
    RestartKeepalived(oneshot::Sender<Result<(), ApplyError>>),
}

/// Sends commands to the writer. Cheap to clone.
#[derive(Clone)]
pub struct AgentHandle {
    tx: mpsc::UnboundedSender<Work>,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    /// Jobs sent and not yet taken by the writer.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl AgentHandle {
    /// Queues `cmd` now (fixing its place in the order) and returns a future of its outcome.
    pub fn submit(
        &self,
        cmd: Command,
        path: &'static str,
    ) -> impl std::future::Future<Output = Result<(), ApplyError>> + use<> {
        self.submit_from(cmd, path, None)
    }

    /// [`AgentHandle::submit`] of a command from the management node at `origin`: the rails
    /// then also refuse that address as a guest's.
    pub fn submit_from(
        &self,
        cmd: Command,
        path: &'static str,
        origin: Option<std::net::Ipv4Addr>,
    ) -> impl std::future::Future<Output = Result<(), ApplyError>> + use<> {
        let (reply, rx) = oneshot::channel();
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let queued = self
            .tx
            .send(Work::Command(Job {
                cmd,
                path,
                origin,
                span: Span::current(),
                reply,
            }))
            .is_ok();
        async move {
            if !queued {
                return Err(ApplyError::ShuttingDown);
            }
            rx.await.unwrap_or(Err(ApplyError::ShuttingDown))
        }
    }

    /// Queues a role change keepalived decided (`why` for the log); the writer makes the
    /// node follow it between commands, one change at a time.
    pub fn vrrp(&self, role: Role, why: String) {
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = self.tx.send(Work::Vrrp(role, why));
    }

    /// Restarts keepalived without ever making a second master: the node gives up its data
    /// plane first (when it is master), then keepalived restarts as backup (`nopreempt`).
    pub async fn restart_keepalived(&self) -> Result<(), ApplyError> {
        let (reply, rx) = oneshot::channel();
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tx
            .send(Work::RestartKeepalived(reply))
            .map_err(|_| ApplyError::ShuttingDown)?;
        rx.await.unwrap_or(Err(ApplyError::ShuttingDown))
    }

    /// Queues a repair of what `feature`'s backend owns and waits until it is done.
    pub async fn repair(&self, feature: Feature, what: String) -> Result<(), ApplyError> {
        self.upkeep(Upkeep::Repair { feature, what }).await
    }

    /// Queues a verify (of every backend, or one feature's) and waits until it is done.
    pub async fn verify(&self, only: Option<Feature>, trigger: String) -> Result<(), ApplyError> {
        self.upkeep(Upkeep::Verify { only, trigger }).await
    }

    async fn upkeep(&self, u: Upkeep) -> Result<(), ApplyError> {
        let (done, rx) = oneshot::channel();
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tx
            .send(Work::Upkeep(u, done))
            .map_err(|_| ApplyError::ShuttingDown)?;
        rx.await.map_err(|_| ApplyError::ShuttingDown)
    }

    /// Jobs (commands and upkeep) waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The latest applied state, without waiting for the writer.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }
}

/// The writer task's state, over the backends `B` (the agent's [`Engine`]s, or a test's).
pub struct Agent<B: Backend = Engine> {
    desired: DesiredState,
    store: Store,
    backends: Vec<B>,
    health: Arc<Health>,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    facts: Option<FactsSource>,
    /// The stored state was not read whole: re-applies keep whatever the system has beyond
    /// `desired` ([`Backend::reconcile_keeping`]) until `/init` resends everything.
    preserve: bool,
    /// keepalived's last decision (`None`: none since the start).
    vrrp: Option<Role>,
    /// The role the backends render for: [`Role::of`] the state's HA and `vrrp`.
    role: Role,
}

impl<B: Backend + 'static> Agent<B> {
    /// Creates the writer from loaded state. Call [`Agent::reconcile_all`] before serving.
    /// With `preserve` (a lossy recovery), re-applies add and never remove until `/init`.
    pub fn new(
        desired: DesiredState,
        store: Store,
        backends: Vec<B>,
        health: Arc<Health>,
        preserve: bool,
    ) -> Agent<B> {
        // A node comes up as backup: its HA addresses stay absent until VRRP decides.
        let role = Role::of(desired.ha.as_ref(), None);
        let mut backends = backends;
        for b in &mut backends {
            b.note_role(role);
        }
        let snapshot = Arc::new(RwLock::new(Arc::new(Snapshot {
            uuid: desired.uuid.clone(),
            counts: crate::state::counts::EntryCounts::of(&desired),
            journal: (store.journal_bytes(), store.compactions()),
            ha_status: desired.ha.as_ref().map(|_| role),
        })));
        Agent {
            desired,
            store,
            backends,
            health,
            snapshot,
            facts: None,
            preserve,
            vrrp: None,
            role,
        }
    }

    /// Brings one backend in line with `state`: a full reconcile, or while preserving an
    /// add-only one.
    async fn reconcile_one(
        backend: &mut B,
        state: &DesiredState,
        preserve: bool,
    ) -> Result<(), BackendError> {
        if preserve {
            backend.reconcile_keeping(state).await
        } else {
            backend.reconcile(state).await
        }
    }

    /// Checks every command against the rails of [`SystemFacts`] gathered from `source`.
    pub fn with_facts(mut self, source: FactsSource) -> Agent<B> {
        self.facts = Some(source);
        self
    }

    /// Re-applies the whole desired state through every backend. Failures are reported in
    /// health under `apply:<feature>` and returned, and the others still run.
    pub async fn reconcile_all(&mut self) -> Vec<(Feature, BackendError)> {
        let mut failures = Vec::new();
        if self.preserve {
            tracing::warn!("re-applying without removing anything (stored state not read whole)");
        }
        let (desired, preserve) = (&self.desired, self.preserve);
        // in order; neighbours that re-apply alongside each other run together
        for stage in self
            .backends
            .chunk_by_mut(|a, b| a.reapplies_alongside() && b.reapplies_alongside())
        {
            let results = futures::future::join_all(stage.iter_mut().map(|backend| async {
                let feature = backend.features()[0];
                (
                    feature,
                    Self::reconcile_one(backend, desired, preserve).await,
                )
            }))
            .await;
            for (feature, result) in results {
                let source = format!("apply:{}", feature.name());
                match result {
                    Ok(()) => self.health.clear(&source),
                    Err(e) => {
                        let mut report = e.report();
                        if e.left_unchanged() {
                            report.push_str("; nothing was changed");
                        }
                        tracing::error!(feature = feature.name(), error = %report, "re-apply failed");
                        self.health.set(source, report);
                        failures.push((feature, e));
                    }
                }
            }
        }
        failures
    }

    /// Starts the writer task; it ends when every handle is dropped, after shutting the
    /// backends down.
    pub fn spawn(self) -> (AgentHandle, tokio::task::JoinHandle<()>) {
        self.spawn_with(false)
    }

    /// Starts the writer task, which first re-applies the whole desired state (commands
    /// queue behind it; `/ping` says it is re-applying meanwhile).
    pub fn spawn_reapplying(self) -> (AgentHandle, tokio::task::JoinHandle<()>) {
        self.spawn_with(true)
    }

    fn spawn_with(self, reapply: bool) -> (AgentHandle, tokio::task::JoinHandle<()>) {
        if reapply {
            // Before the task runs: a `/ping` served first must already say so.
            self.health.set(
                HEALTH_REAPPLY,
                format!(
                    "re-applying the stored state ({}); commands wait for it",
                    self.desired.summary()
                ),
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handle = AgentHandle {
            tx,
            snapshot: Arc::clone(&self.snapshot),
            queued: Arc::clone(&queued),
        };
        let task = tokio::spawn(self.run(rx, reapply, queued));
        (handle, task)
    }

    async fn reapply_at_start(&mut self) {
        let span = tracing::info_span!("reapply", state = %self.desired.summary());
        async {
            let started = std::time::Instant::now();
            let failures = self.reconcile_all().await;
            // the re-apply's models and batches are freed: "re-applied" is also "trimmed"
            crate::memory::trim();
            self.health.clear(HEALTH_REAPPLY);
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                failures = failures.len(),
                "re-applied desired state"
            );
        }
        .instrument(span)
        .await;
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Work>,
        reapply: bool,
        queued: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        // A trim once the writer has been idle a moment after a large command: the request
        // body and the HTTP side's buffers are freed only after the reply.
        let mut trim_at: Option<tokio::time::Instant> = None;
        if reapply {
            self.reapply_at_start().await;
            trim_at = Some(tokio::time::Instant::now() + crate::memory::TRIM_SETTLE);
        }
        loop {
            let next = match trim_at {
                Some(at) => tokio::select! {
                    work = rx.recv() => work,
                    _ = tokio::time::sleep_until(at) => {
                        trim_at = None;
                        crate::memory::trim();
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(work) = next else {
                break;
            };
            queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let job = match work {
                Work::Command(job) => job,
                Work::Upkeep(u, done) => {
                    self.upkeep(u).await;
                    let _ = done.send(());
                    continue;
                }
                Work::Vrrp(role, why) => {
                    let span = tracing::info_span!("ha", vrrp = role.wire(), %why);
                    self.transition(role).instrument(span).await;
                    continue;
                }
                Work::RestartKeepalived(reply) => {
                    let span = tracing::info_span!("apply", path = "/restartKeepalived");
                    let r = self.restart_keepalived().instrument(span).await;
                    let _ = reply.send(r);
                    continue;
                }
            };
            let span = tracing::info_span!(parent: &job.span, "apply", path = job.path);
            let started = std::time::Instant::now();
            let result = self
                .handle(&job.cmd, job.path, job.origin)
                .instrument(span.clone())
                .await;
            span.in_scope(|| match &result {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "refused"),
            });
            let _ = job.reply.send(result);
            if started.elapsed() >= crate::memory::TRIM_AFTER {
                // a large command freed its model and batch: give the heap back, and again
                // once its body is freed too
                crate::memory::trim();
                trim_at = Some(tokio::time::Instant::now() + crate::memory::TRIM_SETTLE);
            }
            if self.store.wants_compaction() {
                match self.store.compact(&self.desired) {
                    Ok(()) => {
                        self.health.clear(HEALTH_STORE);
                        self.publish();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "snapshot failed; the journal keeps growing");
                        self.health.set(
                            HEALTH_STORE,
                            format!("snapshot failed, journal growing: {e}"),
                        );
                    }
                }
            }
        }
        if self.role == Role::Master {
            // keepalived stops with the agent and the peer takes over: leave nothing behind.
            self.transition(Role::Backup).await;
        }
        for backend in &mut self.backends {
            backend.shutdown().await;
        }
        tracing::info!("writer stopped");
    }

    async fn handle(
        &mut self,
        cmd: &Command,
        path: &'static str,
        origin: Option<std::net::Ipv4Addr>,
    ) -> Result<(), ApplyError> {
        let started = std::time::Instant::now();
        let mut facts = match &self.facts {
            Some(source) if SystemFacts::needed(cmd) => source.gather(cmd),
            _ => SystemFacts::default(),
        };
        facts.mgmt_nodes.extend(origin);
        self.desired.check_with(cmd, &facts)?;
        // Refuse before any change when nothing could be recorded (read-only or full
        // directory); each command tries again, so a remount or freed space heals it.
        if let Err(e) = self.store.ensure_writable(&self.desired) {
            self.health.set(
                HEALTH_STORE,
                format!("{e}; commands that change state are refused"),
            );
            return Err(ApplyError::Unwritable(e));
        }
        let feature = cmd.feature();
        if feature != Feature::Core
            && !self
                .backends
                .iter()
                .any(|b| b.features().contains(&feature))
        {
            return Err(ApplyError::Unsupported {
                feature: feature.name(),
                path,
            });
        }
        let checked = started.elapsed();
        let mut after = self.desired.clone();
        let parts = after.apply_checked(cmd);
        let computed = started.elapsed();
        let mut change = Change::new(&self.desired, &after, cmd, parts);
        change.preserve = self.preserve;
        // Configuring HA makes a node without a VRRP decision a backup (and the reverse).
        let role = Role::of(after.ha.as_ref(), self.vrrp);
        let role_before = self.role;
        if role != role_before {
            for b in &mut self.backends {
                b.note_role(role);
            }
        }
        // Every backend the command concerns follows, in order; on a failure those that
        // already did go back to the state before.
        let mut followed: Vec<usize> = Vec::new();
        let mut failure: Option<(usize, BackendError)> = None;
        let mut spent: Vec<(&'static str, std::time::Duration)> = Vec::new();
        for (i, backend) in self.backends.iter_mut().enumerate() {
            if !backend.concerns(parts) {
                continue;
            }
            let t = std::time::Instant::now();
            let result = backend.apply(&change).await;
            spent.push((backend.features()[0].name(), t.elapsed()));
            match result {
                Ok(()) => followed.push(i),
                Err(e) => {
                    failure = Some((i, e));
                    break;
                }
            }
        }
        if let Some((failed, mut source)) = failure {
            if role != role_before {
                for b in &mut self.backends {
                    b.note_role(role_before);
                }
            }
            // A backend that may have changed part of the system goes back first.
            let mut restore = None;
            if !source.left_unchanged() {
                restore = self.roll_back(&[failed]).await;
                if restore.is_none() {
                    source = source.unchanged();
                }
            }
            let rollback = self.roll_back(&followed).await;
            return Err(ApplyError::Backend {
                source,
                restore,
                rollback,
            });
        }
        let persist_started = std::time::Instant::now();
        let persisted = if self.store.needs_snapshot() {
            // The journal holds a record that could not be taken back: replace it by a
            // snapshot of the state before this command, then journal the command.
            self.store
                .compact(&self.desired)
                .and_then(|()| self.store.append(cmd))
        } else {
            self.store.append(cmd)
        };
        if let Err(e) = persisted {
            if e.is_unwritable() {
                self.health.set(
                    HEALTH_STORE,
                    format!("{e}; the last command was refused and rolled back"),
                );
            }
            if role != role_before {
                for b in &mut self.backends {
                    b.note_role(role_before);
                }
            }
            let rollback = self.roll_back(&followed).await;
            if let Some(undo) = &rollback {
                tracing::error!(%undo, "rollback after a failed persist failed");
            }
            return Err(ApplyError::Persist {
                source: e,
                rollback,
            });
        }
        self.health.clear(HEALTH_STORE);
        let persist = persist_started.elapsed();
        self.desired = after;
        self.role = role;
        let backends: Vec<String> = spent
            .iter()
            .map(|(name, d)| format!("{name}={}us", d.as_micros()))
            .collect();
        tracing::info!(
            check_us = checked.as_micros() as u64,
            state_us = (computed - checked).as_micros() as u64,
            backends = %backends.join(","),
            persist_us = persist.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "applied"
        );
        if matches!(cmd, Command::Init { .. }) {
            // The management node has taken charge again: whatever we lost, it now resends.
            if self.preserve {
                tracing::info!(
                    "/init: the system follows the desired state again, removals included"
                );
            }
            self.preserve = false;
            self.health.clear(HEALTH_STATE);
            let failures = self.reconcile_all().await;
            if let Some((feature, e)) = failures.into_iter().next() {
                tracing::warn!(feature = feature.name(), error = %e.report(), "re-apply at /init failed");
            }
        }
        self.publish();
        Ok(())
    }

    /// Brings the backends at `indexes` back to the desired state (a command they followed
    /// failed further on). Failures go to health and are returned.
    async fn roll_back(&mut self, indexes: &[usize]) -> Option<String> {
        let mut failed = Vec::new();
        for &i in indexes.iter().rev() {
            let backend = &mut self.backends[i];
            if let Err(undo) = Self::reconcile_one(backend, &self.desired, self.preserve).await {
                let name = backend.features()[0].name();
                let undo = undo.report();
                tracing::error!(backend = name, error = %undo, "rollback failed");
                self.health.set(format!("apply:{name}"), undo.clone());
                failed.push(format!("{name}: {undo}"));
            }
        }
        (!failed.is_empty()).then(|| failed.join("; "))
    }

    async fn upkeep(&mut self, u: Upkeep) {
        match u {
            Upkeep::Repair { feature, what } => {
                let span = tracing::info_span!("repair", feature = feature.name());
                self.repair(feature, &what).instrument(span).await;
            }
            Upkeep::Verify { only, trigger } => {
                let span = tracing::info_span!("verify", %trigger);
                self.verify(only).instrument(span).await;
            }
        }
    }

    /// Replaces what `feature`'s backend owns from the desired state; `/ping` shows the drift
    /// until the repair is done.
    async fn repair(&mut self, feature: Feature, what: &str) {
        let Some(i) = self
            .backends
            .iter()
            .position(|b| b.features().contains(&feature))
        else {
            return;
        };
        let source = format!("{HEALTH_DRIFT}:{}", feature.name());
        tracing::warn!(%what, "drift: repairing");
        self.health.set(&source, format!("{what}; repairing"));
        let started = std::time::Instant::now();
        let preserve = self.preserve;
        match Self::reconcile_one(&mut self.backends[i], &self.desired, preserve).await {
            Ok(()) => {
                self.health.clear(&source);
                let ms = started.elapsed().as_millis();
                tracing::warn!(%what, elapsed_ms = ms as u64, "drift repaired");
                self.health
                    .record_drift(format!("{what}; repaired in {ms} ms"));
            }
            Err(e) => {
                let e = e.report();
                tracing::error!(%what, error = %e, "drift repair failed");
                self.health
                    .set(source, format!("{what}; repair failed: {e}"));
            }
        }
    }

    /// Every backend (or one feature's) compares the system with the desired state and
    /// repairs what differs. A repair of the interfaces brings the others along (names and
    /// addresses feed their renderings).
    async fn verify(&mut self, only: Option<Feature>) {
        if self.preserve {
            // A verify prunes what the state does not hold, and the state is known to be
            // incomplete until /init: leave the system as it is.
            tracing::debug!("verify skipped while preserving the system until /init");
            return;
        }
        let mut links_changed = None;
        for i in 0..self.backends.len() {
            let features = self.backends[i].features();
            if only.is_some_and(|f| !features.contains(&f)) {
                continue;
            }
            let source = format!("{HEALTH_DRIFT}:{}", features[0].name());
            match self.backends[i].check_and_repair(&self.desired).await {
                Ok(None) => self.health.clear(&source),
                Ok(Some(what)) => {
                    self.health.clear(&source);
                    tracing::warn!(%what, "drift repaired");
                    self.health.record_drift(format!("{what}; repaired"));
                    if features.contains(&Feature::Links) {
                        links_changed = Some(i);
                    }
                }
                Err(e) => {
                    let e = e.report();
                    tracing::error!(error = %e, "verify failed");
                    self.health.set(source, format!("verify failed: {e}"));
                }
            }
        }
        if let Some(i) = links_changed {
            self.reconcile_others(Some(i)).await;
        }
    }

    async fn reconcile_others(&mut self, except: Option<usize>) {
        for (i, backend) in self.backends.iter_mut().enumerate() {
            if Some(i) == except {
                continue;
            }
            let source = format!("apply:{}", backend.features()[0].name());
            match Self::reconcile_one(backend, &self.desired, self.preserve).await {
                Ok(()) => self.health.clear(&source),
                Err(e) => self.health.set(source, e.report()),
            }
        }
    }

    /// keepalived decided `vrrp`: every backend follows the node's new role, one change at a
    /// time and idempotently. Becoming master, the HA engine goes first (conntrackd commits
    /// the peer's flows before the addresses answer); becoming backup, it goes last (the
    /// addresses are gone before anything else).
    async fn transition(&mut self, vrrp: Role) {
        self.vrrp = Some(vrrp);
        let role = Role::of(self.desired.ha.as_ref(), self.vrrp);
        if role == self.role {
            tracing::debug!(role = role.wire(), "ha: role unchanged");
            return;
        }
        let started = std::time::Instant::now();
        // Becoming master: conntrackd's commit, then the forward chain opened, then the
        // addresses and the rest. Becoming backup: the forward chain closed first (at once:
        // removing thousands of addresses takes a while, and the node must not serve hosts
        // that still send to it meanwhile), then the addresses and the rest, conntrackd last.
        let promote = role == Role::Master;
        let rank = |b: &B| {
            let f = b.features();
            match (f.contains(&Feature::Ha), f.contains(&Feature::Nat)) {
                (true, _) if promote => 0,
                (true, _) => 3,
                (_, true) => 1,
                _ => 2,
            }
        };
        let mut order: Vec<usize> = (0..self.backends.len()).collect();
        order.sort_by_key(|&i| rank(&self.backends[i]));
        for i in order {
            let backend = &mut self.backends[i];
            let name = backend.features()[0].name();
            let source = format!("{HEALTH_HA}:{name}");
            match backend.set_role(&self.desired, role).await {
                Ok(()) => self.health.clear(&source),
                Err(e) => {
                    let e = e.report();
                    tracing::error!(backend = name, error = %e, "ha: role change failed");
                    self.health
                        .set(source, format!("becoming {}: {e}", role.wire()));
                }
            }
        }
        tracing::info!(
            from = self.role.wire(),
            to = role.wire(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "ha: role changed"
        );
        self.role = role;
        self.publish();
    }

    /// `/restartKeepalived`: gives up the data plane first when master, then restarts
    /// keepalived (which comes back as backup and, `nopreempt`, stays so).
    async fn restart_keepalived(&mut self) -> Result<(), ApplyError> {
        if self.desired.ha.is_none() {
            return Err(Invalid::new(
                "/restartKeepalived",
                "HA is not configured on this router (no /enableVyosha yet); nothing was changed",
            )
            .into());
        }
        if self.role == Role::Master {
            self.transition(Role::Backup).await;
        }
        for backend in &mut self.backends {
            backend
                .restart_ha(&self.desired)
                .await
                .map_err(|source| ApplyError::Backend {
                    source,
                    restore: None,
                    rollback: None,
                })?;
        }
        Ok(())
    }

    fn publish(&self) {
        let snap = Arc::new(Snapshot {
            uuid: self.desired.uuid.clone(),
            counts: crate::state::counts::EntryCounts::of(&self.desired),
            journal: (self.store.journal_bytes(), self.store.compactions()),
            ha_status: self.desired.ha.as_ref().map(|_| self.role),
        });
        match self.snapshot.write() {
            Ok(mut s) => *s = snap,
            Err(e) => *e.into_inner() = snap,
        }
    }
}
