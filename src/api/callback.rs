//! Posting a reply to the management node's `callbackurl`: retried every second on connection
//! errors for up to a minute; any HTTP answer ends it (404 means the node gave up).

use crate::state::types::Cidr;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Uri};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// Where to post the reply.
#[derive(Debug, Clone)]
pub struct CallbackTarget {
    uri: Uri,
    authority: String,
    ip: IpAddr,
    port: u16,
}

/// At most this many characters of a refused URL are quoted in replies and logs.
const QUOTE_MAX: usize = 100;

/// Quotes `s` for a message, cut to [`QUOTE_MAX`] characters.
pub fn quote(s: &str) -> String {
    if s.chars().count() <= QUOTE_MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(QUOTE_MAX).collect();
        format!("{cut:?}... ({} bytes)", s.len())
    }
}

/// Why a `callbackurl` is refused. Every message names the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackRefused {
    /// Not a URL at all.
    #[error("callbackurl {0} is not a URL")]
    NotUrl(String),
    /// Another scheme than http.
    #[error("callbackurl {0} is not an http:// URL")]
    Scheme(String),
    /// No host, or user info before it.
    #[error("callbackurl {0} has no plain host")]
    Host(String),
    /// A host name: names are not resolved.
    #[error("callbackurl {0}: host names are not resolved; give the management node's IP address")]
    Name(String),
    /// A decimal, hex or octal integer form of an address.
    #[error("callbackurl {0}: only dotted-decimal IPv4 addresses (or [IPv6]) are accepted")]
    NumericForm(String),
    /// An address no callback may go to.
    #[error("callbackurl {url}: {ip} is {what}")]
    Forbidden {
        /// The URL, quoted.
        url: String,
        /// The address.
        ip: IpAddr,
        /// What the address is.
        what: &'static str,
    },
    /// Neither the sender nor on the management subnet nor allowed by `--callback-allow`.
    #[error(
        "callbackurl {url}: {ip} is neither the sender ({peer}) nor on the management nic's \
         subnet ({subnets}); see --callback-allow"
    )]
    NotAllowed {
        /// The URL, quoted.
        url: String,
        /// The address.
        ip: IpAddr,
        /// The command's sender.
        peer: IpAddr,
        /// The management subnets known.
        subnets: String,
    },
}

/// Which addresses a callback may go to: the sender of the command, an address on the
/// management nic's subnet, or one in `--callback-allow`; never the router itself, loopback
/// (unless the sender is local), link-local, multicast or broadcast addresses.
///
/// The management subnets come from the management nic (`--mgmt-nic`) as the kernel shows
/// it and from the cached bootstrap info; they are read again (at most once a second) when
/// an address is not found in them, so a re-addressed nic is followed without a dump per
/// command.
pub struct CallbackPolicy {
    allow: Vec<Cidr>,
    mgmt_nic: String,
    bootstrap_cache: Option<std::path::PathBuf>,
    view: Mutex<MgmtView>,
}

#[derive(Default)]
struct MgmtView {
    subnets: Vec<Cidr>,
    read_at: Option<std::time::Instant>,
}

impl CallbackPolicy {
    /// A policy for this management nic, extra allowed prefixes and bootstrap cache file.
    pub fn new(
        mgmt_nic: String,
        allow: Vec<Cidr>,
        bootstrap_cache: Option<std::path::PathBuf>,
    ) -> CallbackPolicy {
        CallbackPolicy {
            allow,
            mgmt_nic,
            bootstrap_cache,
            view: Mutex::new(MgmtView::default()),
        }
    }

    fn read_subnets(&self) -> Vec<Cidr> {
        let mut out = Vec::new();
        match crate::link::view::current() {
            Ok(system) => out.extend(
                system
                    .interfaces_of(&[], &[self.mgmt_nic.as_str()])
                    .into_iter()
                    .flat_map(|i| i.addrs),
            ),
            Err(e) => tracing::warn!(error = %e, "cannot list the nics"),
        }
        if let Some(path) = &self.bootstrap_cache {
            match crate::bootstrap::info::BootstrapInfo::load_cached(path) {
                Ok(Some(info)) => {
                    if let Some(m) = info.nics.first() {
                        out.push(Cidr::new(m.ip, m.prefix));
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "no bootstrap info for the callback rule"),
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn in_mgmt_subnet(&self, ip: Ipv4Addr) -> (bool, Vec<Cidr>) {
        let hit = |subnets: &[Cidr]| {
            subnets.iter().any(|c| {
                let net = c.network();
                let bcast = Ipv4Addr::from(u32::from(net.addr) | !u32::from(c.prefix.netmask()));
                c.contains(ip) && (c.prefix.len() >= 31 || (ip != net.addr && ip != bcast))
            })
        };
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        if hit(&view.subnets) {
            return (true, view.subnets.clone());
        }
        let stale = view
            .read_at
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if stale {
            view.subnets = self.read_subnets();
            view.read_at = Some(std::time::Instant::now());
        }
        (hit(&view.subnets), view.subnets.clone())
    }

    /// Checks `url` for a command that arrived from `peer`.
    pub fn check(&self, url: &str, peer: IpAddr) -> Result<CallbackTarget, CallbackRefused> {
        let q = quote(url);
        let (target, ip) = CallbackTarget::parse(url)?;
        let peer = canonical(peer);
        let forbidden = |what| CallbackRefused::Forbidden {
            url: q.clone(),
            ip,
            what,
        };
        if ip.is_unspecified() {
            return Err(forbidden("the unspecified address"));
        }
        if ip.is_multicast() {
            return Err(forbidden("a multicast address"));
        }
        let v4 = match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        };
        if v4.is_some_and(|a| a.is_broadcast()) {
            return Err(forbidden("the broadcast address"));
        }
        if v4.is_some_and(|a| a.is_link_local())
            || matches!(ip, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
        {
            return Err(forbidden("a link-local address"));
        }
        // The sender may always have its answer: a local sender reaches loopback anyway.
        if ip == peer {
            return Ok(target);
        }
        if ip.is_loopback() {
            return Err(forbidden("a loopback address"));
        }
        if is_local(ip) {
            return Err(forbidden("an address of this router"));
        }
        let Some(v4) = v4 else {
            return Err(CallbackRefused::NotAllowed {
                url: q,
                ip,
                peer,
                subnets: String::from("IPv6 is accepted only from the sender"),
            });
        };
        if self.allow.iter().any(|c| c.contains(v4)) {
            return Ok(target);
        }
        let (hit, subnets) = self.in_mgmt_subnet(v4);
        if hit {
            return Ok(target);
        }
        let subnets = if subnets.is_empty() {
            format!("none known on {}", self.mgmt_nic)
        } else {
            subnets
                .iter()
                .map(|c| c.network().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(CallbackRefused::NotAllowed {
            url: q,
            ip,
            peer,
            subnets,
        })
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// True if `ip` is an address of this router (of the agent's network namespace): binding a
/// socket to it succeeds. One syscall pair, no address dump.
fn is_local(ip: IpAddr) -> bool {
    match std::net::UdpSocket::bind(std::net::SocketAddr::new(ip, 0)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrNotAvailable,
    }
}

impl CallbackTarget {
    /// Parses a `callbackurl` header: `http://host[:port]/path` where host is a dotted-quad
    /// IPv4 address or a bracketed IPv6 address. Names and numeric forms are refused.
    pub fn parse(url: &str) -> Result<(CallbackTarget, IpAddr), CallbackRefused> {
        let q = quote(url);
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|_| CallbackRefused::NotUrl(q.clone()))?;
        if !uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("http"))
        {
            return Err(CallbackRefused::Scheme(q));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| CallbackRefused::Host(q.clone()))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(CallbackRefused::Host(q));
        }
        let raw = authority.host();
        let ip: IpAddr = if let Some(inner) = raw.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| CallbackRefused::Host(q.clone()))?;
            canonical(IpAddr::V6(
                inner
                    .parse::<Ipv6Addr>()
                    .map_err(|_| CallbackRefused::Host(q.clone()))?,
            ))
        } else if raw.is_empty() {
            return Err(CallbackRefused::Host(q));
        } else if let Ok(v4) = raw.parse::<Ipv4Addr>() {
            // Rust's parser takes exactly four decimal parts without leading zeros
            IpAddr::V4(v4)
        } else if raw
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'x' || b == b'X')
            && raw.bytes().next().is_some_and(|b| b.is_ascii_digit())
        {
            return Err(CallbackRefused::NumericForm(q));
        } else {
            return Err(CallbackRefused::Name(q));
        };
        let port = authority.port_u16().unwrap_or(80);
        Ok((
            CallbackTarget {
                authority: authority.to_string(),
                uri,
                ip,
                port,
            },
            ip,
        ))
    }
}

/// How a callback ended.
#[derive(Debug)]
pub enum Delivery {
    /// The node answered with this status.
    Answered(u16),
    /// No connection could be made (or kept) within the retry window.
    GaveUp(String),
}

/// Posts `body` with the `taskuuid` header, retrying connection errors until `retry_for`.
pub async fn post(
    target: &CallbackTarget,
    task_uuid: &str,
    body: Vec<u8>,
    retry_for: Duration,
    metrics: &crate::metrics::Metrics,
) -> Delivery {
    let deadline = Instant::now() + retry_for;
    let body = Bytes::from(body);
    let headers = [("taskuuid", task_uuid)];
    loop {
        match try_once(target, &headers, body.clone()).await {
            Ok(status) => return Delivery::Answered(status),
            Err(e) => {
                if Instant::now() + Duration::from_secs(1) > deadline {
                    return Delivery::GaveUp(e);
                }
                tracing::debug!(error = %e, "callback failed, retrying in 1 s");
                metrics.callback_retried();
                sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Posts `body` with `headers` once a second until an HTTP answer, while `still_wanted()`
/// says so and for at most `retry_for` (a notification the agent sends on its own, such as an
/// HA transition).
pub async fn post_with(
    target: &CallbackTarget,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    retry_for: Duration,
    still_wanted: impl Fn() -> bool,
) -> Delivery {
    let deadline = Instant::now() + retry_for;
    let body = Bytes::from(body);
    loop {
        if !still_wanted() {
            return Delivery::GaveUp("superseded".into());
        }
        match try_once(target, headers, body.clone()).await {
            Ok(status) => return Delivery::Answered(status),
            Err(e) => {
                if Instant::now() + Duration::from_secs(1) > deadline {
                    return Delivery::GaveUp(e);
                }
                sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn try_once(
    target: &CallbackTarget,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<u16, String> {
    let stream = timeout(
        Duration::from_secs(10),
        TcpStream::connect(std::net::SocketAddr::new(target.ip, target.port)),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let path = target
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut req = Request::post(path)
        .header(hyper::header::HOST, &target.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::CONTENT_LENGTH, body.len())
        .header(hyper::header::CONNECTION, "close");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let result = timeout(Duration::from_secs(120), sender.send_request(req)).await;
    conn.abort();
    match result {
        Err(_) => Err("no answer within 120 s".into()),
        Ok(Err(e)) => Err(format!("send: {e}")),
        Ok(Ok(resp)) => Ok(resp.status().as_u16()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> CallbackPolicy {
        CallbackPolicy::new(
            "vr-no-such-nic".into(),
            allow.iter().map(|c| c.parse().unwrap()).collect(),
            None,
        )
    }

    fn peer() -> IpAddr {
        "192.0.2.10".parse().unwrap()
    }

    #[test]
    fn the_sender_is_always_a_target() {
        let p = policy(&[]);
        assert!(
            p.check("http://192.0.2.10:8080/zstack/asyncrest/callback", peer())
                .is_ok()
        );
        assert!(p.check("HTTP://192.0.2.10/cb", peer()).is_ok());
        // a local sender may have its answer on loopback
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(p.check("http://127.0.0.1:1/cb", lo).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.10".parse().unwrap();
        assert!(p.check("http://192.0.2.10/cb", mapped).is_ok());
    }

    #[test]
    fn bad_forms_are_refused_naming_the_header() {
        let p = policy(&["0.0.0.0/0"]);
        let cases: &[(&str, &str)] = &[
            ("https://192.0.2.10/cb", "is not an http:// URL"),
            ("ftp://192.0.2.10/cb", "is not an http:// URL"),
            ("file:///etc/passwd", "is not a URL"),
            ("192.0.2.10:8080/cb", "is not a URL"),
            ("not a url", "is not a URL"),
            ("http://user@192.0.2.10/cb", "has no plain host"),
            ("http://localhost:8080/cb", "host names are not resolved"),
            ("http://mn.example.com/cb", "host names are not resolved"),
            ("http://2130706433/cb", "only dotted-decimal"),
            ("http://0x7f000001/cb", "only dotted-decimal"),
            ("http://017700000001/cb", "only dotted-decimal"),
            ("http://0177.0.0.1/cb", "only dotted-decimal"),
            ("http://127.1/cb", "only dotted-decimal"),
            ("http://127.0.0.1:7272/cb", "is a loopback address"),
            ("http://127.9.9.9/cb", "is a loopback address"),
            ("http://[::1]:8080/cb", "is a loopback address"),
            ("http://[::ffff:127.0.0.1]/cb", "is a loopback address"),
            ("http://0.0.0.0/cb", "the unspecified address"),
            ("http://[::]/cb", "the unspecified address"),
            ("http://255.255.255.255/cb", "the broadcast address"),
            ("http://224.0.0.1/cb", "a multicast address"),
            ("http://169.254.169.254/latest", "a link-local address"),
            ("http://[fe80::1]/cb", "a link-local address"),
        ];
        for (url, needle) in cases {
            let e = p.check(url, peer()).expect_err(url).to_string();
            assert!(e.starts_with("callbackurl "), "{url}: {e}");
            assert!(e.contains(needle), "{url}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn other_hosts_need_the_management_subnet_or_the_allow_list() {
        let p = policy(&[]);
        let e = p
            .check("http://8.8.8.8/cb", peer())
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither the sender (192.0.2.10)"), "{e}");
        assert!(e.contains("none known on vr-no-such-nic"), "{e}");
        let p = policy(&["198.51.100.0/24"]);
        assert!(p.check("http://198.51.100.7:8080/cb", peer()).is_ok());
        assert!(p.check("http://198.51.101.7:8080/cb", peer()).is_err());
        // the router's own addresses never, even when allowed
        let p = policy(&["127.0.0.0/8"]);
        assert!(p.check("http://127.0.0.1/cb", peer()).is_err());
    }

    #[test]
    fn long_urls_are_quoted_short() {
        let long = format!("gopher://{}", "a".repeat(100_000));
        let e = policy(&[]).check(&long, peer()).unwrap_err().to_string();
        assert!(e.len() < 200, "{} bytes", e.len());
        assert!(e.contains("(100009 bytes)"), "{e}");
    }
}
