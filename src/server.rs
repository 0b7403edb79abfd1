//! `vr-agent serve`: load the state, re-apply it, bind, serve until shutdown, drain.

use crate::agent::{Agent, HEALTH_STATE, HEALTH_STORE};
use crate::api::conns::{Admission, Conns, Limits, Watched};
use crate::api::inflight::InFlight;
use crate::api::{self, ApiState};
use crate::backend::Backend;
use crate::config::Config;
use crate::health::Health;
use crate::state::store::Store;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The run directory is unusable.
    #[error("run directory {path}: {source}")]
    RunDir {
        /// The directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The backends of every feature built into this agent.
pub fn backends(config: &Config, health: &Arc<Health>) -> Vec<Box<dyn Backend>> {
    vec![
        // Interfaces first: the others render from nic names and addresses.
        Box::new(crate::link::LinksBackend::new(
            crate::bootstrap::cache_path(&config.state_dir),
            Arc::clone(health),
        )),
        Box::new(crate::nat::NatBackend::new(config, Arc::clone(health))),
        Box::new(crate::dnsmasq::DnsmasqBackend::new(
            config
                .dnsmasq_dir
                .clone()
                .unwrap_or_else(|| config.run_dir.join("dnsmasq")),
            config.dnsmasq_bin.clone(),
            Arc::clone(health),
        )),
        Box::new(crate::lb::LbBackend::new(
            config
                .haproxy_dir
                .clone()
                .unwrap_or_else(|| config.run_dir.join("haproxy")),
            config.haproxy_bin.clone(),
            Arc::clone(health),
        )),
    ]
}

/// Runs the agent until `shutdown` resolves, then drains and returns.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let health = Arc::new(Health::default());
    let md5 = crate::md5sum::md5_hex(Path::new("/proc/self/exe")).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot read /proc/self/exe for its md5");
        String::new()
    });
    std::fs::create_dir_all(&config.run_dir).map_err(|source| ServeError::RunDir {
        path: config.run_dir.display().to_string(),
        source,
    })?;
    let (store, loaded) = Store::open(&config.state_dir);
    if let Some(problem) = &loaded.problem {
        if loaded.lossy {
            tracing::error!(%problem, "stored state not read whole; preserving the system until /init");
            health.set(
                HEALTH_STATE,
                format!(
                    "{problem}; preserving the kernel and dnsmasq (nothing is removed) until /init"
                ),
            );
        } else {
            tracing::warn!(%problem, "stored state recovered");
            health.set(HEALTH_STATE, problem.clone());
        }
    }
    if let Some(why) = store.blocked() {
        health.set(
            HEALTH_STORE,
            format!("{why}; commands that change state are refused"),
        );
    }
    tracing::info!(state = %loaded.state.summary(), "loaded desired state");
    let backends = backends(&config, &health);
    let agent = Agent::new(
        loaded.state,
        store,
        backends,
        Arc::clone(&health),
        loaded.lossy,
    )
    .with_facts(crate::facts::FactsSource::from_config(&config));
    // Serve first: the listeners are bound and `/echo`, `/ping` answered while the writer
    // re-applies the stored state; commands queue behind the re-apply.
    let vr = TcpListener::bind(config.vr_listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.vr_listen,
            source,
        })?;
    let vr_addr = vr.local_addr().map_err(|source| ServeError::Bind {
        addr: config.vr_listen,
        source,
    })?;
    let appliance = if config.appliance_listen == config.vr_listen {
        None
    } else {
        Some(
            TcpListener::bind(config.appliance_listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: config.appliance_listen,
                    source,
                })?,
        )
    };
    let appliance_addr = match &appliance {
        Some(l) => l.local_addr().map_err(|source| ServeError::Bind {
            addr: config.appliance_listen,
            source,
        })?,
        None => vr_addr,
    };
    let listeners =
        serde_json::json!({"vr": vr_addr.to_string(), "appliance": appliance_addr.to_string()});
    let listeners_path = config.run_dir.join("listeners.json");
    if let Err(e) =
        crate::state::store::write_atomic(&listeners_path, listeners.to_string().as_bytes())
    {
        tracing::warn!(error = %e, "cannot record the listener addresses");
    }

    let (handle, writer) = agent.spawn_reapplying();
    let verify_every = match config.verify_secs {
        0 => std::time::Duration::from_secs(365 * 24 * 3600),
        n => std::time::Duration::from_secs(n),
    };
    let drift_watch = crate::drift::spawn(handle.clone(), verify_every);
    let max = crate::api::conns::fit_fd_limit(config.max_connections as usize);
    let conns = Conns::new(Limits {
        header: Duration::from_secs(config.header_timeout_secs),
        idle: Duration::from_secs(config.idle_timeout_secs),
        body: Duration::from_secs(config.body_timeout_secs),
        max,
        reserve: Limits::reserve_for(max),
    });
    let inflight = InFlight::default();
    let state = Arc::new(ApiState {
        agent: handle,
        health,
        md5,
        version: env!("CARGO_PKG_VERSION"),
        max_body: config.max_body,
        body_timeout: Duration::from_secs(config.body_timeout_secs),
        callbacks: crate::api::callback::CallbackPolicy::new(
            config.mgmt_nic.clone(),
            config.callback_allow.clone(),
            Some(crate::bootstrap::cache_path(&config.state_dir)),
        ),
        callback_retry: std::time::Duration::from_secs(config.callback_retry_secs),
        inflight: inflight.clone(),
        tasks: Mutex::new(Default::default()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_tasks = vec![tokio::spawn(accept_loop(
        vr,
        Arc::clone(&state),
        Arc::clone(&conns),
        stop_rx.clone(),
    ))];
    if let Some(l) = appliance {
        accept_tasks.push(tokio::spawn(accept_loop(
            l,
            Arc::clone(&state),
            Arc::clone(&conns),
            stop_rx.clone(),
        )));
    }
    tracing::info!(%vr_addr, %appliance_addr, "serving");
    crate::notify::sd_notify("READY=1");

    shutdown.await;
    tracing::info!(in_flight = inflight.count(), "shutting down");
    crate::notify::sd_notify("STOPPING=1");
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    drop(state);
    drift_watch.abort();
    let drain = async {
        conns.closed().await;
        inflight.idle().await;
    };
    if tokio::time::timeout(
        std::time::Duration::from_secs(config.shutdown_grace_secs),
        drain,
    )
    .await
    .is_err()
    {
        tracing::warn!(
            in_flight = inflight.count(),
            grace_s = config.shutdown_grace_secs,
            "grace period over; exiting with work in flight"
        );
        return Ok(());
    }
    if tokio::time::timeout(std::time::Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        tracing::warn!("writer did not stop in time");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<ApiState>,
    conns: Arc<Conns>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE: the connection stays queued; give closes a moment
                tracing::warn!(error = %e, open = conns.open(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = conns.admit();
        match slot.admission {
            Admission::Normal => {}
            Admission::Overflow => {
                tracing::debug!(%peer, open = conns.open(), "connection cap reached; /ping and /echo only");
            }
            Admission::Refused => {
                tracing::debug!(%peer, open = conns.open(), "connection cap and reserve reached; closed");
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            peer,
            slot,
            Arc::clone(&state),
            conns.limits,
            stop.clone(),
        ));
    }
}

/// Serves one connection and closes it when idle or dribbling past the limits, when evicted,
/// or (gracefully, after the request running) at shutdown.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: crate::api::conns::Slot,
    state: Arc<ApiState>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let overflow = slot.admission == Admission::Overflow;
    let conn = Arc::clone(&slot.conn);
    let svc = service_fn(move |req| {
        let guard = conn.request();
        let state = Arc::clone(&state);
        async move {
            let resp = if overflow {
                api::handle_overflow(state, peer, req).await
            } else {
                api::handle(state, peer, req).await
            };
            drop(guard);
            resp
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // a backstop: our own watchdog below closes idle and dribbling connections earlier
        .header_read_timeout(limits.idle + limits.header)
        .keep_alive(!overflow);
    let io = TokioIo::new(Watched::new(stream, Arc::clone(&slot.conn)));
    let http = builder.serve_connection(io, svc);
    tokio::pin!(http);
    // After a close was asked for: when the connection is dropped even if not done.
    let mut force_at: Option<Instant> = None;
    let mut stopping = false;
    let recheck = limits
        .idle
        .min(limits.header)
        .max(Duration::from_millis(100));
    loop {
        let wake = force_at
            .or_else(|| slot.conn.deadline(&limits))
            .unwrap_or_else(|| Instant::now() + recheck);
        tokio::select! {
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                http.as_mut().graceful_shutdown();
            }
            _ = slot.conn.evicted(), if force_at.is_none() => {
                tracing::debug!(%peer, "idle connection closed for a new one (connection cap)");
                http.as_mut().graceful_shutdown();
                force_at = Some(Instant::now() + Duration::from_secs(1));
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if let Some(t) = force_at {
                    if now >= t {
                        tracing::debug!(%peer, "connection dropped");
                        return;
                    }
                } else if slot.conn.deadline(&limits).is_some_and(|d| now >= d) {
                    tracing::debug!(%peer, "idle or incomplete request: connection closed");
                    http.as_mut().graceful_shutdown();
                    force_at = Some(now + Duration::from_secs(1));
                }
            }
        }
    }
}
