//! The last commands the agent answered (a bounded ring), for `GET /status`.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Commands kept.
pub const KEPT: usize = 20;

/// An error message is cut to this many characters in the ring.
const ERROR_MAX: usize = 200;

/// One answered command.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandRecord {
    /// When it was answered, seconds since the epoch.
    pub at: u64,
    /// The request path.
    pub path: String,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// From arrival to reply, in milliseconds.
    pub ms: f64,
    /// The error sent back (cut), empty on success.
    pub error: String,
}

/// The last [`KEPT`] commands, oldest first.
#[derive(Debug, Default)]
pub struct RecentCommands {
    ring: Mutex<VecDeque<CommandRecord>>,
}

impl RecentCommands {
    /// Records a command, dropping the oldest beyond [`KEPT`].
    pub fn record(&self, path: &str, outcome: &str, secs: f64, error: &str) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let error = if error.chars().count() > ERROR_MAX {
            let cut: String = error.chars().take(ERROR_MAX).collect();
            format!("{cut}...")
        } else {
            error.to_string()
        };
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(CommandRecord {
            at,
            path: path.to_string(),
            outcome: outcome.to_string(),
            ms: (secs * 1e6).round() / 1e3,
            error,
        });
    }

    /// The commands kept, oldest first.
    pub fn list(&self) -> Vec<CommandRecord> {
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_ones_with_errors_cut() {
        let r = RecentCommands::default();
        for i in 0..KEPT + 5 {
            r.record(&format!("/p{i}"), "ok", 0.001_5, "");
        }
        r.record("/createeip", "refused", 0.0002, &"x".repeat(500));
        let list = r.list();
        assert_eq!(list.len(), KEPT);
        assert_eq!(list[0].path, "/p6");
        let last = list.last().expect("last");
        assert_eq!(last.path, "/createeip");
        assert_eq!(last.ms, 0.2);
        assert_eq!(last.error.len(), ERROR_MAX + 3);
        assert_eq!(list[0].ms, 1.5);
    }
}
