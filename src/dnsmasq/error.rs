//! Why the DHCP and DNS backend could not do what it was asked.

use super::write::WriteError;
use crate::supervisor::StartError;

/// A failure of the dnsmasq backend. Each variant says what failed; the cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum DnsmasqError {
    /// The interfaces could not be read (before any file was written).
    #[error("dnsmasq: reading interfaces")]
    Interfaces(#[source] std::io::Error),
    /// One of its files or directories could not be written (others may have been).
    #[error("dnsmasq")]
    Files(#[from] WriteError),
    /// dnsmasq did not start with the files written.
    #[error("dnsmasq")]
    Start(#[from] StartError),
    /// What dnsmasq holds is not known (a full sync failed since the last one): nothing was
    /// written.
    #[error("dnsmasq: state unknown")]
    Unknown,
}

impl DnsmasqError {
    /// True when the failure came before any file was written or process signalled.
    pub fn left_unchanged(&self) -> bool {
        match self {
            DnsmasqError::Interfaces(_) | DnsmasqError::Unknown => true,
            DnsmasqError::Files(_) | DnsmasqError::Start(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;
    use std::error::Error;

    #[test]
    fn a_file_not_written_keeps_its_os_error_and_is_printed_once() {
        let e = BackendError::from(DnsmasqError::from(WriteError {
            op: "write",
            path: "/run/vr-agent/dnsmasq/hosts.dhcp".into(),
            source: std::io::Error::from_raw_os_error(28),
        }));
        assert!(!e.left_unchanged());
        let os = e
            .source()
            .and_then(|s| s.source())
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error);
        assert_eq!(os, Some(28));
        assert_eq!(
            e.report(),
            format!(
                "dnsmasq: write /run/vr-agent/dnsmasq/hosts.dhcp: {}",
                std::io::Error::from_raw_os_error(28)
            )
        );
        // put back by the backend: the system is as it was, the message the same
        let undone = e.unchanged();
        assert!(undone.left_unchanged());
        assert!(undone.report().starts_with("dnsmasq: write "));
    }
}
