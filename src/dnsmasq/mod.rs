//! DHCP and DNS for the guests through a dnsmasq process the agent owns.
//!
//! `render` turns the desired state (plus the router's interfaces) into dnsmasq's files; `write`
//! puts them on disk atomically and only when they change; `process` runs dnsmasq; `leases`
//! releases the leases of forgotten hosts. This backend decides, per command, the cheapest way
//! to bring dnsmasq along:
//! - hosts added to known subnets: one new file per host (and per new option profile) in the
//!   inotify-watched directories, no reload; the host's DNS name answers from its lease
//!   (dnsmasq names leases in the subnet's domain) and from the additional-hosts file after
//!   the next full write (a DNS `--hostsdir` would cost dnsmasq a pass over every DHCP host per
//!   file, and deleting its files on the next full write one more each);
//! - upstream DNS servers: the resolv file, which dnsmasq watches itself;
//! - removals, changes and rebuilds: the full files, then one SIGHUP per batch window (a
//!   restart instead while a host whose `dhcp-host` sets tags holds a lease: dnsmasq 2.90
//!   dies in that reload, see `render`);
//! - a new guest nic or subnet (the main config): a restart.

pub mod error;
pub mod leases;
pub mod process;
pub mod render;
pub mod write;

use crate::backend::{Backend, BackendError};
use crate::health::Health;
use crate::state::ha::Role;
use crate::state::model::DhcpHost;
use crate::state::types::{Cidr, MacAddr};
use crate::state::{Change, Command, DesiredState, Feature, Parts};
use crate::supervisor::Started;
pub use error::DnsmasqError;
use leases::Release;
use process::{LeaseSet, Supervisor};
use render::{Iface, Paths};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Health source while the DNS forwarder could not follow a change of SNAT guest nics.
pub const HEALTH_DNS_GUESTS: &str = "dns";

/// Health source for hosts no nic of the router serves.
pub const HEALTH_UNPLACED: &str = "dhcp";

/// The interfaces of the current network namespace that may serve `state`'s guests, with their
/// MACs and IPv4 addresses: every nic [`DesiredState::guest_nics`] names (hosts' `vrNicMac`,
/// the desired nics holding their subnets, SNAT guest nics) and the nics holding a host's
/// gateway (or address). The public nic and its VIPs (up to 100,000 addresses) are read only
/// if a host is placed there, so a sync costs O(hosts), not O(VIPs). [`render::nic_for`]
/// finds in this list what it finds among all.
pub fn read_ifaces(state: &DesiredState) -> std::io::Result<Vec<Iface>> {
    let system = crate::link::view::current()?;
    let guests = state.guest_nics();
    let macs: BTreeSet<MacAddr> = guests
        .dhcp
        .iter()
        .flat_map(|h| h.macs())
        .chain(guests.snat.iter().copied())
        .collect();
    let names: BTreeSet<&str> = guests
        .dhcp
        .iter()
        .filter_map(|h| system.nic_holding(h.holding))
        .collect();
    let macs: Vec<MacAddr> = macs.into_iter().collect();
    let names: Vec<&str> = names.into_iter().collect();
    Ok(system.interfaces_of(&macs, &names))
}

/// What dnsmasq holds now (valid after a successful apply or reconcile).
#[derive(Debug)]
struct Applied {
    /// dnsmasq runs (there are guest nics).
    running: bool,
    /// Subnets with a DHCP range in the running config.
    subnets: BTreeSet<Cidr>,
    /// Guest nics in the running config.
    guest_macs: BTreeSet<MacAddr>,
    /// DNS domain of each subnet in the running config.
    domains: BTreeMap<Cidr, String>,
    /// Hosts' own option profiles dnsmasq has read.
    profiles: HashSet<String>,
    /// The profile of each subnet.
    subnet_profiles: BTreeMap<Cidr, String>,
}

/// The DHCP and DNS backend.
pub struct DnsmasqBackend {
    paths: Paths,
    bin: PathBuf,
    health: Arc<Health>,
    supervisor: Option<Supervisor>,
    /// dnsmasq was started and not stopped (the supervisor restarts it if it dies).
    running: bool,
    applied: Option<Applied>,
    memo: render::LineMemo,
    /// Hosts whose `dhcp-host` sets tags, as dnsmasq may hold them now (shared with the
    /// supervisor, which must not reload dnsmasq while one of them holds a lease).
    tagged_loaded: Arc<Mutex<HashSet<MacAddr>>>,
    /// What the last sync saw of the inputs other features own (SNAT guest nics, with or
    /// without upstream servers): a change of it from a SNAT command needs a sync.
    dns_guests: Option<DnsGuests>,
    /// The files of the last full sync and the sha256 of what was written, to notice edits
    /// made behind our back.
    written: Vec<(PathBuf, [u8; 32])>,
    /// The same for the per-host and per-profile files added since (the incremental
    /// directories hold nothing else).
    added: HashMap<PathBuf, [u8; 32]>,
    /// Counts dnsmasq's restarts and reloads, and its leases.
    metrics: crate::metrics::Metrics,
    /// The node's HA role: a backup keeps the files but does not run dnsmasq.
    role: Role,
    /// A dnsmasq left by an earlier agent was looked for (and stopped) when none is wanted.
    stale_checked: bool,
}

/// Whether DNS is forwarded, and the SNAT guest nics it is forwarded on.
type DnsGuests = (bool, BTreeSet<MacAddr>);

fn dns_guests(state: &DesiredState) -> DnsGuests {
    (
        !state.dns_servers.is_empty(),
        crate::state::guests::snat_nics(state.snats.values()),
    )
}

fn err(e: impl Into<DnsmasqError>) -> BackendError {
    BackendError::Dnsmasq(e.into())
}

impl DnsmasqBackend {
    /// A backend keeping its files in `dir` and running `bin`.
    pub fn new(dir: PathBuf, bin: PathBuf, health: Arc<Health>) -> DnsmasqBackend {
        DnsmasqBackend {
            paths: Paths::new(dir),
            bin,
            health,
            supervisor: None,
            running: false,
            applied: None,
            memo: render::LineMemo::default(),
            tagged_loaded: Arc::default(),
            dns_guests: None,
            written: Vec::new(),
            added: HashMap::new(),
            metrics: crate::metrics::Metrics::default(),
            role: Role::NoHa,
            stale_checked: false,
        }
    }

    /// Counts into `metrics` (restarts, reloads, and the lease file at each scrape).
    pub fn with_metrics(self, metrics: crate::metrics::Metrics) -> DnsmasqBackend {
        metrics.dnsmasq_leases_at(self.paths.leases());
        DnsmasqBackend { metrics, ..self }
    }

    /// The files whose content on disk differs from what the agent wrote, and files in the
    /// incremental directories it did not write.
    fn changed_files(&self) -> Vec<String> {
        let differs = |path: &PathBuf, digest: &[u8; 32]| {
            let now: Option<[u8; 32]> = std::fs::read(path).ok().map(|b| Sha256::digest(&b).into());
            now.as_ref() != Some(digest)
        };
        let name = |path: &std::path::Path| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let mut changed: Vec<String> = self
            .written
            .iter()
            .filter(|(path, digest)| differs(path, digest))
            .map(|(path, _)| name(path))
            .collect();
        changed.extend(
            self.added
                .iter()
                .filter(|(path, digest)| differs(path, digest))
                .map(|(path, _)| name(path)),
        );
        for dir in self.paths.dirs() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                if !hidden && !self.added.contains_key(&path) {
                    changed.push(format!("{} (not written by the agent)", name(&path)));
                }
            }
        }
        changed
    }

    /// Records what the agent wrote at `path` (for [`Self::changed_files`]).
    fn remember(&mut self, path: &std::path::Path, content: &[u8]) {
        let digest: [u8; 32] = Sha256::digest(content).into();
        match self.written.iter_mut().find(|(p, _)| p == path) {
            Some((_, d)) => *d = digest,
            None => {
                self.added.insert(path.to_path_buf(), digest);
            }
        }
    }

    fn supervisor(&mut self) -> &Supervisor {
        let (bin, paths, health) = (&self.bin, &self.paths, &self.health);
        let tagged = &self.tagged_loaded;
        let metrics = &self.metrics;
        self.supervisor.get_or_insert_with(|| {
            Supervisor::spawn(
                bin.clone(),
                paths.clone(),
                Arc::clone(health),
                Arc::clone(tagged),
                metrics.clone(),
            )
        })
    }

    fn ensure_dirs(&self) -> Result<(), BackendError> {
        write::ensure_dir(&self.paths.dir).map_err(err)?;
        for d in self.paths.dirs() {
            write::ensure_dir(&d).map_err(err)?;
        }
        Ok(())
    }

    /// Hosts added on top of `before` that only need new files, or `None` when the command
    /// needs the full path (a changed or displaced host, a new subnet or nic, dnsmasq down).
    fn incremental_adds<'a>(
        &self,
        before: &DesiredState,
        hosts: &'a [DhcpHost],
    ) -> Option<Vec<&'a DhcpHost>> {
        let applied = self.applied.as_ref()?;
        if !applied.running {
            return None;
        }
        let mut new: Vec<&DhcpHost> = Vec::new();
        for h in hosts {
            match before.dhcp_hosts.get(&h.mac) {
                Some(old) if old == h => continue,
                Some(_) => return None,
                None => {}
            }
            if new.iter().any(|n| n.mac == h.mac || n.ip == h.ip)
                || before.dhcp_hosts.values().any(|o| o.ip == h.ip)
                || !applied.subnets.contains(&render::subnet_of(h))
                || !applied.subnet_profiles.contains_key(&render::subnet_of(h))
                || h.vr_nic_mac
                    .is_some_and(|m| !applied.guest_macs.contains(&m))
                || (h.is_default_l3
                    && h.dns_domain.as_deref().map(|d| d.trim_end_matches('.'))
                        != applied
                            .domains
                            .get(&render::subnet_of(h))
                            .map(String::as_str))
            {
                return None;
            }
            new.push(h);
        }
        Some(new)
    }

    /// Adds hosts through new files in the watched directories (no reload).
    fn add_files(&mut self, hosts: &[&DhcpHost]) -> Result<(), BackendError> {
        let mut written: Vec<PathBuf> = Vec::new();
        let mut contents: Vec<(PathBuf, String)> = Vec::new();
        let mut new_profiles: Vec<String> = Vec::new();
        let result = (|| -> Result<(), BackendError> {
            let applied = self
                .applied
                .as_ref()
                .ok_or_else(|| err(DnsmasqError::Unknown))?;
            for h in hosts {
                let (tag, body) = render::profile(h);
                let own = applied.subnet_profiles.get(&render::subnet_of(h)) != Some(&tag);
                if own && !applied.profiles.contains(&tag) && !new_profiles.contains(&tag) {
                    let p = self.paths.opts_dir().join(&tag);
                    let lines = render::own_profile_lines(&tag, &body);
                    write::write_new(&p, lines.as_bytes()).map_err(err)?;
                    written.push(p.clone());
                    contents.push((p, lines));
                    new_profiles.push(tag.clone());
                }
                if own {
                    self.tagged_loaded
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(h.mac);
                }
                let p = self.paths.hosts_dir().join(render::host_file_name(h.mac));
                let line = render::host_line(h, own.then_some(tag.as_str()));
                write::write_new(&p, line.as_bytes()).map_err(err)?;
                written.push(p.clone());
                contents.push((p, line));
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                if let Some(a) = self.applied.as_mut() {
                    a.profiles.extend(new_profiles);
                }
                for (p, c) in contents {
                    self.remember(&p, c.as_bytes());
                }
                Ok(())
            }
            Err(e) => {
                // dnsmasq may have read some already: take them out and reload.
                let mut removed = true;
                for p in &written {
                    removed &= std::fs::remove_file(p).is_ok();
                }
                if !written.is_empty() {
                    self.supervisor().reload(Vec::new(), 0);
                }
                Err(if removed { e.unchanged() } else { e })
            }
        }
    }

    /// Brings every file and the process in line with `state`.
    async fn sync(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        self.sync_with(state, false).await
    }

    /// [`Self::sync`]; with `keep`, hosts the files hold beyond `state` stay (lines of the
    /// hosts and additional-hosts files for other MACs and addresses, and the per-host files
    /// of earlier incremental adds), so an unreadable store takes no guest's address away.
    async fn sync_with(&mut self, state: &DesiredState, keep: bool) -> Result<(), BackendError> {
        let started = std::time::Instant::now();
        // A dnsmasq left by an earlier agent holds the hosts of the files as they are now:
        // those that set tags count until it has reloaded (see `tagged_loaded`).
        let tagged_on_disk = if self.running {
            HashSet::new()
        } else {
            tagged_on_disk(&self.paths)
        };
        self.applied = None;
        self.dns_guests = Some(dns_guests(state));
        self.ensure_dirs()?;
        let ifaces = read_ifaces(state).map_err(|e| err(DnsmasqError::Interfaces(e)))?;
        let r = render::render_with(&self.paths, state, &ifaces, &mut self.memo);
        let rendered_us = started.elapsed().as_micros() as u64;
        if r.unplaced.is_empty() {
            self.health.clear(HEALTH_UNPLACED);
        } else {
            let first: Vec<String> = r.unplaced.iter().take(5).map(|m| m.to_string()).collect();
            self.health.set(
                HEALTH_UNPLACED,
                format!(
                    "no nic of this router serves {} DHCP host(s) (e.g. {}); they get no address yet",
                    r.unplaced.len(),
                    first.join(", ")
                ),
            );
        }
        write::write_if_changed(&self.paths.resolv(), r.resolv.as_bytes()).map_err(err)?;
        let mut changed = false;
        let (hosts, addn_hosts) = if keep {
            (
                keep_lines(&self.paths.hosts(), &r.hosts, ','),
                keep_lines(&self.paths.addn_hosts(), &r.addn_hosts, ' '),
            )
        } else {
            (r.hosts.clone(), r.addn_hosts.clone())
        };
        for (path, content) in [
            (self.paths.hosts(), &hosts),
            (self.paths.opts(), &r.opts),
            (self.paths.addn_hosts(), &addn_hosts),
        ] {
            changed |= write::write_if_changed(&path, content.as_bytes()).map_err(err)?;
        }
        if !keep {
            for d in self.paths.dirs() {
                changed |= write::clear_dir(&d).map_err(err)? > 0;
            }
        }
        let conf_changed =
            write::write_if_changed(&self.paths.conf(), r.conf.as_bytes()).map_err(err)?;
        if !keep {
            self.added.clear();
        }
        self.written = [
            (self.paths.resolv(), &r.resolv),
            (self.paths.hosts(), &hosts),
            (self.paths.opts(), &r.opts),
            (self.paths.addn_hosts(), &addn_hosts),
            (self.paths.conf(), &r.conf),
        ]
        .into_iter()
        .map(|(p, c)| (p, Sha256::digest(c.as_bytes()).into()))
        .collect();
        let written_us = started.elapsed().as_micros() as u64;
        // Only the node carrying the data plane serves (an HA backup keeps its files ready).
        let wanted = (r.placed > 0 || r.listening > 0) && self.role.carries_data_plane();
        if wanted {
            write::check_reachable(&self.paths.dir).map_err(err)?;
        }
        if !wanted && keep && self.role.carries_data_plane() {
            // An unreadable store: a dnsmasq still serving what the agent can no longer read
            // is left alone (nothing is removed).
            self.running = false;
        } else if !wanted {
            if self.running || !self.stale_checked {
                // also one left serving by an agent that crashed (an HA backup must not
                // serve)
                self.supervisor().stop().await;
                self.stale_checked = true;
            }
            self.running = false;
        } else if conf_changed || !self.running {
            self.running = false;
            let leases_kept: LeaseSet = state.dhcp_hosts.values().map(|h| (h.mac, h.ip)).collect();
            *self.tagged_loaded.lock().unwrap_or_else(|e| e.into_inner()) =
                r.tagged.iter().copied().collect();
            // A dnsmasq an earlier agent left serving, started from this very config, serves
            // on (its start reads every address of the namespace: seconds at 100,000 VIPs).
            let started = if conf_changed {
                self.supervisor()
                    .start(leases_kept)
                    .await
                    .map(|()| Started::Fresh)
            } else {
                self.supervisor().start_or_adopt(leases_kept).await
            };
            if started.map_err(err)? == Started::Adopted {
                // It read the other files at some earlier time: read them again, and let go
                // of the leases of hosts gone since (none while keeping: nothing is removed).
                self.tagged_loaded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(tagged_on_disk);
                let releases = if keep {
                    Vec::new()
                } else {
                    releases(&self.paths, state, &ifaces)
                };
                self.supervisor()
                    .reload(releases, state.restart_dnsmasq_after);
            }
            self.running = true;
        } else if changed {
            let releases = releases(&self.paths, state, &ifaces);
            let restart_after = state.restart_dnsmasq_after;
            // Until the reload, dnsmasq holds the old tagged hosts as well as the new ones.
            self.tagged_loaded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(r.tagged.iter().copied());
            self.supervisor().reload(releases, restart_after);
        }
        tracing::debug!(
            hosts = state.dhcp_hosts.len(),
            rendered_us,
            written_us,
            total_us = started.elapsed().as_micros() as u64,
            changed,
            conf_changed,
            "dnsmasq files synced"
        );
        self.applied = Some(Applied {
            running: wanted,
            subnets: r.subnets,
            guest_macs: r.guest_macs,
            domains: r.domains,
            profiles: r.profiles.into_iter().collect(),
            subnet_profiles: r.subnet_profiles,
        });
        Ok(())
    }
}

/// The hosts whose `dhcp-host` lines set tags in the hosts file and directory as they are on
/// disk now (what a dnsmasq started or reloaded from them holds).
fn tagged_on_disk(paths: &Paths) -> HashSet<MacAddr> {
    let mut texts: Vec<String> = std::fs::read_to_string(paths.hosts()).into_iter().collect();
    if let Ok(entries) = std::fs::read_dir(paths.hosts_dir()) {
        texts.extend(
            entries
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok()),
        );
    }
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| l.contains(",set:"))
        .filter_map(|l| l.split(',').next()?.parse().ok())
        .collect()
}

/// `rendered` plus the lines of the file at `path` whose key (the text before `sep`: a MAC, an
/// address) no rendered line has.
fn keep_lines(path: &std::path::Path, rendered: &str, sep: char) -> String {
    let Ok(old) = std::fs::read_to_string(path) else {
        return rendered.to_string();
    };
    let key = |l: &str| l.split(sep).next().unwrap_or("").to_string();
    let known: HashSet<String> = rendered.lines().map(key).collect();
    let mut out = rendered.to_string();
    let mut kept = 0usize;
    for line in old.lines() {
        if !line.trim().is_empty() && !line.starts_with('#') && !known.contains(&key(line)) {
            out.push_str(line);
            out.push('\n');
            kept += 1;
        }
    }
    if kept > 0 {
        tracing::warn!(file = %path.display(), kept, "kept lines the stored state does not know");
    }
    out
}

/// Leases in dnsmasq's lease file that no desired host accounts for, with the nic and server
/// address to release each from.
fn releases(paths: &Paths, state: &DesiredState, ifaces: &[Iface]) -> Vec<Release> {
    leases::read(&paths.leases())
        .into_iter()
        .filter(|(mac, ip)| state.dhcp_hosts.get(mac).map(|h| h.ip) != Some(*ip))
        .filter_map(|(mac, ip)| {
            let iface = ifaces
                .iter()
                .filter(|i| i.name != "lo")
                .find(|i| i.addrs.iter().any(|a| a.contains(ip)))?;
            let server = iface.addrs.iter().find(|a| a.contains(ip))?.addr;
            Some(Release {
                mac,
                ip,
                nic: iface.name.clone(),
                server,
            })
        })
        .collect()
}

impl Backend for DnsmasqBackend {
    fn features(&self) -> &'static [Feature] {
        &[Feature::Dhcp, Feature::Dns]
    }

    /// Its files and its dnsmasq, nothing in nftables.
    fn reapplies_alongside(&self) -> bool {
        true
    }

    fn concerns(&self, parts: Parts) -> bool {
        // nics: listen addresses and subnets; SNAT: the guest nics the forwarder serves
        parts.intersects(
            Parts::DHCP_HOSTS | Parts::DNS_SERVERS | Parts::NICS | Parts::SNATS | Parts::HA,
        )
    }

    fn note_role(&mut self, role: Role) {
        self.role = role;
    }

    async fn set_role(&mut self, state: &DesiredState, role: Role) -> Result<(), BackendError> {
        if self.role == role && self.applied.is_some() {
            return Ok(());
        }
        self.role = role;
        self.sync(state).await
    }

    async fn apply(&mut self, change: &Change<'_>) -> Result<(), BackendError> {
        let (before, after) = (change.before, change.after);
        match change.cmd {
            Command::AddDhcp {
                hosts,
                rebuild: false,
            } => {
                if let Some(new) = self.incremental_adds(before, hosts) {
                    return self.add_files(&new);
                }
            }
            Command::SetDns(_) | Command::RemoveDns(_) if self.applied.is_some() => {
                // Going from no upstream to some (or back) changes where dnsmasq listens
                // when there are SNAT guest nics: that needs a full sync below.
                let listening_changes = !before.snats.is_empty()
                    && before.dns_servers.is_empty() != after.dns_servers.is_empty();
                if !listening_changes {
                    // The forwarder's servers only: dnsmasq watches its resolv file itself.
                    let text = render::render_resolv(&after.dns_servers);
                    let path = self.paths.resolv();
                    // written aside, then renamed: a failure leaves the file as it was
                    write::write_if_changed(&path, text.as_bytes())
                        .map_err(|e| err(e).unchanged())?;
                    self.remember(&path, text.as_bytes());
                    return Ok(());
                }
            }
            // A SNAT change: only a change of the guest nics the forwarder serves matters.
            _ if !change
                .touches(Parts::DHCP_HOSTS | Parts::DNS_SERVERS | Parts::NICS | Parts::HA)
                && self.dns_guests.as_ref() == Some(&dns_guests(after)) =>
            {
                return Ok(());
            }
            _ => {}
        }
        if change.preserve {
            return self.sync_with(after, true).await;
        }
        if let Err(e) = self.sync(after).await {
            tracing::warn!(error = %e.report(), "dnsmasq change failed; restoring the previous state");
            if let Err(undo) = self.sync(before).await {
                tracing::error!(error = %undo.report(), "restoring dnsmasq failed");
                return Err(e);
            }
            return Err(e.unchanged());
        }
        Ok(())
    }

    async fn reconcile(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        self.sync(state).await
    }

    async fn check_and_repair(
        &mut self,
        state: &DesiredState,
    ) -> Result<Option<String>, BackendError> {
        let changed = self.changed_files();
        if changed.is_empty() {
            return Ok(None);
        }
        self.sync(state).await?;
        Ok(Some(format!(
            "dnsmasq files changed outside the agent ({}); rewritten",
            changed.join(", ")
        )))
    }

    async fn reconcile_keeping(&mut self, state: &DesiredState) -> Result<(), BackendError> {
        self.sync_with(state, true).await
    }

    /// dnsmasq serves on for the next agent process, which adopts it (the data plane outlives
    /// the agent; an HA master has handed over and stopped it before).
    async fn shutdown(&mut self) {
        if let Some(s) = self.supervisor.take() {
            s.detach().await;
        }
        self.running = false;
    }
}

#[cfg(test)]
mod keep_tests {
    #[test]
    fn keeping_adds_the_state_and_drops_no_other_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(
            &path,
            "# old\naa:00:00:00:00:01,10.0.0.1,infinite\naa:00:00:00:00:02,10.0.0.2,infinite\n",
        )
        .unwrap();
        let rendered =
            "aa:00:00:00:00:02,10.0.0.22,infinite\naa:00:00:00:00:03,10.0.0.3,infinite\n";
        assert_eq!(
            super::keep_lines(&path, rendered, ','),
            format!("{rendered}aa:00:00:00:00:01,10.0.0.1,infinite\n")
        );
        assert_eq!(
            super::keep_lines(&dir.path().join("none"), rendered, ','),
            rendered
        );
    }
}
