//! Golden files of pure renderers: a desired state built from requests as the management node
//! sends them, and the comparison with a file that `UPDATE_GOLDEN=1` rewrites.

use std::path::Path;
use vr_agent::protocol::{Request, route};
use vr_agent::state::DesiredState;

/// The state after `requests` (`[[path, body], ...]`), each parsed and applied as the agent
/// would; panics on a refusal.
pub fn state_from_requests(requests: &serde_json::Value) -> DesiredState {
    let mut state = DesiredState::default();
    for req in requests.as_array().expect("requests is a list") {
        let path = req[0].as_str().expect("request path");
        let body = serde_json::to_vec(&req[1]).expect("request body");
        let route = route(path).unwrap_or_else(|| panic!("no route {path}"));
        let Request::Change(cmd) = route.parse(&body).unwrap_or_else(|e| panic!("{path}: {e}"))
        else {
            panic!("{path} is not a change");
        };
        state.apply(&cmd).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    state
}

/// The golden cases of a fixture directory: each `<case>.input.json` as (case, path), sorted
/// by case.
pub fn input_cases(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter_map(|input| {
            let case = input
                .file_name()?
                .to_str()?
                .strip_suffix(".input.json")?
                .to_string();
            Some((case, input))
        })
        .collect();
    out.sort();
    out
}

/// An input file's JSON.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `None` when `actual` equals the file at `golden` (or `UPDATE_GOLDEN` is set, and the file
/// was rewritten); else the difference, to collect over all cases.
pub fn compare(golden: &Path, actual: &str) -> Option<String> {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(golden, actual).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        return None;
    }
    match std::fs::read_to_string(golden) {
        Ok(expected) if expected == actual => None,
        Ok(expected) => Some(format!(
            "golden {} differs (UPDATE_GOLDEN=1 rewrites it):\n--- expected\n{expected}\n--- actual\n{actual}",
            golden.display()
        )),
        Err(e) => Some(format!(
            "golden {}: {e} (UPDATE_GOLDEN=1 writes it)",
            golden.display()
        )),
    }
}
