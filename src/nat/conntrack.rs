//! Deleting conntrack entries of removed or remapped EIPs and port forwards, so no flow keeps
//! a stale translation (NAT is decided on a flow's first packet). Runs `conntrack`.

use crate::state::model::{L4Proto, PortForward};
use crate::state::types::PortRange;
use std::collections::BTreeSet;
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
    let run = Command::new("conntrack")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .map_err(|_| format!("conntrack {} did not finish within 60 s", args.join(" ")))?
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

/// One flow of a `conntrack -L` line: protocol, original tuple, reply destination.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Flow {
    proto: String,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: Option<(u16, u16)>,
    reply_dst: Option<Ipv4Addr>,
}

fn parse_flow(line: &str) -> Option<Flow> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let nth = |name: &str, n: usize| {
        tokens
            .iter()
            .filter_map(|t| t.strip_prefix(name))
            .nth(n)
            .map(str::to_string)
    };
    let sport = nth("sport=", 0).and_then(|p| p.parse().ok());
    let dport = nth("dport=", 0).and_then(|p| p.parse().ok());
    Some(Flow {
        proto: tokens.first()?.to_string(),
        src: nth("src=", 0)?.parse().ok()?,
        dst: nth("dst=", 0)?.parse().ok()?,
        ports: sport.zip(dport),
        reply_dst: nth("dst=", 1).and_then(|d| d.parse().ok()),
    })
}

async fn delete_address(ip: Ipv4Addr, problems: &mut Vec<String>) {
    let ip = ip.to_string();
    for dir in ["--orig-dst", "--reply-dst"] {
        if let Err(e) = conntrack(&args(&["-D", dir, &ip])).await {
            problems.push(e);
        }
    }
}

async fn delete_flow(f: &Flow, problems: &mut Vec<String>) {
    let Some((sport, dport)) = f.ports else {
        return;
    };
    let a = [
        "-D".to_string(),
        "-p".into(),
        f.proto.clone(),
        "--orig-src".into(),
        f.src.to_string(),
        "--orig-dst".into(),
        f.dst.to_string(),
        "--sport".into(),
        sport.to_string(),
        "--dport".into(),
        dport.to_string(),
    ];
    if let Err(e) = conntrack(&a).await {
        problems.push(e);
    }
}

/// Deletes the flows of `flush`; returns the problems (the change itself stays applied).
/// A single EIP is one `conntrack -D` per direction; anything more lists the table once and
/// deletes only what matches, so a sync that drops 10,000 EIPs costs a few processes.
pub async fn run(flush: &[Flush]) -> Vec<String> {
    let mut problems = Vec::new();
    if flush.is_empty() {
        return problems;
    }
    if let [Flush::Address(ip)] = flush {
        delete_address(*ip, &mut problems).await;
        return problems;
    }
    let listed = match conntrack(&args(&["-L"])).await {
        Ok(l) => l,
        Err(e) => return vec![e],
    };
    let addresses: BTreeSet<Ipv4Addr> = flush
        .iter()
        .filter_map(|f| match f {
            Flush::Address(ip) => Some(*ip),
            Flush::Ports { .. } => None,
        })
        .collect();
    let mut hit_addresses = BTreeSet::new();
    let mut hit_flows = Vec::new();
    for flow in listed.lines().filter_map(parse_flow) {
        for ip in [Some(flow.dst), flow.reply_dst].into_iter().flatten() {
            if addresses.contains(&ip) {
                hit_addresses.insert(ip);
            }
        }
        let forwarded = flush.iter().any(|f| match f {
            Flush::Ports { vip, proto, ports } => {
                flow.dst == *vip
                    && flow.proto == proto.name()
                    && flow
                        .ports
                        .is_some_and(|(_, d)| d >= ports.start && d <= ports.end)
            }
            Flush::Address(_) => false,
        });
        if forwarded {
            hit_flows.push(flow);
        }
    }
    for ip in hit_addresses {
        delete_address(ip, &mut problems).await;
    }
    for flow in &hit_flows {
        delete_flow(flow, &mut problems).await;
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_parse_original_tuple_and_reply_destination() {
        let line = "tcp      6 431999 ESTABLISHED src=198.51.100.2 dst=10.10.1.56 sport=40000 dport=8081 src=172.20.0.15 dst=198.51.100.2 sport=81 dport=40000 [ASSURED] mark=256 use=1";
        assert_eq!(
            parse_flow(line),
            Some(Flow {
                proto: "tcp".into(),
                src: "198.51.100.2".parse().unwrap(),
                dst: "10.10.1.56".parse().unwrap(),
                ports: Some((40000, 8081)),
                reply_dst: Some("198.51.100.2".parse().unwrap()),
            })
        );
        let icmp = "icmp     1 29 src=10.0.0.2 dst=10.10.1.55 type=8 code=0 id=7 src=172.20.0.15 dst=10.0.0.2 type=0 code=0 id=7 mark=0 use=1";
        let f = parse_flow(icmp).unwrap();
        assert_eq!(f.ports, None);
        assert_eq!(f.reply_dst, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(parse_flow("garbage"), None);
    }
}
