//! What is wrong right now, by source, as `/ping` reports it (`healthy`, `healthDetail`).
//! Any task may set or clear a reason; readers never wait behind the writer.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Current problems, keyed by the component that reports them.
#[derive(Debug, Default)]
pub struct Health {
    problems: Mutex<BTreeMap<String, String>>,
}

impl Health {
    /// Records (or replaces) the problem of `source`.
    pub fn set(&self, source: impl Into<String>, reason: impl Into<String>) {
        let (source, reason) = (source.into(), reason.into());
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.get(&source) != Some(&reason) {
            tracing::warn!(%source, %reason, "unhealthy");
        }
        p.insert(source, reason);
    }

    /// Clears the problem of `source`, if any.
    pub fn clear(&self, source: &str) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.remove(source).is_some() {
            tracing::info!(%source, "healthy again");
        }
    }

    /// Clears every problem whose source starts with `prefix`.
    pub fn clear_prefix(&self, prefix: &str) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|k, _| !k.starts_with(prefix));
    }

    /// `(healthy, detail)`: detail is empty when healthy, else one `source: reason` per line.
    pub fn report(&self) -> (bool, String) {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let detail = p
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n");
        (p.is_empty(), detail)
    }
}
