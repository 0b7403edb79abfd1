//! The HTTP side: listeners, routing, the sync and async call styles, body limits.
//!
//! A request flows: path -> [`Route`] -> headers decide the style -> body read under a limit
//! -> parsed and validated -> queued to the writer (fixing its order) -> answered in the
//! response (sync) or acked at once and posted to `callbackurl` (async).

pub mod callback;
pub mod conns;
pub mod inflight;
pub mod reply;

use crate::agent::{AgentHandle, ApplyError};
use crate::health::Health;
use crate::metrics::{Metrics, Outcome, WriterView};
use crate::protocol::{Kind, Request as ApiRequest, Route};
use crate::status::recent::RecentCommands;
use bytes::Bytes;
use callback::{CallbackPolicy, CallbackTarget, Delivery};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use inflight::InFlight;
use reply::Reply;
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Everything a request handler needs.
pub struct ApiState {
    /// The writer.
    pub agent: AgentHandle,
    /// Current problems.
    pub health: Arc<Health>,
    /// Hex md5 of the running binary.
    pub md5: String,
    /// The agent's version.
    pub version: &'static str,
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
    /// How long reading a request body may take.
    pub body_timeout: Duration,
    /// Where callbacks may go.
    pub callbacks: CallbackPolicy,
    /// How long to retry a callback on connection errors.
    pub callback_retry: Duration,
    /// Commands and callbacks not finished yet.
    pub inflight: InFlight,
    /// `taskuuid`s in flight; a repeat is acked and ignored.
    pub tasks: Mutex<HashSet<String>>,
    /// Counters and histograms of `GET /metrics`.
    pub metrics: Metrics,
    /// The last commands, for `GET /status`.
    pub recent: RecentCommands,
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, body: Vec<u8>, json: bool) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if json {
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    r
}

fn refuse(status: StatusCode, msg: String) -> Resp {
    respond(status, Reply::fail(msg).to_bytes(), true)
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Answers one request of an overflow connection (one taken above the connection cap):
/// `/ping` and `/echo` as usual, anything else 503.
pub async fn handle_overflow(
    state: Arc<ApiState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    match crate::protocol::route(req.uri().path()) {
        Some(route) if matches!(route.kind, Kind::Ping | Kind::Echo) => {
            handle(state, peer, req).await
        }
        _ => Ok(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections: only /ping and /echo are served until some close".into(),
        )),
    }
}

/// Answers one HTTP request from `peer`.
pub async fn handle(
    state: Arc<ApiState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    if req.method() == hyper::Method::GET {
        match path.trim_end_matches('/') {
            "/metrics" => return Ok(metrics_response(&state)),
            "/status" => return Ok(status_response(&state)),
            _ => {}
        }
    }
    let Some(route) = crate::protocol::route(&path) else {
        return Ok(refuse(
            StatusCode::NOT_FOUND,
            format!("{path}: no such path on this agent"),
        ));
    };
    if route.kind == Kind::Echo {
        return Ok(respond(StatusCode::OK, Vec::new(), false));
    }
    let task_uuid = header(&req, "taskuuid").map(str::to_string);
    let callback_url = header(&req, "callbackurl").map(str::to_string);
    let target = match (&task_uuid, &callback_url) {
        (Some(_), Some(url)) => match state.callbacks.check(url, peer.ip()) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "callbackurl refused");
                return Ok(refuse(StatusCode::BAD_REQUEST, e.to_string()));
            }
        },
        (None, None) => None,
        (Some(_), None) => {
            return Ok(refuse(
                StatusCode::BAD_REQUEST,
                "callbackurl missing in request header (taskuuid is set)".into(),
            ));
        }
        (None, Some(_)) => {
            return Ok(refuse(
                StatusCode::BAD_REQUEST,
                "taskuuid missing in request header (callbackurl is set)".into(),
            ));
        }
    };
    let span = tracing::info_span!(
        "command",
        path = %path,
        taskuuid = task_uuid.as_deref().unwrap_or("-")
    );
    handle_command(state, req, route, task_uuid, target, peer)
        .instrument(span)
        .await
}

async fn handle_command(
    state: Arc<ApiState>,
    req: Request<Incoming>,
    route: &'static Route,
    task_uuid: Option<String>,
    target: Option<CallbackTarget>,
    peer: SocketAddr,
) -> Result<Resp, Infallible> {
    let started = Instant::now();
    let refused = |status: StatusCode, msg: String| {
        done(&state, route.path, started, Outcome::Refused, &msg);
        refuse(status, msg)
    };
    let guard = state.inflight.enter();
    if let Some(len) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > state.max_body as u64
    {
        tracing::warn!(len, "body too large");
        return Ok(refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body of {len} bytes exceeds the limit of {} bytes",
                state.max_body
            ),
        ));
    }
    let read = tokio::time::timeout(
        state.body_timeout,
        Limited::new(req.into_body(), state.max_body).collect(),
    );
    let Ok(read) = read.await else {
        tracing::warn!(
            timeout_s = state.body_timeout.as_secs(),
            "body not read in time"
        );
        return Ok(refused(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s",
                state.body_timeout.as_secs()
            ),
        ));
    };
    let body = match read {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Ok(refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds the limit of {} bytes", state.max_body),
            ));
        }
        Err(e) => {
            return Ok(refused(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            ));
        }
    };
    if let Some(uuid) = &task_uuid {
        let mut tasks = state.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if !tasks.insert(uuid.clone()) {
            tracing::warn!("taskuuid already in flight; ignoring the repeat");
            return Ok(respond(StatusCode::OK, Vec::new(), false));
        }
    }
    // Parse and queue now, before answering, so commands keep their arrival order.
    let outcome = run(&state, route, &body, peer);
    match (task_uuid, target) {
        (Some(uuid), Some(target)) => {
            let span = tracing::Span::current();
            let state2 = Arc::clone(&state);
            tokio::spawn(
                async move {
                    let _guard = guard;
                    let (reply, result) = outcome.await;
                    done(&state2, route.path, started, result, reply.error());
                    let delivery = callback::post(
                        &target,
                        &uuid,
                        reply.to_bytes(),
                        state2.callback_retry,
                        &state2.metrics,
                    )
                    .await;
                    match delivery {
                        Delivery::Answered(status) => {
                            state2.metrics.callback_delivered();
                            if status == 200 {
                                tracing::debug!("callback delivered");
                            } else {
                                tracing::warn!(status, "callback answered");
                            }
                        }
                        Delivery::GaveUp(e) => {
                            state2.metrics.callback_dropped();
                            tracing::error!(error = %e, "callback not delivered");
                        }
                    }
                    state2
                        .tasks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&uuid);
                }
                .instrument(span),
            );
            Ok(respond(StatusCode::OK, Vec::new(), false))
        }
        _ => {
            let (reply, result) = outcome.await;
            done(&state, route.path, started, result, reply.error());
            drop(guard);
            Ok(respond(StatusCode::OK, reply.to_bytes(), true))
        }
    }
}

/// Counts a command answered (and keeps it in the ring of `/status`, but `/ping`).
fn done(state: &ApiState, path: &'static str, started: Instant, outcome: Outcome, error: &str) {
    let secs = started.elapsed().as_secs_f64();
    state.metrics.command_done(path, outcome, secs);
    if path != "/ping" {
        state.recent.record(path, outcome.as_str(), secs, error);
    }
}

/// Parses the body and queues the command; the returned future resolves to the reply and
/// how the command ended.
fn run(
    state: &Arc<ApiState>,
    route: &'static Route,
    body: &[u8],
    peer: SocketAddr,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = (Reply, Outcome)> + Send>> {
    match route.parse_noted(body) {
        Err(e) => {
            tracing::warn!(error = %e, "refused");
            let reply = Reply::fail(e.to_string());
            Box::pin(async move { (reply, Outcome::Refused) })
        }
        Ok((ApiRequest::Ping, _)) => {
            let state = Arc::clone(state);
            Box::pin(async move { (ping_reply(&state), Outcome::Ok) })
        }
        Ok((ApiRequest::HaStatus, _)) => {
            let status = ha_status(state);
            Box::pin(async move { (Reply::ok().with("haStatus", status), Outcome::Ok) })
        }
        Ok((ApiRequest::RestartKeepalived, _)) => {
            let state = Arc::clone(state);
            Box::pin(async move {
                match state.agent.restart_keepalived().await {
                    Ok(()) => (Reply::ok().with("haStatus", ha_status(&state)), Outcome::Ok),
                    Err(e) => (error_reply(&e), outcome_of(&e)),
                }
            })
        }
        Ok((ApiRequest::Change(cmd), notes)) => {
            for note in &notes {
                tracing::warn!(%note, "accepted with a change");
            }
            let is_init = matches!(cmd, crate::state::Command::Init { .. });
            // The sender is the management node (or a proxy of it): a guest may not be it.
            let origin = match peer.ip() {
                std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
                _ => None,
            };
            let pending = state.agent.submit_from(cmd, route.path, origin);
            let state = Arc::clone(state);
            Box::pin(async move {
                let (reply, outcome) = match pending.await {
                    Ok(()) if is_init => (
                        Reply::ok()
                            .with("version", state.version)
                            .with("md5", state.md5.clone()),
                        Outcome::Ok,
                    ),
                    Ok(()) => (Reply::ok(), Outcome::Ok),
                    Err(e) => (error_reply(&e), outcome_of(&e)),
                };
                // Extra reply keys are allowed; a string, as the node may declare it one.
                if notes.is_empty() {
                    (reply, outcome)
                } else {
                    (reply.with("notes", notes.join("; ")), outcome)
                }
            })
        }
    }
}

fn error_reply(e: &ApplyError) -> Reply {
    Reply::fail(e.to_string())
}

/// Refused before any change (the request), or failed on the system's side.
fn outcome_of(e: &ApplyError) -> Outcome {
    match e {
        ApplyError::Invalid(_) | ApplyError::Unsupported { .. } => Outcome::Refused,
        ApplyError::Backend { .. }
        | ApplyError::Persist { .. }
        | ApplyError::Unwritable(_)
        | ApplyError::ShuttingDown => Outcome::Failed,
    }
}

/// What the writer published, without waiting for it.
fn writer_view(state: &ApiState) -> WriterView {
    let snap = state.agent.snapshot();
    WriterView {
        counts: snap.counts,
        journal_bytes: snap.journal.0,
        compactions: snap.journal.1,
        queue_depth: state.agent.queue_depth(),
        drift_repairs: state.health.drift().repairs,
    }
}

fn metrics_response(state: &ApiState) -> Resp {
    let text = state.metrics.render(&writer_view(state));
    let mut r = respond(StatusCode::OK, text.into_bytes(), false);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}

fn status_response(state: &ApiState) -> Resp {
    let view = writer_view(state);
    let (healthy, _) = state.health.report();
    let drift = state.health.drift();
    let report = crate::status::Report {
        uuid: state.agent.snapshot().uuid.clone(),
        version: state.version.to_string(),
        md5: state.md5.clone(),
        healthy,
        problems: state
            .health
            .problems()
            .into_iter()
            .map(|(source, reason)| crate::status::Problem { source, reason })
            .collect(),
        counts: view.counts,
        queue_depth: view.queue_depth,
        journal_bytes: view.journal_bytes,
        compactions: view.compactions,
        drift_repairs: drift.repairs,
        last_drift: drift.last,
        recent: state.recent.list(),
    };
    match serde_json::to_vec(&report) {
        Ok(body) => respond(StatusCode::OK, body, true),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("status report: {e}"),
        ),
    }
}

/// This node's HA role as the management node reads it (`NoHa` without HA).
fn ha_status(state: &ApiState) -> &'static str {
    state
        .agent
        .snapshot()
        .ha_status
        .map_or("NoHa", crate::state::ha::Role::wire)
}

fn ping_reply(state: &ApiState) -> Reply {
    let snap = state.agent.snapshot();
    let (healthy, detail) = state.health.report();
    let mut reply = Reply::ok();
    if let Some(uuid) = &snap.uuid {
        reply = reply.with("uuid", uuid.clone());
    }
    let drift = state.health.drift();
    reply = reply
        .with("version", state.version)
        .with("md5", state.md5.clone())
        .with("healthy", healthy)
        .with("healthDetail", detail)
        .with("driftRepairs", drift.repairs)
        .with("haStatus", ha_status(state));
    if let Some((at, what)) = drift.last {
        reply = reply.with("lastDrift", format!("{what} (at {at})"));
    }
    reply
}
