//! Load balancing on haproxy: listeners of the desired state -> [`render`] (the whole
//! haproxy.cfg, pure) -> checked with `haproxy -c` on a candidate file (a refused config
//! leaves the running one serving) -> swapped in atomically -> a reload through the master
//! (the new worker takes over the listening sockets, so no connection is refused), or, for
//! weight-only changes, `set weight` on the runtime socket without a reload. haproxy runs
//! under the shared [`Supervisor`]. The appliance firewall accepts each serving listener's
//! `vip . tcp . port` through one set of the NAT backend's filter table.

pub mod haproxy;
pub mod render;

use crate::backend::{Backend, BackendError};
use crate::files::{self, Durability, WriteError};
use crate::health::Health;
use crate::nat::model::{Elem, lb_elements};
use crate::nat::nft::NftError;
use crate::state::lb::{LbKey, LbListener};
use crate::state::{Change, DesiredState, Feature, Parts};
use crate::supervisor::{Engine, StartError, Supervisor};
use haproxy::HaproxyError;
use render::{Paths, backend_name, server_name};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Health source of the haproxy process (the supervisor's, named after the engine).
pub const HEALTH_SOURCE: &str = "haproxy";

/// Why a change of the listeners could not be made. A failure of haproxy or of its files
/// leaves the file on disk and what haproxy serves as they were.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// haproxy refused or failed.
    #[error(transparent)]
    Haproxy(#[from] HaproxyError),
    /// A file of ours could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The firewall did not take the listeners' ports.
    #[error("the firewall did not take the listeners' ports")]
    Firewall(#[source] NftError),
    /// The haproxy process did not start.
    #[error("haproxy did not start")]
    Start(#[source] StartError),
    /// haproxy did not follow, and the firewall change made for it could not be taken back.
    #[error(transparent)]
    FirewallNotUndone(Box<LbError>),
}

impl LbError {
    /// True when the firewall, haproxy's file and what it serves are as they were.
    pub fn left_unchanged(&self) -> bool {
        match self {
            LbError::Haproxy(_) | LbError::Write(_) | LbError::Start(_) => true,
            LbError::Firewall(e) => e.left_unchanged(),
            LbError::FirewallNotUndone(_) => false,
        }
    }
}

/// haproxy as the supervisor runs it: master-worker in the foreground, with the master's
/// command socket.
struct Haproxy {
    bin: PathBuf,
    paths: Paths,
}

impl Engine for Haproxy {
    fn name(&self) -> &'static str {
        HEALTH_SOURCE
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.arg("-W")
            .arg("-S")
            .arg(self.paths.master_socket())
            .arg("-f")
            .arg(self.paths.conf())
            .arg("-p")
            .arg(self.paths.pid());
        c
    }

    fn pid_file(&self) -> PathBuf {
        self.paths.pid()
    }

    fn marker(&self) -> String {
        self.paths.conf().display().to_string()
    }

    fn before_start(&mut self) {
        // readiness waits for the new worker's runtime socket
        let _ = std::fs::remove_file(self.paths.runtime_socket());
    }

    fn ready(&self, pid: u32) -> bool {
        let pid_written = std::fs::read_to_string(self.paths.pid())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            == Some(pid);
        pid_written && std::os::unix::net::UnixStream::connect(self.paths.runtime_socket()).is_ok()
    }
}

/// What haproxy serves now.
#[derive(Clone, Debug)]
struct Served {
    /// The file it runs.
    text: String,
    /// The listeners in it.
    listeners: BTreeMap<LbKey, LbListener>,
}

/// The haproxy backend of the load balancer feature.
pub struct LbBackend {
    bin: PathBuf,
    paths: Paths,
    health: Arc<Health>,
    engine: Option<Supervisor>,
    /// `None`: haproxy is not running (no listener serves).
    served: Option<Served>,
}

/// The listeners of `state` that serve (those with backends).
fn serving(state: &DesiredState) -> BTreeMap<LbKey, LbListener> {
    state
        .lb_listeners
        .iter()
        .filter(|(_, l)| l.serves())
        .map(|(k, l)| (k.clone(), l.clone()))
        .collect()
}

/// The runtime commands that turn `old` into `new` when only weights differ and every
/// changed listener's algorithm takes weights at run time; `None` when a reload is needed.
pub fn weight_commands(
    old: &BTreeMap<LbKey, LbListener>,
    new: &BTreeMap<LbKey, LbListener>,
) -> Option<Vec<String>> {
    if !old.keys().eq(new.keys()) {
        return None;
    }
    let unweighted = |l: &LbListener| {
        let mut l = l.clone();
        l.backends.iter_mut().for_each(|b| b.weight = 0);
        l
    };
    let mut cmds = Vec::new();
    for (k, n) in new {
        let o = old.get(k)?;
        if o == n {
            continue;
        }
        if !n.config.algorithm.weights_at_runtime() || unweighted(o) != unweighted(n) {
            return None;
        }
        for (ob, nb) in o.backends.iter().zip(&n.backends) {
            if ob.weight != nb.weight {
                cmds.push(format!(
                    "set weight {}/{} {}",
                    backend_name(n),
                    server_name(nb.ip),
                    nb.weight
                ));
            }
        }
    }
    Some(cmds)
}

/// An nft transaction that deletes `deletes` (present or not: each is added first, which a
/// set takes whether it holds it or not) and adds `adds`.
fn firewall_change(deletes: &[Elem], adds: &[Elem]) -> String {
    let mut text = crate::nat::render::element_ops(&[], &[], deletes);
    text.push_str(&crate::nat::render::element_ops(&[], deletes, adds));
    text
}

impl LbBackend {
    /// A backend whose haproxy files live in `dir`, running `bin`.
    pub fn new(dir: PathBuf, bin: PathBuf, health: Arc<Health>) -> LbBackend {
        LbBackend {
            bin,
            paths: Paths::new(dir),
            health,
            engine: None,
            served: None,
        }
    }

    fn engine(&mut self) -> &Supervisor {
        let (bin, paths, health) = (&self.bin, &self.paths, &self.health);
        self.engine.get_or_insert_with(|| {
            Supervisor::spawn(
                Haproxy {
                    bin: bin.clone(),
                    paths: paths.clone(),
                },
                Arc::clone(health),
            )
        })
    }

    /// Makes haproxy serve exactly the listeners of `state`. On error the file on disk and
    /// what haproxy serves are as before.
    async fn converge(&mut self, state: &DesiredState) -> Result<(), LbError> {
        let listeners = serving(state);
        let running = self.engine.as_ref().and_then(Supervisor::pid).is_some();
        if listeners.is_empty() {
            // also a haproxy an earlier agent left running
            if self.engine.is_some() || self.paths.pid().exists() {
                self.engine().stop().await;
            }
            self.served = None;
            let _ = std::fs::remove_file(self.paths.conf());
            return Ok(());
        }
        let text = render::render(&self.paths, fd_limit(), listeners.values());
        if running && self.served.as_ref().is_some_and(|s| s.text == text) {
            return Ok(());
        }
        files::ensure_dir(&self.paths.dir)?;
        let candidate = self.paths.candidate();
        files::replace(&candidate, text.as_bytes(), 0o644, Durability::Derived)?;
        if let Err(e) = haproxy::check(&self.bin, &candidate).await {
            let _ = std::fs::remove_file(&candidate);
            return Err(e.into());
        }
        let old = std::fs::read(self.paths.conf()).ok();
        std::fs::rename(&candidate, self.paths.conf()).map_err(|source| WriteError {
            op: "rename to",
            path: self.paths.conf(),
            source,
        })?;
        let outcome = self.take_effect(running, &listeners).await;
        if let Err(e) = outcome {
            // the old configuration keeps serving; the file says so again
            match &old {
                Some(old) => files::replace(&self.paths.conf(), old, 0o644, Durability::Derived)?,
                None => {
                    let _ = std::fs::remove_file(self.paths.conf());
                }
            }
            return Err(e);
        }
        self.served = Some(Served { text, listeners });
        Ok(())
    }

    /// Makes haproxy run the file just swapped in: a start, the runtime socket for weights,
    /// or a reload through the master.
    async fn take_effect(
        &mut self,
        running: bool,
        listeners: &BTreeMap<LbKey, LbListener>,
    ) -> Result<(), LbError> {
        if !running {
            let started = self.engine().start().await.map_err(LbError::Start);
            if started.is_ok() {
                tracing::info!(listeners = listeners.len(), "haproxy started");
            }
            return started;
        }
        if let Some(cmds) = self
            .served
            .as_ref()
            .and_then(|s| weight_commands(&s.listeners, listeners))
        {
            let mut done = true;
            for cmd in &cmds {
                if let Err(e) = haproxy::runtime(&self.paths, cmd).await {
                    tracing::warn!(error = %crate::error::chain(&e), "weight not set at run time; reloading");
                    done = false;
                    break;
                }
            }
            if done {
                tracing::info!(changes = cmds.len(), "weights set without a reload");
                return Ok(());
            }
        }
        let started = std::time::Instant::now();
        if let Err(e) = haproxy::reload(&self.paths).await {
            // haproxy's own words on why (the master writes them to its stderr)
            let said = self.engine().tail();
            return Err(match e {
                HaproxyError::Reload(what) if !said.is_empty() => {
                    HaproxyError::Reload(format!("{what}: {said}"))
                }
                other => other,
            }
            .into());
        }
        tracing::info!(
            listeners = listeners.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "haproxy reloaded"
        );
        Ok(())
    }

    /// A command: the firewall opens the new listeners' ports and closes the removed ones,
    /// then haproxy follows; if haproxy does not, the firewall change is undone.
    async fn change(&mut self, before: &DesiredState, after: &DesiredState) -> Result<(), LbError> {
        let (old, new) = (lb_elements(before), lb_elements(after));
        let adds: Vec<Elem> = new.difference(&old).cloned().collect();
        let deletes: Vec<Elem> = old.difference(&new).cloned().collect();
        let opened = !adds.is_empty() || !deletes.is_empty();
        if opened {
            crate::nat::nft::apply(&firewall_change(&deletes, &adds))
                .await
                .map_err(LbError::Firewall)?;
        }
        if let Err(e) = self.converge(after).await {
            if opened
                && let Err(undo) = crate::nat::nft::apply(&firewall_change(&adds, &deletes)).await
            {
                tracing::error!(error = %crate::error::chain(&undo), "firewall change not undone");
                return Err(LbError::FirewallNotUndone(Box::new(e)));
            }
            return Err(e);
        }
        Ok(())
    }
}

/// The hard open-file limit, which haproxy (started as root by us) raises itself to.
fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024)
}

impl Backend for LbBackend {
    fn features(&self) -> &'static [Feature] {
        &[Feature::LoadBalancer]
    }

    fn concerns(&self, parts: Parts) -> bool {
        parts.intersects(Parts::LISTENERS)
    }

    async fn apply(&mut self, change: &Change<'_>) -> Result<(), BackendError> {
        Ok(self.change(change.before, change.after).await?)
    }

    async fn reconcile(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        // A haproxy that runs the state's file already is left alone (a nic change or
        // `/init` re-applies every backend): no needless reload.
        self.converge(state).await?;
        // The NAT backend's full replace holds these already; after a replace of its own
        // (a repair), make sure (adding is idempotent).
        let elements: Vec<Elem> = lb_elements(state).into_iter().collect();
        if !elements.is_empty() {
            crate::nat::nft::apply(&crate::nat::render::element_ops(&[], &[], &elements))
                .await
                .map_err(LbError::Firewall)?;
        }
        tracing::info!(
            listeners = state.lb_listeners.len(),
            serving = elements.len(),
            "load balancer listeners applied"
        );
        Ok(())
    }

    async fn check_and_repair(
        &mut self,
        state: &DesiredState,
    ) -> Result<Option<String>, BackendError> {
        let Some(served) = &self.served else {
            return Ok(None);
        };
        let on_disk = std::fs::read_to_string(self.paths.conf()).unwrap_or_default();
        if on_disk == served.text {
            return Ok(None);
        }
        // forget what runs: the file is rendered, checked and reloaded again
        self.served = None;
        self.reconcile(state).await?;
        Ok(Some(
            "haproxy.cfg was changed behind the agent; rewritten and reloaded".into(),
        ))
    }

    async fn reconcile_keeping(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        // haproxy holds nothing the state does not: serving the state is keeping.
        self.reconcile(state).await
    }

    async fn shutdown(&mut self) {
        if let Some(engine) = &self.engine {
            engine.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::lb::{BackendServer, ListenerConfig, Mode};

    fn l(id: &str, algorithm: crate::state::lb::Algorithm, weights: &[u8]) -> (LbKey, LbListener) {
        let l = LbListener {
            lb_uuid: "A".into(),
            listener_uuid: id.into(),
            vip: "10.10.1.57".parse().unwrap(),
            load_balancer_port: 80,
            instance_port: 8080,
            mode: Mode::Tcp,
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, w)| BackendServer {
                    ip: std::net::Ipv4Addr::new(172, 20, 0, 10 + i as u8),
                    weight: *w,
                })
                .collect(),
            config: ListenerConfig {
                algorithm,
                ..ListenerConfig::default()
            },
        };
        (l.key(), l)
    }

    #[test]
    fn a_firewall_refusal_changed_nothing_and_a_firewall_left_open_did() {
        use crate::backend::BackendError;
        let refused = LbError::Firewall(NftError::Refused("Error: No such file".into()));
        assert!(refused.left_unchanged());
        assert_eq!(
            crate::error::chain(&refused),
            "the firewall did not take the listeners' ports: nft refused the change: Error: No such file"
        );
        let start = LbError::Start(StartError::Gone { name: "haproxy" });
        assert!(start.left_unchanged());
        let left_open = BackendError::from(LbError::FirewallNotUndone(Box::new(start)));
        assert!(!left_open.left_unchanged());
        assert_eq!(
            left_open.report(),
            "haproxy did not start: the haproxy supervisor has stopped"
        );
    }

    #[test]
    fn only_weight_changes_of_dynamic_algorithms_skip_the_reload() {
        use crate::state::lb::Algorithm::*;
        let old = BTreeMap::from([l("1", WeightRoundRobin, &[50, 50]), l("2", Source, &[1])]);
        let new = BTreeMap::from([l("1", WeightRoundRobin, &[20, 50]), l("2", Source, &[1])]);
        assert_eq!(
            weight_commands(&old, &new),
            Some(vec!["set weight b:A:1/s-172.20.0.10 20".to_string()])
        );
        let new = BTreeMap::from([l("1", WeightRoundRobin, &[50, 50]), l("2", Source, &[2])]);
        assert_eq!(weight_commands(&old, &new), None);
        let new = BTreeMap::from([
            l("1", WeightRoundRobin, &[50, 50, 50]),
            l("2", Source, &[1]),
        ]);
        assert_eq!(weight_commands(&old, &new), None);
        let new = BTreeMap::from([l("1", WeightRoundRobin, &[50, 50])]);
        assert_eq!(weight_commands(&old, &new), None);
        assert_eq!(weight_commands(&old, &old), Some(vec![]));
    }
}
