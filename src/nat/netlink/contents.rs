//! What a set holds now (a GETSETELEM dump, decoded through the crate) and the element
//! deletes and adds that turn it into what it should hold. A full re-apply replaces set
//! contents this way rather than by flush and add: flushing a set of concatenated ranges
//! (pipapo) costs the kernel O(n²) (10,000 forward marks: ~3 s to flush, ~7 s to flush and
//! refill), while a kernel already in line costs one dump and an empty diff.

use super::batch::Encoded;
use crate::nat::sets::{self, SetSpec};
use netlink_packet_core::{
    DecodeError, Emitable, NLA_F_NESTED, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, Nla,
    NlasIterator, Parseable,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, GenAttribute, GenMessage, ListAttribute, NfTablesMessage, NfTablesMessageType,
    SetElementAttribute, SetElementFlags, SetElementList, SetElementMessage,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    NetfilterSubsystem,
};
use std::collections::HashMap;

/// The request for every element of `spec`'s set.
pub fn dump_request(spec: &SetSpec, seq: u32) -> Vec<u8> {
    let (family, table) = sets::split_table(spec.table);
    let family = match family {
        sets::Family::Ip => NetfilterProtoFamily::IPv4,
        sets::Family::Inet => NetfilterProtoFamily::Inet,
    };
    let inner = NfTablesMessage::GetSetElement(SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_string()),
            SetElementList::Set(spec.name.to_string()),
        ],
    });
    let mut m = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(family, 0, 0),
        inner,
    ));
    m.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    m.header.sequence_number = seq;
    m.finalize();
    let mut out = vec![0u8; m.buffer_len()];
    m.serialize(&mut out);
    out
}

/// The request for the ruleset generation (GETGEN).
pub fn generation_request(seq: u32) -> Vec<u8> {
    let inner = NfTablesMessage::GetGen(GenMessage { attributes: vec![] });
    let mut m = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
        inner,
    ));
    m.header.flags = NLM_F_REQUEST;
    m.header.sequence_number = seq;
    m.finalize();
    let mut out = vec![0u8; m.buffer_len()];
    m.serialize(&mut out);
    out
}

/// The generation id of a NEWGEN answer.
pub fn generation_in(m: NetfilterMessage) -> Option<u32> {
    match m.inner {
        NetfilterMessageInner::NfTables(NfTablesMessage::NewGen(GenMessage { attributes })) => {
            attributes.into_iter().find_map(|a| match a {
                GenAttribute::Id(id) => Some(id),
                _ => None,
            })
        }
        _ => None,
    }
}

fn value(d: DataAttribute) -> Option<Vec<u8>> {
    match d {
        DataAttribute::Value(v) => Some(v),
        _ => None,
    }
}

/// The netlink message type of the kernel's NEWSETELEM (a dump's answers).
pub fn new_set_element_type() -> u16 {
    let subsys = u16::from(u8::from(NetfilterSubsystem::NfTables));
    (subsys << 8) | u16::from(u8::from(NfTablesMessageType::NewSetElement))
}

/// The elements of one dumped NEWSETELEM message's payload (the bytes after the netlink
/// header). The message's element list is walked attribute by attribute and each element's
/// attributes are parsed by the crate: the crate's own parse of a whole list formats the
/// entire list's bytes into an error context once per element (eagerly, on success too),
/// quadratic in the message size and minutes for a dump of 100,000 elements. Catch-all
/// elements (none of ours) are skipped.
pub fn elements_in(payload: &[u8]) -> Result<Vec<Encoded>, DecodeError> {
    let header = NetfilterHeader::parse(payload)?;
    let body = payload.get(header.buffer_len()..).unwrap_or_default();
    // attribute numbers from the crate's typed twins
    let elements_kind = SetElementList::Elements(Vec::new()).kind() & !NLA_F_NESTED;
    let element_kind =
        ListAttribute::<SetElementAttribute>::Element(Vec::new()).kind() & !NLA_F_NESTED;
    let mut out = Vec::new();
    for list in NlasIterator::new(body) {
        let list = list?;
        if list.kind() != elements_kind {
            continue;
        }
        for item in NlasIterator::new(list.value()) {
            let item = item?;
            if item.kind() != element_kind {
                continue;
            }
            let (mut key, mut end, mut data, mut catch_all) = (None, None, None, false);
            for attr in NlasIterator::new(item.value()) {
                match SetElementAttribute::parse(&attr?)? {
                    SetElementAttribute::Key(d) => key = value(d),
                    SetElementAttribute::KeyEnd(nlas) => {
                        end = nlas.first().map(|n| {
                            let mut v = vec![0u8; n.value_len()];
                            n.emit_value(&mut v);
                            v
                        });
                    }
                    SetElementAttribute::Data(d) => data = value(d),
                    SetElementAttribute::Flags(f) => {
                        catch_all = f.contains(SetElementFlags::CatchAll);
                    }
                    _ => {}
                }
            }
            if let (Some(key), false) = (key, catch_all) {
                out.push(Encoded {
                    key,
                    end,
                    value: data,
                });
            }
        }
    }
    Ok(out)
}

/// An element's identity in its set: key and end key.
type Slot = (Vec<u8>, Option<Vec<u8>>);

/// Deletes and adds that turn `current` into `desired`: elements in both with the same value
/// are left alone; one whose value differs is deleted and added again (a changed value cannot
/// be added over an existing key).
pub fn diff(current: Vec<Encoded>, desired: Vec<Encoded>) -> (Vec<Encoded>, Vec<Encoded>) {
    let mut now: HashMap<Slot, Option<Vec<u8>>> = current
        .into_iter()
        .map(|e| ((e.key, e.end), e.value))
        .collect();
    let mut deletes = Vec::new();
    let mut adds = Vec::new();
    for e in desired {
        match now.remove(&(e.key.clone(), e.end.clone())) {
            Some(v) if v == e.value => {}
            Some(v) => {
                deletes.push(Encoded {
                    key: e.key.clone(),
                    end: e.end.clone(),
                    value: v,
                });
                adds.push(e);
            }
            None => adds.push(e),
        }
    }
    deletes.extend(
        now.into_iter()
            .map(|((key, end), value)| Encoded { key, end, value }),
    );
    (deletes, adds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: u8, end: Option<u8>, value: Option<u8>) -> Encoded {
        Encoded {
            key: vec![key; 4],
            end: end.map(|x| vec![x; 4]),
            value: value.map(|x| vec![x; 4]),
        }
    }

    #[test]
    fn the_diff_keeps_equal_elements_and_replaces_changed_values() {
        let current = vec![
            e(1, None, Some(10)),
            e(2, None, Some(20)),
            e(3, None, Some(30)),
        ];
        let desired = vec![
            e(1, None, Some(10)),
            e(2, None, Some(21)),
            e(4, None, Some(40)),
        ];
        let (mut deletes, adds) = diff(current, desired);
        deletes.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(deletes, [e(2, None, Some(20)), e(3, None, Some(30))]);
        assert_eq!(adds, [e(2, None, Some(21)), e(4, None, Some(40))]);
    }

    #[test]
    fn elements_are_read_back_from_a_message_of_the_kernels_shape() {
        use crate::nat::netlink::batch::{Builder, Op};
        let spec = sets::find(crate::nat::model::NAT, "pf_mark").unwrap();
        let elems: Vec<Encoded> = (0..=255u8)
            .chain(0..=40)
            .map(|i| e(i, Some(i.wrapping_add(1)), Some(7)))
            .collect();
        let mut b = Builder::new(1);
        b.elements(Op::Add, spec, &elems);
        let batch = b.finish();
        let mut read = Vec::new();
        for m in &batch.messages[1..batch.messages.len() - 1] {
            let mut bytes = vec![0u8; m.buffer_len()];
            m.serialize(&mut bytes);
            let frame = netlink_packet_core::NetlinkBuffer::new_checked(&bytes[..]).unwrap();
            assert_eq!(frame.message_type(), new_set_element_type());
            read.extend(elements_in(frame.payload()).unwrap());
        }
        assert_eq!(read, elems);
    }

    #[test]
    fn a_range_is_its_key_and_end_together() {
        let (deletes, adds) = diff(vec![e(1, Some(5), None)], vec![e(1, Some(6), None)]);
        assert_eq!(deletes, [e(1, Some(5), None)]);
        assert_eq!(adds, [e(1, Some(6), None)]);
        let (deletes, adds) = diff(vec![e(1, Some(5), None)], vec![e(1, Some(5), None)]);
        assert!(deletes.is_empty() && adds.is_empty());
    }
}
