//! Our part of the element encoding: the bytes of a key or value (a concatenation of fields,
//! each padded to 4 bytes, as the kernel's `nft_set_ext` expects them), and the way back to
//! nft syntax for readable dumps.
//!
//! Addresses and ports are big-endian (a port fills the first two bytes of its word), a
//! protocol the first byte, an interface name 16 NUL-padded bytes, a mark host order. A range
//! (ports, prefix) gives its first value in the key and its last in the end key.

use crate::nat::model::Field;
use crate::nat::sets::FieldKind;
use crate::state::model::L4Proto;
use std::net::Ipv4Addr;

/// Bytes of an interface name field.
const IFNAME_LEN: usize = 16;

fn field(f: &Field, end: bool, out: &mut Vec<u8>) {
    let start = out.len();
    match f {
        Field::Addr(a) => out.extend_from_slice(&a.octets()),
        Field::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
        Field::Ports(lo, hi) => out.extend_from_slice(&(if end { *hi } else { *lo }).to_be_bytes()),
        Field::Proto(p) => out.push(match p {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
        }),
        Field::Ifname(n) => {
            let mut name = [0u8; IFNAME_LEN];
            // the kernel's names are at most 15 bytes and a NUL
            for (slot, b) in name.iter_mut().zip(n.bytes().take(IFNAME_LEN - 1)) {
                *slot = b;
            }
            out.extend_from_slice(&name);
        }
        Field::Net(c) => {
            let net = u32::from(c.network().addr);
            let host = u32::MAX.checked_shr(u32::from(c.prefix.len())).unwrap_or(0);
            let v = if end { net | host } else { net };
            out.extend_from_slice(&v.to_be_bytes());
        }
        Field::Mark(m) => out.extend_from_slice(&m.to_ne_bytes()),
    }
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
}

/// The bytes of `fields`: their first values, or with `end` their last (the end key of a
/// range element).
pub fn encode(fields: &[Field], end: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.len() * 4);
    for f in fields {
        field(f, end, &mut out);
    }
    out
}

/// Bytes one field of `kind` takes, padding included.
fn width(kind: FieldKind) -> usize {
    match kind {
        FieldKind::Ifname => IFNAME_LEN,
        _ => 4,
    }
}

/// `bytes` read back as fields of `kinds`, in nft syntax (`10.0.0.1 . tcp . 80`); `None` when
/// the length does not match the layout.
pub fn decode(kinds: &[FieldKind], bytes: &[u8]) -> Option<String> {
    if kinds.iter().map(|k| width(*k)).sum::<usize>() != bytes.len() {
        return None;
    }
    let mut parts = Vec::with_capacity(kinds.len());
    let mut rest = bytes;
    for kind in kinds {
        let (word, tail) = rest.split_at(width(*kind));
        rest = tail;
        parts.push(match kind {
            FieldKind::Ipv4Addr => Ipv4Addr::new(word[0], word[1], word[2], word[3]).to_string(),
            FieldKind::InetService => u16::from_be_bytes([word[0], word[1]]).to_string(),
            FieldKind::InetProto => match word[0] {
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                n => n.to_string(),
            },
            FieldKind::Ifname => {
                let len = word.iter().position(|b| *b == 0).unwrap_or(word.len());
                format!("\"{}\"", String::from_utf8_lossy(&word[..len]))
            }
            FieldKind::Mark => {
                format!(
                    "0x{:08x}",
                    u32::from_ne_bytes([word[0], word[1], word[2], word[3]])
                )
            }
        });
    }
    Some(parts.join(" . "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::types::Cidr;

    #[test]
    fn fields_are_padded_words_and_ranges_give_both_ends() {
        let net: Cidr = "192.168.4.0/22".parse().unwrap();
        let key = [
            Field::Addr(Ipv4Addr::new(10, 0, 0, 1)),
            Field::Proto(L4Proto::Udp),
            Field::Ports(8000, 8010),
            Field::Net(net),
        ];
        assert_eq!(
            encode(&key, false),
            [10, 0, 0, 1, 17, 0, 0, 0, 0x1f, 0x40, 0, 0, 192, 168, 4, 0]
        );
        assert_eq!(
            encode(&key, true),
            [10, 0, 0, 1, 17, 0, 0, 0, 0x1f, 0x4a, 0, 0, 192, 168, 7, 255]
        );
        let kinds = [
            FieldKind::Ipv4Addr,
            FieldKind::InetProto,
            FieldKind::InetService,
            FieldKind::Ipv4Addr,
        ];
        assert_eq!(
            decode(&kinds, &encode(&key, true)).as_deref(),
            Some("10.0.0.1 . udp . 8010 . 192.168.7.255")
        );
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(encode(&[Field::Net(all)], true), [255, 255, 255, 255]);
        let one: Cidr = "10.1.2.3/32".parse().unwrap();
        assert_eq!(encode(&[Field::Net(one)], true), [10, 1, 2, 3]);
    }

    #[test]
    fn names_fill_sixteen_bytes_and_a_wrong_length_does_not_decode() {
        let bytes = encode(&[Field::Ifname("eth1".into()), Field::Mark(0x100)], false);
        assert_eq!(bytes.len(), 20);
        assert_eq!(
            decode(&[FieldKind::Ifname, FieldKind::Mark], &bytes).as_deref(),
            Some("\"eth1\" . 0x00000100")
        );
        assert_eq!(decode(&[FieldKind::Ipv4Addr], &bytes), None);
    }
}
