//! Deleting conntrack entries of removed or remapped EIPs and port forwards, so no flow keeps
//! a stale translation (NAT is decided on a flow's first packet). Over ctnetlink, no process.
//!
//! The flows of an EIP are those whose original destination is the VIP (inbound, DNATed) or
//! whose reply destination is the VIP (outbound, SNATed); those of a port forward have the VIP
//! as original destination and a port of the forward. The peer side of such a tuple is not
//! known, so each is found by a dump the kernel filters itself (`CTA_FILTER`, kernel >= 5.8,
//! on the original or reply destination address and the protocol): the kernel walks its table
//! but sends only the matches, which are then deleted by their full original tuple
//! (`IPCTNL_MSG_CT_DELETE`), in one batch. More than [`FILTERED_MAX`] flushes in one command
//! (a sync) take one unfiltered dump matched here instead.
//!
//! A dump walks every bucket of the (global, host-sized) hash table even when it sends
//! nothing: ~7 ms per dump on the CI machine kind. So the usual path skips dumps altogether:
//! [`super::flows::Tracker`] keeps an index of our VIPs' flows from conntrack events, and the
//! flows found there are deleted directly; the dumps are the fallback while it is out of sync.
//!
//! Measured on the CI machine kind (kernel 6.18, `benches/nat.rs`): see the README.

use crate::state::model::{L4Proto, PortForward};
use crate::state::types::PortRange;
use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Nla,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use std::net::{IpAddr, Ipv4Addr};

/// Flows to forget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Every flow to this address, or translated to it (an EIP's VIP).
    Address(Ipv4Addr),
    /// Flows to these ports of a VIP (a port forward).
    Ports {
        /// The VIP.
        vip: Ipv4Addr,
        /// Protocol.
        proto: L4Proto,
        /// VIP ports.
        ports: PortRange,
    },
}

impl Flush {
    /// The flows of a port forward.
    pub fn of_forward(pf: &PortForward) -> Flush {
        Flush::Ports {
            vip: pf.vip_ip,
            proto: pf.protocol,
            ports: pf.vip_ports,
        }
    }
}

/// Above this many flushes in one command, one unfiltered dump is cheaper than a filtered
/// dump per flush.
pub const FILTERED_MAX: usize = 16;

const CTA_FILTER: u16 = 25;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
const FILTER_IP_DST: u32 = 1 << 1;
const FILTER_PROTO_NUM: u32 = 1 << 3;
const FILTER_PROTO_DST_PORT: u32 = 1 << 5;
const CTA_ZONE: u16 = 18;
const NLA_F_NESTED: u16 = 0x8000;
/// Flows deleted on the calling thread; more go to a blocking thread.
const INLINE_MAX: usize = 256;
/// Delete messages per send (each ~100 bytes).
const DELETES_PER_SEND: usize = 256;
const RCVBUF: usize = 4 << 20;

/// Why flows could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The netlink socket failed.
    #[error("ctnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("ctnetlink {what}: {source}")]
    Refused {
        /// Which request.
        what: &'static str,
        /// The kernel's errno.
        source: std::io::Error,
    },
    /// The blocking task died.
    #[error("conntrack task: {0}")]
    Task(String),
}

/// A dump request: which direction's destination must be `ip`, optionally with protocol and
/// destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DumpFilter {
    reply: bool,
    ip: Ipv4Addr,
    proto: Option<L4Proto>,
    port: Option<u16>,
}

fn proto_of(p: L4Proto) -> Protocol {
    match p {
        L4Proto::Tcp => Protocol::Tcp,
        L4Proto::Udp => Protocol::Udp,
    }
}

fn u32_nla(kind: u16, v: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(8);
    b.extend_from_slice(&8u16.to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&v.to_ne_bytes());
    b
}

fn message(flags: u16, seq: u32, ct: ConntrackMessage) -> Vec<u8> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    hdr.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        hdr,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            ct,
        )),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// The dump request of `f` (the filter attribute is hand-encoded: the crate lacks it).
fn dump_request(f: Option<&DumpFilter>, seq: u32) -> Vec<u8> {
    let Some(f) = f else {
        return message(
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            ConntrackMessage::Get(vec![]),
        );
    };
    let mut tuple = vec![Tuple::Ip(vec![IPTuple::DestinationAddress(IpAddr::V4(
        f.ip,
    ))])];
    let mut flags = FILTER_IP_DST;
    if let Some(p) = f.proto {
        let mut pt = vec![ProtoTuple::Protocol(proto_of(p))];
        flags |= FILTER_PROTO_NUM;
        if let Some(port) = f.port {
            pt.push(ProtoTuple::DestinationPort(port));
            flags |= FILTER_PROTO_DST_PORT;
        }
        tuple.push(Tuple::Proto(pt));
    }
    let (tuple_attr, orig, reply) = if f.reply {
        (ConntrackAttribute::CtaTupleReply(tuple), 0, flags)
    } else {
        (ConntrackAttribute::CtaTupleOrig(tuple), flags, 0)
    };
    let mut filter = u32_nla(CTA_FILTER_ORIG_FLAGS, orig);
    filter.extend(u32_nla(CTA_FILTER_REPLY_FLAGS, reply));
    let filter_len = 4 + filter.len();
    let mut req = message(
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        ConntrackMessage::Get(vec![
            tuple_attr,
            ConntrackAttribute::Other(DefaultNla::new(CTA_FILTER, filter)),
        ]),
    );
    // The kernel parses CTA_FILTER strictly: it must carry NLA_F_NESTED, which `DefaultNla`
    // masks off. It is the last attribute: set the flag in its header.
    let at = req.len() - filter_len + 2;
    let kind = u16::from_ne_bytes([req[at], req[at + 1]]) | NLA_F_NESTED;
    req[at..at + 2].copy_from_slice(&kind.to_ne_bytes());
    req
}

/// One tracked flow: what deleting it takes, and what matching it here needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) orig: Vec<Tuple>,
    pub(super) zone: Option<DefaultNla>,
    pub(super) orig_dst: Option<Ipv4Addr>,
    pub(super) reply_dst: Option<Ipv4Addr>,
    pub(super) proto: Option<Protocol>,
    pub(super) dport: Option<u16>,
}

fn ip_dst(tuples: &[Tuple]) -> Option<Ipv4Addr> {
    tuples.iter().find_map(|t| match t {
        Tuple::Ip(ips) => ips.iter().find_map(|i| match i {
            IPTuple::DestinationAddress(IpAddr::V4(a)) => Some(*a),
            _ => None,
        }),
        _ => None,
    })
}

pub(super) fn entry(attrs: Vec<ConntrackAttribute>) -> Option<Entry> {
    let mut orig = None;
    let mut reply_dst = None;
    let mut zone = None;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
            ConntrackAttribute::CtaTupleReply(t) => reply_dst = ip_dst(&t),
            ConntrackAttribute::Other(nla) if nla.kind() & 0x3fff == CTA_ZONE => {
                zone = Some(nla);
            }
            _ => {}
        }
    }
    let orig = orig?;
    let mut proto = None;
    let mut dport = None;
    for t in &orig {
        if let Tuple::Proto(pts) = t {
            for pt in pts {
                match pt {
                    ProtoTuple::Protocol(p) => proto = Some(*p),
                    ProtoTuple::DestinationPort(d) => dport = Some(*d),
                    _ => {}
                }
            }
        }
    }
    Some(Entry {
        orig_dst: ip_dst(&orig),
        orig,
        zone,
        reply_dst,
        proto,
        dport,
    })
}

/// Whether `e` belongs to one of `flush`.
pub(super) fn matches(e: &Entry, flush: &[Flush]) -> bool {
    flush.iter().any(|f| match f {
        Flush::Address(ip) => e.orig_dst == Some(*ip) || e.reply_dst == Some(*ip),
        Flush::Ports { vip, proto, ports } => {
            e.orig_dst == Some(*vip)
                && e.proto == Some(proto_of(*proto))
                && e.dport.is_some_and(|d| d >= ports.start && d <= ports.end)
        }
    })
}

fn nl_error(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-code)
}

pub(super) struct Ct {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Ct {
    pub(super) fn open() -> Result<Ct, ConntrackError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
        sock.bind_auto().map_err(ConntrackError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(ConntrackError::Socket)?;
        // a large dump must not overrun the socket
        let _ = sock.set_rx_buf_sz(RCVBUF);
        Ok(Ct {
            sock,
            seq: 0,
            buf: vec![0; 1 << 16],
        })
    }

    /// Reads answers until `Done` (dumps) or `acks` acknowledgements; hands every flow to
    /// `each` and returns the first error other than `ENOENT`.
    fn receive(
        &mut self,
        what: &'static str,
        mut acks: usize,
        dump: bool,
        mut each: impl FnMut(Entry),
    ) -> Result<(), ConntrackError> {
        let mut first_err = None;
        loop {
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(ConntrackError::Socket)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([
                    self.buf[off],
                    self.buf[off + 1],
                    self.buf[off + 2],
                    self.buf[off + 3],
                ]) as usize;
                if len < 16 || off + len > n {
                    break;
                }
                let bytes = &self.buf[off..off + len];
                off += (len + 3) & !3;
                let msg = match NetlinkMessage::<NetfilterMessage>::deserialize(bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "undecodable ctnetlink message skipped");
                        continue;
                    }
                };
                match msg.payload {
                    NetlinkPayload::Done(_) => return first_err.map_or(Ok(()), Err),
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code
                            && code.get() != -libc_enoent()
                            && first_err.is_none()
                        {
                            first_err = Some(ConntrackError::Refused {
                                what,
                                source: nl_error(code.get()),
                            });
                        }
                        if dump {
                            return first_err.map_or(Ok(()), Err);
                        }
                        acks = acks.saturating_sub(1);
                        if acks == 0 {
                            return first_err.map_or(Ok(()), Err);
                        }
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner:
                            NetfilterMessageInner::Conntrack(
                                ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs),
                            ),
                        ..
                    }) => {
                        if let Some(e) = entry(attrs) {
                            each(e);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    pub(super) fn dump(
        &mut self,
        f: Option<&DumpFilter>,
        each: impl FnMut(Entry),
    ) -> Result<(), ConntrackError> {
        self.seq = self.seq.wrapping_add(1);
        let req = dump_request(f, self.seq);
        self.sock.send(&req, 0).map_err(ConntrackError::Socket)?;
        self.receive("dump", 0, true, each)
    }

    pub(super) fn delete(&mut self, entries: Vec<Entry>) -> Result<usize, ConntrackError> {
        let total = entries.len();
        let mut first_err = None;
        for chunk in entries.chunks(DELETES_PER_SEND) {
            let mut batch = Vec::new();
            for e in chunk {
                self.seq = self.seq.wrapping_add(1);
                let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(e.orig.clone())];
                if let Some(z) = &e.zone {
                    attrs.push(ConntrackAttribute::Other(z.clone()));
                }
                batch.extend(message(
                    NLM_F_REQUEST | NLM_F_ACK,
                    self.seq,
                    ConntrackMessage::Delete(attrs),
                ));
            }
            self.sock.send(&batch, 0).map_err(ConntrackError::Socket)?;
            if let Err(e) = self.receive("delete", chunk.len(), false, |_| {})
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(total), Err)
    }
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

/// The filtered dumps that find the flows of `f`.
fn filters(f: &Flush) -> Vec<DumpFilter> {
    match f {
        Flush::Address(ip) => vec![
            DumpFilter {
                reply: false,
                ip: *ip,
                proto: None,
                port: None,
            },
            DumpFilter {
                reply: true,
                ip: *ip,
                proto: None,
                port: None,
            },
        ],
        Flush::Ports { vip, proto, ports } => vec![DumpFilter {
            reply: false,
            ip: *vip,
            proto: Some(*proto),
            port: (ports.start == ports.end).then_some(ports.start),
        }],
    }
}

/// Finds the flows of `flush` by dumps and deletes them; returns how many were deleted.
fn run_dumps(flush: &[Flush]) -> Result<usize, ConntrackError> {
    let mut ct = Ct::open()?;
    let mut found: Vec<Entry> = Vec::new();
    if flush.len() > FILTERED_MAX {
        ct.dump(None, |e| {
            if matches(&e, flush) {
                found.push(e);
            }
        })?;
    } else {
        for f in flush {
            for filter in filters(f) {
                ct.dump(Some(&filter), |e| {
                    // the kernel filtered; check again (an older kernel may ignore a flag)
                    if matches(&e, std::slice::from_ref(f)) {
                        found.push(e);
                    }
                })?;
            }
        }
    }
    // an entry can match twice (orig and reply destination both the VIP)
    found.sort_by_key(|e| format!("{:?}", e.orig));
    found.dedup_by(|a, b| a.orig == b.orig);
    ct.delete(found)
}

/// Deletes the flows of `flush`, found in `tracker`'s index when it is in sync, else by
/// filtered dumps; returns the problems (the change itself stays applied).
#[tracing::instrument(level = "debug", skip_all, fields(flushes = flush.len()))]
pub async fn run(
    flush: &[Flush],
    tracker: Option<std::sync::Arc<super::flows::Tracker>>,
) -> Vec<String> {
    if flush.is_empty() {
        return Vec::new();
    }
    let started = std::time::Instant::now();
    let blocking = |f: Box<dyn FnOnce() -> Result<usize, ConntrackError> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ConntrackError::Task(e.to_string()))
            .and_then(|r| r)
    };
    let indexed = tracker
        .as_deref()
        .and_then(|t| t.take(flush).map(|found| (t, found)));
    let (via, outcome) = match indexed {
        // a few direct deletes: ~0.1 ms, not worth a thread
        Some((t, found)) if found.len() <= INLINE_MAX => ("index", t.delete(found)),
        Some((_, found)) => (
            "index",
            blocking(Box::new(move || Ct::open()?.delete(found))).await,
        ),
        None => {
            let owned = flush.to_vec();
            ("dumps", blocking(Box::new(move || run_dumps(&owned))).await)
        }
    };
    match outcome {
        Ok(n) => {
            tracing::debug!(
                deleted = n,
                via,
                elapsed_us = started.elapsed().as_micros() as u64,
                "conntrack entries deleted"
            );
            Vec::new()
        }
        Err(e) => vec![e.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_to(dst: &str, reply_dst: &str, proto: Protocol, dport: u16) -> Entry {
        Entry {
            orig: vec![],
            zone: None,
            orig_dst: dst.parse().ok(),
            reply_dst: reply_dst.parse().ok(),
            proto: Some(proto),
            dport: Some(dport),
        }
    }

    #[test]
    fn flows_match_by_vip_direction_protocol_and_port_range() {
        let vip: Ipv4Addr = "10.10.1.56".parse().unwrap();
        let eip = [Flush::Address(vip)];
        assert!(matches(
            &entry_to("10.10.1.56", "198.51.100.2", Protocol::Tcp, 80),
            &eip
        ));
        assert!(matches(
            &entry_to("198.51.100.2", "10.10.1.56", Protocol::Udp, 53),
            &eip
        ));
        assert!(!matches(
            &entry_to("10.10.1.57", "198.51.100.2", Protocol::Tcp, 80),
            &eip
        ));
        let pf = [Flush::Ports {
            vip,
            proto: L4Proto::Tcp,
            ports: PortRange::new(8080, 8090).unwrap(),
        }];
        assert!(matches(
            &entry_to("10.10.1.56", "172.20.0.15", Protocol::Tcp, 8085),
            &pf
        ));
        assert!(!matches(
            &entry_to("10.10.1.56", "172.20.0.15", Protocol::Tcp, 8091),
            &pf
        ));
        assert!(!matches(
            &entry_to("10.10.1.56", "172.20.0.15", Protocol::Udp, 8085),
            &pf
        ));
    }

    #[test]
    fn a_filtered_dump_request_carries_the_tuple_and_the_filter() {
        let f = DumpFilter {
            reply: true,
            ip: "10.10.1.56".parse().unwrap(),
            proto: Some(L4Proto::Udp),
            port: Some(53),
        };
        let req = dump_request(Some(&f), 7);
        // nlmsg type: NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET; flags REQUEST|DUMP
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), 1 << 8 | 1);
        assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x301);
        // the address appears big-endian, the filter flags in host order
        assert!(req.windows(4).any(|w| w == [10, 10, 1, 56]));
        let flags = FILTER_IP_DST | FILTER_PROTO_NUM | FILTER_PROTO_DST_PORT;
        assert!(req.windows(4).any(|w| w == flags.to_ne_bytes()));
        assert_eq!(
            req.len(),
            u32::from_ne_bytes([req[0], req[1], req[2], req[3]]) as usize
        );
        // the filter is last, 20 bytes, nested
        let at = req.len() - 20;
        assert_eq!(u16::from_ne_bytes([req[at], req[at + 1]]), 20);
        assert_eq!(
            u16::from_ne_bytes([req[at + 2], req[at + 3]]),
            CTA_FILTER | NLA_F_NESTED
        );
    }

    /// A UDP flow: source, port, destination, port; reply source and destination.
    type Flow = (
        &'static str,
        u16,
        &'static str,
        u16,
        &'static str,
        &'static str,
    );

    /// Creates UDP flows in the current namespace.
    fn create(flows: &[Flow]) {
        use netlink_packet_core::NLM_F_CREATE;
        let mut ct = Ct::open().expect("socket");
        let ip = |s: &str| IpAddr::V4(s.parse().unwrap());
        let tuple = |src: &str, dst: &str, sp: u16, dp: u16| {
            vec![
                Tuple::Ip(vec![
                    IPTuple::SourceAddress(ip(src)),
                    IPTuple::DestinationAddress(ip(dst)),
                ]),
                Tuple::Proto(vec![
                    ProtoTuple::Protocol(Protocol::Udp),
                    ProtoTuple::SourcePort(sp),
                    ProtoTuple::DestinationPort(dp),
                ]),
            ]
        };
        for (i, &(src, sp, dst, dp, rsrc, rdst)) in flows.iter().enumerate() {
            let req = message(
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
                i as u32,
                ConntrackMessage::New(vec![
                    ConntrackAttribute::CtaTupleOrig(tuple(src, dst, sp, dp)),
                    ConntrackAttribute::CtaTupleReply(tuple(rsrc, rdst, dp, sp)),
                    ConntrackAttribute::CtaTimeout(600),
                ]),
            );
            ct.sock.send(&req, 0).expect("send");
            ct.receive("create", 1, false, |_| {}).expect("created");
        }
    }

    fn count(ct: &mut Ct) -> usize {
        let mut n = 0;
        ct.dump(None, |_| n += 1).expect("dump");
        n
    }

    /// Runs `f` on a thread of its own in a fresh network namespace (its conntrack table is
    /// its own); threads it starts stay there.
    fn in_netns(f: impl FnOnce() + Send) {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("unshare(CLONE_NEWNET): tests run as root");
                f();
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        });
    }

    const FLOWS: &[Flow] = &[
        // inbound to the EIP 10.10.1.56 (DNAT to 172.20.0.15)
        (
            "198.51.100.2",
            40000,
            "10.10.1.56",
            80,
            "172.20.0.15",
            "198.51.100.2",
        ),
        // outbound of its guest (SNAT: replies come back to the VIP)
        (
            "172.20.0.15",
            40001,
            "198.51.100.9",
            53,
            "198.51.100.9",
            "10.10.1.56",
        ),
        // forwards of 10.10.1.57: ports 8080 and 9000
        (
            "198.51.100.2",
            40002,
            "10.10.1.57",
            8080,
            "172.20.0.16",
            "198.51.100.2",
        ),
        (
            "198.51.100.2",
            40003,
            "10.10.1.57",
            9000,
            "172.20.0.16",
            "198.51.100.2",
        ),
        // unrelated
        (
            "198.51.100.3",
            40004,
            "10.10.1.20",
            53,
            "10.10.1.20",
            "198.51.100.3",
        ),
    ];

    fn flushes() -> Vec<Flush> {
        vec![
            Flush::Address("10.10.1.56".parse().unwrap()),
            Flush::Ports {
                vip: "10.10.1.57".parse().unwrap(),
                proto: L4Proto::Udp,
                ports: PortRange::new(8000, 8999).unwrap(),
            },
        ]
    }

    #[test]
    fn filtered_dumps_delete_exactly_the_flows_of_the_flushes() {
        in_netns(|| {
            create(FLOWS);
            let mut ct = Ct::open().unwrap();
            assert_eq!(count(&mut ct), 5);
            assert_eq!(run_dumps(&flushes()).expect("deleted"), 3);
            assert_eq!(count(&mut ct), 2);
            // the table-wide path of syncs gives the same
            let many: Vec<Flush> = (0..=FILTERED_MAX)
                .map(|i| Flush::Address(Ipv4Addr::new(10, 99, 0, i as u8)))
                .chain([Flush::Address("10.10.1.57".parse().unwrap())])
                .collect();
            assert_eq!(run_dumps(&many).expect("deleted"), 1);
            assert_eq!(count(&mut ct), 1);
        });
    }

    #[test]
    fn the_event_index_finds_flows_created_just_before_the_removal() {
        in_netns(|| {
            let watched = ["10.10.1.56", "10.10.1.57"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
            // the first flow exists before the index: found by the seed dump
            create(&FLOWS[..1]);
            let t = super::super::flows::Tracker::start(watched).expect("tracker");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !t.is_synced() {
                assert!(std::time::Instant::now() < deadline, "index never seeded");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            // the rest arrive as events, immediately before the take
            create(&FLOWS[1..]);
            let found = t.take(&flushes()).expect("in sync");
            assert_eq!(found.len(), 3, "{found:?}");
            assert_eq!(t.delete(found).expect("deleted"), 3);
            let mut ct = Ct::open().unwrap();
            assert_eq!(count(&mut ct), 2);
            // taken flows are gone from the index; a second take finds nothing
            assert_eq!(t.take(&flushes()).expect("in sync").len(), 0);
        });
    }
}
