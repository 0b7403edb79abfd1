//! Files for dnsmasq, written atomically (temp name in the same directory, then rename) and only
//! when their content changes. Files and directories are made readable by `nobody`, the user
//! dnsmasq drops to.
//!
//! No fsync: these files are derived from the persisted desired state and rewritten in full at
//! every start, so a torn write after a power loss is repaired before dnsmasq reads it.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A file operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct WriteError {
    /// What was attempted.
    pub op: &'static str,
    /// On which path.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (mode 0755) if missing.
pub fn ensure_dir(dir: &Path) -> Result<(), WriteError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if m.permissions().mode() & 0o005 != 0o005 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                    .map_err(err("chmod", dir))?;
            }
            Ok(())
        }
        _ => {
            fs::create_dir_all(dir).map_err(err("create", dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(err("chmod", dir))
        }
    }
}

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

/// Writes `content` to `path` unless the file already holds exactly that. Returns whether it
/// wrote.
pub fn write_if_changed(path: &Path, content: &[u8]) -> Result<bool, WriteError> {
    match fs::read(path) {
        Ok(old) if old == content => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("read", path)(e)),
    }
    write_new(path, content)?;
    Ok(true)
}

/// Writes `content` to `path` atomically, whatever is there.
pub fn write_new(path: &Path, content: &[u8]) -> Result<(), WriteError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A leading dot: dnsmasq's directory watches ignore such names.
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(err("create", &tmp))?;
    f.write_all(content).map_err(err("write", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(err("rename to", path))
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
