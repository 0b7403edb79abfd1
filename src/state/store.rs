//! Durable storage of the desired state: a checksummed snapshot plus an append-only journal of
//! the commands applied since, so one command costs one small append and one fdatasync however
//! large the state is.
//!
//! Files in the state directory:
//! - `state.json`: `sha256:<hex of the rest>\n` then `{"generation":G,"state":{...}}`.
//! - `journal.G`: one line per command applied after snapshot G: `<sha256 hex> <command json>\n`.
//!
//! Snapshots are written to a temp file in the same directory, fsynced, renamed over the old
//! one, and the directory is fsynced. A snapshot that fails its checksum or does not parse, or
//! a journal record in the middle that does, is moved aside with a timestamp and the agent
//! starts empty. A torn last journal record (a crash during an append, before the command was
//! answered) is dropped.

use super::{Command, DesiredState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const SNAPSHOT: &str = "state.json";
/// Journal length (records) after which the snapshot is rewritten.
const COMPACT_AFTER_RECORDS: usize = 2000;

/// Failure to read or write the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O call on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Serialising the state failed (should not happen).
    #[error("encoding the state: {0}")]
    Encode(#[from] serde_json::Error),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    generation: u64,
    state: DesiredState,
}

/// What loading found.
#[derive(Debug)]
pub struct Loaded {
    /// The state to start from.
    pub state: DesiredState,
    /// Set when stored state was unreadable and moved aside: why, and where it went.
    pub problem: Option<String>,
}

/// The state directory and the open journal.
pub struct Store {
    dir: PathBuf,
    generation: u64,
    journal: File,
    journal_records: usize,
    /// An append failed and could not be taken back.
    poisoned: bool,
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn now_stamp() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Opens `dir` (creating it), loads the stored state and replays the journal.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let (generation, state, problem) = match Self::read(dir) {
            Ok(Some((generation, state))) => (generation, state, None),
            Ok(None) => (0, DesiredState::default(), None),
            Err(reason) => {
                let stamp = now_stamp();
                let mut moved = Vec::new();
                for name in Self::our_files(dir) {
                    let from = dir.join(&name);
                    let to = dir.join(format!("{name}.corrupt-{stamp}"));
                    if fs::rename(&from, &to).is_ok() {
                        moved.push(to.display().to_string());
                    }
                }
                let problem = format!(
                    "stored state was unreadable ({reason}); moved aside to {}; started empty",
                    moved.join(", ")
                );
                (0, DesiredState::default(), Some(problem))
            }
        };
        // Drop journals of other generations (left by a crash during compaction).
        for name in Self::our_files(dir) {
            if let Some(g) = name.strip_prefix("journal.")
                && g != generation.to_string()
            {
                let _ = fs::remove_file(dir.join(&name));
            }
        }
        let journal_path = dir.join(format!("journal.{generation}"));
        let journal_records = fs::read(&journal_path)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)
            .map_err(io_err("open", &journal_path))?;
        let store = Store {
            dir: dir.to_path_buf(),
            generation,
            journal,
            journal_records,
            poisoned: false,
        };
        Ok((store, Loaded { state, problem }))
    }

    /// Reads the stored state without changing anything on disk (for `vr-agent state`).
    pub fn peek(dir: &Path) -> Result<DesiredState, String> {
        Self::read(dir).map(|found| found.map(|(_, state)| state).unwrap_or_default())
    }

    fn our_files(dir: &Path) -> Vec<String> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n == SNAPSHOT
                    || (n.starts_with("journal.")
                        && n["journal.".len()..].bytes().all(|b| b.is_ascii_digit()))
            })
            .collect()
    }

    /// Reads snapshot + journal. `Ok(None)`: nothing stored yet. `Err`: corrupt, with why.
    fn read(dir: &Path) -> Result<Option<(u64, DesiredState)>, String> {
        let snap_path = dir.join(SNAPSHOT);
        let (generation, mut state) = match fs::read(&snap_path) {
            Ok(bytes) => {
                let snap = Self::parse_snapshot(&bytes)
                    .map_err(|e| format!("{}: {e}", snap_path.display()))?;
                (snap.generation, snap.state)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, DesiredState::default()),
            Err(e) => return Err(format!("{}: {e}", snap_path.display())),
        };
        let journal_path = dir.join(format!("journal.{generation}"));
        let journal = match fs::read(&journal_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(snap_path.exists().then_some((generation, state)));
            }
            Err(e) => return Err(format!("{}: {e}", journal_path.display())),
        };
        let mut lines: Vec<&[u8]> = journal.split(|&b| b == b'\n').collect();
        // The piece after the last newline is a torn append (or empty): never answered, drop it.
        lines.pop();
        let count = lines.len();
        for (n, line) in lines.into_iter().enumerate() {
            let record = Self::parse_record(line);
            match record {
                Ok(cmd) => {
                    // A command that was refused never reaches the journal; refusing it now
                    // means the state and the journal disagree.
                    state.apply(&cmd).map_err(|e| {
                        format!(
                            "{} record {}: no longer applies: {e}",
                            journal_path.display(),
                            n + 1
                        )
                    })?;
                }
                Err(e) if n + 1 == count => {
                    tracing::warn!(path = %journal_path.display(), "dropping a torn last journal record: {e}");
                }
                Err(e) => return Err(format!("{} record {}: {e}", journal_path.display(), n + 1)),
            }
        }
        Ok(Some((generation, state)))
    }

    fn parse_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("no checksum line")?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "checksum line is not text")?;
        let want = header
            .strip_prefix("sha256:")
            .ok_or("checksum line does not start with sha256:")?;
        let body = &bytes[nl + 1..];
        let got = sha256_hex(body);
        if got != want {
            return Err(format!("checksum mismatch (stored {want}, computed {got})"));
        }
        serde_json::from_slice(body).map_err(|e| format!("does not parse: {e}"))
    }

    fn parse_record(line: &[u8]) -> Result<Command, String> {
        if line.len() < 65 || line[64] != b' ' {
            return Err("record too short".into());
        }
        let want = std::str::from_utf8(&line[..64]).map_err(|_| "checksum is not text")?;
        let body = &line[65..];
        if sha256_hex(body) != want {
            return Err("checksum mismatch".into());
        }
        serde_json::from_slice(body).map_err(|e| format!("does not parse: {e}"))
    }

    /// Durably records that `cmd` was applied, before the command is answered.
    pub fn append(&mut self, cmd: &Command) -> Result<(), StoreError> {
        let body = serde_json::to_vec(cmd)?;
        let mut line = Vec::with_capacity(body.len() + 66);
        line.extend_from_slice(sha256_hex(&body).as_bytes());
        line.push(b' ');
        line.extend_from_slice(&body);
        line.push(b'\n');
        let path = self.journal_path();
        if self.poisoned {
            return Err(StoreError::Io {
                op: "append to",
                path,
                source: io::Error::other(
                    "an earlier append could not be taken back; a snapshot is needed first",
                ),
            });
        }
        let len_before = self
            .journal
            .metadata()
            .map_err(io_err("stat", &path))?
            .len();
        let written = self
            .journal
            .write_all(&line)
            .map_err(io_err("append to", &path))
            .and_then(|()| self.journal.sync_data().map_err(io_err("fsync", &path)));
        if let Err(e) = written {
            // Take the record back: a refused command must not return at the next start, and
            // half a line would break the next record. If even that fails, refuse appends
            // until a snapshot has replaced this journal.
            let undone = self
                .journal
                .set_len(len_before)
                .and_then(|()| self.journal.sync_data());
            if undone.is_err() {
                self.poisoned = true;
            }
            return Err(e);
        }
        self.journal_records += 1;
        Ok(())
    }

    /// True when the journal must be replaced by a snapshot before the next append.
    pub fn needs_snapshot(&self) -> bool {
        self.poisoned
    }

    /// True when the journal has grown enough that a new snapshot pays off.
    pub fn wants_compaction(&self) -> bool {
        self.journal_records >= COMPACT_AFTER_RECORDS
    }

    /// Writes `state` as a new snapshot and starts an empty journal.
    pub fn compact(&mut self, state: &DesiredState) -> Result<(), StoreError> {
        let generation = self.generation + 1;
        let body = serde_json::to_vec(&Snapshot {
            generation,
            state: state.clone(),
        })?;
        let mut bytes = format!("sha256:{}\n", sha256_hex(&body)).into_bytes();
        bytes.extend_from_slice(&body);
        // Open the next journal before the snapshot switches generations, so nothing can fail
        // between the switch and the first append to it.
        let next_journal = self.dir.join(format!("journal.{generation}"));
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&next_journal)
            .and_then(|f| f.set_len(0).map(|()| f))
            .map_err(io_err("create", &next_journal))?;
        if let Err(e) = write_atomic(&self.dir.join(SNAPSHOT), &bytes) {
            let _ = fs::remove_file(&next_journal);
            return Err(e);
        }
        let old = self.journal_path();
        self.generation = generation;
        self.journal = journal;
        self.journal_records = 0;
        self.poisoned = false;
        let _ = fs::remove_file(old);
        Ok(())
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(format!("journal.{}", self.generation))
    }
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync
/// the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err("rename to", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(uuid: &str) -> Command {
        Command::Init {
            uuid: Some(uuid.into()),
            restart_dnsmasq_after: 5,
        }
    }

    #[test]
    fn journal_replays_and_compaction_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.problem.is_none());
        let mut state = loaded.state;
        for u in ["a", "b", "c"] {
            state.apply(&init(u)).unwrap();
            store.append(&init(u)).unwrap();
        }
        drop(store);
        let (mut store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.state.uuid.as_deref(), Some("c"));
        store.compact(&loaded.state).unwrap();
        store.append(&init("d")).unwrap();
        drop(store);
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.state.uuid.as_deref(), Some("d"));
        assert!(loaded.problem.is_none());
    }

    #[test]
    fn torn_tail_is_dropped_but_corrupt_middle_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store.append(&init("a")).unwrap();
        drop(store);
        let j = dir.path().join("journal.0");
        let mut f = OpenOptions::new().append(true).open(&j).unwrap();
        f.write_all(b"0123abc half a rec").unwrap();
        drop(f);
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.state.uuid.as_deref(), Some("a"));
        assert!(loaded.problem.is_none());

        let mut bytes = fs::read(&j).unwrap();
        bytes[70] ^= 1;
        bytes.extend_from_slice(b"\n");
        fs::write(&j, &bytes).unwrap();
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.state, DesiredState::default());
        let problem = loaded.problem.unwrap();
        assert!(problem.contains("moved aside"), "{problem}");
    }

    #[test]
    fn a_full_state_round_trips_through_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let mut s = DesiredState::default();
        for (path, file) in [
            ("/createportforwarding", "createportforwarding"),
            ("/createeip", "createeip"),
            ("/createvip", "createvip"),
            ("/syncsnat", "syncsnat"),
            ("/adddhcp", "adddhcp"),
            ("/setdns", "setdns"),
            ("/configurenic", "configurenic"),
            ("/appliancevm/refreshfirewall", "refreshfirewall"),
        ] {
            let body = fs::read(format!(
                "{}/fixtures/requests/{file}.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let endpoint = crate::protocol::Endpoint::from_path(path).unwrap();
            let crate::protocol::Request::Change(cmd) = endpoint.parse(&body).unwrap() else {
                panic!("{path}");
            };
            s.apply(&cmd).unwrap();
        }
        store.compact(&s).unwrap();
        drop(store);
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
        assert_eq!(loaded.state, s);
        assert_eq!(loaded.state.port_forwards.len(), 1);
    }

    #[test]
    fn a_failed_append_is_not_replayed_and_a_snapshot_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        store.append(&init("a")).unwrap();
        // A handle that refuses writes and truncation: the append fails and cannot be taken
        // back, so the store refuses further appends until a snapshot.
        store.journal = File::open(dir.path().join("journal.0")).unwrap();
        assert!(store.append(&init("b")).is_err());
        assert!(store.needs_snapshot());
        assert!(store.append(&init("c")).is_err());
        let mut s = DesiredState::default();
        s.apply(&init("a")).unwrap();
        store.compact(&s).unwrap();
        assert!(!store.needs_snapshot());
        store.append(&init("d")).unwrap();
        drop(store);
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.problem.is_none());
        assert_eq!(loaded.state.uuid.as_deref(), Some("d"));
    }

    #[test]
    fn snapshot_checksum_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path()).unwrap();
        let mut s = DesiredState::default();
        s.apply(&init("x")).unwrap();
        store.compact(&s).unwrap();
        drop(store);
        let p = dir.path().join(SNAPSHOT);
        let text = fs::read_to_string(&p).unwrap().replace("\"x\"", "\"y\"");
        fs::write(&p, text).unwrap();
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.problem.unwrap().contains("checksum mismatch"));
        assert!(loaded.state.uuid.is_none());
        let aside = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.json.corrupt-")
            });
        assert!(aside);
    }
}
