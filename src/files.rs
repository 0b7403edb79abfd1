//! Files replaced whole and atomically: the content goes to a temporary name in the same
//! directory (a leading dot, which dnsmasq's directory watches and the drift watch ignore),
//! gets its mode, then is renamed over the file, so a reader sees the old file or the new one,
//! never a part of either. The one writer of every file the agent owns: the store's
//! snapshot, the engines' configurations, pid files and host files.

use std::fs::{self, File, OpenOptions};
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

/// The error of `op` on `path`, for `map_err`.
pub fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a power loss right after the write may do to the new content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Derived from the stored state and rewritten in full at every start: no fsync (a torn
    /// file is repaired before its engine reads it).
    Derived,
    /// Kept once the call returns: the file and then its directory are fsynced.
    Synced,
}

/// Replaces `path` with `content`, with permissions `mode` (umask aside).
pub fn replace(
    path: &Path,
    content: &[u8],
    mode: u32,
    durability: Durability,
) -> Result<(), WriteError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // the pid: two processes (the agent, `vr-agent bootstrap`) never share a temporary file
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err("create", &tmp))?;
    let written = f
        .write_all(content)
        .map_err(err("write", &tmp))
        .and_then(|()| {
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(err("chmod", &tmp))
        })
        .and_then(|()| match durability {
            Durability::Synced => f.sync_all().map_err(err("fsync", &tmp)),
            Durability::Derived => Ok(()),
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(err("rename to", path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    if durability == Durability::Synced {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("fsync", dir))?;
    }
    Ok(())
}

/// Creates `dir` (mode 0755: engines that drop privileges read it) if missing, or opens an
/// existing one to others.
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

/// [`replace`] unless `path` already holds exactly `content`. Returns whether it wrote.
pub fn replace_if_changed(
    path: &Path,
    content: &[u8],
    mode: u32,
    durability: Durability,
) -> Result<bool, WriteError> {
    match fs::read(path) {
        Ok(old) if old == content => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("read", path)(e)),
    }
    replace(path, content, mode, durability)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replace_leaves_the_content_the_mode_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.conf");
        for (text, mode, durability) in [
            ("one\n", 0o644, Durability::Derived),
            ("two\n", 0o600, Durability::Synced),
        ] {
            replace(&p, text.as_bytes(), mode, durability).unwrap();
            assert_eq!(fs::read_to_string(&p).unwrap(), text);
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, mode);
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["f.conf"]);
    }

    #[test]
    fn an_unchanged_content_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        assert!(replace_if_changed(&p, b"a\n", 0o644, Durability::Derived).unwrap());
        let before = fs::metadata(&p).unwrap().modified().unwrap();
        assert!(!replace_if_changed(&p, b"a\n", 0o644, Durability::Derived).unwrap());
        assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), before);
        assert!(replace_if_changed(&p, b"b\n", 0o644, Durability::Derived).unwrap());
    }

    #[test]
    fn a_failed_write_names_the_path_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("f");
        let e = replace(&p, b"x", 0o644, Durability::Synced).unwrap_err();
        assert_eq!(e.op, "create");
        assert!(e.to_string().contains("missing-dir"), "{e}");
    }
}
