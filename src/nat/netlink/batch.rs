//! One nf_tables transaction of element changes as netlink messages, built and decoded with
//! `netlink-packet-netfilter`: batch begin, set flushes (DELSETELEM without elements), element
//! deletes, element adds (runs of one set in one message), batch end. Pure; the socket is in
//! the parent module.

use super::keys;
use crate::nat::model::Elem;
use crate::nat::sets::{self, Family, SetSpec};
use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
    SetElementMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily, NetfilterSubsystem,
};

/// Elements per message: a message's element list is one attribute, whose length is 16 bits;
/// 256 of our largest elements (~90 bytes) stay far below that.
const PER_MESSAGE: usize = 256;

/// An element refers to a set [`sets::SETS`] does not declare (a bug of ours, caught before
/// anything is sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table} {set} is not a set of ours")]
pub struct UnknownSet {
    /// The element's table.
    pub table: String,
    /// The element's set.
    pub set: String,
}

/// The messages of one transaction, in order, and the sequence numbers that expect an
/// acknowledgement (every message but the batch's begin and end).
#[derive(Debug, Clone)]
pub struct Batch {
    /// The messages, finalized (lengths and types set).
    pub messages: Vec<NetlinkMessage<NetfilterMessage>>,
    /// Sequence numbers acknowledged by the kernel.
    pub acked: Vec<u32>,
}

impl Batch {
    /// The bytes of the whole batch (one datagram: one transaction).
    pub fn bytes(&self) -> Vec<u8> {
        let len = self.messages.iter().map(NetlinkMessage::buffer_len).sum();
        let mut out = vec![0u8; len];
        let mut off = 0;
        for m in &self.messages {
            let n = m.buffer_len();
            m.serialize(&mut out[off..off + n]);
            off += n;
        }
        out
    }

    /// The sequence number of the batch's begin message.
    pub fn first_seq(&self) -> u32 {
        self.messages
            .first()
            .map_or(0, |m| m.header.sequence_number)
    }

    /// The sequence number of the batch's end message.
    pub fn last_seq(&self) -> u32 {
        self.messages.last().map_or(0, |m| m.header.sequence_number)
    }
}

fn proto_family(f: Family) -> NetfilterProtoFamily {
    match f {
        Family::Ip => NetfilterProtoFamily::IPv4,
        Family::Inet => NetfilterProtoFamily::Inet,
    }
}

fn message(
    inner: impl Into<netlink_packet_netfilter::NetfilterMessageInner>,
    header: NetfilterHeader,
    flags: u16,
    seq: u32,
) -> NetlinkMessage<NetfilterMessage> {
    let mut m = NetlinkMessage::from(NetfilterMessage::new(header, inner));
    m.header.flags = flags;
    m.header.sequence_number = seq;
    m.finalize();
    m
}

/// Batch begin and end name the subsystem in the header's resource id.
fn control(what: ControlMessage, seq: u32) -> NetlinkMessage<NetfilterMessage> {
    let nftables = u16::from(u8::from(NetfilterSubsystem::NfTables));
    let header = NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, nftables);
    message(what, header, NLM_F_REQUEST, seq)
}

/// The declared set `set` of `table`.
pub fn spec_of(table: &str, set: &str) -> Result<&'static SetSpec, UnknownSet> {
    sets::find(table, set).ok_or_else(|| UnknownSet {
        table: table.to_string(),
        set: set.to_string(),
    })
}

/// One element as bytes: its key, its end key (sets of ranges), its value (maps).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Encoded {
    /// The key (first value of each field).
    pub key: Vec<u8>,
    /// The end key of a range element.
    pub end: Option<Vec<u8>>,
    /// The value of a map element.
    pub value: Option<Vec<u8>>,
}

impl Encoded {
    /// `e` as the kernel stores it in `spec`'s set.
    pub fn of(spec: &SetSpec, e: &Elem) -> Encoded {
        Encoded {
            key: keys::encode(&e.key, false),
            end: spec.interval.then(|| keys::encode(&e.key, true)),
            value: e.value.as_ref().map(|v| keys::encode(v, false)),
        }
    }
}

/// One element's attributes: key, end key, and the value on adds to a map.
fn element(e: &Encoded, with_value: bool) -> ListAttribute<SetElementAttribute> {
    let mut attrs = vec![SetElementAttribute::Key(DataAttribute::Value(
        e.key.clone(),
    ))];
    if let Some(end) = &e.end {
        // the crate types the end key as raw attributes: an NFTA_DATA_VALUE, whose number
        // comes from the crate's typed twin
        let kind = DataAttribute::Value(Vec::new()).kind();
        attrs.push(SetElementAttribute::KeyEnd(vec![DefaultNla::new(
            kind,
            end.clone(),
        )]));
    }
    if with_value && let Some(v) = &e.value {
        attrs.push(SetElementAttribute::Data(DataAttribute::Value(v.clone())));
    }
    ListAttribute::Element(attrs)
}

fn set_header(spec: &SetSpec) -> (NetfilterHeader, Vec<SetElementList>) {
    let (family, table) = sets::split_table(spec.table);
    (
        NetfilterHeader::new(proto_family(family), 0, 0),
        vec![
            SetElementList::Table(table.to_string()),
            SetElementList::Set(spec.name.to_string()),
        ],
    )
}

/// Add or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// NEWSETELEM (an element that is there with the same value is left alone).
    Add,
    /// DELSETELEM.
    Delete,
}

/// Builds one batch message by message.
pub struct Builder {
    messages: Vec<NetlinkMessage<NetfilterMessage>>,
    acked: Vec<u32>,
    seq: u32,
}

impl Builder {
    /// A batch whose begin message has sequence number `first_seq`.
    pub fn new(first_seq: u32) -> Builder {
        Builder {
            messages: vec![control(ControlMessage::BatchBegin, first_seq)],
            acked: Vec::new(),
            seq: first_seq,
        }
    }

    fn push(&mut self, inner: NfTablesMessage, header: NetfilterHeader, flags: u16) {
        self.seq = self.seq.wrapping_add(1);
        self.messages.push(message(inner, header, flags, self.seq));
        self.acked.push(self.seq);
    }

    /// Empties a set (DELSETELEM without elements).
    pub fn flush(&mut self, spec: &SetSpec) {
        let (header, attributes) = set_header(spec);
        let inner = NfTablesMessage::DeleteSetElement(SetElementMessage { attributes });
        self.push(inner, header, NLM_F_REQUEST | NLM_F_ACK);
    }

    /// Adds or deletes elements of one set, in messages of up to [`PER_MESSAGE`].
    pub fn elements<'e>(
        &mut self,
        op: Op,
        spec: &SetSpec,
        elems: impl IntoIterator<Item = &'e Encoded>,
    ) {
        let elems: Vec<&Encoded> = elems.into_iter().collect();
        for chunk in elems.chunks(PER_MESSAGE) {
            let list = chunk.iter().map(|e| element(e, op == Op::Add)).collect();
            let (header, mut attributes) = set_header(spec);
            attributes.push(SetElementList::Elements(list));
            let msg = SetElementMessage { attributes };
            let (inner, flags) = match op {
                Op::Add => (
                    NfTablesMessage::NewSetElement(msg),
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                ),
                Op::Delete => (
                    NfTablesMessage::DeleteSetElement(msg),
                    NLM_F_REQUEST | NLM_F_ACK,
                ),
            };
            self.push(inner, header, flags);
        }
    }

    /// The batch, closed by its end message.
    pub fn finish(mut self) -> Batch {
        self.seq = self.seq.wrapping_add(1);
        self.messages
            .push(control(ControlMessage::BatchEnd, self.seq));
        Batch {
            messages: self.messages,
            acked: self.acked,
        }
    }
}

/// One transaction: `flush` empties sets (table, set), then `deletes`, then `adds`; each run
/// of elements of one set goes in messages of up to [`PER_MESSAGE`] elements. Sequence
/// numbers start at `first_seq` (the batch begin).
pub fn batch(
    flush: &[(&str, &str)],
    deletes: &[Elem],
    adds: &[Elem],
    first_seq: u32,
) -> Result<Batch, UnknownSet> {
    let mut b = Builder::new(first_seq);
    for (table, set) in flush {
        b.flush(spec_of(table, set)?);
    }
    for (op, elems) in [(Op::Delete, deletes), (Op::Add, adds)] {
        for run in elems.chunk_by(|a, b| a.table == b.table && a.set == b.set) {
            let spec = spec_of(run[0].table, run[0].set)?;
            let encoded: Vec<Encoded> = run.iter().map(|e| Encoded::of(spec, e)).collect();
            b.elements(op, spec, &encoded);
        }
    }
    Ok(b.finish())
}

/// The payload of a message of ours, for [`describe`].
fn set_elements(m: &NetlinkMessage<NetfilterMessage>) -> Option<(&str, &SetElementMessage)> {
    let NetlinkPayload::InnerMessage(NetfilterMessage { inner, .. }) = &m.payload else {
        return None;
    };
    match inner {
        netlink_packet_netfilter::NetfilterMessageInner::NfTables(
            NfTablesMessage::NewSetElement(s),
        ) => Some(("add", s)),
        netlink_packet_netfilter::NetfilterMessageInner::NfTables(
            NfTablesMessage::DeleteSetElement(s),
        ) => Some(("delete", s)),
        _ => None,
    }
}

fn flag_names(flags: u16) -> String {
    let mut names = Vec::new();
    for (bit, name) in [
        (NLM_F_REQUEST, "request"),
        (NLM_F_ACK, "ack"),
        (NLM_F_CREATE, "create"),
    ] {
        if flags & bit != 0 {
            names.push(name);
        }
    }
    let rest = flags & !(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
    let mut out = names.join(",");
    if rest != 0 {
        out.push_str(&format!(",0x{rest:x}"));
    }
    out
}

fn family_word(f: &NetfilterProtoFamily) -> String {
    match f {
        NetfilterProtoFamily::IPv4 => "ip".into(),
        NetfilterProtoFamily::Inet => "inet".into(),
        NetfilterProtoFamily::Unspec => "unspec".into(),
        other => format!("{other:?}"),
    }
}

fn value_bytes(d: &DataAttribute) -> Option<&[u8]> {
    match d {
        DataAttribute::Value(v) => Some(v),
        _ => None,
    }
}

fn nla_value(n: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0u8; n.value_len()];
    n.emit_value(&mut v);
    v
}

/// One element of a decoded message in nft syntax, read through the set's layout:
/// `key`, `key-end` for ranges, ` : value` for maps.
fn describe_element(spec: Option<&SetSpec>, attrs: &[SetElementAttribute]) -> String {
    let show = |kinds: Option<&[sets::FieldKind]>, bytes: &[u8]| {
        kinds
            .and_then(|k| keys::decode(k, bytes))
            .unwrap_or_else(|| format!("{bytes:02x?}"))
    };
    let (mut key, mut end, mut value, mut other) = (None, None, None, Vec::new());
    for a in attrs {
        match a {
            SetElementAttribute::Key(d) => {
                key = value_bytes(d).map(|b| show(spec.map(|s| s.key), b));
            }
            SetElementAttribute::KeyEnd(nlas) => {
                end = nlas
                    .first()
                    .map(|n| show(spec.map(|s| s.key), &nla_value(n)));
            }
            SetElementAttribute::Data(d) => {
                value = value_bytes(d).map(|b| show(spec.and_then(|s| s.value), b));
            }
            a => other.push(format!("{a:?}")),
        }
    }
    let mut out = key.unwrap_or_else(|| "(no key)".into());
    if let Some(e) = end {
        out.push_str(&format!(" - {e}"));
    }
    if let Some(v) = value {
        out.push_str(&format!(" : {v}"));
    }
    for o in other {
        out.push_str(&format!(" {o}"));
    }
    out
}

/// A readable dump of a batch's bytes, decoded back through the crate: one line per message
/// (sequence number, flags, what it does) and one per element, in nft syntax.
pub fn describe(bytes: &[u8]) -> Result<String, netlink_packet_core::DecodeError> {
    let mut out = String::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let m = NetlinkMessage::<NetfilterMessage>::deserialize(rest)?;
        let len = m.header.length as usize;
        if len == 0 || len > rest.len() {
            return Err(format!("message length {len} with {} bytes left", rest.len()).into());
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        let head = format!(
            "{} [{}]",
            m.header.sequence_number,
            flag_names(m.header.flags)
        );
        if let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: netlink_packet_netfilter::NetfilterMessageInner::None(c),
            header,
            ..
        }) = &m.payload
        {
            let what = match c {
                ControlMessage::BatchBegin => "batch begin",
                ControlMessage::BatchEnd => "batch end",
                _ => "control",
            };
            out.push_str(&format!("{head} {what} (subsystem {})\n", header.res_id));
            continue;
        }
        let Some((verb, msg)) = set_elements(&m) else {
            out.push_str(&format!("{head} {:?}\n", m.payload));
            continue;
        };
        let family = match &m.payload {
            NetlinkPayload::InnerMessage(n) => family_word(&n.header.family),
            _ => String::new(),
        };
        let (mut table, mut set, mut elements) = (String::new(), String::new(), None);
        for a in &msg.attributes {
            match a {
                SetElementList::Table(t) => table = t.clone(),
                SetElementList::Set(s) => set = s.clone(),
                SetElementList::Elements(e) => elements = Some(e),
                _ => {}
            }
        }
        let full_table = format!("{family} {table}");
        let spec = sets::find(&full_table, &set);
        match elements {
            None if verb == "delete" => {
                out.push_str(&format!("{head} flush {full_table} {set}\n"));
            }
            None => out.push_str(&format!("{head} {verb} no elements {full_table} {set}\n")),
            Some(list) => {
                out.push_str(&format!(
                    "{head} {verb} {} elements {full_table} {set}\n",
                    list.len()
                ));
                for item in list {
                    match item {
                        ListAttribute::Element(attrs) => {
                            out.push_str(&format!("\t{}\n", describe_element(spec, attrs)));
                        }
                        other => out.push_str(&format!("\t{other:?}\n")),
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::model::{Field, NAT};
    use std::net::Ipv4Addr;

    fn dnat(i: u32) -> Elem {
        Elem {
            table: NAT,
            set: "eip_dnat",
            key: vec![Field::Addr(Ipv4Addr::from(0x0a00_0000 + i))],
            value: Some(vec![Field::Addr(Ipv4Addr::from(0xac10_0000 + i))]),
        }
    }

    #[test]
    fn long_runs_are_split_into_messages_that_decode_back() {
        let adds: Vec<Elem> = (0..600).map(dnat).collect();
        let b = batch(&[(NAT, "eip_dnat")], &[], &adds, 7).unwrap();
        // begin, flush, 3 messages of at most 256 elements, end
        assert_eq!(b.messages.len(), 6);
        assert_eq!(b.acked, [8, 9, 10, 11]);
        assert_eq!((b.first_seq(), b.last_seq()), (7, 12));
        let text = describe(&b.bytes()).unwrap();
        assert!(text.contains("11 [request,ack,create] add 88 elements ip vr_nat eip_dnat"));
        assert!(text.contains("\t10.0.2.87 : 172.16.2.87\n"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with('\t')).count(), 600);
    }

    #[test]
    fn an_undeclared_set_is_refused_before_anything_is_built() {
        let mut e = dnat(1);
        e.set = "no_such_set";
        let err = batch(&[], &[e], &[], 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ip vr_nat no_such_set is not a set of ours"
        );
    }
}
