//! The interface side of the router over netlink: nics found by MAC, their names, addresses,
//! MTU and state, the default route, VIPs as extra addresses, and gratuitous ARP.
//!
//! `plan` decides (pure), `sync` and `backend` act through `netlink` and `garp`.

pub mod backend;
pub mod error;
pub mod garp;
pub mod netlink;
pub mod plan;
pub mod sync;
pub mod system;
pub mod view;

pub use backend::LinksBackend;
pub use error::LinkError;
