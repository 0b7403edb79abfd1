//! Changes of the files the agent writes for its engines (dnsmasq's configuration, hosts and
//! option files), through inotify. Any change of a file of ours asks for a verify of that
//! engine, which compares the files with what was written and rewrites only real differences
//! (so the agent's own writes cost one cheap comparison, not a repair).

use super::Signal;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// How often directories not there yet (the engine has not started) are looked for again.
const RETRY: Duration = Duration::from_millis(100);
/// How long a read waits when every directory is watched.
const IDLE: Duration = Duration::from_secs(5);

/// Files in the watched directories that the engine itself writes, not the agent.
const NOT_OURS: &[&str] = &["leases", "dnsmasq.pid"];

/// Starts a thread that watches `dirs` (each may appear later) and sends a
/// [`Signal::Files`] naming the file for every change of a file of ours.
pub fn spawn(dirs: Vec<PathBuf>, tx: UnboundedSender<Signal>) -> nix::Result<()> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    std::thread::Builder::new()
        .name("file-events".into())
        .spawn(move || watch(inotify, dirs, tx))
        .map_err(|_| nix::Error::EAGAIN)?;
    Ok(())
}

fn watch(inotify: Inotify, dirs: Vec<PathBuf>, tx: UnboundedSender<Signal>) {
    let mask = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF;
    let mut watched: HashMap<WatchDescriptor, PathBuf> = HashMap::new();
    loop {
        for dir in &dirs {
            if !watched.values().any(|d| d == dir)
                && let Ok(wd) = inotify.add_watch(dir, mask)
            {
                tracing::debug!(dir = %dir.display(), "watching files");
                watched.insert(wd, dir.clone());
                // whatever changed before the watch began is compared once
                let what = format!("{} watched from now on", dir.display());
                if tx.send(Signal::Files(what)).is_err() {
                    return;
                }
            }
        }
        let wait = if watched.len() < dirs.len() {
            RETRY
        } else {
            IDLE
        };
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "file notifications stopped");
                return;
            }
        }
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(nix::Error::EAGAIN) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "file notifications stopped");
                return;
            }
        };
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                if tx
                    .send(Signal::Files("file notifications overflowed".into()))
                    .is_err()
                {
                    return;
                }
                continue;
            }
            if event
                .mask
                .intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF)
            {
                // the directory went away: look for it again
                watched.remove(&event.wd);
                if event.mask.contains(AddWatchFlags::IN_DELETE_SELF)
                    && tx
                        .send(Signal::Files(
                            "a directory of dnsmasq's files was removed".into(),
                        ))
                        .is_err()
                {
                    return;
                }
                continue;
            }
            let Some(name) = event
                .name
                .as_ref()
                .map(|n| n.to_string_lossy().into_owned())
            else {
                continue;
            };
            if !is_ours(&name) {
                continue;
            }
            let dir = watched
                .get(&event.wd)
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            tracing::debug!(%dir, %name, mask = ?event.mask, "file changed");
            if tx
                .send(Signal::Files(format!("{dir}/{name} changed")))
                .is_err()
            {
                return;
            }
        }
    }
}

/// Temporary files (ours and editors') start with a dot; the engine's own files are listed.
fn is_ours(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with('~') && !NOT_OURS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_of_a_file_of_ours_is_signalled_even_in_a_directory_made_later() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("dnsmasq");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        spawn(vec![dir.clone()], tx).unwrap();
        std::fs::create_dir(&dir).unwrap();
        let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Signal>| {
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            loop {
                match rx.try_recv() {
                    Ok(s) => break s,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("no signal: {e}"),
                }
            }
        };
        assert_eq!(
            next(&mut rx),
            Signal::Files(format!("{} watched from now on", dir.display()))
        );
        std::fs::write(dir.join("leases"), "not ours\n").unwrap();
        std::fs::write(dir.join(".hosts.dhcp.tmp"), "a temporary file\n").unwrap();
        std::fs::write(dir.join("hosts.dhcp"), "edited\n").unwrap();
        assert_eq!(
            next(&mut rx),
            Signal::Files(format!("{}/hosts.dhcp changed", dir.display()))
        );
    }

    #[test]
    fn temporary_and_engine_files_are_not_ours() {
        assert!(is_ours("hosts.dhcp"));
        assert!(is_ours("fa-3c-91-5e-22-07"));
        assert!(!is_ours(".hosts.dhcp.tmp"));
        assert!(!is_ours("hosts.dhcp~"));
        assert!(!is_ours("leases"));
        assert!(!is_ours("dnsmasq.pid"));
    }
}
