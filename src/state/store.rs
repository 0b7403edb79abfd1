//! Durable storage of the desired state: a checksummed snapshot plus an append-only journal of
//! the commands applied since, so one command costs one small append and one fdatasync however
//! large the state is; and a recovery that keeps everything readable whatever is cut or flipped.
//!
//! Files in the state directory:
//! - `state.json`: `sha256:<hex of the rest>\n` then `{"generation":G,"state":{...}}`.
//! - `journal.G`: one line per command applied after snapshot G: `<sha256 hex> <command json>\n`.
//! - `state.prev.json` and `journal.P`: the snapshot before (generation P < G) and the journal that
//!   leads from it, kept so that there is always a readable snapshot to fall back to. Journals
//!   P, P+1, ..., G chain: each snapshot is the one before plus its whole journal.
//! - `<file>.corrupt-<unix time>`: copies of files found unreadable, kept for forensics.
//!
//! Write order. An append writes the record and fdatasyncs before the command is answered; a
//! failed append is taken back (truncated) or, if even that fails, no append is accepted until a
//! snapshot replaced the journal. A compaction from journal G: create `journal.G+1` (fsync), write
//! the snapshot of generation G+1 to a temp file (fsync), rename `state.json` to
//! `state.prev.json`, rename the temp file to `state.json`, fsync the directory, then delete the
//! journals older than the new `state.prev.json`. A crash at any step leaves a readable chain.
//! Compaction runs when the journal is larger than the last snapshot (and at least
//! [`COMPACT_MIN_BYTES`]) or larger than [`COMPACT_CAP_BYTES`], whatever the record count.
//!
//! Opening: the readable snapshot of the highest generation is the base (none: the empty state of
//! generation 0), then its journal and the following ones are replayed, record by record.
//! - A torn last record of the last journal (cut short, or a bad checksum on the last line) was
//!   never answered: it is dropped and the file is truncated to the end of the record before
//!   (and fsynced), so the next append starts on a clean line. Nothing is reported as lost.
//! - Anything else that fails (a record in the middle that is cut, fails its checksum, does not
//!   parse or no longer applies; a snapshot that fails its checksum or does not parse): the
//!   longest valid prefix is kept, the file is copied aside, the journal is truncated to that
//!   prefix, later journals are dropped, and a fresh snapshot is written when `state.json` was
//!   not the base. [`Loaded::problem`] names every file, record numbers, records and bytes
//!   dropped, and [`Loaded::lossy`] is set: the caller must not remove from the system what the
//!   store could no longer read.
//! - A directory that cannot be written (read-only, full): the state is still read and served;
//!   appends are refused with [`StoreError::Unwritable`] before anything changes, and every
//!   repair above waits until a write probe succeeds ([`Store::ensure_writable`]).

use super::{Command, DesiredState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const SNAPSHOT: &str = "state.json";
const PREV_SNAPSHOT: &str = "state.prev.json";
const PROBE: &str = ".write-probe";
/// A journal smaller than this is never compacted (small states would otherwise snapshot at
/// every few commands).
pub const COMPACT_MIN_BYTES: u64 = 64 * 1024;
/// A journal larger than this is compacted whatever the snapshot's size.
pub const COMPACT_CAP_BYTES: u64 = 16 * 1024 * 1024;

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
    /// The directory cannot take writes (read-only, full, no permission).
    #[error("the state directory {dir} is {what}")]
    Unwritable {
        /// The state directory.
        dir: PathBuf,
        /// `read-only (EROFS)`, `full (ENOSPC)`, ...
        what: &'static str,
        /// The OS error of the write that failed.
        source: io::Error,
    },
    /// Serialising the state failed (should not happen).
    #[error("encoding the state: {0}")]
    Encode(#[from] serde_json::Error),
}

impl StoreError {
    /// True when the cause is the directory refusing writes (read-only, full, quota,
    /// permission) rather than a damaged file.
    pub fn is_unwritable(&self) -> bool {
        match self {
            StoreError::Unwritable { .. } => true,
            StoreError::Io { source, .. } => unwritable_kind(source).is_some(),
            StoreError::Encode(_) => false,
        }
    }
}

/// How a directory refuses writes, for errors that say so.
fn unwritable_kind(e: &io::Error) -> Option<&'static str> {
    use nix::errno::Errno;
    match Errno::from_raw(e.raw_os_error()?) {
        Errno::EROFS => Some("read-only (EROFS)"),
        Errno::ENOSPC => Some("full (ENOSPC)"),
        Errno::EDQUOT => Some("over its quota (EDQUOT)"),
        Errno::EACCES => Some("not writable (EACCES)"),
        Errno::EPERM => Some("not writable (EPERM)"),
        _ => None,
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// [`io_err`], but a refusal of the directory (full, read-only) says so.
fn write_err<'a>(
    op: &'static str,
    dir: &'a Path,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| match unwritable_kind(&source) {
        Some(what) => StoreError::Unwritable {
            dir: dir.to_path_buf(),
            what,
            source,
        },
        None => io_err(op, path)(source),
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
    /// The state to start from: everything that could be read.
    pub state: DesiredState,
    /// Set when stored state was unreadable: which files, what was dropped, what was kept.
    pub problem: Option<String>,
    /// Something beyond a torn last record was dropped: the system may hold entries the state
    /// no longer knows, which must not be removed on its account.
    pub lossy: bool,
}

/// Checks that a directory takes writes (a small file written, fsynced and removed).
pub type Probe = fn(&Path) -> io::Result<()>;

fn write_probe(dir: &Path) -> io::Result<()> {
    let path = dir.join(PROBE);
    let result = File::create(&path)
        .and_then(|mut f| f.write_all(&[b'\n'; 4096]).and_then(|()| f.sync_data()));
    let _ = fs::remove_file(&path);
    result
}

/// A change of the files that recovery decided on, made once the directory takes writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Repair {
    /// Copy an unreadable file aside (before anything else touches it).
    CopyAside(String),
    /// Cut a journal to its valid prefix.
    Truncate { name: String, len: u64 },
    /// Delete a journal that no longer applies.
    Remove(String),
    /// Write a fresh snapshot: `state.json` is not the base (unreadable or missing).
    Snapshot,
}

/// The state directory and the open journal.
pub struct Store {
    dir: PathBuf,
    /// Generation of the journal commands go to.
    generation: u64,
    /// Generation of `state.json` when it is readable (it becomes `state.prev.json` at the
    /// next compaction); `None` when it is missing or unreadable (it is then replaced).
    snapshot_gen: Option<u64>,
    snapshot_bytes: u64,
    /// `None` until the directory takes writes.
    journal: Option<File>,
    journal_bytes: u64,
    /// An append failed and could not be taken back.
    poisoned: bool,
    /// Recovery repairs still to make.
    repairs: Vec<Repair>,
    probe: Probe,
    /// Why the last attempt to make the store writable failed.
    blocked: Option<String>,
    /// Compactions done since the store was opened.
    compactions: u64,
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

fn journal_name(generation: u64) -> String {
    format!("journal.{generation}")
}

/// Where a replay of one journal stopped early.
#[derive(Debug)]
struct Bad {
    /// 1-based number of the first dropped record.
    record: usize,
    /// Records dropped (the bad one and every one after it, a partial line included).
    records: usize,
    /// Bytes dropped.
    bytes: u64,
    /// What is wrong with the first dropped record.
    why: String,
    /// The bad record is the last one of the file (the shape of a torn append).
    last: bool,
}

/// The outcome of replaying one journal.
#[derive(Debug)]
struct Replay {
    applied: usize,
    /// Length of the valid prefix.
    valid_len: u64,
    bad: Option<Bad>,
}

/// Applies the records of `bytes` to `state` up to the first that fails.
fn replay(bytes: &[u8], state: &mut DesiredState) -> Replay {
    let mut off = 0usize;
    let mut applied = 0usize;
    while off < bytes.len() {
        let rest = &bytes[off..];
        let bad = match rest.iter().position(|&b| b == b'\n') {
            None => Some(("cut short (no line end)".to_string(), true)),
            Some(end) => match parse_record(&rest[..end]) {
                Ok(cmd) => match state.apply(&cmd) {
                    Ok(_) => {
                        applied += 1;
                        off += end + 1;
                        None
                    }
                    // Checksummed, so written whole: not a torn append.
                    Err(e) => Some((format!("no longer applies: {e}"), false)),
                },
                Err(RecordError::Torn(why)) => Some((why, end + 1 == rest.len())),
                Err(RecordError::Bad(why)) => Some((why, false)),
            },
        };
        if let Some((why, last)) = bad {
            let lines = rest.iter().filter(|&&b| b == b'\n').count();
            let partial = usize::from(rest.last() != Some(&b'\n'));
            return Replay {
                applied,
                valid_len: off as u64,
                bad: Some(Bad {
                    record: applied + 1,
                    records: lines + partial,
                    bytes: rest.len() as u64,
                    why,
                    last,
                }),
            };
        }
    }
    Replay {
        applied,
        valid_len: off as u64,
        bad: None,
    }
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

/// Why a journal line is not a record.
enum RecordError {
    /// What a write cut by a crash leaves (short, checksum does not match).
    Torn(String),
    /// Written whole (its checksum matches) but not a command.
    Bad(String),
}

fn parse_record(line: &[u8]) -> Result<Command, RecordError> {
    if line.len() < 65 || line[64] != b' ' {
        return Err(RecordError::Torn("too short for a record".into()));
    }
    let body = &line[65..];
    if sha256_hex(body).as_bytes() != &line[..64] {
        return Err(RecordError::Torn("fails its checksum".into()));
    }
    serde_json::from_slice(body).map_err(|e| RecordError::Bad(format!("does not parse: {e}")))
}

/// What a read of the directory found (nothing changed on disk yet).
#[derive(Debug)]
struct Recovery {
    state: DesiredState,
    generation: u64,
    snapshot_gen: Option<u64>,
    snapshot_bytes: u64,
    journal_bytes: u64,
    problems: Vec<String>,
    lossy: bool,
    repairs: Vec<Repair>,
}

/// Journal generations and whether the listing itself failed.
fn list_journals(dir: &Path) -> Result<BTreeSet<u64>, io::Error> {
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(dir)? {
        let Ok(name) = entry?.file_name().into_string() else {
            continue;
        };
        if let Some(g) = name.strip_prefix("journal.")
            && !g.is_empty()
            && g.bytes().all(|b| b.is_ascii_digit())
            && let Ok(g) = g.parse()
        {
            out.insert(g);
        }
    }
    Ok(out)
}

/// `n records`, `1 record`.
fn records(n: usize) -> String {
    if n == 1 {
        "1 record".to_string()
    } else {
        format!("{n} records")
    }
}

/// `kept records 1-n`, in words.
fn kept(records: usize) -> String {
    match records {
        0 => "kept none of its records".to_string(),
        1 => "kept record 1".to_string(),
        n => format!("kept records 1-{n}"),
    }
}

/// Reads snapshots and journals and decides what to keep, without writing.
fn recover(dir: &Path) -> Recovery {
    let mut problems = Vec::new();
    let mut repairs = Vec::new();
    let mut lossy = false;
    let journals = match list_journals(dir) {
        Ok(j) => j,
        Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => {
            problems.push(format!("{} cannot be listed: {e}", dir.display()));
            lossy = true;
            BTreeSet::new()
        }
    };
    // Readable snapshots: (generation, state, file name, bytes).
    let mut readable: Vec<(u64, DesiredState, &str, u64)> = Vec::new();
    let mut current_bad = false;
    for name in [SNAPSHOT, PREV_SNAPSHOT] {
        let path = dir.join(name);
        let why = match fs::read(&path) {
            Ok(bytes) => match parse_snapshot(&bytes) {
                Ok(s) => {
                    readable.push((s.generation, s.state, name, bytes.len() as u64));
                    continue;
                }
                Err(why) => {
                    repairs.push(Repair::CopyAside(name.to_string()));
                    format!("{why}, {} bytes", bytes.len())
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => format!("cannot be read: {e}"),
        };
        if name == SNAPSHOT {
            current_bad = true;
        }
        problems.push(format!("{name} is unreadable ({why})"));
    }
    readable.sort_by_key(|s| std::cmp::Reverse(s.0));
    let (base_gen, mut state, base_name, snapshot_bytes) =
        readable.into_iter().next().unwrap_or_default();
    let snapshot_gen = (base_name == SNAPSHOT).then_some(base_gen);
    let fresh_snapshot = base_name != SNAPSHOT && (current_bad || base_name == PREV_SNAPSHOT);
    if fresh_snapshot && current_bad {
        let from = if base_name.is_empty() {
            "the empty state".to_string()
        } else {
            format!("{base_name} (generation {base_gen})")
        };
        problems.push(format!("fell back to {from}"));
    }

    // Replay the chain of journals from the base's.
    let mut generation = base_gen;
    let mut journal_bytes = 0;
    let mut applied_after_base = false;
    let mut stopped = false;
    let mut g = base_gen;
    while journals.contains(&g) {
        let name = journal_name(g);
        let is_last = !journals.contains(&(g + 1));
        let bytes = match fs::read(dir.join(&name)) {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("{name} cannot be read ({e}); it was not replayed"));
                lossy = true;
                stopped = true;
                break;
            }
        };
        let r = replay(&bytes, &mut state);
        generation = g;
        journal_bytes = r.valid_len;
        if g > base_gen {
            applied_after_base = true;
        }
        match r.bad {
            None => {}
            Some(bad) if bad.last && is_last => {
                tracing::warn!(
                    file = %name,
                    record = bad.record,
                    bytes = bad.bytes,
                    reason = %bad.why,
                    "dropping a torn last record (never acknowledged)"
                );
                repairs.push(Repair::Truncate {
                    name,
                    len: r.valid_len,
                });
            }
            Some(bad) => {
                let range = if bad.records == 1 {
                    format!("record {}", bad.record)
                } else {
                    format!("records {}-{}", bad.record, bad.record + bad.records - 1)
                };
                problems.push(format!(
                    "{name}: {range} dropped ({}, {} bytes; record {} {}); {}",
                    records(bad.records),
                    bad.bytes,
                    bad.record,
                    bad.why,
                    kept(r.applied)
                ));
                lossy = true;
                repairs.push(Repair::CopyAside(name.clone()));
                repairs.push(Repair::Truncate {
                    name,
                    len: r.valid_len,
                });
                stopped = true;
                break;
            }
        }
        g += 1;
    }
    // Journals that do not chain from the base: their records cannot be placed.
    for &j in journals.range(g + 1..) {
        let name = journal_name(j);
        let len = fs::metadata(dir.join(&name)).map(|m| m.len()).unwrap_or(0);
        if len > 0 {
            problems.push(format!(
                "{name}: not replayed ({len} bytes): it does not follow what could be read"
            ));
            lossy = true;
            repairs.push(Repair::CopyAside(name.clone()));
        }
        repairs.push(Repair::Remove(name));
    }
    // An unreadable state.json is lost unless a later journal was replayed whole from the
    // snapshot before it (then what it held has been rebuilt).
    if current_bad && (stopped || !applied_after_base || base_name.is_empty()) {
        lossy = true;
    }
    if fresh_snapshot {
        // Last: every copy aside and cut above comes first.
        repairs.push(Repair::Snapshot);
    }
    if !problems.is_empty() {
        problems.push(if lossy {
            "the rest was kept".to_string()
        } else {
            "nothing was lost".to_string()
        });
    }
    Recovery {
        state,
        generation,
        snapshot_gen,
        snapshot_bytes,
        journal_bytes,
        problems,
        lossy,
        repairs,
    }
}

impl Store {
    /// Opens `dir` (creating it), loads the stored state and replays the journal. Never fails:
    /// what cannot be read is reported in [`Loaded`], and a directory that cannot be written
    /// gives a store that refuses appends until it can ([`Store::ensure_writable`]).
    pub fn open(dir: &Path) -> (Store, Loaded) {
        Self::open_with(dir, write_probe)
    }

    /// [`Store::open`] with another write check (tests simulate a read-only directory).
    pub fn open_with(dir: &Path, probe: Probe) -> (Store, Loaded) {
        if let Err(e) = fs::create_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the state directory");
        }
        let r = recover(dir);
        let mut store = Store {
            dir: dir.to_path_buf(),
            generation: r.generation,
            snapshot_gen: r.snapshot_gen,
            snapshot_bytes: r.snapshot_bytes,
            journal: None,
            journal_bytes: r.journal_bytes,
            poisoned: false,
            repairs: r.repairs,
            probe,
            blocked: None,
            compactions: 0,
        };
        let problem = (!r.problems.is_empty()).then(|| r.problems.join("; "));
        let loaded = Loaded {
            state: r.state,
            problem,
            lossy: r.lossy,
        };
        if let Err(e) = store.ensure_writable(&loaded.state) {
            tracing::error!(error = %e, "the state directory takes no writes; commands that change state are refused");
        }
        (store, loaded)
    }

    /// Reads the stored state without changing anything on disk (for `vr-agent state`).
    pub fn peek(dir: &Path) -> Result<DesiredState, String> {
        let r = recover(dir);
        for p in &r.problems {
            tracing::warn!(problem = %p, "stored state");
        }
        Ok(r.state)
    }

    /// Reads the stored state without changing anything on disk, with what could not be
    /// read (for `vr-agent status --state-dir`).
    pub fn inspect(dir: &Path) -> (DesiredState, Vec<String>) {
        let r = recover(dir);
        (r.state, r.problems)
    }

    /// True when appends are accepted now (without trying again).
    pub fn is_writable(&self) -> bool {
        self.journal.is_some()
    }

    /// Why the store is not writable, from the last attempt.
    pub fn blocked(&self) -> Option<&str> {
        self.blocked.as_deref()
    }

    /// Makes the store ready for appends if it is not: checks that the directory takes writes,
    /// makes the repairs recovery decided on (`state` is the state they lead to), opens the
    /// journal. Cheap once ready.
    pub fn ensure_writable(&mut self, state: &DesiredState) -> Result<(), StoreError> {
        if self.journal.is_some() {
            return Ok(());
        }
        let result = self.make_writable(state);
        self.blocked = result.as_ref().err().map(ToString::to_string);
        if result.is_ok() {
            tracing::info!(dir = %self.dir.display(), "the state directory takes writes");
        }
        result
    }

    fn make_writable(&mut self, state: &DesiredState) -> Result<(), StoreError> {
        (self.probe)(&self.dir).map_err(|source| StoreError::Unwritable {
            dir: self.dir.clone(),
            what: unwritable_kind(&source).unwrap_or("not writable"),
            source,
        })?;
        self.repair(state)?;
        let path = self.journal_path();
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        self.journal = Some(journal);
        Ok(())
    }

    fn repair(&mut self, state: &DesiredState) -> Result<(), StoreError> {
        let stamp = now_stamp();
        while !self.repairs.is_empty() {
            let r = self.repairs.remove(0);
            if let Err(e) = self.repair_one(&r, stamp, state) {
                self.repairs.insert(0, r);
                return Err(e);
            }
        }
        Ok(())
    }

    fn repair_one(
        &mut self,
        r: &Repair,
        stamp: u64,
        state: &DesiredState,
    ) -> Result<(), StoreError> {
        match r {
            Repair::CopyAside(name) => {
                let from = self.dir.join(name);
                let to = self.dir.join(format!("{name}.corrupt-{stamp}"));
                match fs::copy(&from, &to) {
                    Ok(_) => {
                        tracing::warn!(from = %from.display(), to = %to.display(), "copied an unreadable file aside");
                    }
                    Err(e) if unwritable_kind(&e).is_some() => {
                        return Err(io_err("copy aside", &from)(e));
                    }
                    // A file that cannot even be read must not block the store forever.
                    Err(e) => {
                        tracing::error!(file = %from.display(), error = %e, "cannot copy an unreadable file aside");
                    }
                }
            }
            Repair::Truncate { name, len } => {
                let path = self.dir.join(name);
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(*len).and_then(|()| f.sync_all()))
                    .map_err(io_err("truncate", &path))?;
                tracing::info!(file = %path.display(), len, "journal cut to its last good record");
            }
            Repair::Remove(name) => {
                let path = self.dir.join(name);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &path)(e)),
                }
            }
            Repair::Snapshot => self.write_snapshot(state)?,
        }
        Ok(())
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
        let Some(journal) = self.journal.as_mut() else {
            return Err(StoreError::Io {
                op: "append to",
                path,
                source: io::Error::other("the state directory has not taken writes yet"),
            });
        };
        if self.poisoned {
            return Err(StoreError::Io {
                op: "append to",
                path,
                source: io::Error::other(
                    "an earlier append could not be taken back; a snapshot is needed first",
                ),
            });
        }
        let len_before = journal.metadata().map_err(io_err("stat", &path))?.len();
        let dir = &self.dir;
        let written = journal
            .write_all(&line)
            .map_err(write_err("append to", dir, &path))
            .and_then(|()| journal.sync_data().map_err(write_err("fsync", dir, &path)));
        if let Err(e) = written {
            // Take the record back: a refused command must not return at the next start, and
            // half a line would break the next record. If even that fails, refuse appends
            // until a snapshot has replaced this journal.
            let undone = journal
                .set_len(len_before)
                .and_then(|()| journal.sync_data());
            if undone.is_err() {
                self.poisoned = true;
            }
            return Err(e);
        }
        self.journal_bytes = len_before + line.len() as u64;
        Ok(())
    }

    /// True when the journal must be replaced by a snapshot before the next append.
    pub fn needs_snapshot(&self) -> bool {
        self.poisoned
    }

    /// True when the journal has grown enough that a new snapshot pays off: larger than the
    /// last snapshot (and than [`COMPACT_MIN_BYTES`]), or than [`COMPACT_CAP_BYTES`].
    pub fn wants_compaction(&self) -> bool {
        self.journal.is_some()
            && (self.journal_bytes > COMPACT_CAP_BYTES
                || self.journal_bytes > self.snapshot_bytes.max(COMPACT_MIN_BYTES))
    }

    /// Bytes of the current journal.
    pub fn journal_bytes(&self) -> u64 {
        self.journal_bytes
    }

    /// Compactions done since the store was opened.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// Writes `state` as a new snapshot and starts an empty journal.
    pub fn compact(&mut self, state: &DesiredState) -> Result<(), StoreError> {
        if self.journal.is_none() {
            self.ensure_writable(state)?;
        }
        self.write_snapshot(state)
    }

    /// The compaction steps (see the module header).
    fn write_snapshot(&mut self, state: &DesiredState) -> Result<(), StoreError> {
        let generation = self.generation + 1;
        let body = serde_json::to_vec(&Snapshot {
            generation,
            state: state.clone(),
        })?;
        let mut bytes = format!("sha256:{}\n", sha256_hex(&body)).into_bytes();
        bytes.extend_from_slice(&body);
        // Open the next journal before the snapshot switches generations, so nothing can fail
        // between the switch and the first append to it.
        let next_journal = self.dir.join(journal_name(generation));
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&next_journal)
            .and_then(|f| f.set_len(0).and_then(|()| f.sync_all()).map(|()| f))
            .map_err(io_err("create", &next_journal))?;
        let snap = self.dir.join(SNAPSHOT);
        let tmp = self
            .dir
            .join(format!(".{SNAPSHOT}.tmp-{}", std::process::id()));
        let written = write_synced(&tmp, &bytes).and_then(|()| {
            if let Some(g) = self.snapshot_gen {
                let prev = self.dir.join(PREV_SNAPSHOT);
                fs::rename(&snap, &prev).map_err(io_err("rename to", &prev))?;
                tracing::debug!(generation = g, "previous snapshot kept");
            }
            fs::rename(&tmp, &snap).map_err(io_err("rename to", &snap))?;
            sync_dir(&self.dir)
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&next_journal);
            return Err(e);
        }
        // Journals before the kept snapshot lead nowhere now.
        let keep_from = self.snapshot_gen.unwrap_or(0);
        if let Ok(journals) = list_journals(&self.dir) {
            for g in journals.range(..keep_from) {
                let _ = fs::remove_file(self.dir.join(journal_name(*g)));
            }
        }
        self.generation = generation;
        self.snapshot_gen = Some(generation);
        self.snapshot_bytes = bytes.len() as u64;
        self.journal = Some(journal);
        self.journal_bytes = 0;
        self.compactions += 1;
        self.poisoned = false;
        tracing::info!(
            generation,
            bytes = bytes.len(),
            "snapshot written, journal started"
        );
        Ok(())
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(journal_name(self.generation))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn init(uuid: &str) -> Command {
        Command::Init {
            uuid: Some(uuid.into()),
            restart_dnsmasq_after: 5,
        }
    }

    /// A record whose effect stays visible: the server `10.0.0.n` joins the DNS list.
    fn dns(n: u8) -> Command {
        Command::SetDns(vec![Ipv4Addr::new(10, 0, 0, n)])
    }

    fn dns_list(n: std::ops::RangeInclusive<u8>) -> Vec<Ipv4Addr> {
        n.map(|i| Ipv4Addr::new(10, 0, 0, i)).collect()
    }

    /// A store in `dir` holding records `dns(1..=n)`; returns each record's (start, end).
    fn journal_of(dir: &Path, n: u8) -> Vec<(u64, u64)> {
        let (mut store, _) = Store::open(dir);
        let mut bounds = Vec::new();
        for i in 1..=n {
            let start = store.journal_bytes();
            store.append(&dns(i)).unwrap();
            bounds.push((start, store.journal_bytes()));
        }
        bounds
    }

    fn aside(dir: &Path, prefix: &str) -> bool {
        fs::read_dir(dir).unwrap().filter_map(|e| e.ok()).any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{prefix}.corrupt-"))
        })
    }

    #[test]
    fn journal_replays_and_compaction_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, loaded) = Store::open(dir.path());
        assert!(loaded.problem.is_none());
        let mut state = loaded.state;
        for u in ["a", "b", "c"] {
            state.apply(&init(u)).unwrap();
            store.append(&init(u)).unwrap();
        }
        drop(store);
        let (mut store, loaded) = Store::open(dir.path());
        assert_eq!(loaded.state.uuid.as_deref(), Some("c"));
        store.compact(&loaded.state).unwrap();
        store.append(&init("d")).unwrap();
        drop(store);
        let (_, loaded) = Store::open(dir.path());
        assert_eq!(loaded.state.uuid.as_deref(), Some("d"));
        assert!(loaded.problem.is_none());
        assert!(!loaded.lossy);
    }

    #[test]
    fn a_cut_at_every_byte_of_the_last_record_keeps_every_earlier_record() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = journal_of(dir.path(), 3);
        let j = dir.path().join("journal.0");
        let whole = fs::read(&j).unwrap();
        let (start, end) = bounds[2];
        for cut in start..end {
            fs::write(&j, &whole[..cut as usize]).unwrap();
            let (mut store, loaded) = Store::open(dir.path());
            assert_eq!(loaded.state.dns_servers, dns_list(1..=2), "cut at {cut}");
            assert!(
                loaded.problem.is_none(),
                "cut at {cut}: {:?}",
                loaded.problem
            );
            assert!(!loaded.lossy);
            // physically cut back to the last good record, so the next append starts clean
            assert_eq!(fs::metadata(&j).unwrap().len(), start, "cut at {cut}");
            store.append(&dns(9)).unwrap();
            drop(store);
            let (_, loaded) = Store::open(dir.path());
            assert_eq!(
                loaded.state.dns_servers,
                [dns_list(1..=2), vec![Ipv4Addr::new(10, 0, 0, 9)]].concat(),
                "cut at {cut}"
            );
            assert!(
                loaded.problem.is_none(),
                "cut at {cut}: {:?}",
                loaded.problem
            );
        }
    }

    #[test]
    fn a_bad_checksum_on_the_last_record_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = journal_of(dir.path(), 3);
        let j = dir.path().join("journal.0");
        let mut bytes = fs::read(&j).unwrap();
        let at = bounds[2].0 as usize + 80;
        bytes[at] ^= 0x20;
        fs::write(&j, &bytes).unwrap();
        let (_, loaded) = Store::open(dir.path());
        assert_eq!(loaded.state.dns_servers, dns_list(1..=2));
        assert!(loaded.problem.is_none());
        assert_eq!(fs::metadata(&j).unwrap().len(), bounds[2].0);
    }

    #[test]
    fn a_flipped_byte_in_a_middle_record_keeps_the_prefix_and_names_the_drop() {
        for bad in 0..4usize {
            let dir = tempfile::tempdir().unwrap();
            let bounds = journal_of(dir.path(), 5);
            let j = dir.path().join("journal.0");
            let mut bytes = fs::read(&j).unwrap();
            let (start, end) = bounds[bad];
            bytes[start as usize + 70] ^= 0x01;
            fs::write(&j, &bytes).unwrap();
            let (mut store, loaded) = Store::open(dir.path());
            let kept = bad as u8;
            assert_eq!(loaded.state.dns_servers, dns_list(1..=kept));
            assert!(loaded.lossy);
            let problem = loaded.problem.unwrap();
            let dropped_bytes = bounds[4].1 - start;
            let want = format!(
                "journal.0: records {}-5 dropped ({}, {dropped_bytes} bytes; record {} fails its checksum); {}",
                bad + 1,
                super::records(5 - bad),
                bad + 1,
                super::kept(bad),
            );
            assert!(problem.contains(&want), "{problem}\nwant {want}");
            assert!(aside(dir.path(), "journal.0"));
            assert_eq!(fs::metadata(&j).unwrap().len(), start);
            assert!(end > start);
            // the store goes on from the prefix, and the next start is clean
            store.append(&dns(9)).unwrap();
            drop(store);
            let (_, loaded) = Store::open(dir.path());
            assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
            assert!(!loaded.lossy);
            assert_eq!(
                loaded.state.dns_servers,
                [dns_list(1..=kept), vec![Ipv4Addr::new(10, 0, 0, 9)]].concat()
            );
        }
    }

    /// Generation 1 holds dns 1-2, its journal 3-4; generation 2 holds 1-4, its journal 5-6.
    fn two_generations(dir: &Path) -> DesiredState {
        let (mut store, loaded) = Store::open(dir);
        let mut state = loaded.state;
        for (i, range) in [(1u8, 1..=2u8), (2, 3..=4), (3, 5..=6)] {
            for n in range {
                state.apply(&dns(n)).unwrap();
                store.append(&dns(n)).unwrap();
            }
            if i < 3 {
                store.compact(&state).unwrap();
            }
        }
        state
    }

    #[test]
    fn a_cut_snapshot_falls_back_to_the_previous_generation() {
        let dir = tempfile::tempdir().unwrap();
        let full = two_generations(dir.path());
        let snap = dir.path().join(SNAPSHOT);
        let bytes = fs::read(&snap).unwrap();
        fs::write(&snap, &bytes[..bytes.len() / 2]).unwrap();
        let (mut store, loaded) = Store::open(dir.path());
        // state.prev.json + journal.1 rebuild generation 2, and journal.2 applies on top
        assert_eq!(loaded.state, full);
        assert!(!loaded.lossy);
        let problem = loaded.problem.unwrap();
        assert!(problem.contains("state.json is unreadable"), "{problem}");
        assert!(
            problem.contains("fell back to state.prev.json (generation 1)"),
            "{problem}"
        );
        assert!(problem.contains("nothing was lost"), "{problem}");
        assert!(aside(dir.path(), SNAPSHOT));
        // a fresh snapshot replaced the cut one
        store.append(&dns(7)).unwrap();
        drop(store);
        let (_, loaded) = Store::open(dir.path());
        assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
        assert_eq!(loaded.state.dns_servers, dns_list(1..=7));
    }

    #[test]
    fn a_cut_snapshot_and_a_bad_previous_journal_keep_the_longest_prefix() {
        let dir = tempfile::tempdir().unwrap();
        two_generations(dir.path());
        let snap = dir.path().join(SNAPSHOT);
        let bytes = fs::read(&snap).unwrap();
        fs::write(&snap, &bytes[..40]).unwrap();
        let j1 = dir.path().join("journal.1");
        let mut j = fs::read(&j1).unwrap();
        j[3] ^= 0x01;
        fs::write(&j1, &j).unwrap();
        let (_, loaded) = Store::open(dir.path());
        assert_eq!(loaded.state.dns_servers, dns_list(1..=2));
        assert!(loaded.lossy);
        let problem = loaded.problem.unwrap();
        assert!(
            problem.contains("journal.1: records 1-2 dropped"),
            "{problem}"
        );
        assert!(problem.contains("journal.2: not replayed"), "{problem}");
        assert!(problem.contains("state.json is unreadable"), "{problem}");
    }

    #[test]
    fn a_flipped_byte_in_the_only_snapshot_is_lossy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path());
        let mut s = DesiredState::default();
        s.apply(&init("x")).unwrap();
        store.compact(&s).unwrap();
        drop(store);
        let p = dir.path().join(SNAPSHOT);
        let text = fs::read_to_string(&p).unwrap().replace("\"x\"", "\"y\"");
        fs::write(&p, text).unwrap();
        let (_, loaded) = Store::open(dir.path());
        let problem = loaded.problem.unwrap();
        assert!(
            problem.contains("state.json is unreadable (checksum mismatch"),
            "{problem}"
        );
        assert!(
            problem.contains("fell back to the empty state"),
            "{problem}"
        );
        assert!(loaded.lossy);
        assert!(loaded.state.uuid.is_none());
        assert!(aside(dir.path(), SNAPSHOT));
    }

    #[test]
    fn a_crash_between_the_two_renames_of_a_compaction_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let full = two_generations(dir.path());
        // state.json was renamed to state.prev.json, the new one not yet in place
        fs::rename(dir.path().join(SNAPSHOT), dir.path().join(PREV_SNAPSHOT)).unwrap();
        let (_, loaded) = Store::open(dir.path());
        assert_eq!(loaded.state, full);
        assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
        assert!(!loaded.lossy);
    }

    #[test]
    fn a_crash_after_the_next_journal_was_created_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let full = two_generations(dir.path());
        // compaction step 1 done (journal.3 exists, empty), the snapshot never written
        fs::write(dir.path().join("journal.3"), b"").unwrap();
        let (mut store, loaded) = Store::open(dir.path());
        assert_eq!(loaded.state, full);
        assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
        store.append(&dns(7)).unwrap();
        let mut state = loaded.state;
        state.apply(&dns(7)).unwrap();
        // the next compaction keeps state.json (generation 2) as the previous one
        store.compact(&state).unwrap();
        drop(store);
        let (_, loaded) = Store::open(dir.path());
        assert_eq!(loaded.state, state);
        assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
        fs::remove_file(dir.path().join(SNAPSHOT)).unwrap();
        let (_, loaded) = Store::open(dir.path());
        assert_eq!(
            loaded.state, state,
            "state.prev.json and journals 2-4 rebuild it"
        );
    }

    #[test]
    fn a_whole_last_record_that_is_not_a_command_is_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        journal_of(dir.path(), 2);
        let j = dir.path().join("journal.0");
        let mut f = OpenOptions::new().append(true).open(&j).unwrap();
        // checksum matches: written whole, so something else wrote it; never drop it silently
        f.write_all(format!("{} {{}}\n", sha256_hex(b"{}")).as_bytes())
            .unwrap();
        drop(f);
        let (_, loaded) = Store::open(dir.path());
        assert_eq!(loaded.state.dns_servers, dns_list(1..=2));
        assert!(loaded.lossy);
        let problem = loaded.problem.unwrap();
        assert!(
            problem.contains(
                "journal.0: record 3 dropped (1 record, 68 bytes; record 3 does not parse"
            ),
            "{problem}"
        );
    }

    #[test]
    fn compaction_follows_the_journal_size_not_the_record_count() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, loaded) = Store::open(dir.path());
        let mut state = loaded.state;
        let mut n = 0u32;
        while !store.wants_compaction() {
            let cmd = init(&format!("uuid-{n}"));
            state.apply(&cmd).unwrap();
            store.append(&cmd).unwrap();
            n += 1;
        }
        // a tiny snapshot: the floor decides
        assert!(store.journal_bytes() > COMPACT_MIN_BYTES);
        assert!(store.journal_bytes() < COMPACT_MIN_BYTES + 200);
        store.compact(&state).unwrap();
        assert_eq!(store.journal_bytes(), 0);
        // a snapshot larger than the floor: the journal may grow to its size
        let big: Vec<Ipv4Addr> = (0..20_000u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i))
            .collect();
        let cmd = Command::SetDns(big);
        state.apply(&cmd).unwrap();
        store.append(&cmd).unwrap();
        store.compact(&state).unwrap();
        let snapshot = fs::metadata(dir.path().join(SNAPSHOT)).unwrap().len();
        assert!(snapshot > 2 * COMPACT_MIN_BYTES);
        while !store.wants_compaction() {
            store.append(&init("u")).unwrap();
        }
        assert!(store.journal_bytes() > snapshot);
        assert!(store.journal_bytes() < snapshot + 200);
        // the previous generation and the journal from it are kept, older ones not
        store.compact(&state).unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["journal.2", "journal.3", "state.json", "state.prev.json"]
        );
    }

    fn read_only(_: &Path) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(
            nix::errno::Errno::EROFS as i32,
        ))
    }

    #[test]
    fn a_read_only_directory_is_read_and_refuses_appends_until_it_takes_writes() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = journal_of(dir.path(), 2);
        let j = dir.path().join("journal.0");
        let mut f = OpenOptions::new().append(true).open(&j).unwrap();
        f.write_all(b"0123 torn").unwrap();
        drop(f);
        let torn_len = fs::metadata(&j).unwrap().len();

        let (mut store, loaded) = Store::open_with(dir.path(), read_only);
        assert_eq!(loaded.state.dns_servers, dns_list(1..=2));
        assert!(!store.is_writable());
        let e = store.ensure_writable(&loaded.state).unwrap_err();
        assert!(e.is_unwritable());
        assert_eq!(
            e.to_string(),
            format!(
                "the state directory {} is read-only (EROFS)",
                dir.path().display()
            )
        );
        assert!(store.append(&dns(3)).is_err());
        assert!(!store.wants_compaction());
        // nothing was repaired while the directory refused writes
        assert_eq!(fs::metadata(&j).unwrap().len(), torn_len);

        // the directory takes writes again
        store.probe = write_probe;
        store.ensure_writable(&loaded.state).unwrap();
        assert_eq!(fs::metadata(&j).unwrap().len(), bounds[1].1);
        store.append(&dns(3)).unwrap();
        drop(store);
        let (_, loaded) = Store::open(dir.path());
        assert_eq!(loaded.state.dns_servers, dns_list(1..=3));
    }

    #[test]
    fn a_full_state_round_trips_through_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path());
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
            let route = crate::protocol::route(path).unwrap();
            let crate::protocol::Request::Change(cmd) = route.parse(&body).unwrap() else {
                panic!("{path}");
            };
            s.apply(&cmd).unwrap();
        }
        store.compact(&s).unwrap();
        drop(store);
        let (_, loaded) = Store::open(dir.path());
        assert!(loaded.problem.is_none(), "{:?}", loaded.problem);
        assert_eq!(loaded.state, s);
        assert_eq!(loaded.state.port_forwards.len(), 1);
    }

    #[test]
    fn a_failed_append_is_not_replayed_and_a_snapshot_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path());
        store.append(&init("a")).unwrap();
        // A handle that refuses writes and truncation: the append fails and cannot be taken
        // back, so the store refuses further appends until a snapshot.
        store.journal = Some(File::open(dir.path().join("journal.0")).unwrap());
        assert!(store.append(&init("b")).is_err());
        assert!(store.needs_snapshot());
        assert!(store.append(&init("c")).is_err());
        let mut s = DesiredState::default();
        s.apply(&init("a")).unwrap();
        store.compact(&s).unwrap();
        assert!(!store.needs_snapshot());
        store.append(&init("d")).unwrap();
        drop(store);
        let (_, loaded) = Store::open(dir.path());
        assert!(loaded.problem.is_none());
        assert_eq!(loaded.state.uuid.as_deref(), Some("d"));
    }
}
