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
        .map_err(|_| Invalid::new(field, format!("{} is not an IPv4 address", quote(s))))
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
        Some(s) => {
            let mac: MacAddr = s
                .parse()
                .map_err(|()| Invalid::new(field, format!("{} is not a MAC address", quote(s))))?;
            if mac.0 == [0; 6] {
                Err(Invalid::new(
                    field,
                    format!("\"{mac}\" is the all-zero MAC address"),
                ))
            } else if mac.0[0] & 1 == 1 {
                Err(Invalid::new(
                    field,
                    format!("\"{mac}\" is a multicast MAC address"),
                ))
            } else {
                Ok(mac)
            }
        }
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
        .map_err(|_| Invalid::new(field, format!("{} is not a dotted netmask", quote(s))))?;
    PrefixLen::from_netmask(mask)
        .ok_or_else(|| Invalid::new(field, format!("{} is not a contiguous netmask", quote(s))))
}

/// An optional CIDR (`a.b.c.d/n`, or a bare address meaning /32).
pub fn opt_cidr(field: &str, v: &Option<String>) -> Result<Option<Cidr>, Invalid> {
    given(v)
        .map(|s| {
            s.parse()
                .map_err(|()| Invalid::new(field, format!("{} is not an IPv4 CIDR", quote(s))))
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
        Err(Invalid::new(
            field,
            format!("{} is not a DNS name", quote(s)),
        ))
    }
}

/// An identifier such as a uuid: printable ASCII without spaces, at most 128 bytes.
pub fn opt_token(field: &str, v: &Option<String>) -> Result<Option<String>, Invalid> {
    let Some(s) = given(v) else { return Ok(None) };
    if s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(Some(s.to_string()))
    } else {
        Err(Invalid::new(
            field,
            format!("{} is not an identifier", quote(s)),
        ))
    }
}

/// At most this many characters of a refused value are quoted.
pub const QUOTE_MAX: usize = 100;

/// `s` quoted for an error message (`"..."` with escapes), cut after [`QUOTE_MAX`] characters
/// with `…(N bytes)` telling the full length: a 1 MB value never makes a 1 MB reply or log line.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}…({} bytes)", &s[..cut], s.len()),
    }
}

/// A free text (such as a parser's message, which quotes the value it refuses) of bounded
/// length: a quoted part is cut after [`QUOTE_MAX`] characters as [`quote`] does, and the
/// whole after four times that.
pub fn bounded_text(s: &str) -> String {
    const MAX: usize = 4 * QUOTE_MAX;
    let cap = |t: &str| match t.char_indices().nth(MAX) {
        None => t.to_string(),
        Some((cut, _)) => format!("{}…({} bytes)", &t[..cut], t.len()),
    };
    if let (Some(a), Some(b)) = (s.find('"'), s.rfind('"'))
        && b > a
        && let Some((cut, _)) = s[a + 1..b].char_indices().nth(QUOTE_MAX)
    {
        let inner = &s[a + 1..b];
        return cap(&format!(
            "{}\"{}\"…({} bytes){}",
            &s[..a],
            &inner[..cut],
            inner.len(),
            &s[b + 1..]
        ));
    }
    cap(s)
}

/// Why an IPv4 address cannot be a host's (unicast, usable) address, if it cannot.
pub fn not_unicast(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if o[0] >= 240 {
        Some("a reserved address (240.0.0.0/4)")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if o[0] == 0 {
        Some("an address of the \"this network\" block (0.0.0.0/8)")
    } else {
        None
    }
}

/// Refuses an address that is not a usable unicast host address, or that is the network or
/// broadcast address of its subnet when `prefix` is known (a /31 and a /32 have neither).
pub fn check_unicast(field: &str, ip: Ipv4Addr, prefix: Option<PrefixLen>) -> Result<(), Invalid> {
    if let Some(why) = not_unicast(ip) {
        return Err(Invalid::new(field, format!("\"{ip}\" is {why}")));
    }
    if let Some(p) = prefix
        && p.len() < 31
    {
        let net = Cidr::new(ip, p).network();
        let host_bits = u32::MAX >> p.len();
        if ip == net.addr {
            return Err(Invalid::new(
                field,
                format!("\"{ip}\" is the network address of {net}"),
            ));
        }
        if u32::from(ip) & host_bits == host_bits {
            return Err(Invalid::new(
                field,
                format!("\"{ip}\" is the broadcast address of {net}"),
            ));
        }
    }
    Ok(())
}

/// A required unicast host address (see [`check_unicast`]).
pub fn req_host_ipv4(
    field: &str,
    v: &Option<String>,
    prefix: Option<PrefixLen>,
) -> Result<Ipv4Addr, Invalid> {
    let ip = req_ipv4(field, v)?;
    check_unicast(field, ip, prefix)?;
    Ok(ip)
}

/// An optional unicast host address.
pub fn opt_host_ipv4(
    field: &str,
    v: &Option<String>,
    prefix: Option<PrefixLen>,
) -> Result<Option<Ipv4Addr>, Invalid> {
    let ip = opt_ipv4(field, v)?;
    if let Some(ip) = ip {
        check_unicast(field, ip, prefix)?;
    }
    Ok(ip)
}

/// An upstream DNS server: refuses the unspecified, loopback, multicast, broadcast and
/// reserved addresses (dnsmasq would query itself or nothing).
pub fn dns_server(field: &str, s: &str) -> Result<Ipv4Addr, Invalid> {
    let ip = ipv4(field, s)?;
    match not_unicast(ip) {
        Some(why) if !ip.is_link_local() => Err(Invalid::new(field, format!("\"{ip}\" is {why}"))),
        _ => Ok(ip),
    }
}

/// Why dnsmasq would read `name` in a `dhcp-host` line as something other than a host name,
/// if it would: a keyword (`ignore`, `infinite`), an address, a lease time (`12h`, `3600`), a
/// MAC address, or a name dnsmasq refuses (a label starting with `-` or `_`).
pub fn dnsmasq_name_problem(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.trim_end_matches('.');
    if bare.is_empty() {
        return Some("empty");
    }
    if matches!(bare, "ignore" | "infinite") {
        return Some("a dnsmasq keyword");
    }
    if bare.contains(':') || bare.contains(',') || bare.contains('*') {
        return Some("a dnsmasq option");
    }
    // With a dot, inet_addr(3): two to four parts of decimal, octal or 0x-hex digits.
    let parts: Vec<&str> = bare.split('.').collect();
    let numeric = |p: &str| {
        !p.is_empty()
            && (p.bytes().all(|b| b.is_ascii_digit())
                || p.strip_prefix("0x")
                    .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())))
    };
    if (2..=4).contains(&parts.len()) && parts.iter().all(|p| numeric(p)) {
        return Some("an IPv4 address to dnsmasq");
    }
    // A lease time: digits with an optional unit.
    let digits = bare.trim_end_matches(['s', 'm', 'h', 'd', 'w']);
    if !digits.is_empty()
        && bare.len() - digits.len() <= 1
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Some("a lease time to dnsmasq");
    }
    // A MAC address with dashes, or a bare 12-hex-digit one.
    let hex_pairs = bare.split('-').collect::<Vec<_>>();
    if hex_pairs.len() == 6
        && hex_pairs
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Some("a MAC address to dnsmasq");
    }
    if bare
        .split('.')
        .any(|l| l.starts_with('-') || l.starts_with('_') || l.ends_with('-'))
    {
        return Some("a name dnsmasq refuses (a label starts with '-' or '_' or ends with '-')");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_cuts_after_100_characters_on_a_character_boundary() {
        let exact = "a".repeat(QUOTE_MAX);
        assert_eq!(quote(&exact), format!("{exact:?}"));
        let over = format!("{exact}é");
        assert_eq!(quote(&over), format!("{exact:?}…(102 bytes)"));
        assert_eq!(quote("a\"b\n"), r#""a\"b\n""#);
        assert_eq!(
            bounded_text(&format!("invalid type: string \"{over}\", expected i64")),
            format!("invalid type: string {exact:?}…(102 bytes), expected i64")
        );
    }

    #[test]
    fn unicast_and_subnet_edges() {
        let p = |n| PrefixLen::new(n);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(check_unicast("f", ip("10.0.0.1"), p(24)).is_ok());
        assert!(check_unicast("f", ip("10.0.0.0"), p(24)).is_err());
        assert!(check_unicast("f", ip("10.0.0.0"), p(31)).is_ok());
        assert!(check_unicast("f", ip("10.0.0.1"), p(31)).is_ok());
        assert!(check_unicast("f", ip("10.0.0.7"), p(32)).is_ok());
        assert!(check_unicast("f", ip("10.0.255.255"), p(16)).is_err());
        assert!(check_unicast("f", ip("0.1.2.3"), None).is_err());
        assert!(check_unicast("f", ip("100.64.0.1"), None).is_ok());
    }
}
