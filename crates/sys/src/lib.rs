//! Linux I/O for the daemons (docs/architecture.md, layout): the crate that
//! talks to the kernel and the network, and knows no other Postern crate (a
//! leaf, as `quinn-udp` is to `quinn-proto`). The device loop
//! (`postern-device`) moves bytes between what this crate opens and the sans-IO
//! roles of `postern-tunnel`.
//!
//! - [`tun`]: the tunnel interface (`tun-rs`), MTU 1280, its addresses;
//! - [`route`]: routes to the tunnel interface over netlink (`rtnetlink`);
//! - [`batch`]: recvmmsg/GRO and GSO batches on that socket;
//! - [`udp`]: the one UDP socket for WireGuard, ICE and TURN, with large
//!   buffers asked for explicitly;
//! - [`firewall`]: nftables tables (the gateway's masquerade and forward
//!   filter, the client's stub guard) and the forwarding sysctls, undone
//!   at exit;
//! - [`host_firewall`]: the host's own firewall (iptables, ufw, Docker,
//!   nftables, firewalld), opened narrowly for the gateway's tunnel, and
//!   checked for the client's replies;
//! - [`channel`]: the WebSocket to the portal, reconnecting with backoff;
//! - [`metrics`]: Prometheus text for the daemons;
//! - [`netwatch`]: the host moving to another network or waking up;
//! - [`dns`]: asking DNS resolvers (UDP, TCP on truncation);
//! - [`system_dns`]: pointing the system at a stub (resolv.conf or
//!   systemd-resolved), undone at exit;
//! - [`device`]: the device id, fresh secrets, the host candidate's address;
//! - [`files`]: the state directory, written so local users cannot steer it.

pub mod batch;
pub mod channel;
pub mod device;
pub mod dns;
pub mod files;
pub mod firewall;
pub mod host_firewall;
pub mod metrics;
pub mod netwatch;
pub mod route;
pub mod system_dns;
pub mod tcp;
pub mod trust;
pub mod tun;
pub mod udp;

/// Whether this process runs as root (TUN devices, routes and nftables need
/// it; the daemons say so in one line otherwise).
pub fn is_root() -> bool {
    // /proc/self/status has "Uid: real effective saved fs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}
