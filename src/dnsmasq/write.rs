//! Files for dnsmasq, written atomically (temp name in the same directory, then rename) and only
//! when their content changes. Files and directories are made readable by `nobody`, the user
//! dnsmasq drops to.
//!
//! No fsync: these files are derived from the persisted desired state and rewritten in full at
//! every start, so a torn write after a power loss is repaired before dnsmasq reads it.

use crate::files::{self, Durability};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub use crate::files::WriteError;
use crate::files::err;

pub use crate::files::ensure_dir;

/// Refuses a directory that `nobody` (the user dnsmasq drops to) cannot reach: dnsmasq would
/// start, then answer REFUSED and offer no address.
pub fn check_reachable(dir: &Path) -> Result<(), WriteError> {
    for d in dir.ancestors() {
        let mode = fs::metadata(d)
            .map_err(err("inspect", d))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(WriteError {
                op: "use",
                path: dir.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} (mode {:o}) is not searchable by other users, and dnsmasq reads its files as nobody",
                        d.display(),
                        mode & 0o7777
                    ),
                ),
            });
        }
    }
    Ok(())
}

/// Writes `content` to `path` (readable by dnsmasq) unless it holds exactly that already;
/// returns whether it wrote. See [`crate::files`].
pub fn write_if_changed(path: &Path, content: &[u8]) -> Result<bool, WriteError> {
    files::replace_if_changed(path, content, 0o644, Durability::Derived)
}

/// Writes `content` to `path` (readable by dnsmasq), whatever is there.
pub fn write_new(path: &Path, content: &[u8]) -> Result<(), WriteError> {
    files::replace(path, content, 0o644, Durability::Derived)
}

/// Deletes every file in `dir`; returns how many there were.
pub fn clear_dir(dir: &Path) -> Result<usize, WriteError> {
    let mut n = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(err("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(err("list", dir))?;
        let path = entry.path();
        fs::remove_file(&path).map_err(err("remove", &path))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_on_change_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hosts");
        assert!(write_if_changed(&f, b"a\n").unwrap());
        assert!(!write_if_changed(&f, b"a\n").unwrap());
        assert!(write_if_changed(&f, b"b\n").unwrap());
        assert_eq!(fs::read(&f).unwrap(), b"b\n");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(clear_dir(dir.path()).unwrap(), 1);
        assert_eq!(clear_dir(&dir.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn a_private_parent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("dnsmasq");
        ensure_dir(&inner).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let e = check_reachable(&inner).unwrap_err();
        assert!(e.to_string().contains("not searchable"), "{e}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        check_reachable(&inner).unwrap();
    }
}
