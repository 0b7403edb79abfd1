//! Deleting conntrack entries of removed or remapped EIPs and port forwards, so no flow keeps
//! a stale translation (NAT is decided on a flow's first packet). Runs `conntrack`.

use crate::state::model::{L4Proto, PortForward};
use crate::state::types::PortRange;
use std::net::Ipv4Addr;
use tokio::process::Command;

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

async fn conntrack(args: &[String]) -> Result<String, String> {
    let out = Command::new("conntrack")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run conntrack: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // conntrack exits 1 when nothing matched; that is not a failure here.
    if out.status.success() || stderr.contains(" 0 flow entries") {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("conntrack {}: {}", args.join(" "), stderr.trim()))
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// An original-direction tuple from a `conntrack -L` line.
fn original_tuple(line: &str) -> Option<(Ipv4Addr, Ipv4Addr, u16, u16)> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|t| t.strip_prefix(name))
            .map(str::to_string)
    };
    Some((
        field("src=")?.parse().ok()?,
        field("dst=")?.parse().ok()?,
        field("sport=")?.parse().ok()?,
        field("dport=")?.parse().ok()?,
    ))
}

/// Deletes the flows of `flush`; returns the problems (the change itself stays applied).
pub async fn run(flush: &[Flush]) -> Vec<String> {
    let mut problems = Vec::new();
    for f in flush {
        match f {
            Flush::Address(ip) => {
                let ip = ip.to_string();
                for dir in ["--orig-dst", "--reply-dst"] {
                    if let Err(e) = conntrack(&args(&["-D", dir, &ip])).await {
                        problems.push(e);
                    }
                }
            }
            Flush::Ports { vip, proto, ports } => {
                let (vip, p) = (vip.to_string(), proto.name());
                if ports.start == ports.end {
                    let port = ports.start.to_string();
                    if let Err(e) = conntrack(&args(&[
                        "-D",
                        "-p",
                        p,
                        "--orig-dst",
                        &vip,
                        "--dport",
                        &port,
                    ]))
                    .await
                    {
                        problems.push(e);
                    }
                    continue;
                }
                let listed = match conntrack(&args(&["-L", "-p", p, "--orig-dst", &vip])).await {
                    Ok(l) => l,
                    Err(e) => {
                        problems.push(e);
                        continue;
                    }
                };
                for (src, dst, sport, dport) in listed.lines().filter_map(original_tuple) {
                    if dport < ports.start || dport > ports.end {
                        continue;
                    }
                    let a = [
                        "-D".to_string(),
                        "-p".into(),
                        p.into(),
                        "--orig-src".into(),
                        src.to_string(),
                        "--orig-dst".into(),
                        dst.to_string(),
                        "--sport".into(),
                        sport.to_string(),
                        "--dport".into(),
                        dport.to_string(),
                    ];
                    if let Err(e) = conntrack(&a).await {
                        problems.push(e);
                    }
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_tuple_is_the_first_one() {
        let line = "tcp      6 431999 ESTABLISHED src=198.51.100.2 dst=10.10.1.56 sport=40000 dport=8081 src=172.20.0.15 dst=198.51.100.2 sport=81 dport=40000 [ASSURED] mark=256 use=1";
        assert_eq!(
            original_tuple(line),
            Some((
                "198.51.100.2".parse().unwrap(),
                "10.10.1.56".parse().unwrap(),
                40000,
                8081
            ))
        );
        assert_eq!(original_tuple("garbage"), None);
    }
}
