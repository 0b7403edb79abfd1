//! dnsmasq's lease file and releasing a lease: dnsmasq keeps a lease of a forgotten host until
//! the guest releases it (and would refuse the address to the next owner), so the agent releases
//! it for the guest with a DHCPRELEASE sent on the guest nic, as `dhcp_release` does. Before a
//! (re)start, the lease file is pruned instead, since dnsmasq reads it only then.

use crate::state::types::MacAddr;
use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;

/// A lease to release: who, which address, on which nic, from which server address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// Guest MAC.
    pub mac: MacAddr,
    /// Leased address.
    pub ip: Ipv4Addr,
    /// The router nic dnsmasq serves the guest on.
    pub nic: String,
    /// dnsmasq's address on that nic (its server identifier).
    pub server: Ipv4Addr,
}

/// The `(mac, ip)` of every lease in dnsmasq's lease file text.
pub fn parse(text: &str) -> HashSet<(MacAddr, Ipv4Addr)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let _expiry = f.next()?;
            let mac = f.next()?.parse().ok()?;
            let ip = f.next()?.parse().ok()?;
            Some((mac, ip))
        })
        .collect()
}

/// The leases currently recorded (none if the file is missing or unreadable).
pub fn read(path: &Path) -> HashSet<(MacAddr, Ipv4Addr)> {
    std::fs::read_to_string(path)
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// Keeps only the lease lines `keep` accepts. Call only while dnsmasq is stopped.
pub fn prune(path: &Path, keep: impl Fn(MacAddr, Ipv4Addr) -> bool) -> io::Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut dropped = 0;
    let kept: String = text
        .lines()
        .filter(|line| {
            let mut f = line.split_whitespace().skip(1);
            let mac = f.next().and_then(|m| m.parse().ok());
            let ip = f.next().and_then(|i| i.parse().ok());
            match mac.zip(ip) {
                Some((mac, ip)) if !keep(mac, ip) => {
                    dropped += 1;
                    false
                }
                _ => true,
            }
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if dropped > 0 {
        super::write::write_new(path, kept.as_bytes()).map_err(|e| e.source)?;
    }
    Ok(dropped)
}

/// A DHCPRELEASE message (RFC 2131) from `mac` for `ip` to `server`.
pub fn release_packet(mac: MacAddr, ip: Ipv4Addr, server: Ipv4Addr, xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6; // hardware address length
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[12..16].copy_from_slice(&ip.octets()); // ciaddr
    p[28..34].copy_from_slice(&mac.0); // chaddr
    p.extend_from_slice(&[99, 130, 83, 99]); // magic cookie
    p.extend_from_slice(&[53, 1, 7]); // DHCP message type: RELEASE
    p.extend_from_slice(&[54, 4]); // server identifier
    p.extend_from_slice(&server.octets());
    p.push(255);
    p.resize(300, 0);
    p
}

/// Sends the release from the router itself, bound to the guest nic, so dnsmasq sees it arrive
/// on that nic.
pub fn send(r: &Release) -> io::Result<()> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::BindToDevice,
        &std::ffi::OsString::from(&r.nic),
    )
    .map_err(io::Error::from)?;
    let xid = u32::from_be_bytes([r.mac.0[2], r.mac.0[3], r.mac.0[4], r.mac.0[5]]);
    sock.send_to(
        &release_packet(r.mac, r.ip, r.server, xid),
        SocketAddrV4::new(r.server, 67),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_file_parse_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("leases");
        std::fs::write(
            &f,
            "0 fa:3c:91:5e:22:07 172.20.0.15 web1 01:fa:3c:91:5e:22:07\n\
             0 fa:3c:91:5e:22:08 172.20.9.7 * *\n",
        )
        .unwrap();
        let all = read(&f);
        assert_eq!(all.len(), 2);
        let gone: MacAddr = "fa:3c:91:5e:22:08".parse().unwrap();
        assert_eq!(prune(&f, |m, _| m != gone).unwrap(), 1);
        let left = read(&f);
        assert_eq!(left.len(), 1);
        assert!(left.iter().all(|(m, _)| *m != gone));
    }

    #[test]
    fn release_packet_layout() {
        let mac: MacAddr = "fa:3c:91:5e:22:07".parse().unwrap();
        let p = release_packet(
            mac,
            "172.20.0.15".parse().unwrap(),
            "172.20.0.1".parse().unwrap(),
            7,
        );
        assert_eq!(p.len(), 300);
        assert_eq!(&p[12..16], &[172, 20, 0, 15]);
        assert_eq!(&p[28..34], &mac.0);
        assert_eq!(&p[236..246], &[99, 130, 83, 99, 53, 1, 7, 54, 4, 172]);
    }
}
