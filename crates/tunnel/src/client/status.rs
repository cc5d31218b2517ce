//! What `postern client status` shows: the portal link, the tunnel
//! addresses, and per resource its access, gateway, path and bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientStatus {
    /// Whether the portal channel is up.
    pub connected: bool,
    /// The tunnel addresses, once the portal gave them.
    pub addresses: Option<TunnelAddresses>,
    pub resources: Vec<ResourceLine>,
    /// The internet resource: `on` (routed), `off` (the user turned it
    /// off), absent when the client has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelAddresses {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResourceLine {
    pub id: String,
    pub name: String,
    pub address: Option<String>,
    /// idle, requested, granted, denied.
    pub access: String,
    /// Why access was denied (and which conditions failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// direct, relayed or connecting, once granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Where the path leads: the gateway's address (its own, or as its NAT
    /// maps it) on a direct path, its address as the relay sees it (or its
    /// relay's) on a relayed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The relay a relayed path goes through (the nearest that works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_received: u64,
}
