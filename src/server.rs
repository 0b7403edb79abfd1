//! `vr-agent serve`: load the state, re-apply it, bind, serve until shutdown, drain.

use crate::agent::{Agent, HEALTH_STATE, HEALTH_STORE};
use crate::api::conns::{Admission, Conns, Limits, Watched};
use crate::api::inflight::InFlight;
use crate::api::{self, ApiState};
use crate::backend::{Backend, Engine};
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
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

/// The backends of every feature built into this agent; HA role events (keepalived's
/// transitions) go to `ha_events`.
pub fn backends(
    config: &Config,
    health: &Arc<Health>,
    metrics: &Metrics,
    ha_events: crate::ha::process::Events,
) -> Vec<Engine> {
    vec![
        // Interfaces first: the others render from nic names and addresses.
        Engine::Links(crate::link::LinksBackend::new(
            crate::bootstrap::cached_nics(&config.state_dir),
            Arc::clone(health),
        )),
        Engine::Nat(
            crate::nat::NatBackend::new(config, Arc::clone(health)).with_metrics(metrics.clone()),
        ),
        Engine::Dnsmasq(
            crate::dnsmasq::DnsmasqBackend::new(
                config
                    .dnsmasq_dir
                    .clone()
                    .unwrap_or_else(|| config.run_dir.join("dnsmasq")),
                config.dnsmasq_bin.clone(),
                Arc::clone(health),
            )
            .with_metrics(metrics.clone()),
        ),
        Engine::Lb(crate::lb::LbBackend::new(
            config
                .haproxy_dir
                .clone()
                .unwrap_or_else(|| config.run_dir.join("haproxy")),
            config.haproxy_bin.clone(),
            Arc::clone(health),
        )),
        // Last: it follows the data plane the others set up.
        Engine::Ha(crate::ha::HaBackend::new(
            config
                .keepalived_dir
                .clone()
                .unwrap_or_else(|| config.run_dir.join("keepalived")),
            crate::ha::Binaries {
                keepalived: config.keepalived_bin.clone(),
                conntrackd: config.conntrackd_bin.clone(),
                ping: config.ping_bin.clone(),
            },
            Arc::clone(health),
            ha_events,
        )),
    ]
}

/// The listeners the agent serves on: the management node's and the appliance port (the same
/// socket when both addresses are equal).
pub struct Listeners {
    /// The management node's port (7272).
    pub vr: TcpListener,
    /// The appliance port (7759), when it differs.
    pub appliance: Option<TcpListener>,
}

impl Listeners {
    /// Binds both addresses of `config`.
    pub async fn bind(config: &Config) -> Result<Listeners, ServeError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })
        };
        let vr = bind(config.vr_listen).await?;
        let appliance = if config.appliance_listen == config.vr_listen {
            None
        } else {
            Some(bind(config.appliance_listen).await?)
        };
        Ok(Listeners { vr, appliance })
    }

    /// The bound addresses: (management node's, appliance).
    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        let vr = self.vr.local_addr()?;
        let appliance = match &self.appliance {
            Some(l) => l.local_addr()?,
            None => vr,
        };
        Ok((vr, appliance))
    }
}

/// Runs the agent until `shutdown` resolves, then drains and returns.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let health = Arc::new(Health::default());
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
    let md5 = crate::md5sum::md5_hex(Path::new("/proc/self/exe")).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot read /proc/self/exe for its md5");
        String::new()
    });
    let metrics = Metrics::new(env!("CARGO_PKG_VERSION"), &md5);
    let (ha_tx, ha_rx) = tokio::sync::mpsc::unbounded_channel();
    let backends = backends(&config, &health, &metrics, ha_tx);
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
    let listeners = Listeners::bind(&config).await?;
    let (vr_addr, appliance_addr) = listeners.addrs().map_err(|source| ServeError::Bind {
        addr: config.vr_listen,
        source,
    })?;
    let recorded =
        serde_json::json!({"vr": vr_addr.to_string(), "appliance": appliance_addr.to_string()});
    let listeners_path = config.run_dir.join("listeners.json");
    if let Err(e) = crate::files::replace(
        &listeners_path,
        recorded.to_string().as_bytes(),
        0o644,
        crate::files::Durability::Synced,
    ) {
        tracing::warn!(error = %e, "cannot record the listener addresses");
    }
    let around = Around {
        health,
        md5,
        metrics,
        watch_drift: true,
        ha_events: Some(ha_rx),
    };
    run(listeners, agent, &config, around, shutdown).await;
    Ok(())
}

/// What [`run`] serves besides the agent.
pub struct Around {
    /// Current problems, shared with the agent.
    pub health: Arc<Health>,
    /// Hex md5 of the running binary, for `/ping`.
    pub md5: String,
    /// The agent's metrics (`/metrics`).
    pub metrics: Metrics,
    /// Follow netlink notifications and verify periodically ([`crate::drift`]); off for
    /// backends that do not touch the kernel.
    pub watch_drift: bool,
    /// keepalived's transitions (from the HA backend), handed to the writer in order.
    pub ha_events: Option<tokio::sync::mpsc::UnboundedReceiver<(crate::state::ha::Role, String)>>,
}

/// Serves `listeners` with `agent` (which first re-applies its state) until `shutdown`
/// resolves, then drains: connections and callbacks within the grace period, then the writer.
/// Used by [`serve`] with the agent's engines, and by tests with backends of their own.
pub async fn run<B: Backend + 'static>(
    listeners: Listeners,
    agent: Agent<B>,
    config: &Config,
    around: Around,
    shutdown: impl Future<Output = ()>,
) {
    let Around {
        health,
        md5,
        metrics,
        watch_drift,
        ha_events,
    } = around;
    let (vr_addr, appliance_addr) = match listeners.addrs() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "listeners without an address");
            return;
        }
    };
    let (handle, writer) = agent.spawn_reapplying();
    let ha_forward = ha_events.map(|mut rx| {
        let handle = handle.clone();
        tokio::spawn(async move {
            while let Some((role, why)) = rx.recv().await {
                handle.vrrp(role, why);
            }
        })
    });
    let verify_every = match config.verify_secs {
        0 => std::time::Duration::from_secs(365 * 24 * 3600),
        n => std::time::Duration::from_secs(n),
    };
    let dnsmasq_paths = crate::dnsmasq::render::Paths::new(
        config
            .dnsmasq_dir
            .clone()
            .unwrap_or_else(|| config.run_dir.join("dnsmasq")),
    );
    let mut file_dirs = vec![
        dnsmasq_paths
            .conf()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    ];
    file_dirs.extend(dnsmasq_paths.dirs());
    let drift_watch = watch_drift
        .then(|| crate::drift::spawn(handle.clone(), verify_every, file_dirs, metrics.clone()));
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
        metrics,
        recent: Default::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_tasks = vec![tokio::spawn(accept_loop(
        listeners.vr,
        Arc::clone(&state),
        Arc::clone(&conns),
        stop_rx.clone(),
    ))];
    if let Some(l) = listeners.appliance {
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
    if let Some(w) = drift_watch {
        w.abort();
    }
    if let Some(f) = ha_forward {
        f.abort();
    }
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
        return;
    }
    if tokio::time::timeout(std::time::Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        tracing::warn!("writer did not stop in time");
    }
    tracing::info!("stopped");
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
