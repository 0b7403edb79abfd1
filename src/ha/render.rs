//! The HA engines' files, pure: keepalived's configuration (one VRRP instance, unicast to the
//! peer over the heartbeat nic, both nodes `BACKUP` with `nopreempt`, the monitors and the
//! agent's liveness as track scripts, transitions to the agent through `notify_fifo`) and
//! conntrackd's (FTFW over UDP on the heartbeat nic). Golden files: `fixtures/ha`.

use crate::state::ha::HaConfig;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// UDP port of conntrackd's sync channel (also opened by the firewall).
pub const CONNTRACKD_PORT: u16 = crate::nat::model::CONNTRACKD_PORT;
/// Both nodes' VRRP priority.
pub const PRIORITY: u8 = 254;
/// The VRRP instance's name (the notify fifo names it).
pub const INSTANCE: &str = "vr_ha";

/// Where the HA engines' files live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The directory.
    pub dir: PathBuf,
}

impl Paths {
    /// The files under `dir`.
    pub fn new(dir: PathBuf) -> Paths {
        Paths { dir }
    }
    /// keepalived's configuration.
    pub fn keepalived_conf(&self) -> PathBuf {
        self.dir.join("keepalived.conf")
    }
    /// keepalived's main pid file.
    pub fn keepalived_pid(&self) -> PathBuf {
        self.dir.join("keepalived.pid")
    }
    /// keepalived's VRRP child's pid file.
    pub fn vrrp_pid(&self) -> PathBuf {
        self.dir.join("vrrp.pid")
    }
    /// The fifo keepalived writes transitions to.
    pub fn fifo(&self) -> PathBuf {
        self.dir.join("notify.fifo")
    }
    /// The agent's liveness check (a track script).
    pub fn alive_script(&self) -> PathBuf {
        self.dir.join("agent-alive.sh")
    }
    /// conntrackd's configuration.
    pub fn conntrackd_conf(&self) -> PathBuf {
        self.dir.join("conntrackd.conf")
    }
    /// conntrackd's control socket.
    pub fn conntrackd_ctl(&self) -> PathBuf {
        self.dir.join("conntrackd.ctl")
    }
    /// conntrackd's lock file.
    pub fn conntrackd_lock(&self) -> PathBuf {
        self.dir.join("conntrackd.lock")
    }
    /// conntrackd's pid (written by the agent once it serves).
    pub fn conntrackd_pid(&self) -> PathBuf {
        self.dir.join("conntrackd.pid")
    }
    /// conntrackd's log.
    pub fn conntrackd_log(&self) -> PathBuf {
        self.dir.join("conntrackd.log")
    }
}

/// What the renderers need besides the HA settings (read at apply time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// Name of the heartbeat nic.
    pub heartbeat_if: String,
    /// The ping program the monitors run.
    pub ping: PathBuf,
}

/// Seconds keepalived waits after a start before it runs VRRP (interfaces and the agent's
/// re-apply settle; a restarted node never rushes to master).
pub fn startup_delay(ha: &HaConfig) -> u32 {
    ha.advert_secs.clamp(1, 5)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// keepalived.conf for `ha`. Holds no address the master carries: the agent adds those when
/// keepalived says master, so a change of them needs no reload.
pub fn keepalived(ha: &HaConfig, inputs: &Inputs, paths: &Paths) -> String {
    let mut out = String::new();
    out.push_str("# Written by vr-agent from its desired state; rewritten and reloaded by it.\n");
    out.push_str("global_defs {\n");
    let _ = writeln!(out, "    router_id vr-agent-{}", ha.local_ip);
    let _ = writeln!(out, "    notify_fifo {}", path(&paths.fifo()));
    let _ = writeln!(out, "    vrrp_startup_delay {}", startup_delay(ha));
    out.push_str("    script_user root\n    enable_script_security\n");
    out.push_str("}\n\n");
    let mut tracked = vec!["vr_agent_alive".to_string()];
    out.push_str("vrrp_script vr_agent_alive {\n");
    let _ = writeln!(out, "    script \"{}\"", path(&paths.alive_script()));
    out.push_str("    interval 1\n    timeout 2\n    fall 3\n    rise 1\n}\n\n");
    for (i, ip) in ha.monitors.iter().enumerate() {
        let name = format!("vr_monitor_{i}");
        let _ = writeln!(out, "vrrp_script {name} {{");
        let _ = writeln!(
            out,
            "    script \"{} -n -q -c 1 -W 1 {ip}\"",
            path(&inputs.ping)
        );
        out.push_str("    interval 1\n    timeout 2\n    fall 3\n    rise 2\n}\n\n");
        tracked.push(name);
    }
    let _ = writeln!(out, "vrrp_instance {INSTANCE} {{");
    out.push_str("    state BACKUP\n    nopreempt\n");
    let _ = writeln!(out, "    interface {}", inputs.heartbeat_if);
    let _ = writeln!(out, "    virtual_router_id {}", ha.vrid());
    // The same on both nodes (nopreempt decides nothing by it); high, because a backup waits
    // 3 x advert + (256 - priority) / 256 x advert for the master: 254 leaves 8 ms of skew
    // where 100 would add 0.61 s to every failover.
    let _ = writeln!(out, "    priority {PRIORITY}");
    let _ = writeln!(out, "    advert_int {}", ha.advert_secs);
    let _ = writeln!(out, "    unicast_src_ip {}", ha.local_ip);
    let _ = writeln!(out, "    unicast_peer {{\n        {}\n    }}", ha.peer_ip);
    out.push_str("    track_script {\n");
    for t in &tracked {
        let _ = writeln!(out, "        {t}");
    }
    out.push_str("    }\n}\n");
    out
}

/// The agent's liveness script: fails once the agent with `pid` is gone (keepalived then
/// faults and the peer takes over).
pub fn alive_script(pid: u32) -> String {
    format!(
        "#!/bin/sh\n# Written by vr-agent: fails when the agent is gone.\nkill -0 {pid} 2>/dev/null\n"
    )
}

/// conntrackd.conf for `ha`: FTFW over UDP between the heartbeat addresses; flows of the
/// router's own heartbeat addresses and loopback are not synced.
pub fn conntrackd(ha: &HaConfig, inputs: &Inputs, paths: &Paths) -> String {
    let mut out = String::new();
    out.push_str("# Written by vr-agent from its desired state.\n");
    out.push_str("Sync {\n    Mode FTFW {\n        DisableExternalCache Off\n    }\n");
    out.push_str("    UDP {\n");
    let _ = writeln!(out, "        IPv4_address {}", ha.local_ip);
    let _ = writeln!(out, "        IPv4_Destination_Address {}", ha.peer_ip);
    let _ = writeln!(out, "        Port {CONNTRACKD_PORT}");
    let _ = writeln!(out, "        Interface {}", inputs.heartbeat_if);
    out.push_str("        SndSocketBuffer 1249280\n        RcvSocketBuffer 1249280\n");
    out.push_str("        Checksum on\n    }\n}\n");
    out.push_str("General {\n    HashSize 32768\n    HashLimit 131072\n");
    let _ = writeln!(out, "    LogFile {}", path(&paths.conntrackd_log()));
    out.push_str("    Syslog off\n");
    let _ = writeln!(out, "    LockFile {}", path(&paths.conntrackd_lock()));
    let _ = writeln!(
        out,
        "    UNIX {{\n        Path {}\n    }}",
        path(&paths.conntrackd_ctl())
    );
    out.push_str("    NetlinkBufferSize 2097152\n    NetlinkBufferSizeMaxGrowth 8388608\n");
    out.push_str("    NetlinkOverrunResync On\n");
    out.push_str("    Filter From Userspace {\n        Protocol Accept {\n");
    out.push_str("            TCP\n            UDP\n            ICMP\n        }\n");
    out.push_str("        Address Ignore {\n            IPv4_address 127.0.0.1\n");
    let _ = writeln!(out, "            IPv4_address {}", ha.local_ip);
    let _ = writeln!(out, "            IPv4_address {}", ha.peer_ip);
    out.push_str("        }\n    }\n}\n");
    out
}

/// One transition keepalived wrote to the fifo, as a role (`None`: not ours or not a
/// state).
pub fn parse_fifo_line(line: &str) -> Option<crate::state::ha::Role> {
    use crate::state::ha::Role;
    let mut words = line.split_whitespace();
    if words.next()? != "INSTANCE" {
        return None;
    }
    if words.next()?.trim_matches('"') != INSTANCE {
        return None;
    }
    match words.next()? {
        "MASTER" => Some(Role::Master),
        "BACKUP" | "FAULT" | "STOP" => Some(Role::Backup),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ha::Role;

    #[test]
    fn fifo_lines_become_roles() {
        assert_eq!(
            parse_fifo_line("INSTANCE \"vr_ha\" MASTER 100"),
            Some(Role::Master)
        );
        assert_eq!(
            parse_fifo_line("INSTANCE \"vr_ha\" FAULT 100"),
            Some(Role::Backup)
        );
        assert_eq!(
            parse_fifo_line("INSTANCE \"vr_ha\" BACKUP 100"),
            Some(Role::Backup)
        );
        assert_eq!(parse_fifo_line("INSTANCE \"other\" MASTER 100"), None);
        assert_eq!(parse_fifo_line("GROUP \"g\" MASTER"), None);
        assert_eq!(parse_fifo_line(""), None);
    }
}
