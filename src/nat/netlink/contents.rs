//! What a set holds now (a GETSETELEM dump, decoded through the crate) and the element
//! deletes and adds that turn it into what it should hold. A full re-apply replaces set
//! contents this way rather than by flush and add: flushing a set of concatenated ranges
//! (pipapo) costs the kernel O(n²) (10,000 forward marks: ~3 s to flush, ~7 s to flush and
//! refill), while a kernel already in line costs one dump and an empty diff.

use super::batch::Encoded;
use crate::nat::sets::{self, SetSpec};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementFlags,
    SetElementList, SetElementMessage,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
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

fn value(d: &DataAttribute) -> Option<Vec<u8>> {
    match d {
        DataAttribute::Value(v) => Some(v.clone()),
        _ => None,
    }
}

/// The elements of one dumped NEWSETELEM message. Catch-all elements (none of ours) and the
/// lone interval-end markers of non-concatenated range sets (none of ours either) are
/// returned as they are, keyless ones skipped.
pub fn elements_of(m: &NetlinkMessage<NetfilterMessage>) -> Vec<Encoded> {
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        inner: NetfilterMessageInner::NfTables(NfTablesMessage::NewSetElement(msg)),
        ..
    }) = &m.payload
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in &msg.attributes {
        let SetElementList::Elements(list) = a else {
            continue;
        };
        for item in list {
            let ListAttribute::Element(attrs) = item else {
                continue;
            };
            let (mut key, mut end, mut data, mut flags) = (None, None, None, None);
            for attr in attrs {
                match attr {
                    SetElementAttribute::Key(d) => key = value(d),
                    SetElementAttribute::KeyEnd(nlas) => {
                        end = nlas.first().map(|n| {
                            let mut v = vec![0u8; n.value_len()];
                            n.emit_value(&mut v);
                            v
                        });
                    }
                    SetElementAttribute::Data(d) => data = value(d),
                    SetElementAttribute::Flags(f) => flags = Some(*f),
                    _ => {}
                }
            }
            if flags.is_some_and(|f| f.contains(SetElementFlags::CatchAll)) {
                continue;
            }
            if let Some(key) = key {
                out.push(Encoded {
                    key,
                    end,
                    value: data,
                });
            }
        }
    }
    out
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
    fn a_range_is_its_key_and_end_together() {
        let (deletes, adds) = diff(vec![e(1, Some(5), None)], vec![e(1, Some(6), None)]);
        assert_eq!(deletes, [e(1, Some(5), None)]);
        assert_eq!(adds, [e(1, Some(6), None)]);
        let (deletes, adds) = diff(vec![e(1, Some(5), None)], vec![e(1, Some(5), None)]);
        assert!(deletes.is_empty() && adds.is_empty());
    }
}
