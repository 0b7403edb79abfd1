//! `vr-agent status`: what the router is doing, at a glance.
//!
//! A running agent serves a [`Report`] as JSON at `GET /status` (built from what readers see
//! without waiting for the writer: the published snapshot, health, the ring of the last
//! commands). `vr-agent status --url URL` fetches and prints it; `vr-agent status --state-dir
//! DIR` prints what the store of a stopped agent holds. Tables are aligned; colour only on a
//! terminal.

pub mod recent;
pub mod table;

use crate::state::counts::EntryCounts;
use recent::CommandRecord;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use table::{Table, Tone, paint};

/// What `GET /status` answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The uuid of the last `/init`.
    pub uuid: Option<String>,
    /// The agent's version.
    pub version: String,
    /// Hex md5 of the running binary.
    pub md5: String,
    /// No problem now.
    pub healthy: bool,
    /// Current problems: source (what reports it) and reason. Missing nics, drift being
    /// repaired, a read-only store, a firewall without a management nic.
    pub problems: Vec<Problem>,
    /// Entries by kind.
    pub counts: EntryCounts,
    /// Jobs waiting for the writer.
    pub queue_depth: usize,
    /// Bytes in the state journal.
    pub journal_bytes: u64,
    /// Journal compactions since the start.
    pub compactions: u64,
    /// Drifts repaired since the start.
    pub drift_repairs: u64,
    /// The last drift repaired: when (seconds since the epoch) and what.
    pub last_drift: Option<(u64, String)>,
    /// The last commands answered, oldest first.
    pub recent: Vec<CommandRecord>,
}

/// One current problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// What reports it (`firewall`, `drift:nat`, `links`, `store`, ...).
    pub source: String,
    /// Why.
    pub reason: String,
}

/// Why `vr-agent status` could not get a report.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The URL is not `http://host:port`.
    #[error("{0:?} is not an http://host[:port] URL")]
    Url(String),
    /// No connection or no answer.
    #[error("{url}: {what}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What failed.
        what: String,
    },
    /// An answer that is not a report.
    #[error("{url}: the answer is not a status report ({what})")]
    NotAReport {
        /// The URL.
        url: String,
        /// What was wrong.
        what: String,
    },
    /// The state directory cannot be read.
    #[error("{path}: {source}")]
    StateDir {
        /// The directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The summary `vr-agent status` prints: of the agent at `url`, or of the store in
/// `state_dir` when given. Coloured when stdout is a terminal.
pub async fn text(url: &str, state_dir: Option<&Path>) -> Result<String, StatusError> {
    use std::io::IsTerminal;
    let colour = std::io::stdout().is_terminal();
    match state_dir {
        Some(dir) => Ok(render_stored(dir, &inspect(dir)?, colour)),
        None => Ok(render(url, &fetch(url).await?, colour)),
    }
}

/// Fetches `GET <url>/status` (bounded: 5 s to connect and 10 s for the answer).
pub async fn fetch(url: &str) -> Result<Report, StatusError> {
    let uri: hyper::Uri = url.parse().map_err(|_| StatusError::Url(url.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(StatusError::Url(url.to_string()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| StatusError::Url(url.to_string()))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let unreachable = |what: String| StatusError::Unreachable {
        url: url.to_string(),
        what,
    };
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| unreachable("no connection within 5 s".into()))?
    .map_err(|e| unreachable(format!("connect: {e}")))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| unreachable(format!("handshake: {e}")))?;
    let conn = tokio::spawn(conn);
    let base = uri.path().trim_end_matches('/');
    let req = hyper::Request::get(format!("{base}/status"))
        .header(hyper::header::HOST, authority.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| unreachable(format!("request: {e}")))?;
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(
            resp.into_body(),
            4 * 1024 * 1024,
        ))
        .await
        .map(|b| b.to_bytes());
        Ok::<_, hyper::Error>((status, body))
    })
    .await;
    conn.abort();
    let (status, body) = answer
        .map_err(|_| unreachable("no answer within 10 s".into()))?
        .map_err(|e| unreachable(format!("send: {e}")))?;
    let body = body.map_err(|e| unreachable(format!("reading the answer: {e}")))?;
    if !status.is_success() {
        return Err(StatusError::NotAReport {
            url: url.to_string(),
            what: format!("HTTP {status}"),
        });
    }
    serde_json::from_slice(&body).map_err(|e| StatusError::NotAReport {
        url: url.to_string(),
        what: e.to_string(),
    })
}

/// What the store of a stopped agent holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// The uuid of the last `/init`.
    pub uuid: Option<String>,
    /// Entries by kind.
    pub counts: EntryCounts,
    /// Files of the store and their sizes, by name.
    pub files: Vec<(String, u64)>,
    /// What could not be read.
    pub problems: Vec<String>,
    /// The bootstrap info is cached there.
    pub bootstrap_info: bool,
}

/// Reads the store in `dir` without changing anything.
pub fn inspect(dir: &Path) -> Result<Stored, StatusError> {
    let entries = std::fs::read_dir(dir).map_err(|source| StatusError::StateDir {
        path: dir.display().to_string(),
        source,
    })?;
    let mut files: Vec<(String, u64)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata().ok()?;
            meta.is_file().then_some((name, meta.len()))
        })
        .collect();
    files.sort();
    let (state, problems) = crate::state::store::Store::inspect(dir);
    Ok(Stored {
        uuid: state.uuid.clone(),
        counts: EntryCounts::of(&state),
        bootstrap_info: files.iter().any(|(n, _)| n == crate::bootstrap::CACHE_FILE),
        files,
        problems,
    })
}

/// Bytes as a short human figure.
fn size(bytes: u64) -> String {
    const K: f64 = 1024.0;
    let b = bytes as f64;
    if b < K {
        format!("{bytes} B")
    } else if b < K * K {
        format!("{:.1} KiB", b / K)
    } else {
        format!("{:.1} MiB", b / K / K)
    }
}

/// `HH:MM:SS` (UTC) of seconds since the epoch.
fn clock(at: u64) -> String {
    let s = at % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn kv(out: &mut String, key: &str, value: &str) {
    out.push_str(&format!("  {key:<10}{value}\n"));
}

fn entries_table(counts: &EntryCounts, colour: bool) -> String {
    let mut t = Table::new(&[("kind", false), ("count", true)]);
    for (kind, n) in counts.by_kind() {
        t.row(vec![
            (kind.into(), Tone::Plain),
            (n.to_string(), Tone::Plain),
        ]);
    }
    t.render(colour)
}

/// The report of a running agent at `url`, as text.
pub fn render(url: &str, r: &Report, colour: bool) -> String {
    let mut out = format!("vr-agent at {url}\n");
    let health = if r.healthy {
        paint("healthy", Tone::Good, colour)
    } else {
        paint(
            &format!("UNHEALTHY ({} problems)", r.problems.len()),
            Tone::Bad,
            colour,
        )
    };
    kv(&mut out, "health", &health);
    kv(
        &mut out,
        "uuid",
        r.uuid.as_deref().unwrap_or("- (no /init yet)"),
    );
    kv(&mut out, "version", &r.version);
    kv(&mut out, "md5", &r.md5);
    kv(
        &mut out,
        "writer",
        &format!(
            "{} queued; journal {}, {} compactions",
            r.queue_depth,
            size(r.journal_bytes),
            r.compactions
        ),
    );
    let drift = match &r.last_drift {
        Some((at, what)) => format!(
            "{} repaired; last at {} UTC: {what}",
            r.drift_repairs,
            clock(*at)
        ),
        None => format!("{} repaired", r.drift_repairs),
    };
    kv(&mut out, "drift", &drift);
    out.push_str("\nEntries\n");
    out.push_str(&entries_table(&r.counts, colour));
    if !r.problems.is_empty() {
        out.push_str("\nProblems (drifted, missing, failing)\n");
        let mut t = Table::new(&[("source", false), ("reason", false)]);
        for p in &r.problems {
            t.row(vec![
                (p.source.clone(), Tone::Bad),
                (p.reason.clone(), Tone::Plain),
            ]);
        }
        out.push_str(&t.render(colour));
    }
    out.push_str("\nLast commands (newest first)\n");
    if r.recent.is_empty() {
        out.push_str("  none since the start\n");
    } else {
        let mut t = Table::new(&[
            ("time (UTC)", false),
            ("path", false),
            ("outcome", false),
            ("ms", true),
            ("error", false),
        ]);
        for c in r.recent.iter().rev() {
            let tone = match c.outcome.as_str() {
                "ok" => Tone::Good,
                "refused" => Tone::Warn,
                _ => Tone::Bad,
            };
            t.row(vec![
                (clock(c.at), Tone::Plain),
                (c.path.clone(), Tone::Plain),
                (c.outcome.clone(), tone),
                (format!("{:.2}", c.ms), Tone::Plain),
                (c.error.clone(), Tone::Plain),
            ]);
        }
        out.push_str(&t.render(colour));
    }
    out
}

/// What the store of a stopped agent in `dir` holds, as text.
pub fn render_stored(dir: &Path, s: &Stored, colour: bool) -> String {
    let mut out = format!(
        "vr-agent state in {} ({})\n",
        dir.display(),
        paint("not running: read from the store", Tone::Warn, colour)
    );
    kv(
        &mut out,
        "uuid",
        s.uuid.as_deref().unwrap_or("- (no /init stored)"),
    );
    let journal: u64 = s
        .files
        .iter()
        .filter(|(n, _)| n.starts_with("journal."))
        .map(|(_, b)| b)
        .sum();
    let total: u64 = s.files.iter().map(|(_, b)| b).sum();
    kv(
        &mut out,
        "store",
        &format!("journal {}, {} in all", size(journal), size(total)),
    );
    kv(
        &mut out,
        "bootstrap",
        if s.bootstrap_info {
            "bootstrap info cached"
        } else {
            "no bootstrap info"
        },
    );
    out.push_str("\nEntries\n");
    out.push_str(&entries_table(&s.counts, colour));
    out.push_str("\nFiles\n");
    let mut t = Table::new(&[("file", false), ("bytes", true)]);
    for (name, bytes) in &s.files {
        t.row(vec![
            (name.clone(), Tone::Plain),
            (bytes.to_string(), Tone::Plain),
        ]);
    }
    out.push_str(&t.render(colour));
    if !s.problems.is_empty() {
        out.push_str("\nProblems\n");
        for p in &s.problems {
            out.push_str(&format!("  {}\n", paint(p, Tone::Bad, colour)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_as_aligned_tables() {
        let r = Report {
            uuid: Some("u1".into()),
            version: "0.1.0".into(),
            md5: "abc".into(),
            healthy: false,
            problems: vec![Problem {
                source: "firewall".into(),
                reason: "no management nic known".into(),
            }],
            counts: EntryCounts {
                eips: 2,
                ..EntryCounts::default()
            },
            recent: vec![
                CommandRecord {
                    at: 3_723,
                    path: "/createeip".into(),
                    outcome: "ok".into(),
                    ms: 0.71,
                    error: String::new(),
                },
                CommandRecord {
                    at: 3_724,
                    path: "/removeeip".into(),
                    outcome: "refused".into(),
                    ms: 0.2,
                    error: "eip: missing".into(),
                },
            ],
            ..Report::default()
        };
        let text = render("http://h:7272", &r, false);
        assert!(
            text.contains("  health    UNHEALTHY (1 problems)\n"),
            "{text}"
        );
        assert!(text.contains("  eips                2\n"), "{text}");
        assert!(
            text.contains("  firewall  no management nic known\n"),
            "{text}"
        );
        // newest first, aligned
        let last = text.split("Last commands").nth(1).expect("commands");
        let lines: Vec<&str> = last.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "  time (UTC)  path        outcome    ms  error",
                "  01:02:04    /removeeip  refused  0.20  eip: missing",
                "  01:02:03    /createeip  ok       0.71",
            ]
        );
        assert!(!text.contains('\x1b'));
        assert!(render("u", &r, true).contains("\x1b[31m"));
    }

    #[test]
    fn sizes_and_clock() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(2048), "2.0 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(clock(86_400 + 61), "00:01:01");
    }
}
