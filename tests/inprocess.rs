//! The agent core in process, root-free: the real HTTP server, writer and store over backends
//! that record what they are asked and can be told to fail. What the kernel does with a change
//! is tested in the namespace tests; here, which backends a change reaches, in which order,
//! and what is undone when one of them fails.

mod common;

use common::fixture;
use common::mgmt::{MgmtNode, assert_fails, assert_ok};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use vr_agent::agent::Agent;
use vr_agent::backend::{Backend, BackendError};
use vr_agent::config::Config;
use vr_agent::health::Health;
use vr_agent::server::{Around, Listeners, run};
use vr_agent::state::store::Store;
use vr_agent::state::{Change, DesiredState, Feature, Parts};

/// What the fake backends were asked, in order, across all of them.
type Log = Arc<Mutex<Vec<String>>>;

/// A backend that records each call and fails the commands it is told to.
struct Recording {
    name: &'static str,
    features: &'static [Feature],
    parts: Parts,
    log: Log,
    /// Fail `apply` of commands named here as `<backend>:<command>` (`nat:create_eip`).
    fail: Arc<Mutex<Vec<&'static str>>>,
}

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
        let key = format!("{}:{name}", self.name);
        if self.fail.lock().unwrap().contains(&key.as_str()) {
            return Err(BackendError::new(format!("{} refused {name}", self.name)));
        }
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

struct InProcess {
    addr: SocketAddr,
    log: Log,
    fail: Arc<Mutex<Vec<&'static str>>>,
    state_dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

impl InProcess {
    /// The agent with two recording backends: "links" (nics, VIPs) and "nat" (nics, EIPs,
    /// port forwards), in that order, like the agent's own engines.
    async fn start() -> InProcess {
        use clap::Parser;
        let state_dir = tempfile::tempdir().unwrap();
        let run_dir = tempfile::tempdir().unwrap();
        let config = Cli::parse_from([
            "test",
            "--vr-listen",
            "127.0.0.1:0",
            "--appliance-listen",
            "127.0.0.1:0",
            "--callback-allow",
            "127.0.0.0/8",
            "--verify-secs",
            "0",
            "--state-dir",
            state_dir.path().to_str().unwrap(),
            "--run-dir",
            run_dir.path().to_str().unwrap(),
        ])
        .config;
        let log: Log = Arc::default();
        let fail: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let backend = |name, features, parts| Recording {
            name,
            features,
            parts,
            log: Arc::clone(&log),
            fail: Arc::clone(&fail),
        };
        let backends = vec![
            backend("links", &[Feature::Links], Parts::NICS | Parts::VIPS),
            backend(
                "nat",
                &[Feature::Nat, Feature::Firewall],
                Parts::NICS | Parts::EIPS | Parts::PORT_FORWARDS,
            ),
        ];
        let health = Arc::new(Health::default());
        let (store, loaded) = Store::open(&config.state_dir);
        let agent = Agent::new(loaded.state, store, backends, Arc::clone(&health), false);
        let listeners = Listeners::bind(&config).await.unwrap();
        let addr = listeners.addrs().unwrap().0;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let around = Around {
                health,
                md5: "0123456789abcdef0123456789abcdef".into(),
                metrics: vr_agent::metrics::Metrics::default(),
                watch_drift: false,
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
            state_dir,
            stop: Some(stop),
            served: Some(served),
        };
        // the start-up re-apply reconciles every backend once
        me.wait_log(2).await;
        me.log.lock().unwrap().clear();
        me
    }

    async fn wait_log(&self, n: usize) {
        for _ in 0..200 {
            if self.log.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("log: {:?}", self.log.lock().unwrap());
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.served.take() {
            t.await.unwrap();
        }
        self.state_dir
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_command_reaches_the_backends_whose_parts_it_writes_in_order() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mn = MgmtNode::start().await;
        assert_ok(
            &mn.call(agent.addr, "/createeip", &fixture("createeip"))
                .await,
        );
        assert_eq!(agent.take_log(), ["nat apply create_eip eips 0->1"]);
        assert_ok(
            &mn.call(agent.addr, "/createvip", &fixture("createvip"))
                .await,
        );
        assert_eq!(agent.take_log(), ["links apply create_vips eips 1->1"]);
        assert_ok(
            &mn.call(agent.addr, "/configurenic", &fixture("configurenic"))
                .await,
        );
        assert_eq!(
            agent.take_log(),
            [
                "links apply configure_nics eips 1->1",
                "nat apply configure_nics eips 1->1"
            ]
        );
        // /init concerns no backend's parts, but the management node takes charge again:
        // every backend re-applies the whole state
        assert_ok(&mn.call(agent.addr, "/init", &fixture("init")).await);
        assert_eq!(
            agent.take_log(),
            [
                "links reconcile nics 1 eips 1",
                "nat reconcile nics 1 eips 1"
            ]
        );
        agent.stop().await;
    });
}

#[test]
fn a_failing_backend_rolls_back_those_that_followed_and_nothing_is_stored() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mn = MgmtNode::start().await;
        assert_ok(
            &mn.call(agent.addr, "/createeip", &fixture("createeip"))
                .await,
        );
        agent.take_log();
        agent.fail.lock().unwrap().push("nat:configure_nics");
        let reply = mn
            .call(agent.addr, "/configurenic", &fixture("configurenic"))
            .await;
        assert_fails(&reply, "nat refused configure_nics; nothing was changed");
        // links followed, nat refused: links is brought back to the state before (no nic)
        assert_eq!(
            agent.take_log(),
            [
                "links apply configure_nics eips 1->1",
                "nat apply configure_nics eips 1->1",
                "links reconcile nics 0 eips 1"
            ]
        );
        // a rollback that fails too is said, and shows in /ping
        agent
            .fail
            .lock()
            .unwrap()
            .extend(["nat:configure_nics", "links:reconcile"]);
        let reply = mn
            .call(agent.addr, "/configurenic", &fixture("configurenic"))
            .await;
        assert_fails(
            &reply,
            "nat refused configure_nics; bringing the other parts back failed too (interfaces: links could not reconcile)",
        );
        let ping = mn.call(agent.addr, "/ping", &json!({})).await;
        assert_eq!(ping["healthy"], json!(false), "{ping}");
        agent.fail.lock().unwrap().clear();
        // the refused commands were not journaled: a restart loads the EIP and no nic
        let dir = agent.stop().await;
        let (_store, loaded) = Store::open(dir.path());
        assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
        assert_eq!(loaded.state.eips.len(), 1);
        assert!(loaded.state.nics.is_empty());
    });
}

#[test]
fn a_feature_without_a_backend_is_refused_and_changes_nothing() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mn = MgmtNode::start().await;
        // no backend owns DHCP here
        let reply = mn.call(agent.addr, "/adddhcp", &fixture("adddhcp")).await;
        assert_fails(&reply, "not supported");
        assert!(agent.take_log().is_empty());
        let dir = agent.stop().await;
        let (_store, loaded) = Store::open(dir.path());
        assert!(loaded.state.dhcp_hosts.is_empty());
    });
}

#[test]
fn commands_in_flight_reach_the_backends_in_arrival_order() {
    runtime().block_on(async {
        let agent = InProcess::start().await;
        let mn = MgmtNode::start().await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        // acked at once, applied in the order they arrived
        for i in 0..50u32 {
            let body = json!({"eip": {"vipIp": format!("10.10.{}.{}", 1 + i / 200, 1 + i % 200),
                "privateMac": "fa:7e:4b:ad:11:02", "guestIp": format!("172.20.0.{}", 2 + i),
                "snatInboundTraffic": false}});
            let r = client
                .post(format!("http://{}/createeip", agent.addr))
                .header("taskuuid", format!("order{i:03}"))
                .header("callbackurl", &mn.callback_url)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
        agent.wait_log(50).await;
        let log = agent.take_log();
        let expected: Vec<String> = (0..50)
            .map(|i| format!("nat apply create_eip eips {i}->{}", i + 1))
            .collect();
        assert_eq!(log, expected);
        agent.stop().await;
    });
}
