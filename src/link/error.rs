//! Why the interfaces backend could not do what it was asked.

use super::netlink::NetlinkError;
use super::plan::NicProblem;
use super::sync::SyncError;

/// A failure of the interfaces backend. Each variant says what failed; the cause is its
/// source.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No rtnetlink socket could be opened (before any change).
    #[error(transparent)]
    Connect(NetlinkError),
    /// The nics could not be read (before any change).
    #[error(transparent)]
    Read(NetlinkError),
    /// The nics the command names cannot all be found or named as asked (checked before any
    /// change).
    #[error(transparent)]
    Check(SyncError),
    /// A MAC a field of the command names is no nic of the router, or several (checked
    /// before any change).
    #[error("{field}")]
    Nic {
        /// The field, e.g. `vips[0].nicMac`.
        field: String,
        /// What is wrong with the MAC.
        #[source]
        source: NicProblem,
    },
    /// A step of the change stopped on a refusal; what it had done before may remain.
    #[error("{step}")]
    Step {
        /// What was being done, e.g. `adding VIPs`.
        step: &'static str,
        /// The refusal.
        #[source]
        source: SyncError,
    },
    /// A command of another feature reached this backend (a bug of the agent).
    #[error("the interfaces backend got a {0} command")]
    Unexpected(&'static str),
}

impl LinkError {
    /// True when the failure came before any change.
    pub fn left_unchanged(&self) -> bool {
        !matches!(self, LinkError::Step { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;
    use crate::state::types::MacAddr;

    fn refused() -> NetlinkError {
        NetlinkError {
            op: "adding 10.0.0.5/24 to eth1".into(),
            source: std::io::Error::from_raw_os_error(17),
        }
    }

    #[test]
    fn a_step_that_stopped_midway_says_what_it_did_and_may_have_changed_the_nics() {
        let e = BackendError::from(LinkError::Step {
            step: "adding VIPs",
            source: refused().into(),
        });
        assert!(!e.left_unchanged());
        assert_eq!(
            e.report(),
            format!(
                "adding VIPs: adding 10.0.0.5/24 to eth1: {}",
                std::io::Error::from_raw_os_error(17)
            )
        );
        // the kernel's answer is kept, errno included
        let errno = match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<SyncError>())
        {
            Some(SyncError::Netlink(n)) => n.errno(),
            other => panic!("{other:?}"),
        };
        assert_eq!(errno, Some(17));
        // once the backend put its addresses back, the router is as it was
        assert!(e.unchanged().left_unchanged());
    }

    #[test]
    fn a_mac_no_nic_carries_names_the_field_and_changed_nothing() {
        let mac: MacAddr = "fa:7e:4b:ad:09:09".parse().unwrap();
        let e = BackendError::from(LinkError::Nic {
            field: "heartbeatNic".into(),
            source: NicProblem::Missing(mac),
        });
        assert!(e.left_unchanged());
        assert_eq!(
            e.report(),
            "heartbeatNic: unable to find nic with mac[fa:7e:4b:ad:09:09] in virtual router vm"
        );
        let e = BackendError::from(LinkError::Check(NicProblem::Missing(mac).into()));
        assert!(e.left_unchanged());
        assert_eq!(
            e.report(),
            "unable to find nic with mac[fa:7e:4b:ad:09:09] in virtual router vm"
        );
    }
}
