//! The router's kernel settings (protocol section 6), written under a sysctl root
//! (`/proc/sys`, or a directory of the tests' own).

use std::path::{Path, PathBuf};

/// One setting: the key as `sysctl` spells it, and its value.
pub type Setting = (&'static str, &'static str);

/// The router's settings, in the order they are written.
pub const ROUTER: &[Setting] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv4.conf.all.accept_source_route", "0"),
    ("net.ipv4.conf.default.accept_source_route", "0"),
    ("net.ipv4.conf.all.arp_announce", "2"),
    ("net.ipv4.conf.default.arp_announce", "2"),
    ("net.ipv4.conf.all.arp_ignore", "2"),
    ("net.ipv4.conf.default.arp_ignore", "2"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv6.conf.default.forwarding", "1"),
    ("net.ipv4.neigh.default.gc_thresh1", "4096"),
    ("net.ipv4.neigh.default.gc_thresh2", "8192"),
    ("net.ipv4.neigh.default.gc_thresh3", "8192"),
];

/// Keys the kernel only shows in the initial network namespace (the neighbour table's
/// garbage-collection thresholds are global). Elsewhere they are absent and skipped.
const INIT_NETNS_ONLY: &[&str] = &[
    "net.ipv4.neigh.default.gc_thresh1",
    "net.ipv4.neigh.default.gc_thresh2",
    "net.ipv4.neigh.default.gc_thresh3",
];

/// A setting that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("setting {key} = {value} ({path}): {source}")]
pub struct SysctlError {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// The file.
    pub path: String,
    /// The OS error.
    pub source: std::io::Error,
}

/// The file of `key` under `root`.
pub fn path_of(root: &Path, key: &str) -> PathBuf {
    key.split('.')
        .fold(root.to_path_buf(), |p, part| p.join(part))
}

/// Writes each setting whose current value differs. Returns the keys skipped because this
/// namespace does not have them.
pub fn apply(root: &Path, settings: &[Setting]) -> Result<Vec<&'static str>, SysctlError> {
    let mut skipped = Vec::new();
    for (key, value) in settings {
        let path = path_of(root, key);
        let err = |source| SysctlError {
            key: key.to_string(),
            value: value.to_string(),
            path: path.display().to_string(),
            source,
        };
        let current = match std::fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && INIT_NETNS_ONLY.contains(key) => {
                tracing::info!(key, "not present in this network namespace; skipped");
                skipped.push(*key);
                continue;
            }
            Err(e) => return Err(err(e)),
        };
        if current.trim() == *value {
            continue;
        }
        // No O_CREAT: a missing key is an error, not a new file.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(err)?;
        std::io::Write::write_all(&mut f, format!("{value}\n").as_bytes()).map_err(err)?;
        tracing::info!(key, value, "sysctl set");
    }
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_setting_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        for (key, _) in ROUTER {
            let p = path_of(dir.path(), key);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "7\n").unwrap();
        }
        assert!(apply(dir.path(), ROUTER).unwrap().is_empty());
        for (key, value) in ROUTER {
            let got = std::fs::read_to_string(path_of(dir.path(), key)).unwrap();
            assert_eq!(got.trim(), *value, "{key}");
        }
        assert_eq!(
            path_of(Path::new("/proc/sys"), "net.ipv4.ip_forward"),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
    }

    #[test]
    fn missing_keys_fail_except_init_namespace_ones() {
        let dir = tempfile::tempdir().unwrap();
        let skipped = apply(dir.path(), &[("net.ipv4.neigh.default.gc_thresh1", "4096")]).unwrap();
        assert_eq!(skipped, ["net.ipv4.neigh.default.gc_thresh1"]);
        let err = apply(dir.path(), &[("net.ipv4.ip_forward", "1")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("setting net.ipv4.ip_forward = 1 ("),
            "{err}"
        );
        assert!(!path_of(dir.path(), "net.ipv4.ip_forward").exists());
    }
}
