//! The single writer: commands that change state are applied one at a time, in arrival order.
//!
//! For each command: `next = desired.apply(cmd)` (pure, validated) -> the feature's backend
//! makes the system follow -> the command is journaled durably -> `desired = next` -> reply.
//! A failure at any step leaves both the system and the desired state as they were.

use crate::backend::{Backend, BackendError};
use crate::health::Health;
use crate::state::store::{Store, StoreError};
use crate::state::{Command, DesiredState, Feature, Invalid};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, Span};

/// Health source set when the stored state could not be read whole (what was dropped, and
/// that the system is preserved until `/init`).
pub const HEALTH_STATE: &str = "state";
/// Health source set while the state directory refuses writes or a snapshot failed.
pub const HEALTH_STORE: &str = "store";

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
    /// The kernel or a helper process refused the change.
    #[error("{0}")]
    Backend(#[from] BackendError),
    /// The change was applied but could not be recorded, and was rolled back.
    #[error("could not persist the change, rolled back: {0}")]
    Persist(#[from] StoreError),
    /// The state directory takes no writes: the command was refused before any change.
    #[error("{0}: nothing was changed")]
    Unwritable(#[source] StoreError),
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// What readers may see without waiting for the writer.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The uuid `/ping` answers with.
    pub uuid: Option<String>,
}

struct Job {
    cmd: Command,
    path: &'static str,
    span: Span,
    reply: oneshot::Sender<Result<(), ApplyError>>,
}

/// Sends commands to the writer. Cheap to clone.
#[derive(Clone)]
pub struct AgentHandle {
    tx: mpsc::UnboundedSender<Job>,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
}

impl AgentHandle {
    /// Queues `cmd` now (fixing its place in the order) and returns a future of its outcome.
    pub fn submit(
        &self,
        cmd: Command,
        path: &'static str,
    ) -> impl std::future::Future<Output = Result<(), ApplyError>> + use<> {
        let (reply, rx) = oneshot::channel();
        let queued = self
            .tx
            .send(Job {
                cmd,
                path,
                span: Span::current(),
                reply,
            })
            .is_ok();
        async move {
            if !queued {
                return Err(ApplyError::ShuttingDown);
            }
            rx.await.unwrap_or(Err(ApplyError::ShuttingDown))
        }
    }

    /// The latest applied state, without waiting for the writer.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }
}

/// The writer task's state.
pub struct Agent {
    desired: DesiredState,
    store: Store,
    backends: Vec<Box<dyn Backend>>,
    health: Arc<Health>,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    /// The stored state was not read whole: re-applies keep whatever the system has beyond
    /// `desired` ([`Backend::reconcile_keeping`]) until `/init` resends everything.
    preserve: bool,
}

impl Agent {
    /// Creates the writer from loaded state. Call [`Agent::reconcile_all`] before serving.
    /// With `preserve` (a lossy recovery), re-applies add and never remove until `/init`.
    pub fn new(
        desired: DesiredState,
        store: Store,
        backends: Vec<Box<dyn Backend>>,
        health: Arc<Health>,
        preserve: bool,
    ) -> Agent {
        let snapshot = Arc::new(RwLock::new(Arc::new(Snapshot {
            uuid: desired.uuid.clone(),
        })));
        Agent {
            desired,
            store,
            backends,
            health,
            snapshot,
            preserve,
        }
    }

    /// Brings one backend in line with `state`: a full reconcile, or while preserving an
    /// add-only one.
    async fn reconcile_one(
        backend: &mut Box<dyn Backend>,
        state: &DesiredState,
        preserve: bool,
    ) -> Result<(), BackendError> {
        if preserve {
            backend.reconcile_keeping(state).await
        } else {
            backend.reconcile(state).await
        }
    }

    /// Re-applies the whole desired state through every backend. Failures are reported in
    /// health under `apply:<feature>` and returned, and the others still run.
    pub async fn reconcile_all(&mut self) -> Vec<(Feature, BackendError)> {
        let mut failures = Vec::new();
        if self.preserve {
            tracing::warn!("re-applying without removing anything (stored state not read whole)");
        }
        for backend in &mut self.backends {
            let feature = backend.features()[0];
            let source = format!("apply:{}", feature.name());
            match Self::reconcile_one(backend, &self.desired, self.preserve).await {
                Ok(()) => self.health.clear(&source),
                Err(e) => {
                    tracing::error!(feature = feature.name(), error = %e, "re-apply failed");
                    self.health.set(source, e.to_string());
                    failures.push((feature, e));
                }
            }
        }
        failures
    }

    /// Starts the writer task; it ends when every handle is dropped, after shutting the
    /// backends down.
    pub fn spawn(self) -> (AgentHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = AgentHandle {
            tx,
            snapshot: Arc::clone(&self.snapshot),
        };
        let task = tokio::spawn(self.run(rx));
        (handle, task)
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        while let Some(job) = rx.recv().await {
            let span = tracing::info_span!(parent: &job.span, "apply", path = job.path);
            let result = self
                .handle(&job.cmd, job.path)
                .instrument(span.clone())
                .await;
            span.in_scope(|| match &result {
                Ok(()) => tracing::info!("applied"),
                Err(e) => tracing::warn!(error = %e, "refused"),
            });
            let _ = job.reply.send(result);
            if self.store.wants_compaction() {
                match self.store.compact(&self.desired) {
                    Ok(()) => self.health.clear(HEALTH_STORE),
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
        for backend in &mut self.backends {
            backend.shutdown().await;
        }
        tracing::info!("writer stopped");
    }

    async fn handle(&mut self, cmd: &Command, path: &'static str) -> Result<(), ApplyError> {
        self.desired.check(cmd)?;
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
        let index = self
            .backends
            .iter()
            .position(|b| b.features().contains(&feature));
        match (feature, index) {
            (Feature::Core, _) => {}
            (_, Some(i)) => self.backends[i].apply(&self.desired, cmd).await?,
            (_, None) => {
                return Err(ApplyError::Unsupported {
                    feature: feature.name(),
                    path,
                });
            }
        }
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
            if let Some(i) = index
                && let Err(undo) =
                    Self::reconcile_one(&mut self.backends[i], &self.desired, self.preserve).await
            {
                tracing::error!(error = %undo, "rollback after a failed persist failed");
                self.health
                    .set(format!("apply:{}", feature.name()), undo.to_string());
            }
            return Err(e.into());
        }
        self.health.clear(HEALTH_STORE);
        if let Err(e) = self.desired.apply(cmd) {
            // check() passed above, so this cannot happen; never leave the two apart silently.
            tracing::error!(error = %e, "a checked command failed to apply");
            return Err(e.into());
        }
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
                tracing::warn!(feature = feature.name(), error = %e, "re-apply at /init failed");
            }
        } else if matches!(cmd, Command::ConfigureNics(_) | Command::RemoveNics(_)) {
            // Nic names and addresses feed the other renderings (NAT interfaces, dnsmasq
            // listen addresses): bring them along. Failures show in health.
            self.reconcile_others(index).await;
        }
        for (i, backend) in self.backends.iter_mut().enumerate() {
            if Some(i) != index {
                backend.observe(&self.desired).await;
            }
        }
        self.publish();
        Ok(())
    }

    async fn reconcile_others(&mut self, except: Option<usize>) {
        for (i, backend) in self.backends.iter_mut().enumerate() {
            if Some(i) == except {
                continue;
            }
            let source = format!("apply:{}", backend.features()[0].name());
            match Self::reconcile_one(backend, &self.desired, self.preserve).await {
                Ok(()) => self.health.clear(&source),
                Err(e) => self.health.set(source, e.to_string()),
            }
        }
    }

    fn publish(&self) {
        let snap = Arc::new(Snapshot {
            uuid: self.desired.uuid.clone(),
        });
        match self.snapshot.write() {
            Ok(mut s) => *s = snap,
            Err(e) => *e.into_inner() = snap,
        }
    }
}
