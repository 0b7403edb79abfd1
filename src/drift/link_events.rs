//! Link and IPv4 address notifications (`RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR`). A notification
//! carries the port id of the socket that asked for the change; those of our own rtnetlink
//! sockets are not drift. Anything else (a person's `ip`, a nic unplugged or re-created) asks
//! for a verify of the interfaces, which repairs and reports only real differences.

use super::Signal;
use super::own;
use futures::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use std::io;
use tokio::sync::mpsc::UnboundedSender;

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;

/// Starts the listener on the current runtime.
pub fn spawn(tx: UnboundedSender<Signal>) -> io::Result<()> {
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection()?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        while let Some((msg, _from)) = messages.next().await {
            if own::is_our_port(msg.header.port_number) {
                continue;
            }
            let what = match &msg.payload {
                NetlinkPayload::InnerMessage(m) => describe(m),
                _ => None,
            };
            if let Some(what) = what
                && tx.send(Signal::Links(what)).is_err()
            {
                return;
            }
        }
        tracing::warn!("link notifications stopped");
    });
    Ok(())
}

fn link_name(attrs: &[LinkAttribute]) -> String {
    attrs
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "?".into())
}

fn describe(m: &RouteNetlinkMessage) -> Option<String> {
    Some(match m {
        RouteNetlinkMessage::NewLink(l) => format!("link {} changed", link_name(&l.attributes)),
        RouteNetlinkMessage::DelLink(l) => format!("link {} removed", link_name(&l.attributes)),
        RouteNetlinkMessage::NewAddress(a) => {
            format!("address added on link #{}", a.header.index)
        }
        RouteNetlinkMessage::DelAddress(a) => {
            format!("address removed from link #{}", a.header.index)
        }
        _ => return None,
    })
}
