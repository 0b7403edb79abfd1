//! Drift: the kernel's tables, addresses and nics changed by someone other than the agent.
//!
//! Watchers turn netlink notifications into [`Signal`]s: [`nft_events`] follows the nftables
//! multicast group and reports transactions that touched our tables and were committed by a
//! process other than ours; [`link_events`] follows the link and IPv4 address groups and
//! reports changes not requested by our own rtnetlink sockets. The [`watch`] task folds a
//! burst of signals into one job for the writer (within [`SETTLE`]), and queues a verify of
//! everything every `verify_every` as a safety net. The writer repairs between commands, so
//! a repair never races a command; [`crate::health::Health`] reports each drift and repair.

pub mod file_events;
pub mod link_events;
pub mod nft_events;
pub mod own;

use crate::agent::AgentHandle;
use crate::state::Feature;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a burst of notifications may keep arriving before the repair is queued.
pub const SETTLE: Duration = Duration::from_millis(150);
/// The periodic verify covers the interfaces every this many ticks only: their changes come
/// through notifications, and a full address dump costs about a second at 100,000 VIPs. The
/// cheap checks (our tables are there, dnsmasq's and haproxy's files are as written) run at
/// every tick.
pub const LINKS_EVERY: u64 = 6;

/// Something changed behind the agent's back (or may have).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A transaction of another process touched our nftables tables: repair them.
    Nft(String),
    /// Links or addresses changed, not at our request: verify the interfaces.
    Links(String),
    /// Notifications were lost (socket overrun): verify everything.
    Lost(String),
    /// A file the agent wrote for dnsmasq changed: verify dnsmasq's files.
    Files(String),
}

/// Starts the watchers (netlink groups, and inotify on `file_dirs`, where the agent writes
/// dnsmasq's files) and the task that turns their signals into writer jobs. Watchers that
/// cannot start are logged and left out; the periodic verify still runs.
pub fn spawn(
    agent: AgentHandle,
    verify_every: Duration,
    file_dirs: Vec<std::path::PathBuf>,
    metrics: crate::metrics::Metrics,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    if let Err(e) = file_events::spawn(file_dirs, tx.clone()) {
        tracing::warn!(error = %e, "file notifications unavailable; relying on the periodic verify");
    }
    if let Err(e) = nft_events::spawn(tx.clone()) {
        tracing::warn!(error = %e, "nftables notifications unavailable; relying on the periodic verify");
    }
    if let Err(e) = link_events::spawn(tx) {
        tracing::warn!(error = %e, "link notifications unavailable; relying on the periodic verify");
    }
    tokio::spawn(watch(agent, rx, verify_every, metrics))
}

/// Folds signals into writer jobs: at most one repair per feature per burst.
async fn watch(
    agent: AgentHandle,
    mut rx: mpsc::UnboundedReceiver<Signal>,
    verify_every: Duration,
    metrics: crate::metrics::Metrics,
) {
    let mut ticker = tokio::time::interval(verify_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate: the start-up re-apply covers it
    let mut ticks: u64 = 0;
    loop {
        let first = tokio::select! {
            s = rx.recv() => match s {
                Some(s) => s,
                None => return,
            },
            _ = ticker.tick() => {
                ticks += 1;
                let why = || "periodic verify".to_string();
                let done = if ticks.is_multiple_of(LINKS_EVERY) {
                    agent.verify(None, why()).await
                } else {
                    match agent.verify(Some(Feature::Nat), why()).await {
                        Ok(()) => match agent.verify(Some(Feature::Dhcp), why()).await {
                            Ok(()) => agent.verify(Some(Feature::LoadBalancer), why()).await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    }
                };
                if done.is_err() {
                    return;
                }
                continue;
            }
        };
        let mut burst = vec![first];
        let settle = tokio::time::sleep(SETTLE);
        tokio::pin!(settle);
        loop {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => burst.push(s),
                    None => break,
                },
                _ = &mut settle => break,
            }
        }
        metrics.drift_events(burst.len() as u64);
        let mut nft = Vec::new();
        let mut links = Vec::new();
        let mut lost = Vec::new();
        let mut files = Vec::new();
        for s in burst {
            match s {
                Signal::Nft(w) => push_unique(&mut nft, w),
                Signal::Links(w) => push_unique(&mut links, w),
                Signal::Lost(w) => push_unique(&mut lost, w),
                Signal::Files(w) => push_unique(&mut files, w),
            }
        }
        let mut queued = Ok(());
        if !lost.is_empty() {
            queued = agent.verify(None, lost.join("; ")).await;
        }
        if !links.is_empty() && queued.is_ok() {
            queued = agent.verify(Some(Feature::Links), links.join("; ")).await;
        }
        if !nft.is_empty() && queued.is_ok() {
            queued = agent.repair(Feature::Nat, summary(&nft)).await;
        }
        if !files.is_empty() && queued.is_ok() {
            queued = agent.verify(Some(Feature::Dhcp), summary(&files)).await;
        }
        if queued.is_err() {
            return;
        }
    }
}

fn push_unique(list: &mut Vec<String>, what: String) {
    if !list.contains(&what) {
        list.push(what);
    }
}

/// At most a few distinct descriptions, then a count.
fn summary(list: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut s = list
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if list.len() > SHOWN {
        s.push_str(&format!(" (and {} more)", list.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_bounded() {
        let list: Vec<String> = (0..10).map(|i| format!("change {i}")).collect();
        assert_eq!(summary(&list), "change 0; change 1; change 2 (and 7 more)");
        let mut l = Vec::new();
        push_unique(&mut l, "a".into());
        push_unique(&mut l, "a".into());
        assert_eq!(l, ["a"]);
    }
}
