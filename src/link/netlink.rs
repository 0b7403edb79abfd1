//! A thin rtnetlink wrapper: links by MAC, IPv4 addresses, MTU, up, rename, the default
//! route. Netlink messages stay in here; callers see [`Link`], [`Addr`] and [`NetlinkError`].

use crate::state::types::MacAddr;
use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};

/// A netlink request the kernel refused, with what was asked.
#[derive(Debug, thiserror::Error)]
#[error("{op}")]
pub struct NetlinkError {
    /// What was being done, e.g. `adding 10.0.0.5/24 to eth1`.
    pub op: String,
    /// The kernel's answer (its errno) or the transport failure.
    #[source]
    pub source: std::io::Error,
}

impl NetlinkError {
    fn new(op: impl Into<String>, e: rtnetlink::Error) -> Self {
        let source = match e {
            rtnetlink::Error::NetlinkError(m) => m.to_io(),
            other => std::io::Error::other(other),
        };
        NetlinkError {
            op: op.into(),
            source,
        }
    }

    /// The errno, when the kernel answered with one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// A network interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address, if it is a 6-byte one.
    pub mac: Option<MacAddr>,
    /// Current MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// `promote_secondaries` is on (from the link's inet device settings).
    pub promotes_secondaries: bool,
}

/// An IPv4 address on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The kernel marks it secondary (another address of its subnet is primary).
    pub secondary: bool,
}

/// An open rtnetlink connection (its socket lives in the namespace that opened it).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    driver: std::sync::Arc<tokio::task::JoinHandle<()>>,
    port: u32,
}

impl Netlink {
    /// Opens a connection and spawns its driver on the current tokio runtime.
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let (mut conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetlinkError {
            op: "opening a netlink socket".into(),
            source,
        })?;
        // Changes this socket asks for come back as notifications with its port id: they are
        // ours, not drift. The kernel assigns the port at bind (or at the first send, too late
        // to record it here), so bind now.
        use rtnetlink::sys::AsyncSocket;
        let port = conn
            .socket_mut()
            .socket_mut()
            .bind_auto()
            .map(|addr| addr.port_number())
            .unwrap_or(0);
        if port == 0 {
            tracing::warn!(
                "no port id for the netlink socket; its own changes will look like drift"
            );
        } else {
            crate::drift::own::record_port(port);
        }
        let driver = std::sync::Arc::new(tokio::spawn(conn));
        Ok(Netlink {
            handle,
            driver,
            port,
        })
    }

    /// The port id of the socket (0 if unknown): notifications of changes it asked for carry it.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// False once the connection's driver task has ended (every request would then fail).
    pub fn is_alive(&self) -> bool {
        !self.driver.is_finished()
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new("listing links", e))?;
        Ok(msgs.into_iter().map(link_of).collect())
    }

    /// The IPv4 addresses of link `index`.
    pub async fn addrs(&self, index: u32) -> Result<Vec<Addr>, NetlinkError> {
        let mut req = self.handle.address().get().set_link_index_filter(index);
        req.message_mut().header.family = AddressFamily::Inet;
        let msgs: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new(format!("listing addresses of link {index}"), e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(addr_of)
            .collect())
    }

    /// Adds `ip/prefix` to `link`; an existing identical address is fine.
    pub async fn add_addr(
        &self,
        link: &Link,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(link.index, IpAddr::V4(ip), prefix)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("adding {ip}/{prefix} to {}", link.name), e))
    }

    /// Removes exactly `ip/prefix` from `link`. Returns false if it was not there.
    pub async fn del_addr(
        &self,
        link: &Link,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<bool, NetlinkError> {
        let msg = del_addr_message(link.index, ip, prefix);
        if !names_address(&msg, ip) {
            // Without IFA_LOCAL the kernel deletes the nic's first address of the family.
            return Err(NetlinkError {
                op: format!("removing {ip}/{prefix} from {}", link.name),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the request would not name the address; not sent",
                ),
            });
        }
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let err =
                    NetlinkError::new(format!("removing {ip}/{prefix} from {}", link.name), e);
                if err.errno() == Some(nix::libc::EADDRNOTAVAIL)
                    || err.errno() == Some(nix::libc::ENOENT)
                {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Sets `promote_secondaries` on `link`, so removing a subnet's primary address promotes
    /// the next one instead of removing every address of that subnet with it.
    pub async fn promote_secondaries(&self, link: &Link) -> Result<(), NetlinkError> {
        // The kernel announces this change with port id 0 (netdev_state_change), not ours:
        // setting it again at every verify would read as drift and verify again, forever.
        if link.promotes_secondaries {
            return Ok(());
        }
        let mut conf = InetDevConf::default();
        conf.promote_secondaries = 1;
        let msg = LinkUnspec::new_with_index(link.index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]))
            .build();
        self.set(msg, format!("setting promote_secondaries on {}", link.name))
            .await
    }

    /// Sets the MTU of `link`.
    pub async fn set_mtu(&self, link: &Link, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
        self.set(msg, format!("setting MTU {mtu} on {}", link.name))
            .await
    }

    /// Brings `link` up.
    pub async fn set_up(&self, link: &Link) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index).up().build();
        self.set(msg, format!("bringing {} up", link.name)).await
    }

    /// Takes `link` down.
    pub async fn set_down(&self, link: &Link) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index).down().build();
        self.set(msg, format!("taking {} down", link.name)).await
    }

    /// Renames `link` to `name` (the link must be down).
    pub async fn rename(&self, link: &Link, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index)
            .name(name.to_string())
            .build();
        self.set(msg, format!("renaming {} to {name}", link.name))
            .await
    }

    async fn set(&self, msg: LinkMessage, op: String) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::new(op, e))
    }

    /// The IPv4 default routes of the main table: `(gateway, output link index)`.
    pub async fn default_routes(
        &self,
    ) -> Result<Vec<(Option<Ipv4Addr>, Option<u32>)>, NetlinkError> {
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new("listing routes", e))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.table == RouteHeader::RT_TABLE_MAIN
                    && m.header.destination_prefix_length == 0
                    && m.header.address_family == AddressFamily::Inet
            })
            .map(|m| {
                let mut gw = None;
                let mut oif = None;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                (gw, oif)
            })
            .collect())
    }

    /// Makes the default route go via `gateway` on `link` (replacing any other).
    pub async fn replace_default_route(
        &self,
        link: &Link,
        gateway: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(link.index)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                NetlinkError::new(
                    format!("setting the default route via {gateway} on {}", link.name),
                    e,
                )
            })
    }
}

/// A link as a dump or notification gives it.
pub(crate) fn link_of(m: LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: m.header.flags.contains(LinkFlags::Up),
        promotes_secondaries: false,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(b) => {
                if let Ok(mac) = <[u8; 6]>::try_from(b.as_slice())
                    && mac != [0; 6]
                {
                    link.mac = Some(MacAddr(mac));
                }
            }
            LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
            LinkAttribute::AfSpecUnspec(specs) => {
                for spec in specs {
                    if let AfSpecUnspec::Inet(inet) = spec {
                        for conf in inet {
                            if let AfSpecInet::DevConf(c) = conf {
                                link.promotes_secondaries = c.promote_secondaries != 0;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn addr_of(m: &AddressMessage) -> Option<Addr> {
    let ip = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    })?;
    Some(Addr {
        ip,
        prefix: m.header.prefix_len,
        secondary: m.header.flags.contains(AddressHeaderFlags::Secondary),
    })
}

/// The request removing exactly `ip/prefix` from link `index`. It always carries the address
/// as IFA_LOCAL and IFA_ADDRESS: rtnetlink's builder leaves both out for a multicast address,
/// and the kernel then removes the link's first IPv4 address instead.
pub fn del_addr_message(index: u32, ip: Ipv4Addr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessageBuilder::<Ipv4Addr>::new()
        .index(index)
        .address(ip, prefix)
        .build();
    msg.header.prefix_len = prefix;
    msg.attributes.retain(|a| {
        !matches!(
            a,
            AddressAttribute::Local(_)
                | AddressAttribute::Address(_)
                | AddressAttribute::Multicast(_)
        )
    });
    msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(ip)));
    msg
}

/// True if `msg` names `ip` both as IFA_LOCAL and IFA_ADDRESS.
pub fn names_address(msg: &AddressMessage, ip: Ipv4Addr) -> bool {
    let has = |want: fn(&AddressAttribute) -> Option<IpAddr>| {
        msg.attributes
            .iter()
            .filter_map(want)
            .any(|a| a == IpAddr::V4(ip))
    };
    has(|a| match a {
        AddressAttribute::Local(x) => Some(*x),
        _ => None,
    }) && has(|a| match a {
        AddressAttribute::Address(x) => Some(*x),
        _ => None,
    })
}

#[cfg(test)]
mod del_tests {
    use super::*;

    #[test]
    fn an_address_delete_always_names_the_address() {
        for ip in ["224.0.0.5", "10.0.0.5", "255.255.255.255", "0.0.0.0"] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            let msg = del_addr_message(7, ip, 24);
            assert!(names_address(&msg, ip), "{ip}: {msg:?}");
            assert_eq!(msg.header.index, 7);
            assert_eq!(msg.header.prefix_len, 24);
        }
        let bare = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(7)
            .address("224.0.0.5".parse().unwrap(), 24)
            .build();
        assert!(!names_address(&bare, "224.0.0.5".parse().unwrap()));
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[tokio::test]
    async fn the_sockets_port_is_known_and_counts_as_ours() {
        let nl = Netlink::connect().expect("netlink socket");
        assert_ne!(nl.port(), 0);
        assert!(crate::drift::own::is_our_port(nl.port()));
        // and the socket still works after the early bind
        assert!(!nl.links().await.expect("links").is_empty());
    }
}
