//! Counts work that must finish before the agent exits (commands and their callbacks).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// A counter of work in flight that can be waited on until it reaches zero.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Inner>);

#[derive(Default)]
struct Inner {
    count: AtomicUsize,
    idle: Notify,
}

/// Held while one piece of work runs; dropping it marks the work done.
pub struct Guard(Arc<Inner>);

impl InFlight {
    /// Registers one piece of work.
    pub fn enter(&self) -> Guard {
        self.0.count.fetch_add(1, Ordering::SeqCst);
        Guard(Arc::clone(&self.0))
    }

    /// Work currently in flight.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::SeqCst)
    }

    /// Resolves once no work is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
