//! Field validators: each turns one wire value into a typed value or an [`Invalid`] that names
//! the field and quotes the value.

use crate::state::Invalid;
use crate::state::types::{Cidr, MacAddr, PortRange, PrefixLen};
use std::net::Ipv4Addr;

/// The value of a required field, or `field: missing`.
pub fn required<'a, T>(field: &str, v: &'a Option<T>) -> Result<&'a T, Invalid> {
    v.as_ref().ok_or_else(|| Invalid::new(field, "missing"))
}

/// A string that is absent, null or empty counts as not given.
pub fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A dotted-quad IPv4 address.
pub fn ipv4(field: &str, s: &str) -> Result<Ipv4Addr, Invalid> {
    s.trim()
        .parse()
        .map_err(|_| Invalid::new(field, format!("{s:?} is not an IPv4 address")))
}

/// A required IPv4 address.
pub fn req_ipv4(field: &str, v: &Option<String>) -> Result<Ipv4Addr, Invalid> {
    match given(v) {
        Some(s) => ipv4(field, s),
        None => Err(Invalid::new(field, "missing")),
    }
}

/// An optional IPv4 address (absent or empty = none).
pub fn opt_ipv4(field: &str, v: &Option<String>) -> Result<Option<Ipv4Addr>, Invalid> {
    given(v).map(|s| ipv4(field, s)).transpose()
}

/// A required MAC address.
pub fn req_mac(field: &str, v: &Option<String>) -> Result<MacAddr, Invalid> {
    match given(v) {
        Some(s) => s
            .parse()
            .map_err(|()| Invalid::new(field, format!("{s:?} is not a MAC address"))),
        None => Err(Invalid::new(field, "missing")),
    }
}

/// An optional MAC address.
pub fn opt_mac(field: &str, v: &Option<String>) -> Result<Option<MacAddr>, Invalid> {
    match given(v) {
        Some(_) => req_mac(field, v).map(Some),
        None => Ok(None),
    }
}

/// A required dotted netmask with contiguous one-bits.
pub fn req_netmask(field: &str, v: &Option<String>) -> Result<PrefixLen, Invalid> {
    let s = given(v).ok_or_else(|| Invalid::new(field, "missing"))?;
    let mask = ipv4(field, s)
        .map_err(|_| Invalid::new(field, format!("{s:?} is not a dotted netmask")))?;
    PrefixLen::from_netmask(mask)
        .ok_or_else(|| Invalid::new(field, format!("{s:?} is not a contiguous netmask")))
}

/// An optional CIDR (`a.b.c.d/n`, or a bare address meaning /32).
pub fn opt_cidr(field: &str, v: &Option<String>) -> Result<Option<Cidr>, Invalid> {
    given(v)
        .map(|s| {
            s.parse()
                .map_err(|()| Invalid::new(field, format!("{s:?} is not an IPv4 CIDR")))
        })
        .transpose()
}

/// A port number 0..=65535.
pub fn port(field: &str, v: &Option<i64>) -> Result<u16, Invalid> {
    let n = *required(field, v)?;
    u16::try_from(n).map_err(|_| Invalid::new(field, format!("{n} is not a port (0-65535)")))
}

/// A port range from two fields; `start > end` names both.
pub fn port_range(
    start_field: &str,
    start: &Option<i64>,
    end_field: &str,
    end: &Option<i64>,
) -> Result<PortRange, Invalid> {
    let s = port(start_field, start)?;
    let e = port(end_field, end)?;
    PortRange::new(s, e)
        .ok_or_else(|| Invalid::new(start_field, format!("start {s} is above {end_field} {e}")))
}

/// An optional MTU: absent or 0 means not set; else 68..=65535.
pub fn opt_mtu(field: &str, v: &Option<i64>) -> Result<Option<u32>, Invalid> {
    match v {
        None | Some(0) => Ok(None),
        Some(n) if (68..=65535).contains(n) => Ok(Some(*n as u32)),
        Some(n) => Err(Invalid::new(field, format!("{n} is not an MTU (68-65535)"))),
    }
}

/// A DNS name (host name or domain): letters, digits, `-`, `_` and dots, at most 253 bytes,
/// labels of 1-63. Anything else could break the dnsmasq files it ends up in.
pub fn opt_dns_name(field: &str, v: &Option<String>) -> Result<Option<String>, Invalid> {
    let Some(s) = given(v) else { return Ok(None) };
    let ok = s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(Some(s.to_string()))
    } else {
        Err(Invalid::new(field, format!("{s:?} is not a DNS name")))
    }
}

/// An identifier such as a uuid: printable ASCII without spaces, at most 128 bytes.
pub fn opt_token(field: &str, v: &Option<String>) -> Result<Option<String>, Invalid> {
    let Some(s) = given(v) else { return Ok(None) };
    if s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(Some(s.to_string()))
    } else {
        Err(Invalid::new(field, format!("{s:?} is not an identifier")))
    }
}
