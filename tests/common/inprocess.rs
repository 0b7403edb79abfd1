//! The agent core in process, root-free: the real HTTP server, writer and store over backends
//! that record what they are asked, can be told to fail, and can be held inside `apply` until
//! released.

use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use vr_agent::agent::Agent;
use vr_agent::backend::{Backend, BackendError};
use vr_agent::config::Config;
use vr_agent::health::Health;
use vr_agent::server::{Around, Listeners, run};
use vr_agent::state::ha::Role;
use vr_agent::state::store::Store;
use vr_agent::state::{Change, DesiredState, Feature, Parts};

/// What the fake backends were asked, in order, across all of them.
pub type Log = Arc<Mutex<Vec<String>>>;

/// Commands to fail, as `<backend>:<command>` (`nat:create_eip`, a refusal that changed
/// nothing), `<backend>:<command>:partial` (a failure that may have changed part of the
/// system) or `<backend>:reconcile`.
pub type Fail = Arc<Mutex<Vec<&'static str>>>;

/// When set, the next `apply` of any backend waits (after logging) until this is released.
pub type Hold = Arc<Mutex<Option<oneshot::Receiver<()>>>>;

/// A backend that records each call and fails the commands it is told to.
pub struct Recording {
    name: &'static str,
    features: &'static [Feature],
    parts: Parts,
    log: Log,
    fail: Fail,
    hold: Hold,
    commands: Commands,
}

/// Every command a backend was asked to apply, as JSON, in order (each backend's calls).
pub type Commands = Arc<Mutex<Vec<Value>>>;

fn command_name(change: &Change<'_>) -> String {
    serde_json::to_value(change.cmd).expect("a command serializes")["cmd"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

impl Backend for Recording {
    fn features(&self) -> &'static [Feature] {
        self.features
    }

    fn concerns(&self, parts: Parts) -> bool {
        parts.intersects(self.parts)
    }

    async fn apply(&mut self, change: &Change<'_>) -> Result<(), BackendError> {
        let name = command_name(change);
        self.log.lock().unwrap().push(format!(
            "{} apply {name} eips {}->{}",
            self.name,
            change.before.eips.len(),
            change.after.eips.len()
        ));
        self.commands
            .lock()
            .unwrap()
            .push(serde_json::to_value(change.cmd).expect("a command serializes"));
        let held = self.hold.lock().unwrap().take();
        if let Some(release) = held {
            let _ = release.await;
        }
        let key = format!("{}:{name}", self.name);
        if self.fail.lock().unwrap().contains(&key.as_str()) {
            return Err(BackendError::new(format!("{} refused {name}", self.name)));
        }
        if self
            .fail
            .lock()
            .unwrap()
            .contains(&format!("{key}:partial").as_str())
        {
            return Err(BackendError::Other {
                message: format!("{} stopped halfway through {name}", self.name),
                unchanged: false,
            });
        }
        Ok(())
    }

    async fn set_role(&mut self, _state: &DesiredState, role: Role) -> Result<(), BackendError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} role {}", self.name, role.wire()));
        Ok(())
    }

    async fn restart_ha(&mut self, _state: &DesiredState) -> Result<(), BackendError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} restart_ha", self.name));
        Ok(())
    }

    async fn reconcile(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        self.log.lock().unwrap().push(format!(
            "{} reconcile nics {} eips {}",
            self.name,
            state.nics.len(),
            state.eips.len()
        ));
        let key = format!("{}:reconcile", self.name);
        if self.fail.lock().unwrap().contains(&key.as_str()) {
            return Err(BackendError::new(format!(
                "{} could not reconcile",
                self.name
            )));
        }
        Ok(())
    }
}

/// The agent served in this process.
pub struct InProcess {
    /// The management node's port.
    pub addr: SocketAddr,
    /// Calls of the backends.
    pub log: Log,
    /// Calls to fail.
    pub fail: Fail,
    /// The commands the backends applied.
    pub commands: Commands,
    /// keepalived's side, with [`Options::ha`]: role events as the fifo reader sends them.
    pub ha_events: Option<mpsc::UnboundedSender<(Role, String)>>,
    hold: Hold,
    state_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

/// How to start an [`InProcess`] agent.
#[derive(Default)]
pub struct Options<'a> {
    /// Command-line flags added to (and overriding) the defaults.
    pub args: &'a [&'a str],
    /// Called with the state directory before the store opens it.
    pub prepare: Option<&'a dyn Fn(&Path)>,
    /// Also a recording "ha" backend (last, like the agent's engines), links and nat
    /// concerned by HA settings, and a channel of role events.
    pub ha: bool,
}

impl InProcess {
    /// The agent with two recording backends: "links" (nics, VIPs) and "nat" (nics, EIPs,
    /// port forwards), in that order, like the agent's own engines.
    pub async fn start() -> InProcess {
        Self::start_with(Options::default()).await
    }

    /// [`InProcess::start`] with options.
    pub async fn start_with(options: Options<'_>) -> InProcess {
        use clap::Parser;
        let state_dir = tempfile::tempdir().unwrap();
        let run_dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "test",
            "--vr-listen",
            "127.0.0.1:0",
            "--appliance-listen",
            "127.0.0.1:0",
            "--verify-secs",
            "0",
            // no nic of this name: only the sender and --callback-allow are callback targets
            "--mgmt-nic",
            "vrtest-nonic",
            "--state-dir",
            state_dir.path().to_str().unwrap(),
            "--run-dir",
            run_dir.path().to_str().unwrap(),
        ];
        args.extend_from_slice(options.args);
        let config = Cli::parse_from(args).config;
        if let Some(prepare) = options.prepare {
            prepare(state_dir.path());
        }
        let log: Log = Arc::default();
        let fail: Fail = Arc::default();
        let hold: Hold = Arc::default();
        let commands: Commands = Arc::default();
        let backend = |name, features, parts| Recording {
            name,
            features,
            parts,
            log: Arc::clone(&log),
            fail: Arc::clone(&fail),
            hold: Arc::clone(&hold),
            commands: Arc::clone(&commands),
        };
        let ha_parts = if options.ha { Parts::HA } else { Parts::NONE };
        let mut backends = vec![
            backend(
                "links",
                &[Feature::Links],
                Parts::NICS | Parts::VIPS | ha_parts,
            ),
            backend(
                "nat",
                &[Feature::Nat, Feature::Firewall],
                Parts::NICS | Parts::EIPS | Parts::PORT_FORWARDS | ha_parts,
            ),
        ];
        let (ha_events, ha_rx) = if options.ha {
            backends.push(backend("ha", &[Feature::Ha], Parts::HA | Parts::NICS));
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let count = backends.len();
        let health = Arc::new(Health::default());
        let (store, loaded) = Store::open(&config.state_dir);
        let agent = Agent::new(loaded.state, store, backends, Arc::clone(&health), false);
        let listeners = Listeners::bind(&config).await.unwrap();
        let addr = listeners.addrs().unwrap().0;
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let around = Around {
                health,
                md5: "0123456789abcdef0123456789abcdef".into(),
                metrics: vr_agent::metrics::Metrics::default(),
                watch_drift: false,
                ha_events: ha_rx,
            };
            run(listeners, agent, &config, around, async {
                let _ = stopped.await;
            })
            .await;
            drop(run_dir);
        });
        let me = InProcess {
            addr,
            log,
            fail,
            commands,
            ha_events,
            hold,
            state_dir,
            stop: Some(stop),
            served: Some(served),
        };
        // the start-up re-apply reconciles every backend once
        me.wait_log(count).await;
        me.log.lock().unwrap().clear();
        me
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// Makes the next backend `apply` wait until the returned sender is used (or dropped).
    pub fn hold_next(&self) -> oneshot::Sender<()> {
        let (release, held) = oneshot::channel();
        *self.hold.lock().unwrap() = Some(held);
        release
    }

    /// Waits until the backends were called `n` times since the last [`InProcess::take_log`].
    pub async fn wait_log(&self, n: usize) {
        for _ in 0..1000 {
            if self.log.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("log: {:?}", self.log.lock().unwrap());
    }

    /// The calls so far, emptying the log.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// Asks the agent to shut down without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Waits until `run` returned.
    pub async fn stopped(&mut self) {
        if let Some(t) = self.served.take() {
            t.await.unwrap();
        }
    }

    /// Shuts the agent down and returns its state directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.begin_stop();
        self.stopped().await;
        self.state_dir
    }

    /// The value of the metric line starting with `series` in `GET /metrics` (0 if absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the metric `series` reaches at least `at_least`.
    pub async fn wait_metric(&self, series: &str, at_least: f64) {
        for _ in 0..1000 {
            if self.metric(series).await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{series} never reached {at_least}");
    }
}

/// A callback as it arrived: its headers (lower-case names) and JSON body.
#[derive(Debug)]
pub struct Seen {
    /// Path of the request.
    pub path: String,
    /// Headers, lower-case names.
    pub headers: HashMap<String, String>,
    /// Body as JSON.
    pub body: Value,
}

/// A callback receiver that keeps everything it receives, headers included.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Receiver {
    /// Listens on `addr` (port 0 for any).
    pub async fn start(addr: SocketAddr) -> Receiver {
        use http_body_util::{BodyExt, Full};
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.as_str().to_string(), v.to_str().unwrap().to_string())
                                    })
                                    .collect();
                                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                                let _ = tx.send(Seen {
                                    path,
                                    headers,
                                    body,
                                });
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    bytes::Bytes::new(),
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, seen }
    }

    /// The callback URL of this receiver.
    pub fn url(&self) -> String {
        format!("http://{}/zstack/asyncrest/callback", self.addr)
    }

    /// The next callback (panics after 30 s).
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(30), self.seen.recv())
            .await
            .expect("no callback within 30 s")
            .expect("receiver stopped")
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A multi-threaded runtime like the agent's.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
