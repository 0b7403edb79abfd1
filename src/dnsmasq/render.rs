//! Pure rendering of every dnsmasq file from the desired state and the router's interfaces.
//!
//! Options (router, DNS servers, domain, netmask, MTU) come in profiles. Each subnet's DHCP
//! range sets a tag for the subnet, and the profile most of its hosts share is written once,
//! for that tag. A host whose options differ sets two tags, [`OWN_TAG`] (which turns the
//! subnet's profile off) and its own profile's, named by a digest of the profile's content.
//!
//! Tags on hosts are kept to those few on purpose: dnsmasq 2.90 dies (SIGSEGV) on a SIGHUP once
//! a host whose `dhcp-host` sets a tag holds a lease, so a reload is only safe while no leased
//! host carries one (the backend restarts dnsmasq otherwise).

use crate::state::DesiredState;
use crate::state::guests;
use crate::state::model::DhcpHost;
use crate::state::types::{Cidr, MacAddr, PrefixLen};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

/// A network interface of the router as the kernel shows it (plus the desired nics' addresses).
pub use crate::link::system::Interface as Iface;

/// Where each file lives, all under one directory of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The directory.
    pub dir: PathBuf,
}

impl Paths {
    /// The layout under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Paths {
        Paths { dir: dir.into() }
    }
    /// Main config (read at start only).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("dnsmasq.conf")
    }
    /// `dhcp-hostsfile`: every host as of the last full rendering.
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts.dhcp")
    }
    /// `dhcp-hostsdir`: one file per host added since (read by inotify).
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.join("hosts.d")
    }
    /// `dhcp-optsfile`: every option profile.
    pub fn opts(&self) -> PathBuf {
        self.dir.join("hosts.option")
    }
    /// `dhcp-optsdir`: profiles added since the last full rendering.
    pub fn opts_dir(&self) -> PathBuf {
        self.dir.join("option.d")
    }
    /// `addn-hosts`: DNS names of default-network hosts.
    pub fn addn_hosts(&self) -> PathBuf {
        self.dir.join("hosts.dns")
    }
    /// `resolv-file`: the upstream servers.
    pub fn resolv(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    /// `dhcp-leasefile`.
    pub fn leases(&self) -> PathBuf {
        self.dir.join("leases")
    }
    /// `pid-file`.
    pub fn pid(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }
    /// The incremental directories.
    pub fn dirs(&self) -> [PathBuf; 2] {
        [self.hosts_dir(), self.opts_dir()]
    }
}

/// Everything rendered for one desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Main config.
    pub conf: String,
    /// `dhcp-hostsfile`.
    pub hosts: String,
    /// `dhcp-optsfile`.
    pub opts: String,
    /// `addn-hosts`.
    pub addn_hosts: String,
    /// `resolv-file`.
    pub resolv: String,
    /// How many hosts a guest nic serves.
    pub placed: usize,
    /// Guest nics dnsmasq listens on: the nics DHCP hosts are served on, plus the SNAT guest
    /// nics while upstream DNS servers are set (`src/state/guests.rs`).
    pub listening: usize,
    /// Hosts for which no nic of the router was found.
    pub unplaced: Vec<MacAddr>,
    /// The subnets with a DHCP range.
    pub subnets: BTreeSet<Cidr>,
    /// The DNS domain of each served subnet (in the main config).
    pub domains: BTreeMap<Cidr, String>,
    /// MACs of the guest nics dnsmasq listens on.
    pub guest_macs: BTreeSet<MacAddr>,
    /// The profile of each subnet (for its hosts without one of their own).
    pub subnet_profiles: BTreeMap<Cidr, String>,
    /// Tags of the hosts' own profiles.
    pub profiles: BTreeSet<String>,
    /// Hosts with a profile of their own (their `dhcp-host` sets tags).
    pub tagged: BTreeSet<MacAddr>,
}

/// The interfaces with the addresses of `state.nics` merged in (a nic the links backend has
/// not configured yet still counts with its desired address).
pub fn merge_desired_nics(ifaces: &[Iface], state: &DesiredState) -> Vec<Iface> {
    let mut out = ifaces.to_vec();
    for iface in &mut out {
        let Some(mac) = iface.mac else { continue };
        if let Some(nic) = state.nics.get(&mac) {
            let cidr = Cidr::new(nic.ip, nic.prefix);
            if !iface.addrs.contains(&cidr) {
                iface.addrs.push(cidr);
            }
        }
    }
    out
}

/// The subnet a host belongs to: its gateway's (or its own address's) network.
pub fn subnet_of(host: &DhcpHost) -> Cidr {
    Cidr::new(host.gateway.unwrap_or(host.ip), host.prefix).network()
}

/// The router nic serving `host` among `ifaces` (the system's interfaces with the desired
/// nics' addresses merged in): [`DesiredState::host_nic`] resolved there, the one definition
/// of where a host is served (`src/state/guests.rs`). What is particular to dnsmasq is only
/// the lookup: a host the state places on no nic of `ifaces` is placed on the interface
/// (never `lo`) whose address or subnet holds its gateway (or its address), longest prefix.
pub fn nic_for<'a>(
    state: &DesiredState,
    host: &DhcpHost,
    ifaces: &'a [Iface],
) -> Option<&'a Iface> {
    state.host_nic(host).resolve(
        |mac| iface_with(ifaces, mac),
        |ip| iface_holding(ifaces, ip),
    )
}

/// The interface with `mac`.
fn iface_with(ifaces: &[Iface], mac: MacAddr) -> Option<&Iface> {
    ifaces.iter().find(|i| i.mac == Some(mac) && i.name != "lo")
}

/// The interface (never `lo`) whose address or subnet holds `ip`, the longest prefix winning.
fn iface_holding(ifaces: &[Iface], ip: Ipv4Addr) -> Option<&Iface> {
    ifaces
        .iter()
        .filter(|i| i.name != "lo")
        .filter_map(|i| {
            i.addrs
                .iter()
                .filter(|a| a.contains(ip))
                .map(|a| a.prefix.len())
                .max()
                .map(|len| (len, i))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, i)| i)
}

/// The host name dnsmasq hands out: as sent, else the address with dashes (plus the domain).
/// A name dnsmasq would read as something else (a keyword, an address, a lease time; e.g.
/// from a state stored before such names were dropped at the door) is never written.
pub fn hostname(host: &DhcpHost) -> String {
    if let Some(h) = &host.hostname
        && crate::protocol::fields::dnsmasq_name_problem(h).is_none()
    {
        return h.clone();
    }
    let base = host.ip.to_string().replace('.', "-");
    match &host.dns_domain {
        Some(d) => format!("{base}.{d}"),
        None => base,
    }
}

/// The option lines of a host with `TAG` standing for the profile tag.
fn profile_body(host: &DhcpHost) -> String {
    let mut s = String::new();
    if host.is_default_l3 {
        if let Some(gw) = host.gateway {
            let _ = writeln!(s, "tag:TAG,option:router,{gw}");
        }
        if !host.dns.is_empty() {
            let list: Vec<String> = host.dns.iter().map(Ipv4Addr::to_string).collect();
            let _ = writeln!(s, "tag:TAG,option:dns-server,{}", list.join(","));
        }
        if let Some(d) = &host.dns_domain {
            let _ = writeln!(s, "tag:TAG,option:domain-name,{d}");
        }
    } else {
        // Empty router and DNS options: no default route or resolver from a secondary network.
        s.push_str("tag:TAG,3\ntag:TAG,6\n");
    }
    let _ = writeln!(s, "tag:TAG,option:netmask,{}", host.prefix.netmask());
    if let Some(mtu) = host.mtu {
        let _ = writeln!(s, "tag:TAG,option:mtu,{mtu}");
    }
    s
}

/// What a host's option lines depend on (two hosts with equal keys share a profile).
#[derive(PartialEq, Eq, Hash)]
struct ProfileKey<'a> {
    default: bool,
    gateway: Option<Ipv4Addr>,
    dns: &'a [Ipv4Addr],
    domain: Option<&'a str>,
    prefix: PrefixLen,
    mtu: Option<u32>,
}

impl<'a> ProfileKey<'a> {
    fn of(h: &'a DhcpHost) -> Self {
        let default = h.is_default_l3;
        ProfileKey {
            default,
            gateway: h.gateway.filter(|_| default),
            dns: if default { &h.dns } else { &[] },
            domain: h.dns_domain.as_deref().filter(|_| default),
            prefix: h.prefix,
            mtu: h.mtu,
        }
    }
}

/// Set by every host with a profile of its own; the subnets' profiles exclude it.
pub const OWN_TAG: &str = "vrown";

/// A host's option profile: its tag and its lines with the placeholder `TAG`.
pub fn profile(host: &DhcpHost) -> (String, String) {
    let body = profile_body(host);
    let digest = Sha256::digest(body.as_bytes());
    let tag: String = std::iter::once("vr".to_string())
        .chain(digest.iter().take(5).map(|b| format!("{b:02x}")))
        .collect();
    (tag, body)
}

/// The profile's lines for a host that sets the profile's own tag.
pub fn own_profile_lines(tag: &str, body: &str) -> String {
    // Only the `tag:TAG,` prefixes: validated names cannot hold ':' or ',', so a domain that
    // happens to contain "TAG" is left alone.
    body.replace("tag:TAG,", &format!("tag:{tag},"))
}

/// The profile's lines for every host of `net` without a profile of its own.
pub fn subnet_profile_lines(net: Cidr, body: &str) -> String {
    body.replace(
        "tag:TAG,",
        &format!("tag:{},tag:!{OWN_TAG},", subnet_tag(net)),
    )
}

/// The tag a subnet's DHCP range sets.
pub fn subnet_tag(net: Cidr) -> String {
    format!(
        "net-{}-{}",
        net.addr.to_string().replace('.', "-"),
        net.prefix.len()
    )
}

/// The `dhcp-host` line of a host; `own`: the tag of its own profile, when it differs from
/// its subnet's.
pub fn host_line(host: &DhcpHost, own: Option<&str>) -> String {
    let tags = own
        .map(|t| format!(",set:{OWN_TAG},set:{t}"))
        .unwrap_or_default();
    if host.is_default_l3 {
        format!(
            "{}{tags},{},{},infinite\n",
            host.mac,
            host.ip,
            hostname(host)
        )
    } else {
        format!("{}{tags},{},infinite\n", host.mac, host.ip)
    }
}

/// The `addn-hosts` line of a host: only default-network hosts answer DNS for their name.
pub fn dns_line(host: &DhcpHost) -> Option<String> {
    host.is_default_l3
        .then(|| format!("{} {}\n", host.ip, hostname(host)))
}

/// The resolv file of the forwarder.
pub fn render_resolv(servers: &[Ipv4Addr]) -> String {
    servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
}

/// The main config: fixed options, our file paths, the guest nics and the DHCP ranges.
pub fn render_conf(
    paths: &Paths,
    nics: &BTreeSet<String>,
    subnets: &BTreeSet<Cidr>,
    domains: &BTreeMap<Cidr, String>,
) -> String {
    let p = |x: PathBuf| x.display().to_string();
    let mut s = String::from("# Written by vr-agent; changes are overwritten.\n");
    let fixed = [
        "keep-in-foreground".to_string(),
        "log-facility=-".to_string(),
        format!("pid-file={}", p(paths.pid())),
        "no-hosts".to_string(),
        "domain-needed".to_string(),
        "bogus-priv".to_string(),
        "bind-dynamic".to_string(),
        "except-interface=lo".to_string(),
        // Limits for thousands of guests.
        "cache-size=10000".to_string(),
        "dns-forward-max=4096".to_string(),
        "dhcp-lease-max=65535".to_string(),
        format!("resolv-file={}", p(paths.resolv())),
        format!("addn-hosts={}", p(paths.addn_hosts())),
        format!("dhcp-hostsfile={}", p(paths.hosts())),
        format!("dhcp-hostsdir={}", p(paths.hosts_dir())),
        format!("dhcp-optsfile={}", p(paths.opts())),
        format!("dhcp-optsdir={}", p(paths.opts_dir())),
        format!("dhcp-leasefile={}", p(paths.leases())),
        "dhcp-option=vendor:MSFT,2,1i".to_string(),
    ];
    for line in fixed {
        s.push_str(&line);
        s.push('\n');
    }
    for nic in nics {
        let _ = writeln!(s, "interface={nic}");
    }
    for net in subnets {
        let _ = writeln!(
            s,
            "dhcp-range=set:{},{},static,{},infinite",
            subnet_tag(*net),
            net.addr,
            net.prefix.netmask()
        );
    }
    for (net, domain) in domains {
        let _ = writeln!(s, "domain={domain},{net}");
    }
    s
}

/// The DNS domain of each subnet: the `dnsDomain` most of its default-network hosts carry
/// (ties: the first in order). dnsmasq names a guest's lease in that domain, so the name of a
/// host added without a reload answers as soon as the guest holds its lease.
pub fn subnet_domains(state: &DesiredState) -> BTreeMap<Cidr, String> {
    let mut counts: BTreeMap<Cidr, BTreeMap<&str, usize>> = BTreeMap::new();
    for h in state.dhcp_hosts.values().filter(|h| h.is_default_l3) {
        if let Some(d) = &h.dns_domain {
            *counts
                .entry(subnet_of(h))
                .or_default()
                .entry(d.trim_end_matches('.'))
                .or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter_map(|(net, c)| {
            let best = c.values().copied().max()?;
            let domain = c.into_iter().find(|(_, n)| *n == best)?.0;
            Some((net, domain.to_string()))
        })
        .collect()
}

/// The lines of one host, kept between renderings so that a host that did not change is not
/// formatted again (a removal at 10,000 hosts then costs a copy, not a rendering).
#[derive(Debug)]
struct HostLines {
    host: DhcpHost,
    tag: Arc<str>,
    /// `line` was made with (`Some(true)`) or without the host's own profile tag.
    own: Option<bool>,
    line: String,
    dns: Option<String>,
}

/// Lines of earlier renderings. Only a cache: any memo gives the same output.
#[derive(Debug, Default)]
pub struct LineMemo {
    hosts: HashMap<MacAddr, HostLines>,
    /// Profile bodies (with the `TAG` placeholder) by tag.
    profiles: HashMap<Arc<str>, String>,
}

/// Renders every file for `state`, given the router's interfaces.
pub fn render(paths: &Paths, state: &DesiredState, ifaces: &[Iface]) -> Rendered {
    render_with(paths, state, ifaces, &mut LineMemo::default())
}

/// The profile most hosts of each subnet share (ties: the smallest tag).
fn subnet_profiles(counts: HashMap<Cidr, HashMap<Arc<str>, usize>>) -> BTreeMap<Cidr, Arc<str>> {
    counts
        .into_iter()
        .filter_map(|(net, c)| {
            let best = c
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))?;
            Some((net, best.0))
        })
        .collect()
}

/// Where a host is served: its `vrNicMac` and subnet.
type Place = (Option<MacAddr>, Cidr);

/// [`render`], reusing and refreshing the lines in `memo`.
pub fn render_with(
    paths: &Paths,
    state: &DesiredState,
    ifaces: &[Iface],
    memo: &mut LineMemo,
) -> Rendered {
    let ifaces = merge_desired_nics(ifaces, state);
    // Pass 1: each host's profile; hosts with equal options share one (digested once).
    let mut tags: HashMap<ProfileKey, Arc<str>> = HashMap::new();
    let mut counts: HashMap<Cidr, HashMap<Arc<str>, usize>> = HashMap::new();
    let mut last: Option<(Cidr, Arc<str>, usize)> = None;
    for host in state.dhcp_hosts.values() {
        let tag = match memo.hosts.get(&host.mac) {
            Some(l) if l.host == *host => Arc::clone(&l.tag),
            _ => {
                let tag = Arc::clone(tags.entry(ProfileKey::of(host)).or_insert_with(|| {
                    let (tag, body) = profile(host);
                    let tag: Arc<str> = tag.into();
                    memo.profiles.entry(Arc::clone(&tag)).or_insert(body);
                    tag
                }));
                memo.hosts.insert(
                    host.mac,
                    HostLines {
                        host: host.clone(),
                        tag: Arc::clone(&tag),
                        own: None,
                        line: String::new(),
                        dns: dns_line(host),
                    },
                );
                tag
            }
        };
        // Runs of hosts of one subnet and profile are counted at once.
        let subnet = subnet_of(host);
        match &mut last {
            Some((net, t, n)) if *net == subnet && *t == tag => *n += 1,
            _ => {
                if let Some((net, t, n)) = last.take() {
                    *counts.entry(net).or_default().entry(t).or_default() += n;
                }
                last = Some((subnet, tag, 1));
            }
        }
    }
    if let Some((net, t, n)) = last {
        *counts.entry(net).or_default().entry(t).or_default() += n;
    }
    if memo.hosts.len() > state.dhcp_hosts.len() {
        memo.hosts
            .retain(|mac, _| state.dhcp_hosts.contains_key(mac));
    }
    let by_subnet = subnet_profiles(counts);

    // Pass 2: the lines.
    let mut hosts = String::with_capacity(state.dhcp_hosts.len() * 80);
    let mut addn = String::new();
    let mut own_tags: BTreeSet<Arc<str>> = BTreeSet::new();
    let mut tagged = BTreeSet::new();
    let mut placed = 0;
    // Hosts of one subnet (and router nic) are all placed alike: look the nic up once.
    let mut placed_on: HashMap<Place, Option<()>> = HashMap::new();
    let mut last_place: Option<(Place, Option<()>)> = None;
    let mut unplaced = Vec::new();
    let mut nics = BTreeSet::new();
    let mut guest_macs = BTreeSet::new();
    let mut subnets = BTreeSet::new();
    for host in state.dhcp_hosts.values() {
        let Some(lines) = memo.hosts.get_mut(&host.mac) else {
            continue;
        };
        let subnet = subnet_of(host);
        let own = by_subnet.get(&subnet) != Some(&lines.tag);
        if lines.own != Some(own) {
            lines.line = host_line(host, own.then_some(&*lines.tag));
            lines.own = Some(own);
        }
        hosts.push_str(&lines.line);
        if let Some(line) = &lines.dns {
            addn.push_str(line);
        }
        if own {
            tagged.insert(host.mac);
            if !own_tags.contains(&lines.tag) {
                own_tags.insert(Arc::clone(&lines.tag));
            }
        }
        let place = (host.vr_nic_mac, subnet);
        let nic = match &last_place {
            Some((p, nic)) if *p == place => *nic,
            _ => {
                let nic = *placed_on.entry(place).or_insert_with(|| {
                    nic_for(state, host, &ifaces).map(|iface| {
                        nics.insert(iface.name.clone());
                        if let Some(mac) = iface.mac {
                            guest_macs.insert(mac);
                        }
                        subnets.insert(subnet);
                    })
                });
                last_place = Some((place, nic));
                nic
            }
        };
        match nic {
            Some(()) => placed += 1,
            None => unplaced.push(host.mac),
        }
    }
    // The DNS forwarder also serves guest networks without DHCP hosts: a SNAT guest nic is a
    // guest nic (never the public or management nic), and its guests may use the router's DNS.
    // Only while upstream servers are set: without them dnsmasq has nothing to serve there (the
    // firewall accepts DNS on these nics either way, see `nat::model::guest_ifs`).
    if !state.dns_servers.is_empty() {
        for mac in guests::snat_nics(state.snats.values()) {
            if let Some(iface) = iface_with(&ifaces, mac) {
                nics.insert(iface.name.clone());
                guest_macs.insert(mac);
            }
        }
    }
    memo.profiles
        .retain(|tag, _| own_tags.contains(tag) || by_subnet.values().any(|t| t == tag));
    let mut opts = String::new();
    for (net, tag) in &by_subnet {
        if let Some(body) = memo.profiles.get(tag) {
            opts.push_str(&subnet_profile_lines(*net, body));
        }
    }
    for tag in &own_tags {
        if let Some(body) = memo.profiles.get(tag) {
            opts.push_str(&own_profile_lines(tag, body));
        }
    }
    let domains: BTreeMap<Cidr, String> = subnet_domains(state)
        .into_iter()
        .filter(|(net, _)| subnets.contains(net))
        .collect();
    Rendered {
        conf: render_conf(paths, &nics, &subnets, &domains),
        domains,
        hosts,
        opts,
        addn_hosts: addn,
        resolv: render_resolv(&state.dns_servers),
        placed,
        listening: nics.len(),
        unplaced,
        subnets,
        guest_macs,
        subnet_profiles: by_subnet
            .into_iter()
            .map(|(net, t)| (net, t.to_string()))
            .collect(),
        profiles: own_tags.into_iter().map(|t| t.to_string()).collect(),
        tagged,
    }
}

/// File name of a host's incremental files (the MAC without colons).
pub fn host_file_name(mac: MacAddr) -> String {
    mac.compact()
}

#[cfg(test)]
mod placeholder_tests {
    use super::*;

    #[test]
    fn a_domain_containing_tag_is_not_rewritten() {
        let body =
            "tag:TAG,option:domain-name,TAGGED.example\ntag:TAG,option:netmask,255.255.255.0\n";
        assert_eq!(
            own_profile_lines("vr0102", body),
            "tag:vr0102,option:domain-name,TAGGED.example\ntag:vr0102,option:netmask,255.255.255.0\n"
        );
        let net: Cidr = "172.20.0.0/24".parse().unwrap();
        assert!(subnet_profile_lines(net, body).contains("option:domain-name,TAGGED.example"));
    }
}
