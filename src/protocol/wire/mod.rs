//! The management node's request bodies, field for field as section 3 of the protocol spells
//! them. Every field is optional here (missing keys mean absent, unknown keys are ignored);
//! `validate` turns them into typed commands, naming any field it refuses.
//!
//! One module per concern; each declares its paths in a `ROUTES` table, and the parser of a
//! path sits next to the struct its body is decoded into. This module holds what they share.

pub mod bounded;
pub mod core;
pub mod dhcp;
pub mod firewall;
pub mod ha;
pub mod lb;
pub mod nat;
pub mod nics;

use super::fields::*;
use crate::state::Invalid;

/// Validates each element of a required list, naming elements `field[i]`; an absent or null
/// list is `field: missing` (an explicit `[]` is an empty list).
pub fn each_req<W, T>(
    field: &str,
    list: &Option<Vec<W>>,
    f: impl FnMut(&str, &W) -> Result<T, Invalid>,
) -> Result<Vec<T>, Invalid> {
    if list.is_none() {
        return Err(Invalid::new(field, "missing"));
    }
    each(field, list, f)
}

/// Validates each element of an optional list, naming elements `field[i]`.
pub fn each<W, T>(
    field: &str,
    list: &Option<Vec<W>>,
    mut f: impl FnMut(&str, &W) -> Result<T, Invalid>,
) -> Result<Vec<T>, Invalid> {
    list.iter()
        .flatten()
        .enumerate()
        .map(|(i, w)| f(&format!("{field}[{i}]"), w))
        .collect()
}

/// The prefix of an address from `<at>.netmask`, else from a non-zero `<at>.<prefix_field>`
/// (a later management node sends both; 0 means not set).
pub(super) fn netmask_or_prefix(
    at: &str,
    netmask: &Option<String>,
    prefix: Option<i64>,
    prefix_field: &str,
) -> Result<crate::state::types::PrefixLen, Invalid> {
    match (given(netmask), prefix) {
        (Some(_), _) | (None, None | Some(0)) => req_netmask(&format!("{at}.netmask"), netmask),
        (None, Some(n)) => u8::try_from(n)
            .ok()
            .and_then(crate::state::types::PrefixLen::new)
            .ok_or_else(|| {
                Invalid::new(
                    format!("{at}.{prefix_field}"),
                    format!("{n} is not a prefix length (0-32)"),
                )
            }),
    }
}
