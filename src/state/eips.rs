//! The EIPs of the desired state by VIP, with an index by guest address: a command on one EIP
//! finds the EIPs sharing its guest (the lowest VIP owns the guest's SNAT) in O(log n), not by
//! a scan of every EIP (1.2 ms at 100,000).

use super::Table;
use super::model::Eip;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::Ipv4Addr;

/// EIPs by VIP; reads go through `Deref` to the map, writes through [`EipTable::insert`] and
/// [`EipTable::remove`] (which keep the index). Serialized as the map alone.
#[derive(Clone, Debug, Default)]
pub struct EipTable {
    by_vip: Table<Ipv4Addr, Eip>,
    /// (guest, VIP) of every EIP.
    by_guest: imbl::OrdSet<(Ipv4Addr, Ipv4Addr)>,
}

impl EipTable {
    /// Adds or replaces the EIP at `vip`; returns the one replaced.
    pub fn insert(&mut self, vip: Ipv4Addr, eip: Eip) -> Option<Eip> {
        self.by_guest.insert((eip.guest_ip, vip));
        let old = self.by_vip.insert(vip, eip);
        if let Some(o) = &old
            && self
                .by_vip
                .get(&vip)
                .is_some_and(|e| e.guest_ip != o.guest_ip)
        {
            self.by_guest.remove(&(o.guest_ip, vip));
        }
        old
    }

    /// Removes the EIP at `vip`.
    pub fn remove(&mut self, vip: &Ipv4Addr) -> Option<Eip> {
        let old = self.by_vip.remove(vip)?;
        self.by_guest.remove(&(old.guest_ip, *vip));
        Some(old)
    }

    /// The EIPs whose guest is `guest`, by VIP.
    pub fn of_guest(&self, guest: Ipv4Addr) -> impl Iterator<Item = &Eip> + '_ {
        self.by_guest
            .range((guest, Ipv4Addr::UNSPECIFIED)..=(guest, Ipv4Addr::BROADCAST))
            .filter_map(|(_, vip)| self.by_vip.get(vip))
    }
}

impl std::ops::Deref for EipTable {
    type Target = Table<Ipv4Addr, Eip>;

    fn deref(&self) -> &Self::Target {
        &self.by_vip
    }
}

impl PartialEq for EipTable {
    fn eq(&self, other: &Self) -> bool {
        // the index follows the map
        self.by_vip == other.by_vip
    }
}

impl Eq for EipTable {}

impl FromIterator<(Ipv4Addr, Eip)> for EipTable {
    fn from_iter<I: IntoIterator<Item = (Ipv4Addr, Eip)>>(iter: I) -> Self {
        Table::from_iter(iter).into()
    }
}

impl From<Table<Ipv4Addr, Eip>> for EipTable {
    fn from(by_vip: Table<Ipv4Addr, Eip>) -> Self {
        let by_guest = by_vip.iter().map(|(vip, e)| (e.guest_ip, *vip)).collect();
        EipTable { by_vip, by_guest }
    }
}

impl Serialize for EipTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.by_vip.serialize(s)
    }
}

impl<'de> Deserialize<'de> for EipTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Table::<Ipv4Addr, Eip>::deserialize(d).map(EipTable::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eip(vip: &str, guest: &str) -> Eip {
        Eip {
            vip_ip: vip.parse().unwrap(),
            private_mac: "52:54:00:00:00:02".parse().unwrap(),
            guest_ip: guest.parse().unwrap(),
            snat_inbound: false,
        }
    }

    fn guests(t: &EipTable, g: &str) -> Vec<String> {
        t.of_guest(g.parse().unwrap())
            .map(|e| e.vip_ip.to_string())
            .collect()
    }

    #[test]
    fn the_guest_index_follows_inserts_replaces_and_removes() {
        let mut t = EipTable::default();
        let v = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
        t.insert(v("1.1.1.1"), eip("1.1.1.1", "10.0.0.5"));
        t.insert(v("1.1.1.2"), eip("1.1.1.2", "10.0.0.5"));
        t.insert(v("1.1.1.3"), eip("1.1.1.3", "10.0.0.6"));
        assert_eq!(guests(&t, "10.0.0.5"), ["1.1.1.1", "1.1.1.2"]);
        // the same VIP moved to another guest
        t.insert(v("1.1.1.2"), eip("1.1.1.2", "10.0.0.6"));
        assert_eq!(guests(&t, "10.0.0.5"), ["1.1.1.1"]);
        assert_eq!(guests(&t, "10.0.0.6"), ["1.1.1.2", "1.1.1.3"]);
        // re-inserting the same entry keeps it indexed
        t.insert(v("1.1.1.3"), eip("1.1.1.3", "10.0.0.6"));
        assert_eq!(guests(&t, "10.0.0.6"), ["1.1.1.2", "1.1.1.3"]);
        t.remove(&v("1.1.1.1"));
        assert!(guests(&t, "10.0.0.5").is_empty());
        let json = serde_json::to_string(&t).unwrap();
        let back: EipTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(guests(&back, "10.0.0.6"), ["1.1.1.2", "1.1.1.3"]);
    }
}
