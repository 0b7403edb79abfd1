//! Value types of the desired state: MAC addresses, CIDRs, netmasks and port ranges.
//! Each parses from the text the management node sends and refuses anything else.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An Ethernet MAC address, printed lower case with colons as ZStack stores it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The 12 hex digits without separators (dnsmasq tag form).
    pub fn compact(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl FromStr for MacAddr {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(());
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(parts) {
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| ())?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An IPv4 prefix length, 0..=32, made from a contiguous dotted netmask or a number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct PrefixLen(u8);

impl PrefixLen {
    /// A prefix length, if `len` is at most 32.
    pub fn new(len: u8) -> Option<Self> {
        (len <= 32).then_some(PrefixLen(len))
    }

    /// The prefix of a dotted netmask, if its one-bits are contiguous.
    pub fn from_netmask(mask: Ipv4Addr) -> Option<Self> {
        let bits = u32::from(mask);
        let len = bits.leading_ones();
        (bits.checked_shl(len).unwrap_or(0) == 0).then_some(PrefixLen(len as u8))
    }

    /// The length in bits.
    pub fn len(self) -> u8 {
        self.0
    }

    /// True for /0.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The dotted netmask of this prefix.
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask_bits())
    }

    fn mask_bits(self) -> u32 {
        if self.0 == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.0))
        }
    }
}

impl TryFrom<u8> for PrefixLen {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        PrefixLen::new(v).ok_or_else(|| format!("prefix length {v} is above 32"))
    }
}

impl From<PrefixLen> for u8 {
    fn from(p: PrefixLen) -> u8 {
        p.0
    }
}

/// An IPv4 address with a prefix length: an interface address (`172.20.0.1/24`) or, once
/// normalised by [`Cidr::network`], a network.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The address as given (host bits may be set).
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: PrefixLen,
}

impl Cidr {
    /// The least CIDR in their order (for ranges of ordered maps).
    pub const MIN: Cidr = Cidr {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix: PrefixLen(0),
    };
    /// The greatest CIDR in their order.
    pub const MAX: Cidr = Cidr {
        addr: Ipv4Addr::BROADCAST,
        prefix: PrefixLen(32),
    };

    /// A CIDR from an address and prefix.
    pub fn new(addr: Ipv4Addr, prefix: PrefixLen) -> Self {
        Cidr { addr, prefix }
    }

    /// The same prefix with host bits cleared.
    pub fn network(self) -> Cidr {
        Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.prefix.mask_bits()),
            prefix: self.prefix,
        }
    }

    /// True if `ip` lies inside this prefix.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        let mask = self.prefix.mask_bits();
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl FromStr for Cidr {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                let len: u8 = p.parse().map_err(|_| ())?;
                (a, PrefixLen::new(len).ok_or(())?)
            }
            None => (s, PrefixLen(32)),
        };
        Ok(Cidr {
            addr: addr.parse().map_err(|_| ())?,
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix.0)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An inclusive range of TCP/UDP ports with `start <= end`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port, inclusive.
    pub end: u16,
}

impl PortRange {
    /// A range, if `start <= end`.
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start <= end).then_some(PortRange { start, end })
    }

    /// Number of ports in the range.
    pub fn len(self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Never empty: a range holds at least one port.
    pub fn is_empty(self) -> bool {
        false
    }

    /// True if the two ranges share a port.
    pub fn overlaps(self, other: PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

macro_rules! serde_via_string {
    ($t:ty, $what:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse()
                    .map_err(|()| serde::de::Error::custom(format!("{s:?} is not {}", $what)))
            }
        }
    };
}

serde_via_string!(MacAddr, "a MAC address");
serde_via_string!(Cidr, "an IPv4 CIDR");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_both_cases_and_prints_lower() {
        let m: MacAddr = "FA:7E:4B:AD:11:0a".parse().unwrap();
        assert_eq!(m.to_string(), "fa:7e:4b:ad:11:0a");
        assert_eq!(m.compact(), "fa7e4bad110a");
        assert!("fa:7e:4b:ad:11".parse::<MacAddr>().is_err());
        assert!("fa:7e:4b:ad:11:0g".parse::<MacAddr>().is_err());
        assert!("fa:7e:4b:ad:11:0".parse::<MacAddr>().is_err());
        assert!("fa:7e:4b:ad:11:+1".parse::<MacAddr>().is_err());
    }

    #[test]
    fn netmask_must_be_contiguous() {
        let p = |s: &str| PrefixLen::from_netmask(s.parse().unwrap()).map(PrefixLen::len);
        assert_eq!(p("255.255.255.0"), Some(24));
        assert_eq!(p("255.255.255.255"), Some(32));
        assert_eq!(p("0.0.0.0"), Some(0));
        assert_eq!(p("255.0.255.0"), None);
        assert_eq!(p("255.255.255.1"), None);
        assert_eq!(
            PrefixLen::new(20).unwrap().netmask().to_string(),
            "255.255.240.0"
        );
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "203.0.113.7/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "203.0.113.0/24");
        assert!(c.contains("203.0.113.200".parse().unwrap()));
        assert!(!c.contains("203.0.114.1".parse().unwrap()));
        assert_eq!(
            "10.0.0.1".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert!("10.0.0.1/33".parse::<Cidr>().is_err());
        assert!("10.0.0.1/".parse::<Cidr>().is_err());
        assert!("10.0.0.1/+8".parse::<Cidr>().is_err());
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
    }

    #[test]
    fn port_range_order() {
        assert!(PortRange::new(10, 9).is_none());
        let r = PortRange::new(8080, 8090).unwrap();
        assert_eq!(r.len(), 11);
        assert!(r.overlaps(PortRange::new(8090, 9000).unwrap()));
        assert!(!r.overlaps(PortRange::new(8091, 9000).unwrap()));
    }
}
