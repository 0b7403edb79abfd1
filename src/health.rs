//! What is wrong right now, by source, as `/ping` reports it (`healthy`, `healthDetail`).
//! Any task may set or clear a reason; readers never wait behind the writer.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Current problems, keyed by the component that reports them.
#[derive(Debug, Default)]
pub struct Health {
    problems: Mutex<BTreeMap<String, String>>,
    drift: Mutex<DriftLog>,
}

/// Drifts noticed and repaired since the start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriftLog {
    /// How many were repaired.
    pub repairs: u64,
    /// The last one: when (seconds since the epoch) and what.
    pub last: Option<(u64, String)>,
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

    /// Records a drift that was repaired (the system changed behind our back and was put
    /// back): counted, and the last one kept for `/ping`.
    pub fn record_drift(&self, what: String) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut d = self.drift.lock().unwrap_or_else(|e| e.into_inner());
        d.repairs += 1;
        d.last = Some((at, what));
    }

    /// The drifts repaired so far.
    pub fn drift(&self) -> DriftLog {
        self.drift.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every current problem as `(source, reason)`, by source.
    pub fn problems(&self) -> Vec<(String, String)> {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
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
