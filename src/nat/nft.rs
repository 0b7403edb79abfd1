//! Runs one nft transaction: the text goes to `nft -f -` on stdin, and nft's own message comes
//! back on failure (one `nft -f` input is one transaction: all of it applies or none).

use super::model::{FILTER, NAT};
use super::render::FoundChain;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Longest an nft run may take before it is killed (the writer waits for it).
const NFT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `nft list chains` may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an nft run did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// nft could not be started: nothing was sent to the kernel.
    #[error("cannot run nft")]
    Spawn(#[source] std::io::Error),
    /// Waiting for nft failed: whether its transaction was committed is not known.
    #[error("nft did not finish")]
    Wait(#[source] std::io::Error),
    /// nft was killed after `secs`: whether its transaction was committed is not known.
    #[error("nft did not finish within {secs} s and was killed")]
    Timeout {
        /// The limit.
        secs: u64,
    },
    /// nft succeeded without having read its whole input: what it applied is not known.
    #[error("cannot write to nft")]
    Feed(#[source] std::io::Error),
    /// nft refused the input (its own message, on one line): one input is one transaction,
    /// so none of it was applied.
    #[error("nft refused the change: {0}")]
    Refused(String),
    /// `nft list chains` failed (its own message): a read, nothing changed.
    #[error("nft list chains failed: {0}")]
    List(String),
    /// `nft list chains` did not answer in time (it was killed): a read, nothing changed.
    #[error("nft list chains did not finish within {secs} s")]
    ListTimeout {
        /// The limit.
        secs: u64,
    },
}

impl NftError {
    /// True when the kernel's tables are as they were before the run.
    pub fn left_unchanged(&self) -> bool {
        match self {
            NftError::Spawn(_)
            | NftError::Refused(_)
            | NftError::List(_)
            | NftError::ListTimeout { .. } => true,
            NftError::Timeout { .. } | NftError::Wait(_) | NftError::Feed(_) => false,
        }
    }
}

/// Applies `input` as one transaction.
pub async fn apply(input: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(pid) = child.id() {
        // its transaction's notifications name this pid: ours, not drift
        crate::drift::own::record_child(pid);
    }
    // Feed stdin from a task of its own: nft may refuse the input and exit before reading all
    // of it, and its message on stderr is what the management node must see.
    let feeder = child.stdin.take().map(|mut stdin| {
        let input = input.as_bytes().to_vec();
        tokio::spawn(async move { stdin.write_all(&input).await })
    });
    let out = match tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(NftError::Wait(e)),
        Err(_) => {
            return Err(NftError::Timeout {
                secs: NFT_TIMEOUT.as_secs(),
            });
        }
    };
    let fed = match feeder {
        Some(task) => task.await.map_err(std::io::Error::other).and_then(|r| r),
        None => Ok(()),
    };
    if out.status.success() {
        // A success with input it could not have read whole would be a lie: refuse it.
        return fed.map_err(NftError::Feed);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(NftError::Refused(summarise(&stderr)))
}

/// Our tables and their chains, as `nft list chains` prints them: no rules and no elements,
/// so cheap at any size (`nft list tables` reads every set element first: 4.4 s at 200,000
/// elements with nft 1.0.6).
pub async fn ours() -> Result<Ours, NftError> {
    let run = Command::new("nft")
        .args(["list", "chains"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(LIST_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(NftError::Spawn(e)),
        Err(_) => {
            return Err(NftError::ListTimeout {
                secs: LIST_TIMEOUT.as_secs(),
            });
        }
    };
    if !out.status.success() {
        return Err(NftError::List(summarise(&String::from_utf8_lossy(
            &out.stderr,
        ))));
    }
    Ok(parse_chains(&String::from_utf8_lossy(&out.stdout)))
}

/// Our tables in the kernel and the chains they hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ours {
    /// [`NAT`] and/or [`FILTER`], when present.
    pub tables: Vec<&'static str>,
    /// Their chains.
    pub chains: Vec<FoundChain>,
}

/// Our tables and chains in `nft list chains` output.
fn parse_chains(text: &str) -> Ours {
    let mut table: Option<&'static str> = None;
    let mut out = Ours::default();
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix("table ") {
            let t = t.trim_end_matches('{').trim();
            table = [NAT, FILTER].into_iter().find(|ours| *ours == t);
            out.tables.extend(table);
        } else if let (Some(t), Some(c)) = (table, line.strip_prefix("chain ")) {
            out.chains.push(FoundChain {
                table: t,
                name: c.trim_end_matches('{').trim().to_string(),
            });
        }
    }
    out
}

/// nft's message without the caret lines, at most a few errors, on one line.
fn summarise(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == '~' || c == ' '))
        .collect();
    let mut s = errors
        .iter()
        .take(6)
        .copied()
        .collect::<Vec<_>>()
        .join(" | ");
    if s.is_empty() {
        s = "nft failed without a message".to_string();
    }
    if s.len() > 2000 {
        let mut cut = 2000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_of_our_tables_are_read_from_nft_list_chains() {
        let text = "table ip vr_nat {\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n\tchain by_hand {\n\t}\n}\ntable ip other {\n\tchain prerouting {\n\t}\n}\ntable inet vr_filter {\n\tchain input {\n\t}\n}\ntable ip vr_nat_other {\n}\n";
        let found = parse_chains(text);
        assert_eq!(found.tables, [NAT, FILTER]);
        let names: Vec<(&str, &str)> = found
            .chains
            .iter()
            .map(|c| (c.table, c.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [(NAT, "prerouting"), (NAT, "by_hand"), (FILTER, "input")]
        );
    }
}
