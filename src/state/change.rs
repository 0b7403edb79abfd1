//! What one command does to the desired state: the state before and after it (computed once,
//! by the agent) and the parts it wrote, which say which backends it concerns.

use super::{Command, DesiredState};

/// A set of the parts of the desired state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Parts(u16);

impl Parts {
    /// Nothing.
    pub const NONE: Parts = Parts(0);
    /// The router's uuid and knobs.
    pub const IDENTITY: Parts = Parts(1);
    /// Nics.
    pub const NICS: Parts = Parts(1 << 1);
    /// VIPs.
    pub const VIPS: Parts = Parts(1 << 2);
    /// SNAT entries.
    pub const SNATS: Parts = Parts(1 << 3);
    /// EIPs.
    pub const EIPS: Parts = Parts(1 << 4);
    /// Port forwards.
    pub const PORT_FORWARDS: Parts = Parts(1 << 5);
    /// The appliance firewall's rules.
    pub const FIREWALL: Parts = Parts(1 << 6);
    /// Static DHCP hosts.
    pub const DHCP_HOSTS: Parts = Parts(1 << 7);
    /// Upstream DNS servers.
    pub const DNS_SERVERS: Parts = Parts(1 << 8);
    /// Load-balancer listeners.
    pub const LISTENERS: Parts = Parts(1 << 9);
    /// Router HA settings.
    pub const HA: Parts = Parts(1 << 10);

    /// Both sets.
    pub const fn union(self, other: Parts) -> Parts {
        Parts(self.0 | other.0)
    }

    /// True when the two sets share a part.
    pub const fn intersects(self, other: Parts) -> bool {
        self.0 & other.0 != 0
    }

    /// True when every part of `other` is in `self`.
    pub const fn contains(self, other: Parts) -> bool {
        self.0 & other.0 == other.0
    }

    /// True for the empty set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Parts {
    type Output = Parts;
    fn bitor(self, rhs: Parts) -> Parts {
        self.union(rhs)
    }
}

/// One command's change of the desired state, handed to every backend it concerns.
#[derive(Clone, Copy, Debug)]
pub struct Change<'a> {
    /// The state the system follows now.
    pub before: &'a DesiredState,
    /// The state after the command (checked).
    pub after: &'a DesiredState,
    /// The command.
    pub cmd: &'a Command,
    /// The parts the command wrote (an "ensure" of an unchanged entry counts: the system may
    /// have lost it).
    pub parts: Parts,
    /// The stored state was not read whole: a backend that replaces what it owns keeps what
    /// the system has beyond `after` (see `Backend::reconcile_keeping`).
    pub preserve: bool,
}

impl<'a> Change<'a> {
    /// The change of `cmd` from `before` to `after`, writing `parts`.
    pub fn new(
        before: &'a DesiredState,
        after: &'a DesiredState,
        cmd: &'a Command,
        parts: Parts,
    ) -> Change<'a> {
        Change {
            before,
            after,
            cmd,
            parts,
            preserve: false,
        }
    }

    /// True when the command wrote any of `parts`.
    pub fn touches(&self, parts: Parts) -> bool {
        self.parts.intersects(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::Parts;

    #[test]
    fn sets_combine_and_compare() {
        let p = Parts::NICS | Parts::EIPS;
        assert!(p.intersects(Parts::EIPS));
        assert!(!p.intersects(Parts::VIPS));
        assert!(p.contains(Parts::NICS));
        assert!(!Parts::NICS.contains(p));
        assert!(Parts::NONE.is_empty());
        assert!(!p.is_empty());
    }
}
