//! Errors are printed once, where they are reported (the reply to the management node, a log
//! line, a health entry): each error of this crate says only what failed at its own level and
//! keeps its cause as its `source`; [`chain`] writes the whole chain on one line.

use std::error::Error;

/// `err` and its sources on one line, outermost first: `what failed: why: the OS's words`.
///
/// A few errors (of this crate from before this rule, and of other crates) print their source
/// as part of their own message: a source whose text is already in the line is not repeated.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(source) = next {
        let said = source.to_string();
        if !said.is_empty() && !text.contains(&said) {
            if text.is_empty() {
                text = said;
            } else {
                text.push_str(": ");
                text.push_str(&said);
            }
        }
        next = source.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("writing the hosts file")]
    struct Outer(#[source] io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("dnsmasq")]
    struct Top(#[source] Outer);

    #[derive(Debug, thiserror::Error)]
    #[error("write hosts: {0}")]
    struct SaysItsSource(#[source] io::Error);

    #[test]
    fn every_source_is_printed_once_outermost_first() {
        let e = Top(Outer(io::Error::other("disk full")));
        assert_eq!(chain(&e), "dnsmasq: writing the hosts file: disk full");
        assert_eq!(chain(&io::Error::other("alone")), "alone");
    }

    #[test]
    fn a_source_the_message_already_holds_is_not_repeated() {
        let e = SaysItsSource(io::Error::other("disk full"));
        assert_eq!(chain(&e), "write hosts: disk full");
    }
}
