//! Runs one nft transaction: the text goes to `nft -f -` on stdin, and nft's own message comes
//! back on failure (one `nft -f` input is one transaction: all of it applies or none).

use super::model::NatError;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Applies `input` as one transaction.
pub async fn apply(input: &str) -> Result<(), NatError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NatError::System(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|e| NatError::System(format!("cannot write to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NatError::System(format!("nft did not finish: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(NatError::Nft(summarise(&stderr)))
    }
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
