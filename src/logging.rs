//! Log output with a bound on every event, so no request can blow up the log: a refused
//! 1 MB value quoted in an error is cut, wherever the event comes from.
//!
//! Every event is formatted whole into a buffer (tracing-subscriber does that already) and
//! written with one `write` to stderr; above the bound of its level it is cut at a character
//! boundary and marked with how much was cut. JSON lines stay JSON: an over-long line is
//! replaced by `{"truncated_bytes": N, "head": "<its beginning>"}`.

use std::io::{self, Write};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Bound of an `info`, `warn` or `error` event, in bytes (about 1 KB of message plus the
/// timestamp, level and span fields).
pub const LINE_MAX: usize = 1536;
/// Bound of a `debug` or `trace` event (renderings of one command's changes fit).
pub const DEBUG_LINE_MAX: usize = 4608;

/// A `MakeWriter` for stderr that bounds each event.
#[derive(Clone, Copy, Debug)]
pub struct Bounded {
    /// The lines are JSON objects.
    pub json: bool,
}

/// One event's writer: collects the event, writes it (bounded) when dropped.
pub struct Line {
    max: usize,
    json: bool,
    buf: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `line` as written under a bound of `max` bytes (newline excluded).
pub fn bound(line: &[u8], max: usize, json: bool) -> Vec<u8> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    if body.len() <= max {
        return line.to_vec();
    }
    let text = String::from_utf8_lossy(body);
    let cut = body.len() - max;
    let mut out = if json {
        let head = &text[..text.floor_char_boundary(max.saturating_sub(64))];
        serde_json::json!({"truncated_bytes": cut, "head": head})
            .to_string()
            .into_bytes()
    } else {
        let head = &text[..text.floor_char_boundary(max.saturating_sub(32))];
        format!("{head} ... [{cut} bytes cut]").into_bytes()
    };
    out.push(b'\n');
    out
}

impl Drop for Line {
    fn drop(&mut self) {
        let out = bound(&self.buf, self.max, self.json);
        let _ = io::stderr().lock().write_all(&out);
    }
}

impl<'a> MakeWriter<'a> for Bounded {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            max: LINE_MAX,
            json: self.json,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        let max = if *meta.level() >= Level::DEBUG {
            DEBUG_LINE_MAX
        } else {
            LINE_MAX
        };
        Line {
            max,
            json: self.json,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_and_marked_short_ones_kept() {
        assert_eq!(bound(b"short\n", 100, false), b"short\n");
        let long = format!("warn refused: {}\n", "é".repeat(600_000));
        let out = String::from_utf8(bound(long.as_bytes(), LINE_MAX, false)).unwrap();
        assert!(out.len() <= LINE_MAX + 1, "{}", out.len());
        assert!(out.ends_with("bytes cut]\n"), "{out}");
        assert!(out.starts_with("warn refused: é"));
    }

    #[test]
    fn long_json_lines_stay_json() {
        let v = serde_json::json!({"fields": {"error": "x".repeat(1 << 20)}});
        let line = format!("{v}\n");
        let out = bound(line.as_bytes(), LINE_MAX, true);
        assert!(out.len() <= LINE_MAX + 1);
        let parsed: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(
            parsed["truncated_bytes"],
            serde_json::json!(line.len() - 1 - LINE_MAX)
        );
    }
}
