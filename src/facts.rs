//! Gathers the [`SystemFacts`] the rails check commands against: the management nic's
//! address (from the cached bootstrap info and the first address of the live nic named
//! `--mgmt-nic`), the
//! agent's listen ports plus ssh, and every nic's addresses by MAC.

use crate::bootstrap::info::BootstrapInfo;
use crate::config::Config;
use crate::state::Command;
use crate::state::facts::{SSH_PORT, SystemFacts};
use crate::state::types::{Cidr, MacAddr};
use std::path::PathBuf;

/// Where the facts come from.
#[derive(Clone, Debug)]
pub struct FactsSource {
    /// Name of the management nic (`--mgmt-nic`).
    pub mgmt_nic: String,
    /// The cached bootstrap info.
    pub bootstrap_cache: PathBuf,
    /// The agent's listen ports.
    pub agent_ports: Vec<u16>,
}

impl FactsSource {
    /// The source of a `serve` configuration.
    pub fn from_config(config: &Config) -> FactsSource {
        FactsSource {
            mgmt_nic: config.mgmt_nic.clone(),
            bootstrap_cache: crate::bootstrap::cache_path(&config.state_dir),
            agent_ports: vec![config.vr_listen.port(), config.appliance_listen.port()],
        }
    }

    /// The facts `cmd` is checked against, now: the management nic, and the nics the
    /// command names (only those nics' addresses are read, so a public nic with 100,000 VIPs
    /// costs nothing to a command about a guest nic). What cannot be read is left out (and
    /// logged): the rails then protect what is known.
    pub fn gather(&self, cmd: &Command) -> SystemFacts {
        let mut facts = SystemFacts {
            protected_ports: self.agent_ports.clone(),
            ..SystemFacts::default()
        };
        facts.protected_ports.push(SSH_PORT);
        facts.protected_ports.sort_unstable();
        facts.protected_ports.dedup();
        match BootstrapInfo::load_cached(&self.bootstrap_cache) {
            Ok(Some(info)) => {
                for (i, nic) in info.nics.iter().enumerate() {
                    let cidr = Cidr::new(nic.ip, nic.prefix);
                    if i == 0 {
                        facts.mgmt_addrs.push(cidr);
                    }
                    facts.nic_addrs.entry(nic.mac).or_default().push(cidr);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "bootstrap info unreadable for the rails"),
        }
        // A listener's VIP may sit on any nic: all of them, for the rare `/lb/refresh`.
        let read = crate::link::view::current().map(|system| {
            if matches!(cmd, Command::RefreshLb(_)) {
                system.interfaces()
            } else {
                system.interfaces_of(&named_macs(cmd), &[self.mgmt_nic.as_str()])
            }
        });
        match read {
            Ok(ifaces) => {
                for iface in ifaces {
                    // Its first address is a primary (the kernel lists secondaries, such
                    // as VIPs, after the primaries); the others may be VIPs.
                    if iface.name == self.mgmt_nic
                        && let Some(first) = iface.addrs.first()
                    {
                        facts.mgmt_addrs.push(*first);
                    }
                    if let Some(mac) = iface.mac {
                        facts.nic_addrs.entry(mac).or_default().extend(iface.addrs);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the nics for the rails"),
        }
        facts
    }
}

/// The nics a command names (their subnets are what its rails check).
fn named_macs(cmd: &Command) -> Vec<MacAddr> {
    let mut macs: Vec<MacAddr> = match cmd {
        Command::CreateEip(e) | Command::RemoveEip(e) => vec![e.private_mac],
        Command::SyncEips(eips) => eips.iter().map(|e| e.private_mac).collect(),
        Command::CreatePortForwards(r)
        | Command::RevokePortForwards(r)
        | Command::SyncPortForwards(r) => r.iter().map(|p| p.private_mac).collect(),
        // A VIP's rails need only the management nic's addresses: the owner (the public nic,
        // with every VIP on it) is not read.
        Command::AddDhcp { hosts, .. } => hosts.iter().filter_map(|h| h.vr_nic_mac).collect(),
        _ => Vec::new(),
    };
    macs.sort_unstable();
    macs.dedup();
    macs
}
