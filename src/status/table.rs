//! Aligned text tables for `vr-agent status`, coloured only when asked (on a terminal).

/// How a cell is shown when colour is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// As is.
    Plain,
    /// Good news (green).
    Good,
    /// Worth a look (yellow).
    Warn,
    /// Bad news (red).
    Bad,
}

impl Tone {
    fn code(self) -> Option<&'static str> {
        match self {
            Tone::Plain => None,
            Tone::Good => Some("32"),
            Tone::Warn => Some("33"),
            Tone::Bad => Some("31"),
        }
    }
}

/// `text` in `tone` (ANSI escapes only when `colour`).
pub fn paint(text: &str, tone: Tone, colour: bool) -> String {
    match (colour, tone.code()) {
        (true, Some(code)) => format!("\x1b[{code}m{text}\x1b[0m"),
        _ => text.to_string(),
    }
}

/// A table: a header row and rows of cells; numeric columns are right-aligned.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<(String, Tone)>>,
}

impl Table {
    /// A table with these column headers; `right[i]` right-aligns column `i`.
    pub fn new(headers: &[(&'static str, bool)]) -> Table {
        Table {
            headers: headers.iter().map(|(h, _)| *h).collect(),
            right: headers.iter().map(|(_, r)| *r).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells are empty).
    pub fn row(&mut self, cells: Vec<(String, Tone)>) {
        self.rows.push(cells);
    }

    /// True when it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, indented by two spaces, one line per row, columns two spaces apart. The
    /// last column is not padded (it may be long: an error message).
    pub fn render(&self, colour: bool) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (text, _)) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(text.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<(String, Tone)>, out: &mut String| {
            let mut parts = Vec::with_capacity(n);
            for (i, width) in widths.iter().enumerate() {
                let (text, tone) = cells
                    .get(i)
                    .cloned()
                    .unwrap_or((String::new(), Tone::Plain));
                let pad = width.saturating_sub(text.chars().count());
                let painted = paint(&text, tone, colour);
                let cell = if i + 1 == n && !self.right[i] {
                    painted
                } else if self.right[i] {
                    format!("{}{painted}", " ".repeat(pad))
                } else {
                    format!("{painted}{}", " ".repeat(pad))
                };
                parts.push(cell);
            }
            out.push_str("  ");
            out.push_str(parts.join("  ").trim_end());
            out.push('\n');
        };
        line(
            self.headers
                .iter()
                .map(|h| (h.to_string(), Tone::Plain))
                .collect(),
            &mut out,
        );
        for row in &self.rows {
            line(row.clone(), &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_colour_only_when_asked() {
        let mut t = Table::new(&[("kind", false), ("count", true)]);
        t.row(vec![
            ("eips".into(), Tone::Plain),
            ("12".into(), Tone::Good),
        ]);
        t.row(vec![
            ("port_forwards".into(), Tone::Plain),
            ("3".into(), Tone::Plain),
        ]);
        assert_eq!(
            t.render(false),
            "  kind           count\n  eips              12\n  port_forwards      3\n"
        );
        let coloured = t.render(true);
        assert!(coloured.contains("\x1b[32m12\x1b[0m"), "{coloured:?}");
        assert!(!t.render(false).contains('\x1b'));
    }
}
