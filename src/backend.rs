//! The seam between the pure core and the kernel: one backend per engine brings the system in
//! line with the desired state. The agent computes each command's [`Change`] once and hands it
//! to every backend whose parts it touches; no backend re-applies a command.

use crate::state::ha::Role;
use crate::state::{Change, DesiredState, Feature, Parts};
use std::future::Future;

/// Why a backend could not do what it was asked: one variant per engine, each keeping its
/// causes as sources. Its `Display` is the outermost message only: the reply and the log print
/// the whole chain once, through [`BackendError::report`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The interfaces backend.
    #[error(transparent)]
    Links(#[from] crate::link::LinkError),
    /// The NAT and firewall backend.
    #[error(transparent)]
    Nat(#[from] crate::nat::NatError),
    /// The DHCP and DNS backend.
    #[error(transparent)]
    Dnsmasq(#[from] crate::dnsmasq::DnsmasqError),
    /// The load balancer backend.
    #[error(transparent)]
    Lb(#[from] crate::lb::LbError),
    /// The HA backend.
    #[error(transparent)]
    Ha(#[from] crate::ha::HaError),
    /// The failure left the system as it was: the backend put back everything the call had
    /// changed (or the step that failed was one transaction the system refused).
    #[error(transparent)]
    Unchanged(Box<BackendError>),
    /// A backend outside the agent's engines (a test's): its message, and whether it left the
    /// system as it was.
    #[error("{message}")]
    Other {
        /// What failed.
        message: String,
        /// The system is as it was before the call.
        unchanged: bool,
    },
}

impl BackendError {
    /// A failure with this message that left the system as it was (a backend outside the
    /// agent's engines).
    pub fn new(msg: impl Into<String>) -> Self {
        BackendError::Other {
            message: msg.into(),
            unchanged: true,
        }
    }

    /// This failure, known to have left the system as it was (the backend put back what the
    /// call had changed).
    pub fn unchanged(self) -> Self {
        match self {
            BackendError::Unchanged(_) => self,
            other => BackendError::Unchanged(Box::new(other)),
        }
    }

    /// True when the failed call left the system exactly as it was: it failed before any
    /// change, its change was one transaction the system refused, or what it had changed was
    /// put back. False when the system may differ (the caller then brings it back).
    pub fn left_unchanged(&self) -> bool {
        match self {
            BackendError::Links(e) => e.left_unchanged(),
            BackendError::Nat(e) => e.left_unchanged(),
            BackendError::Dnsmasq(e) => e.left_unchanged(),
            BackendError::Lb(e) => e.left_unchanged(),
            BackendError::Ha(e) => e.left_unchanged(),
            BackendError::Unchanged(_) => true,
            BackendError::Other { unchanged, .. } => *unchanged,
        }
    }

    /// The message and every source, on one line (for the reply, the log and health).
    pub fn report(&self) -> String {
        crate::error::chain(self)
    }
}

/// Applies its part of the desired state to the system.
pub trait Backend: Send {
    /// The features this backend owns (each feature has exactly one backend); the first
    /// names it in health and logs.
    fn features(&self) -> &'static [Feature];

    /// True when a change of `parts` concerns this backend (it renders from them).
    fn concerns(&self, parts: Parts) -> bool;

    /// True when this backend's re-apply shares nothing with the other backends that say so
    /// (no kernel object, file or process of theirs): neighbours that all say so re-apply
    /// together at start-up, each waiting on its engine (nft, dnsmasq coming up) while the
    /// other works. Default: runs alone, in order.
    fn reapplies_alongside(&self) -> bool {
        false
    }

    /// Makes the system follow `change.after` (already checked). Either takes full effect or
    /// fails; a failure says whether it left the system as it was
    /// ([`BackendError::left_unchanged`]: refused before any change, refused as one
    /// transaction, or put back), and when it may not have, the agent reconciles this backend
    /// back to `change.before`.
    fn apply(
        &mut self,
        change: &Change<'_>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Makes the system match `state` from scratch (start-up, `/init`, rollback, drift repair).
    fn reconcile(
        &mut self,
        state: &DesiredState,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Compares the system with `state`, repairs what differs, and says what was wrong
    /// (`None`: nothing). Runs between commands (periodically, and when notifications say the
    /// system changed). Default: nothing to compare.
    fn check_and_repair(
        &mut self,
        _state: &DesiredState,
    ) -> impl Future<Output = Result<Option<String>, BackendError>> + Send {
        async { Ok(None) }
    }

    /// Makes the system hold everything of `state` without removing anything it has beyond
    /// it: the start-up re-apply after a lossy recovery of the stored state, when the system
    /// may hold entries the agent can no longer read (kept until `/init` resends everything).
    /// Default: leave the system as it is.
    fn reconcile_keeping(
        &mut self,
        _state: &DesiredState,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        async { Ok(()) }
    }

    /// Stops anything the backend runs (processes it supervises). Default: nothing.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The node's HA role that the next `apply`/`reconcile` renders for (part of what the
    /// desired kernel state means: a backup carries no HA address and serves no DHCP). Only
    /// noted, nothing is done. Default: the backend does not depend on the role.
    fn note_role(&mut self, _role: Role) {}

    /// The node became `role` (keepalived decided, or the agent demotes itself): make the
    /// system follow, idempotently. Called by the writer, between commands. Default: nothing
    /// beyond noting it.
    fn set_role(
        &mut self,
        _state: &DesiredState,
        role: Role,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        self.note_role(role);
        async { Ok(()) }
    }

    /// Restarts the HA engine (keepalived) as `/restartKeepalived` asks. Default: nothing.
    fn restart_ha(
        &mut self,
        _state: &DesiredState,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        async { Ok(()) }
    }
}

/// The engines of this agent, in the order a change reaches them (interfaces first: the
/// others render from nic names and addresses). A fixed set, dispatched without boxing.
#[allow(
    clippy::large_enum_variant,
    reason = "one value of each engine, held for the agent's life"
)]
pub enum Engine {
    /// Nics, addresses, VIPs (netlink).
    Links(crate::link::LinksBackend),
    /// NAT and the appliance firewall (nftables).
    Nat(crate::nat::NatBackend),
    /// DHCP and DNS (dnsmasq).
    Dnsmasq(crate::dnsmasq::DnsmasqBackend),
    /// Load balancers (haproxy).
    Lb(crate::lb::LbBackend),
    /// Router HA (keepalived, conntrackd).
    Ha(crate::ha::HaBackend),
}

macro_rules! each_engine {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Engine::Links($b) => $e,
            Engine::Nat($b) => $e,
            Engine::Dnsmasq($b) => $e,
            Engine::Lb($b) => $e,
            Engine::Ha($b) => $e,
        }
    };
}

impl Backend for Engine {
    fn features(&self) -> &'static [Feature] {
        each_engine!(self, b => b.features())
    }

    fn concerns(&self, parts: Parts) -> bool {
        each_engine!(self, b => b.concerns(parts))
    }

    fn reapplies_alongside(&self) -> bool {
        each_engine!(self, b => b.reapplies_alongside())
    }

    async fn apply(&mut self, change: &Change<'_>) -> Result<(), BackendError> {
        each_engine!(self, b => b.apply(change).await)
    }

    async fn reconcile(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        each_engine!(self, b => b.reconcile(state).await)
    }

    async fn check_and_repair(
        &mut self,
        state: &DesiredState,
    ) -> Result<Option<String>, BackendError> {
        each_engine!(self, b => b.check_and_repair(state).await)
    }

    async fn reconcile_keeping(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        each_engine!(self, b => b.reconcile_keeping(state).await)
    }

    async fn shutdown(&mut self) {
        each_engine!(self, b => b.shutdown().await);
    }

    fn note_role(&mut self, role: Role) {
        each_engine!(self, b => b.note_role(role));
    }

    async fn set_role(&mut self, state: &DesiredState, role: Role) -> Result<(), BackendError> {
        each_engine!(self, b => b.set_role(state, role).await)
    }

    async fn restart_ha(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        each_engine!(self, b => b.restart_ha(state).await)
    }
}
