//! Element updates over nfnetlink, without an `nft` process: one batch (one transaction) of
//! NEWSETELEM/DELSETELEM messages on a NETLINK_NETFILTER socket. Used for the single-entry
//! commands, whose plans are element changes only; everything else goes through `nft`.
//!
//! Encoding (pure, see [`batch`]): each key or value field is padded to 4 bytes in a
//! concatenation (addresses big-endian, ports big-endian in the first two bytes, protocol in
//! the first byte, interface names 16 bytes, marks in host order); sets with ranges carry
//! `KEY_END` as well.

use super::model::{Elem, Field, NatError};
use crate::state::model::L4Proto;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use std::os::fd::{AsRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
/// Elements per message: keeps each message (and the kernel's echo of a refused one) small.
const PER_MESSAGE: usize = 256;
/// Receive buffer for acknowledgements.
const RCVBUF: usize = 1 << 20;

/// Sets whose elements are ranges (concatenations with `flags interval`).
fn ranged(table: &str, set: &str) -> bool {
    super::sets::find(table, set).is_some_and(|s| s.interval)
}

fn field_bytes(f: &Field, end: bool, out: &mut Vec<u8>) {
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
            let mut name = [0u8; 16];
            for (slot, b) in name.iter_mut().zip(n.bytes().take(15)) {
                *slot = b;
            }
            out.extend_from_slice(&name);
        }
        Field::Net(c) => {
            let net = u32::from(c.network().addr);
            let host = if c.prefix.len() == 32 {
                0
            } else {
                u32::MAX >> c.prefix.len()
            };
            let v = if end { net | host } else { net };
            out.extend_from_slice(&v.to_be_bytes());
        }
        Field::Mark(m) => out.extend_from_slice(&m.to_ne_bytes()),
    }
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
}

fn fields_bytes(fields: &[Field], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        field_bytes(f, end, &mut out);
    }
    out
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn nested(kind: u16, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    attr(&mut out, kind | NLA_F_NESTED, inner);
    out
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: &[u8],
) {
    let len = 16 + 4 + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(body);
}

fn elements_message(op: Op, group: &[&Elem]) -> (u16, u8, Vec<u8>) {
    let first = group[0];
    let (family, table) = family_and_name(first.table);
    let mut list = Vec::new();
    for e in group {
        let mut el = Vec::new();
        let mut key = Vec::new();
        attr(&mut key, NFTA_DATA_VALUE, &fields_bytes(&e.key, false));
        el.extend(nested(NFTA_SET_ELEM_KEY, &key));
        if ranged(e.table, e.set) {
            let mut key_end = Vec::new();
            attr(&mut key_end, NFTA_DATA_VALUE, &fields_bytes(&e.key, true));
            el.extend(nested(NFTA_SET_ELEM_KEY_END, &key_end));
        }
        if let (Op::Add, Some(v)) = (op, &e.value) {
            let mut data = Vec::new();
            attr(&mut data, NFTA_DATA_VALUE, &fields_bytes(v, false));
            el.extend(nested(NFTA_SET_ELEM_DATA, &data));
        }
        list.extend(nested(NFTA_LIST_ELEM, &el));
    }
    let mut body = Vec::new();
    attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
    attr(&mut body, NFTA_SET_ELEM_LIST_SET, &cstr(first.set));
    body.extend(nested(NFTA_SET_ELEM_LIST_ELEMENTS, &list));
    let kind = match op {
        Op::Add => NFT_MSG_NEWSETELEM,
        Op::Delete => NFT_MSG_DELSETELEM,
    };
    ((NFNL_SUBSYS_NFTABLES << 8) | kind, family, body)
}

/// `inet vr_filter` -> (NFPROTO_INET, "vr_filter").
fn family_and_name(table: &str) -> (u8, &str) {
    match table.split_once(' ') {
        Some(("inet", t)) => (NFPROTO_INET, t),
        Some((_, t)) => (NFPROTO_IPV4, t),
        None => (NFPROTO_IPV4, table),
    }
}

/// Add or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Delete,
}

/// One batch: deletes, then adds, each run of elements of one set in one message. Returns the
/// bytes and the sequence numbers that expect an acknowledgement.
pub fn batch(
    flush: &[(&str, &str)],
    deletes: &[Elem],
    adds: &[Elem],
    first_seq: u32,
) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::new();
    let mut acked = Vec::new();
    let mut seq = first_seq;
    let res = NFNL_SUBSYS_NFTABLES;
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        res,
        &[],
    );
    for (table, set) in flush {
        // DELSETELEM without an element list empties the set
        let (family, name) = family_and_name(table);
        let mut body = Vec::new();
        attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, &cstr(name));
        attr(&mut body, NFTA_SET_ELEM_LIST_SET, &cstr(set));
        seq = seq.wrapping_add(1);
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM;
        message(
            &mut out,
            kind,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
            0,
            &body,
        );
        acked.push(seq);
    }
    for (op, elems) in [(Op::Delete, deletes), (Op::Add, adds)] {
        let mut i = 0;
        while i < elems.len() {
            let mut j = i + 1;
            while j < elems.len()
                && j - i < PER_MESSAGE
                && elems[j].table == elems[i].table
                && elems[j].set == elems[i].set
            {
                j += 1;
            }
            let group: Vec<&Elem> = elems[i..j].iter().collect();
            let (kind, family, body) = elements_message(op, &group);
            seq = seq.wrapping_add(1);
            let create = if op == Op::Add { NLM_F_CREATE } else { 0 };
            message(
                &mut out,
                kind,
                NLM_F_REQUEST | NLM_F_ACK | create,
                seq,
                family,
                0,
                &body,
            );
            acked.push(seq);
            i = j;
        }
    }
    seq = seq.wrapping_add(1);
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        res,
        &[],
    );
    (out, acked)
}

/// A NETLINK_NETFILTER socket, opened once and kept.
pub struct Nfnl {
    fd: OwnedFd,
    seq: u32,
}

fn sys(what: &str, e: nix::Error) -> NatError {
    NatError::System(format!("nfnetlink {what}: {e}"))
}

impl Nfnl {
    /// Opens the socket in the current network namespace.
    pub fn open() -> Result<Nfnl, NatError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| sys("socket", e))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| sys("bind", e))?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(5, 0))
            .map_err(|e| sys("timeout", e))?;
        // best effort: the defaults still work for small batches
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF);
        Ok(Nfnl { fd, seq: 1 })
    }

    /// Applies the element changes as one transaction; the error carries the kernel's reason.
    pub fn apply(
        &mut self,
        flush: &[(&str, &str)],
        deletes: &[Elem],
        adds: &[Elem],
    ) -> Result<(), NatError> {
        if flush.is_empty() && deletes.is_empty() && adds.is_empty() {
            return Ok(());
        }
        let (bytes, mut waiting) = batch(flush, deletes, adds, self.seq);
        self.seq = self.seq.wrapping_add(waiting.len() as u32 + 2);
        // One batch is one datagram: the send buffer must hold all of it.
        if bytes.len() > 100_000 {
            setsockopt(&self.fd, sockopt::SndBufForce, &(bytes.len() + 65536))
                .map_err(|e| sys("send buffer", e))?;
        }
        sendto(
            self.fd.as_raw_fd(),
            &bytes,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|e| sys("send", e))?;
        let mut buf = vec![0u8; 65536];
        let mut failure: Option<String> = None;
        while !waiting.is_empty() {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|e| sys("receive", e))?;
            let mut off = 0;
            while off + 16 <= n {
                let word =
                    |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
                let len = word(off) as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let seq = word(off + 8);
                if len < 16 || off + len > n {
                    break;
                }
                if kind == NLMSG_ERROR && len >= 20 {
                    let code = i32::from_ne_bytes([
                        buf[off + 16],
                        buf[off + 17],
                        buf[off + 18],
                        buf[off + 19],
                    ]);
                    waiting.retain(|s| *s != seq);
                    if code != 0 && failure.is_none() {
                        let errno = nix::errno::Errno::from_raw(-code);
                        failure = Some(describe(seq, errno, deletes, adds));
                    }
                }
                off += (len + 3) & !3;
            }
        }
        match failure {
            None => Ok(()),
            Some(f) => Err(NatError::Nft(f)),
        }
    }
}

fn describe(_seq: u32, errno: nix::errno::Errno, deletes: &[Elem], adds: &[Elem]) -> String {
    let what = match errno {
        nix::errno::Errno::EEXIST => "an element exists with another value",
        nix::errno::Errno::ENOENT => "an element or set to change is missing",
        _ => "the kernel refused the element update",
    };
    format!(
        "{what} ({}) in a transaction of {} deletes and {} adds",
        errno.desc(),
        deletes.len(),
        adds.len()
    )
}
