//! The seam between the pure core and the kernel: one backend per feature brings the system in
//! line with the desired state. Each apply is all-or-nothing on its own side.

use crate::state::{Command, DesiredState, Feature};
use std::future::Future;
use std::pin::Pin;

/// A boxed future, for object-safe async backends.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a backend could not apply a change. The message goes to the management node as is.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

impl BackendError {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        BackendError(msg.into())
    }
}

/// Applies one feature's part of the desired state to the system.
pub trait Backend: Send {
    /// The features this backend owns (each feature has exactly one backend).
    fn features(&self) -> &'static [Feature];

    /// Makes the system follow `cmd` applied to `before` (already checked with
    /// [`DesiredState::check`]). Either takes full effect or changes nothing.
    fn apply<'a>(
        &'a mut self,
        before: &'a DesiredState,
        cmd: &'a Command,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Makes the system match `state` from scratch (start-up, `/init`, rollback, and after
    /// another backend changed the nics, since names and addresses may have moved).
    fn reconcile<'a>(
        &'a mut self,
        state: &'a DesiredState,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Compares the system with `state`, repairs what differs, and says what was wrong
    /// (`None`: nothing). Runs between commands (periodically, and when notifications say the
    /// system changed). Default: nothing to compare.
    fn check_and_repair<'a>(
        &'a mut self,
        _state: &'a DesiredState,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Box::pin(async { Ok(None) })
    }

    /// Makes the system hold everything of `state` without removing anything it has beyond
    /// it: the start-up re-apply after a lossy recovery of the stored state, when the system
    /// may hold entries the agent can no longer read (kept until `/init` resends everything).
    /// Default: leave the system as it is.
    fn reconcile_keeping<'a>(
        &'a mut self,
        _state: &'a DesiredState,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    /// Called after a command of another backend's feature changed the desired state (now
    /// `after`), for renderings that read other features' entries (the firewall accepts DHCP
    /// and DNS on the nics DHCP hosts use). Problems go to health. Default: nothing.
    fn observe<'a>(&'a mut self, _after: &'a DesiredState) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Stops anything the backend runs (processes it supervises). Default: nothing.
    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
