//! `vr-agent bootstrap`: reads the bootstrap information (a file, or the virtio-serial
//! port), caches it in the state directory, and applies it: nics by MAC (name, address, MTU,
//! up), the default route, root's ssh key and the router sysctls. Failures go to the error
//! log the management node reads over ssh; success removes it. Running it again changes
//! nothing. `serve` re-applies the cached copy at start (see [`crate::link`]).

pub mod info;
pub mod source;
pub mod sysctl;

use crate::config::BootstrapConfig;
use crate::link::netlink::Netlink;
use crate::link::plan::Wanted;
use crate::link::sync::{self, SyncOptions};
use crate::state::DesiredState;
use info::BootstrapInfo;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the cached copy in the state directory.
pub const CACHE_FILE: &str = "bootstrap-info.json";

/// Where `serve` and `bootstrap` keep the cached bootstrap information.
pub fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CACHE_FILE)
}

/// The loader of the cached bootstrap nics in `state_dir` the interfaces backend is built with:
/// each call reads the cached copy anew (no nics while there is none).
pub fn cached_nics(state_dir: &Path) -> crate::link::backend::BootstrapNics {
    let path = cache_path(state_dir);
    Box::new(move || {
        Ok(BootstrapInfo::load_cached(&path)?
            .map(|i| i.nics)
            .unwrap_or_default())
    })
}

/// Why bootstrap failed; the message goes to the error log.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// No information could be read.
    #[error(transparent)]
    Source(#[from] source::SourceError),
    /// The information is unusable.
    #[error(transparent)]
    Info(#[from] info::InfoError),
    /// A file could not be written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// One or more steps of the apply failed (the others ran).
    #[error("{}", .0.join("; "))]
    Steps(Vec<String>),
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BootstrapError + 'a {
    move |source| BootstrapError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// What an apply did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Nics configured.
    pub nics: usize,
    /// Time spent applying (after the information was read).
    pub elapsed: Duration,
}

/// Reads the bootstrap information from `--from` or the port.
pub fn read(cfg: &BootstrapConfig) -> Result<Vec<u8>, BootstrapError> {
    let Some(path) = &cfg.from else {
        return read_port_or_cache(cfg);
    };
    Ok(source::read_file(path)?)
}

/// Reads the port. After a reboot the host may not send the information again; when a cached
/// copy exists the port gets `cached_port_timeout_secs` and the cached copy is used after that,
/// so the router comes back by itself.
fn read_port_or_cache(cfg: &BootstrapConfig) -> Result<Vec<u8>, BootstrapError> {
    let cache = cache_path(&cfg.state_dir);
    let cached = std::fs::read(&cache)
        .ok()
        .filter(|bytes| BootstrapInfo::parse(bytes).is_ok());
    let timeout = match cached {
        Some(_) => cfg.cached_port_timeout_secs.min(cfg.port_timeout_secs),
        None => cfg.port_timeout_secs,
    };
    match (
        source::read_port(&cfg.port, Duration::from_secs(timeout)),
        cached,
    ) {
        (Ok(bytes), _) => Ok(bytes),
        (Err(e), Some(bytes)) => {
            tracing::warn!(error = %e, cache = %cache.display(), "no bootstrap info on the port; using the cached copy");
            Ok(bytes)
        }
        (Err(e), None) => Err(e.into()),
    }
}

/// Parses, caches and applies `bytes`. Every step runs even if an earlier one failed (the
/// management node can only read the error log once the management nic and key are set).
pub async fn apply(cfg: &BootstrapConfig, bytes: &[u8]) -> Result<Applied, BootstrapError> {
    let started = Instant::now();
    let info = BootstrapInfo::parse(bytes)?;
    let cache = cache_path(&cfg.state_dir);
    let previous = BootstrapInfo::load_cached(&cache).ok().flatten();
    if std::fs::read(&cache).ok().as_deref() != Some(bytes) {
        std::fs::create_dir_all(&cfg.state_dir).map_err(io_err("creating", &cfg.state_dir))?;
        crate::files::replace(&cache, bytes, 0o644, crate::files::Durability::Synced).map_err(
            |e| BootstrapError::Io {
                op: "caching to",
                path: cache.display().to_string(),
                source: e.source,
            },
        )?;
    }
    let mut failures = Vec::new();
    if let Err(e) = apply_links(&info, previous.as_ref()).await {
        failures.push(e);
    }
    if let Some(key) = &info.public_key
        && let Err(e) = write_key(&cfg.authorized_keys, key)
    {
        failures.push(e.to_string());
    }
    if let Err(e) = sysctl::apply(&cfg.sysctl_root, sysctl::ROUTER) {
        failures.push(e.to_string());
    }
    if !failures.is_empty() {
        return Err(BootstrapError::Steps(failures));
    }
    Ok(Applied {
        nics: info.nics.len(),
        elapsed: started.elapsed(),
    })
}

async fn apply_links(info: &BootstrapInfo, previous: Option<&BootstrapInfo>) -> Result<(), String> {
    let nl = Netlink::connect().map_err(|e| crate::error::chain(&e))?;
    let wanted = Wanted::new(&info.nics, &DesiredState::default());
    // Nothing is pruned: the addresses of a running agent's VIPs stay.
    let opts = SyncOptions {
        prune: false,
        strict: false,
        scope: None,
    };
    let mut announcer = crate::link::garp::Announcer::default();
    let report = sync::sync(&nl, &mut announcer, &wanted, &opts)
        .await
        .map_err(|e| crate::error::chain(&e))?;
    // An address the previous bootstrap info gave a nic, and this one does not, goes.
    if let Some(prev) = previous {
        let links = nl.links().await.map_err(|e| crate::error::chain(&e))?;
        for old in &prev.nics {
            let Some(new) = wanted.nics.get(&old.mac) else {
                continue;
            };
            if (new.ip, new.prefix) != (old.ip, old.prefix)
                && let Ok(link) = crate::link::plan::find(&links, old.mac)
            {
                nl.del_addr(link, old.ip, old.prefix.len())
                    .await
                    .map_err(|e| crate::error::chain(&e))?;
            }
        }
    }
    if report.missing.is_empty() {
        Ok(())
    } else {
        Err(report
            .missing
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// Writes `key` as the only line of `path`, mode 0600 (its directory 0700 if created).
fn write_key(path: &Path, key: &str) -> Result<(), BootstrapError> {
    let content = format!("{key}\n");
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting the mode of", dir))?;
    }
    if std::fs::read_to_string(path).ok().as_deref() != Some(content.as_str()) {
        // mode 0600 from the start: the key is never readable by others, not even briefly
        crate::files::replace(
            path,
            content.as_bytes(),
            0o600,
            crate::files::Durability::Synced,
        )
        .map_err(|e| BootstrapError::Io {
            op: "writing",
            path: path.display().to_string(),
            source: e.source,
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("setting the mode of", path))
}

/// Records the outcome for the management node: the message on failure, no file on success.
pub fn record_outcome(error_log: &Path, outcome: &Result<Applied, BootstrapError>) {
    match outcome {
        Ok(_) => match std::fs::remove_file(error_log) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %error_log.display(), error = %e, "cannot remove the error log");
            }
        },
        Err(err) => {
            let write = error_log
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(error_log, format!("{err}\n")));
            if let Err(e) = write {
                tracing::error!(path = %error_log.display(), error = %e, "cannot write the error log");
            }
        }
    }
}

/// The whole subcommand: read, apply, record the outcome.
pub async fn run(cfg: &BootstrapConfig) -> Result<Applied, BootstrapError> {
    let bytes = {
        let cfg = cfg.clone();
        match tokio::task::spawn_blocking(move || read(&cfg)).await {
            Ok(r) => r,
            Err(e) => Err(BootstrapError::Steps(vec![format!(
                "reading the bootstrap info: {e}"
            )])),
        }
    };
    let outcome = match bytes {
        Ok(bytes) => apply(cfg, &bytes).await,
        Err(e) => Err(e),
    };
    record_outcome(&cfg.error_log, &outcome);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_nics_reads_the_cache_anew_at_each_call() {
        let dir = tempfile::tempdir().unwrap();
        let load = cached_nics(dir.path());
        // 1. no cache yet: no nics, no error
        assert!(load().unwrap().is_empty());
        // 2. cached since: its nics
        std::fs::write(
            cache_path(dir.path()),
            include_str!("../../fixtures/bootstrap-info.json"),
        )
        .unwrap();
        assert_eq!(load().unwrap().len(), 3);
        // 3. unreadable: the parse error
        std::fs::write(cache_path(dir.path()), "{").unwrap();
        assert!(
            load()
                .unwrap_err()
                .to_string()
                .starts_with("bootstrap info is not valid JSON")
        );
    }
}
