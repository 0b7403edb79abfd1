//! `GET /metrics`: the agent's numbers in the Prometheus text format (0.0.4), through the
//! official `prometheus-client` crate.
//!
//! One [`Metrics`] handle (cheap to clone) is passed to whoever has something to count: the
//! API (commands and their latency, callbacks), the NAT backend (nft transactions, nfnetlink
//! batches), the dnsmasq supervisor (restarts, reloads), the drift watcher (events). What the
//! writer owns (entries by kind, journal size and compactions, queue depth) is not counted
//! here but read at scrape time from the snapshot the writer publishes
//! ([`crate::agent::Snapshot`]), so a scrape never waits for the writer.

use crate::state::counts::EntryCounts;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (or answered, for `/ping`).
    Ok,
    /// Refused before any change: the request is invalid or contradicts the state.
    Refused,
    /// The system or the store did not take it (nothing changed).
    Failed,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type HistogramFamily = Family<Labels1, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s: element commands take ~1 ms, syncs of 10,000 entries ~100 ms
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// What the writer published, read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriterView {
    /// Entries by kind.
    pub counts: EntryCounts,
    /// Bytes in the current journal.
    pub journal_bytes: u64,
    /// Journal compactions since the start.
    pub compactions: u64,
    /// Jobs queued for the writer (commands and upkeep), not yet taken.
    pub queue_depth: usize,
    /// Drifts repaired since the start.
    pub drift_repairs: u64,
}

struct Inner {
    registry: Registry,
    commands: Family<Labels2, Counter>,
    command_seconds: HistogramFamily,
    entries: Family<Labels1, Gauge>,
    queue_depth: Gauge,
    nft: Family<Labels1, Counter>,
    netlink: Family<Labels1, Counter>,
    dnsmasq_restarts: Counter,
    dnsmasq_reloads: Counter,
    dnsmasq_leases: Gauge,
    callbacks: Family<Labels1, Counter>,
    drift_events: Counter,
    drift_repairs: Counter,
    journal_bytes: Gauge,
    compactions: Counter,
    leases_file: Mutex<Option<PathBuf>>,
}

/// The agent's metrics. Cheap to clone; every clone counts into the same registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new("", "")
    }
}

impl Metrics {
    /// A registry for an agent of this version and binary md5 (the info metric).
    pub fn new(version: &str, md5: &str) -> Metrics {
        let mut registry = Registry::with_prefix("vr_agent");
        let up = Gauge::<i64>::default();
        up.set(1);
        registry.register("up", "1 while the agent serves", up);
        registry.register(
            "build",
            "The agent's version and the md5 of its binary",
            Info::new(vec![
                ("version", version.to_string()),
                ("md5", md5.to_string()),
            ]),
        );
        let commands = Family::<Labels2, Counter>::default();
        registry.register(
            "commands",
            "Commands answered, by path and outcome (ok, refused, failed)",
            commands.clone(),
        );
        let command_seconds = HistogramFamily::new_with_constructor(latency_histogram);
        registry.register(
            "command_duration_seconds",
            "Time from the request's arrival to its reply, by path",
            command_seconds.clone(),
        );
        let entries = Family::<Labels1, Gauge>::default();
        registry.register(
            "entries",
            "Entries of the desired state, by kind",
            entries.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "writer_queue_depth",
            "Jobs waiting for the writer (commands and repairs)",
            queue_depth.clone(),
        );
        let nft = Family::<Labels1, Counter>::default();
        registry.register(
            "nft_transactions",
            "nft -f transactions run, by outcome (ok, failed)",
            nft.clone(),
        );
        let netlink = Family::<Labels1, Counter>::default();
        registry.register(
            "netlink_batches",
            "nfnetlink element batches sent, by outcome (ok, failed)",
            netlink.clone(),
        );
        let dnsmasq_restarts = Counter::default();
        registry.register(
            "dnsmasq_restarts",
            "dnsmasq processes started (the first start and every restart)",
            dnsmasq_restarts.clone(),
        );
        let dnsmasq_reloads = Counter::default();
        registry.register(
            "dnsmasq_reloads",
            "SIGHUPs sent to dnsmasq",
            dnsmasq_reloads.clone(),
        );
        let dnsmasq_leases = Gauge::default();
        registry.register(
            "dnsmasq_leases",
            "DHCP leases in dnsmasq's lease file",
            dnsmasq_leases.clone(),
        );
        let callbacks = Family::<Labels1, Counter>::default();
        registry.register(
            "callbacks",
            "Callback posts to the management node, by outcome (delivered, retried, dropped)",
            callbacks.clone(),
        );
        let drift_events = Counter::default();
        registry.register(
            "drift_events",
            "Changes made behind the agent's back that asked for a repair or a verify",
            drift_events.clone(),
        );
        let drift_repairs = Counter::default();
        registry.register("drift_repairs", "Drifts repaired", drift_repairs.clone());
        let journal_bytes = Gauge::default();
        registry.register(
            "journal_bytes",
            "Bytes in the state journal since the last snapshot",
            journal_bytes.clone(),
        );
        let compactions = Counter::default();
        registry.register(
            "journal_compactions",
            "Journal compactions (snapshots written)",
            compactions.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            commands,
            command_seconds,
            entries,
            queue_depth,
            nft,
            netlink,
            dnsmasq_restarts,
            dnsmasq_reloads,
            dnsmasq_leases,
            callbacks,
            drift_events,
            drift_repairs,
            journal_bytes,
            compactions,
            leases_file: Mutex::new(None),
        }))
    }

    /// A command to `path` ended with `outcome` after `secs` seconds.
    pub fn command_done(&self, path: &'static str, outcome: Outcome, secs: f64) {
        self.0
            .commands
            .get_or_create(&[("path", path), ("outcome", outcome.as_str())])
            .inc();
        self.0
            .command_seconds
            .get_or_create(&[("path", path)])
            .observe(secs);
    }

    /// An `nft -f` transaction ran.
    pub fn nft_transaction(&self, ok: bool) {
        self.0.nft.get_or_create(&[("outcome", ok_label(ok))]).inc();
    }

    /// An nfnetlink batch was sent.
    pub fn netlink_batch(&self, ok: bool) {
        self.0
            .netlink
            .get_or_create(&[("outcome", ok_label(ok))])
            .inc();
    }

    /// dnsmasq was started (first start or restart).
    pub fn dnsmasq_started(&self) {
        self.0.dnsmasq_restarts.inc();
    }

    /// dnsmasq was sent a SIGHUP.
    pub fn dnsmasq_reloaded(&self) {
        self.0.dnsmasq_reloads.inc();
    }

    /// Where dnsmasq keeps its leases (counted at each scrape).
    pub fn dnsmasq_leases_at(&self, path: PathBuf) {
        *self.0.leases_file.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// A callback was answered by the management node.
    pub fn callback_delivered(&self) {
        self.callback("delivered");
    }

    /// A callback attempt failed and will be tried again.
    pub fn callback_retried(&self) {
        self.callback("retried");
    }

    /// A callback was given up (no connection within the retry window).
    pub fn callback_dropped(&self) {
        self.callback("dropped");
    }

    fn callback(&self, outcome: &'static str) {
        self.0
            .callbacks
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// Notifications said the system changed behind the agent's back (`n` changes).
    pub fn drift_events(&self, n: u64) {
        self.0.drift_events.inc_by(n);
    }

    /// The text of a scrape, with the writer's published numbers in `view`.
    pub fn render(&self, view: &WriterView) -> String {
        let m = &self.0;
        for (kind, n) in view.counts.by_kind() {
            m.entries
                .get_or_create(&[("kind", kind)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        m.queue_depth
            .set(i64::try_from(view.queue_depth).unwrap_or(i64::MAX));
        m.journal_bytes
            .set(i64::try_from(view.journal_bytes).unwrap_or(i64::MAX));
        m.compactions
            .inner()
            .store(view.compactions, Ordering::Relaxed);
        m.drift_repairs
            .inner()
            .store(view.drift_repairs, Ordering::Relaxed);
        let leases = m
            .leases_file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(path) = leases {
            // dnsmasq writes one lease per line; the file is bounded by the hosts it serves
            let n = std::fs::read_to_string(&path)
                .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
                .unwrap_or(0);
            m.dnsmasq_leases.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_text::encode(&mut out, &m.registry) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        out
    }
}

fn ok_label(ok: bool) -> &'static str {
    if ok { "ok" } else { "failed" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_carries_what_was_counted_and_the_writer_view() {
        let m = Metrics::new("1.2.3", "abc");
        m.command_done("/createeip", Outcome::Ok, 0.0007);
        m.command_done("/createeip", Outcome::Refused, 0.0002);
        m.nft_transaction(true);
        m.callback_retried();
        m.callback_delivered();
        let view = WriterView {
            counts: EntryCounts {
                eips: 3,
                ..EntryCounts::default()
            },
            journal_bytes: 512,
            compactions: 2,
            queue_depth: 1,
            drift_repairs: 4,
        };
        let text = m.render(&view);
        for line in [
            "vr_agent_up 1",
            "vr_agent_build_info{version=\"1.2.3\",md5=\"abc\"} 1",
            "vr_agent_commands_total{path=\"/createeip\",outcome=\"ok\"} 1",
            "vr_agent_commands_total{path=\"/createeip\",outcome=\"refused\"} 1",
            "vr_agent_command_duration_seconds_count{path=\"/createeip\"} 2",
            "vr_agent_entries{kind=\"eips\"} 3",
            "vr_agent_entries{kind=\"dhcp_hosts\"} 0",
            "vr_agent_writer_queue_depth 1",
            "vr_agent_nft_transactions_total{outcome=\"ok\"} 1",
            "vr_agent_callbacks_total{outcome=\"retried\"} 1",
            "vr_agent_callbacks_total{outcome=\"delivered\"} 1",
            "vr_agent_drift_repairs_total 4",
            "vr_agent_journal_bytes 512",
            "vr_agent_journal_compactions_total 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
