//! vr-agent: the agent inside a cloud's virtual router appliance. It speaks the management
//! node's HTTP protocol and turns commands into kernel state (netlink, nftables, dnsmasq).

pub mod agent;
pub mod api;
pub mod backend;
pub mod bootstrap;
pub mod config;
pub mod dnsmasq;
pub mod drift;
pub mod error;
pub mod facts;
pub mod files;
pub mod ha;
pub mod health;
pub mod lb;
pub mod link;
pub mod logging;
pub mod md5sum;
pub mod memory;
pub mod metrics;
pub mod nat;
pub mod notify;
pub mod protocol;
pub mod server;
pub mod state;
pub mod status;
pub mod supervisor;
