//! Router HA: an active/standby pair on keepalived (VRRP) and conntrackd (FTFW).
//!
//! `/enableVyosha` -> the HA settings in the desired state -> this backend renders
//! keepalived.conf and conntrackd.conf (pure, `render.rs`) and runs both under the agent's
//! supervisor; a configuration change reloads keepalived with SIGHUP (a restart would flip
//! roles). keepalived decides the role and writes each transition to its `notify_fifo`; the
//! reader (`process.rs`) hands it to the writer, which makes every backend follow in one
//! serialized step ([`crate::agent`]): the interfaces add or remove the HA addresses (with
//! gratuitous ARPs from one socket), dnsmasq serves only on the master, and this backend has
//! conntrackd commit the peer's flows on becoming master (so established NAT flows go on) and
//! posts the transition to the management node's `callbackUrl`.

pub mod process;
pub mod render;

use crate::backend::{Backend, BackendError};
use crate::health::Health;
use crate::state::ha::{HaConfig, Role};
use crate::state::{Change, DesiredState, Feature, Parts};
use crate::supervisor::{StartError, Supervisor};
use process::Events;
use render::{Inputs, Paths};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How long a transition callback is retried on connection errors.
const CALLBACK_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// The binaries the HA backend runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// keepalived.
    pub keepalived: PathBuf,
    /// conntrackd.
    pub conntrackd: PathBuf,
    /// ping, run by keepalived for the monitors.
    pub ping: PathBuf,
}

/// What was last written and is running.
#[derive(Default)]
struct Applied {
    keepalived: Option<String>,
    conntrackd: Option<String>,
}

/// keepalived and conntrackd for the HA settings of the desired state.
pub struct HaBackend {
    paths: Paths,
    bins: Binaries,
    health: Arc<Health>,
    events: Events,
    keepalived: Option<Supervisor>,
    conntrackd: Option<Supervisor>,
    fifo: Option<tokio::task::JoinHandle<()>>,
    /// keepalived and conntrackd left by an earlier agent were looked for (and stopped).
    leftovers_stopped: bool,
    applied: Applied,
    role: Role,
    /// The last transition posted; an older one still being retried gives up.
    posted: Arc<AtomicU64>,
}

/// Why the HA backend could not do what it was asked. Each variant says what failed; the
/// cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// The nics could not be read (before any change).
    #[error("ha: reading the nics")]
    Nics(#[source] std::io::Error),
    /// The heartbeat nic is not one nic of the router (before any change).
    #[error("heartbeatNic")]
    HeartbeatNic(#[source] crate::link::plan::NicProblem),
    /// A file or directory of ours could not be written.
    #[error("ha: {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file could not be written.
    #[error("ha")]
    Write(#[from] crate::files::WriteError),
    /// keepalived's notification fifo could not be opened.
    #[error("ha: {}", path.display())]
    Fifo {
        /// The fifo.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// keepalived or conntrackd did not start.
    #[error("ha")]
    Start(#[from] StartError),
    /// keepalived could not be told to reload.
    #[error("ha: reloading keepalived (pid {pid})")]
    Reload {
        /// keepalived's pid.
        pid: u32,
        /// The signal's error.
        #[source]
        source: nix::Error,
    },
    /// conntrackd did not take its part of a role change (its own words).
    #[error("ha: {0}")]
    Conntrackd(String),
}

impl HaError {
    /// True when the failure came before anything was written, started or signalled.
    pub fn left_unchanged(&self) -> bool {
        matches!(self, HaError::Nics(_) | HaError::HeartbeatNic(_))
    }
}

fn err(e: impl Into<HaError>) -> BackendError {
    BackendError::Ha(e.into())
}

impl HaBackend {
    /// A backend keeping its files in `dir`; transitions go to `events`.
    pub fn new(dir: PathBuf, bins: Binaries, health: Arc<Health>, events: Events) -> HaBackend {
        HaBackend {
            paths: Paths::new(dir),
            bins,
            health,
            events,
            keepalived: None,
            conntrackd: None,
            fifo: None,
            leftovers_stopped: false,
            applied: Applied::default(),
            role: Role::NoHa,
            posted: Arc::default(),
        }
    }

    fn inputs(&self, ha: &HaConfig) -> Result<Inputs, BackendError> {
        let names = crate::link::view::current()
            .map_err(|e| err(HaError::Nics(e)))?
            .names();
        let heartbeat_if = crate::link::system::name_of(&names, ha.heartbeat_mac)
            .map_err(|e| err(HaError::HeartbeatNic(e)))?
            .to_string();
        Ok(Inputs {
            heartbeat_if,
            ping: self.bins.ping.clone(),
        })
    }

    /// Brings keepalived and conntrackd in line with `state`: stopped without HA; else the
    /// files written, conntrackd (re)started when its file changed, keepalived started once
    /// and reloaded (SIGHUP) when its file changed.
    async fn sync(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        if !self.leftovers_stopped {
            // keepalived and conntrackd of an agent that crashed (nothing stopped them): gone
            // before anything is written for our own, HA or not (a leftover keepalived must
            // not see our alive script and return to master).
            crate::supervisor::stop_leftover(
                "keepalived",
                &self.paths.keepalived_pid(),
                &self.paths.keepalived_conf().display().to_string(),
            )
            .await;
            crate::supervisor::stop_leftover(
                "conntrackd",
                &self.paths.conntrackd_pid(),
                &self.paths.conntrackd_conf().display().to_string(),
            )
            .await;
            self.leftovers_stopped = true;
        }
        let Some(ha) = &state.ha else {
            self.stop_all().await;
            return Ok(());
        };
        let inputs = self.inputs(ha)?;
        std::fs::create_dir_all(&self.paths.dir).map_err(|source| {
            err(HaError::File {
                path: self.paths.dir.clone(),
                source,
            })
        })?;
        write_file(
            &self.paths.alive_script(),
            &render::alive_script(std::process::id()),
            0o755,
        )?;
        // conntrackd's advice for flows taken over from the peer: their TCP windows were
        // not seen here, so do not call their packets invalid.
        if let Err(e) = std::fs::write("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal", "1\n")
        {
            tracing::warn!(error = %e, "cannot set nf_conntrack_tcp_be_liberal");
        }
        let c_conf = render::conntrackd(ha, &inputs, &self.paths);
        if self.applied.conntrackd.as_deref() != Some(&c_conf) {
            write_file(&self.paths.conntrackd_conf(), &c_conf, 0o644)?;
            let sup = self.conntrackd.get_or_insert_with(|| {
                Supervisor::spawn(
                    process::Conntrackd {
                        paths: self.paths.clone(),
                        bin: self.bins.conntrackd.clone(),
                    },
                    Arc::clone(&self.health),
                )
            });
            sup.restart().await.map_err(err)?;
            self.applied.conntrackd = Some(c_conf);
            tracing::info!("conntrackd (re)started");
            // A fresh conntrackd holds no copy of the peer's table: a master sends its own
            // (read from the kernel at start), a backup asks for the master's. The peer may
            // not run yet: then it asks or sends itself when it starts.
            let step = if self.role == Role::Master {
                "-B"
            } else {
                "-n"
            };
            if let Err(e) =
                process::conntrackd_ctl(&self.bins.conntrackd, &self.paths, &[step]).await
            {
                tracing::warn!(error = %e, "conntrackd resync after its start");
            }
        }
        if self.fifo.as_ref().is_none_or(|t| t.is_finished()) {
            let task = process::read_fifo(&self.paths, self.events.clone()).map_err(|source| {
                err(HaError::Fifo {
                    path: self.paths.fifo(),
                    source,
                })
            })?;
            self.fifo = Some(task);
        }
        let k_conf = render::keepalived(ha, &inputs, &self.paths);
        let running = self.keepalived.as_ref().and_then(Supervisor::pid);
        match running {
            Some(pid) if self.applied.keepalived.as_deref() == Some(&k_conf) => {
                tracing::debug!(pid, "keepalived configuration unchanged");
            }
            Some(pid) => {
                write_file(&self.paths.keepalived_conf(), &k_conf, 0o644)?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGHUP,
                )
                .map_err(|source| err(HaError::Reload { pid, source }))?;
                self.applied.keepalived = Some(k_conf);
                tracing::info!(pid, "keepalived reloaded");
            }
            None => {
                write_file(&self.paths.keepalived_conf(), &k_conf, 0o644)?;
                let sup = self.keepalived.get_or_insert_with(|| {
                    Supervisor::spawn(
                        process::Keepalived {
                            paths: self.paths.clone(),
                            bin: self.bins.keepalived.clone(),
                            events: self.events.clone(),
                        },
                        Arc::clone(&self.health),
                    )
                });
                sup.restart().await.map_err(err)?;
                self.applied.keepalived = Some(k_conf);
                tracing::info!("keepalived started");
            }
        }
        Ok(())
    }

    async fn stop_all(&mut self) {
        if let Some(s) = self.keepalived.take() {
            s.stop().await;
        }
        if let Some(s) = self.conntrackd.take() {
            s.stop().await;
        }
        if let Some(t) = self.fifo.take() {
            t.abort();
        }
        self.applied = Applied::default();
    }

    /// conntrackd's part of a transition (the sequence of its primary-backup script).
    async fn conntrackd_follow(&self, role: Role) -> Result<(), String> {
        if self.conntrackd.as_ref().and_then(Supervisor::pid).is_none() {
            return Err("conntrackd is not running".into());
        }
        let steps: &[&[&str]] = match role {
            // commit the peer's flows to the kernel, then start afresh from the kernel's
            // table and send it to the peer
            Role::Master => &[&["-c"], &["-f"], &["-R"], &["-B"]],
            // shorten the timers of flows this node no longer carries; ask the master for
            // its table
            _ => &[&["-t"], &["-n"]],
        };
        for args in steps {
            let t = std::time::Instant::now();
            process::conntrackd_ctl(&self.bins.conntrackd, &self.paths, args).await?;
            tracing::debug!(step = %args.join(" "), elapsed_us = t.elapsed().as_micros() as u64, "conntrackd");
        }
        Ok(())
    }

    /// Posts the transition to `callbackUrl` (in the background; a later one supersedes it).
    fn announce(&self, state: &DesiredState, role: Role) {
        let Some(url) = state.ha.as_ref().and_then(|h| h.callback_url.clone()) else {
            return;
        };
        let target = match crate::api::callback::CallbackTarget::parse(&url) {
            Ok((t, _)) => t,
            Err(e) => {
                tracing::warn!(error = %e, "ha: callbackUrl refused");
                return;
            }
        };
        let body = serde_json::json!({
            "virtualRouterUuid": state.uuid.clone().unwrap_or_default(),
            "haStatus": role.wire(),
        })
        .to_string()
        .into_bytes();
        let generation = self.posted.fetch_add(1, Ordering::SeqCst) + 1;
        let posted = Arc::clone(&self.posted);
        tokio::spawn(async move {
            let delivery = crate::api::callback::post_with(
                &target,
                &[("commandpath", "/vpc/hastatus")],
                body,
                CALLBACK_RETRY,
                || posted.load(Ordering::SeqCst) == generation,
            )
            .await;
            match delivery {
                crate::api::callback::Delivery::Answered(status) => {
                    tracing::info!(status, role = role.wire(), "ha: transition posted");
                }
                crate::api::callback::Delivery::GaveUp(e) => {
                    tracing::warn!(error = %e, role = role.wire(), "ha: transition not posted");
                }
            }
        });
    }
}

fn write_file(path: &std::path::Path, text: &str, mode: u32) -> Result<(), BackendError> {
    crate::files::replace(
        path,
        text.as_bytes(),
        mode,
        crate::files::Durability::Synced,
    )
    .map_err(err)
}

impl Backend for HaBackend {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Ha]
    }

    fn concerns(&self, parts: Parts) -> bool {
        // nics: the heartbeat nic's name
        parts.intersects(Parts::HA | Parts::NICS)
    }

    async fn apply(&mut self, change: &Change<'_>) -> Result<(), BackendError> {
        if change.after.ha.is_none() && change.before.ha.is_none() {
            return Ok(());
        }
        self.sync(change.after).await
    }

    async fn reconcile(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        self.sync(state).await
    }

    async fn reconcile_keeping(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        self.sync(state).await
    }

    fn note_role(&mut self, role: Role) {
        self.role = role;
    }

    async fn set_role(&mut self, state: &DesiredState, role: Role) -> Result<(), BackendError> {
        self.role = role;
        if state.ha.is_none() {
            return Ok(());
        }
        let result = self.conntrackd_follow(role).await;
        self.announce(state, role);
        result.map_err(|e| err(HaError::Conntrackd(e)))
    }

    async fn restart_ha(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        if state.ha.is_none() {
            return Ok(());
        }
        match &self.keepalived {
            Some(sup) => {
                sup.restart().await.map_err(err)?;
                tracing::info!("keepalived restarted");
                Ok(())
            }
            None => self.sync(state).await,
        }
    }

    async fn shutdown(&mut self) {
        self.stop_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_before_any_change_say_so_and_keep_their_cause() {
        let e = BackendError::from(HaError::HeartbeatNic(
            crate::link::plan::NicProblem::Missing("fa:7e:4b:ad:09:09".parse().unwrap()),
        ));
        assert!(e.left_unchanged());
        assert_eq!(
            e.report(),
            "heartbeatNic: unable to find nic with mac[fa:7e:4b:ad:09:09] in virtual router vm"
        );
        let e = BackendError::from(HaError::Reload {
            pid: 42,
            source: nix::Error::ESRCH,
        });
        assert!(!e.left_unchanged());
        assert_eq!(
            e.report(),
            format!("ha: reloading keepalived (pid 42): {}", nix::Error::ESRCH)
        );
        let e = BackendError::from(HaError::from(StartError::NotReady {
            name: "keepalived",
            secs: 15,
            tail: "bad config".into(),
        }));
        assert!(!e.left_unchanged());
        assert_eq!(
            e.report(),
            "ha: keepalived did not come up within 15s: bad config"
        );
    }
}
