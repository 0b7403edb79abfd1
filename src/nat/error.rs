//! Why the NAT backend could not do what it was asked, and whether our tables were left as
//! they were.

use super::model::BindError;
use super::netlink::NfnlError;
use super::nft::NftError;

/// A failure of the NAT and firewall backend. Each variant says what failed; the cause is its
/// source.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// An entry cannot be bound to the router's nics (found before any change).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The router's nics could not be read (before any change).
    #[error("cannot list the nics")]
    Nics(#[source] std::io::Error),
    /// Our tables could not be listed (a read).
    #[error("cannot list our nft tables")]
    List(#[source] NftError),
    /// An nft transaction did not go through.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// An nfnetlink element transaction did not go through.
    #[error(transparent)]
    Nfnl(#[from] NfnlError),
    /// Adding the stored state's elements to our tables (kept as they are otherwise) failed.
    #[error("adding the stored state's {elements} elements to our nft tables failed")]
    Keeping {
        /// Elements of the stored state.
        elements: usize,
        /// The refusal.
        #[source]
        source: Box<NatError>,
    },
    /// The guest nic set (DHCP and DNS accepted there) could not follow the nics.
    #[error("guest nic set not updated")]
    GuestNics(#[source] NftError),
    /// A full re-apply of our tables failed; its first step (the rules rewritten in place)
    /// may have taken effect.
    #[error("re-applying our nft tables failed")]
    Reapply(#[source] NftError),
    /// The forward chain could not follow the node's HA role.
    #[error("the forward chain did not follow the HA role")]
    Role(#[source] NftError),
}

impl NatError {
    /// True when our tables are as they were before the failed call.
    pub fn left_unchanged(&self) -> bool {
        match self {
            NatError::Bind(_) | NatError::Nics(_) | NatError::List(_) => true,
            NatError::Nft(e) | NatError::GuestNics(e) | NatError::Role(e) => e.left_unchanged(),
            NatError::Nfnl(e) => e.left_unchanged(),
            NatError::Keeping { source, .. } => source.left_unchanged(),
            NatError::Reapply(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;
    use std::error::Error;

    fn refused_batch() -> NfnlError {
        NfnlError::Refused {
            what: "an element exists with another value",
            source: std::io::Error::from_raw_os_error(17),
            flushes: 0,
            deletes: 0,
            adds: 1,
        }
    }

    #[test]
    fn a_refused_element_batch_is_a_nat_failure_that_changed_nothing_and_keeps_its_cause() {
        let e = BackendError::from(NatError::from(refused_batch()));
        assert!(matches!(
            e,
            BackendError::Nat(NatError::Nfnl(NfnlError::Refused { .. }))
        ));
        assert!(e.left_unchanged());
        let errno = e
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .and_then(std::io::Error::raw_os_error);
        assert_eq!(errno, Some(17));
        assert_eq!(
            e.report(),
            format!(
                "an element exists with another value in a transaction of 0 set flushes, 0 deletes and 1 adds: {}",
                std::io::Error::from_raw_os_error(17)
            )
        );
    }

    #[test]
    fn a_refused_nft_transaction_changed_nothing_and_a_killed_one_may_have() {
        let refused = BackendError::from(NatError::from(NftError::Refused(
            "Error: Could not process rule: No such file or directory".into(),
        )));
        assert!(refused.left_unchanged());
        assert_eq!(
            refused.report(),
            "nft refused the change: Error: Could not process rule: No such file or directory"
        );
        let killed = NatError::from(NftError::Timeout { secs: 60 });
        assert!(!killed.left_unchanged());
        let not_started = NatError::from(NftError::Spawn(std::io::Error::from_raw_os_error(2)));
        assert!(not_started.left_unchanged());
        assert!(
            BackendError::from(not_started)
                .report()
                .starts_with("cannot run nft: No such file or directory")
        );
    }

    #[test]
    fn a_failed_re_apply_may_have_changed_the_tables_and_a_failed_listing_did_not() {
        let e = NatError::Reapply(NftError::Refused("Error: syntax error".into()));
        assert!(!e.left_unchanged());
        assert_eq!(
            crate::error::chain(&e),
            "re-applying our nft tables failed: nft refused the change: Error: syntax error"
        );
        assert!(NatError::List(NftError::List("permission denied".into())).left_unchanged());
        let keeping = NatError::Keeping {
            elements: 3,
            source: Box::new(refused_batch().into()),
        };
        assert!(keeping.left_unchanged());
        assert!(crate::error::chain(&keeping).starts_with(
            "adding the stored state's 3 elements to our nft tables failed: an element exists"
        ));
    }
}
