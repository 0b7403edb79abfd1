//! Runs one nft transaction: the text goes to `nft -f -` on stdin, and nft's own message comes
//! back on failure (one `nft -f` input is one transaction: all of it applies or none).

use super::model::NatError;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Longest an nft run may take before it is killed (the writer waits for it).
const NFT_TIMEOUT: Duration = Duration::from_secs(60);

/// Applies `input` as one transaction.
pub async fn apply(input: &str) -> Result<(), NatError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NatError::System(format!("cannot run nft: {e}")))?;
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
        Ok(Err(e)) => return Err(NatError::System(format!("nft did not finish: {e}"))),
        Err(_) => {
            return Err(NatError::System(format!(
                "nft did not finish within {} s and was killed",
                NFT_TIMEOUT.as_secs()
            )));
        }
    };
    let fed = match feeder {
        Some(task) => task
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
        None => Ok(()),
    };
    if out.status.success() {
        // A success with input it could not have read whole would be a lie: refuse it.
        return fed.map_err(|e| NatError::System(format!("cannot write to nft: {e}")));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(NatError::Nft(summarise(&stderr)))
}

/// The tables of the namespace, as `nft list tables` prints them (`table ip vr_nat`, ...).
pub async fn tables() -> Result<Vec<String>, NatError> {
    let run = Command::new("nft")
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(NatError::System(format!("cannot run nft: {e}"))),
        Err(_) => return Err(NatError::System("nft list tables did not finish".into())),
    };
    if !out.status.success() {
        return Err(NatError::Nft(summarise(&String::from_utf8_lossy(
            &out.stderr,
        ))));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
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
