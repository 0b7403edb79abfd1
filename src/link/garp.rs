//! Gratuitous ARP: after an address is added, broadcast an ARP request whose sender and
//! target are that address, so neighbours on the segment update their caches. Sent through an
//! AF_PACKET socket bound to the interface (no `arping` process).

use crate::state::types::MacAddr;
use nix::sys::socket::{AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, sendto, socket};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

/// Length of an Ethernet frame without FCS, padded to the minimum.
const FRAME_LEN: usize = 60;
/// Announcements sent back to back before a pause: a failover moving 1,000 addresses must not
/// overrun a receiver's backlog (1,000 frames per CPU by default) or a switch's queue.
pub const BURST: usize = 100;
/// The pause between bursts.
pub const PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// The frame of a gratuitous ARP request for `ip` from `mac`.
pub fn frame(mac: MacAddr, ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]); // destination: broadcast
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac.0); // sender MAC
    f[28..32].copy_from_slice(&ip.octets()); // sender IP
    // target MAC stays zero
    f[38..42].copy_from_slice(&ip.octets()); // target IP = sender IP
    f
}

/// Why an announcement could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum GarpError {
    /// The interface has no link-layer address in this namespace.
    #[error("no link-layer address for {0}")]
    NoLink(String),
    /// A socket call failed.
    #[error("{op} on {ifname}: {source}")]
    Socket {
        /// The call.
        op: &'static str,
        /// The interface.
        ifname: String,
        /// The OS error.
        source: nix::Error,
    },
}

/// Sends gratuitous ARP. Keeps one AF_PACKET socket open: closing one waits for an RCU
/// grace period (~10 ms), far more than the send itself.
#[derive(Default)]
pub struct Announcer {
    sock: Option<OwnedFd>,
    /// Link-layer addresses by interface index (indexes survive renames).
    links: HashMap<u32, LinkAddr>,
}

impl Announcer {
    fn link_addr(&mut self, index: u32, ifname: &str) -> Result<LinkAddr, GarpError> {
        if let Some(a) = self.links.get(&index) {
            return Ok(*a);
        }
        let ifaddrs = nix::ifaddrs::getifaddrs().map_err(|source| GarpError::Socket {
            op: "getifaddrs",
            ifname: ifname.to_string(),
            source,
        })?;
        for ifa in ifaddrs {
            if let Some(link) = ifa.address.as_ref().and_then(|a| a.as_link_addr())
                && link.ifindex() == index as usize
            {
                self.links.insert(index, *link);
                return Ok(*link);
            }
        }
        Err(GarpError::NoLink(ifname.to_string()))
    }

    /// Broadcasts one gratuitous ARP request per address on the interface with `index`
    /// (named `ifname`, MAC `mac`).
    pub fn announce(
        &mut self,
        index: u32,
        ifname: &str,
        mac: MacAddr,
        ips: &[Ipv4Addr],
    ) -> Result<(), GarpError> {
        if ips.is_empty() {
            return Ok(());
        }
        let err = |op: &'static str| {
            let ifname = ifname.to_string();
            move |source| GarpError::Socket { op, ifname, source }
        };
        let to = self.link_addr(index, ifname)?;
        if self.sock.is_none() {
            // Protocol 0: the socket only sends, it receives nothing.
            let sock = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(err("socket(AF_PACKET)"))?;
            self.sock = Some(sock);
        }
        let Some(sock) = &self.sock else {
            return Ok(());
        };
        for ip in ips {
            if let Err(e) = sendto(sock.as_raw_fd(), &frame(mac, *ip), &to, MsgFlags::empty()) {
                // The link may have gone and come back with another index: look it up again.
                self.links.remove(&index);
                return Err(err("sendto")(e));
            }
        }
        Ok(())
    }

    /// [`Announcer::announce`], rate-limited: [`BURST`] frames, then a [`PAUSE`] (a
    /// failover announces every address a master carries at once).
    pub async fn announce_paced(
        &mut self,
        index: u32,
        ifname: &str,
        mac: MacAddr,
        ips: &[Ipv4Addr],
    ) -> Result<(), GarpError> {
        for (i, chunk) in ips.chunks(BURST).enumerate() {
            if i > 0 {
                tokio::time::sleep(PAUSE).await;
            }
            self.announce(index, ifname, mac, chunk)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_a_broadcast_arp_request_for_itself() {
        let mac = MacAddr([0xfa, 0x7e, 0x4b, 0xad, 0x11, 0x01]);
        let f = frame(mac, Ipv4Addr::new(10, 10, 1, 55));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac.0);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[22..28], &mac.0);
        assert_eq!(&f[28..32], &[10, 10, 1, 55]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 10, 1, 55]);
        assert!(f[42..].iter().all(|&b| b == 0));
    }
}
