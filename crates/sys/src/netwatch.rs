//! Notices the host moving to another network: its path toward the portal
//! (the source address the kernel picks, the interface holding it and
//! whether that link runs) changed, or the process was frozen or the host
//! suspended long enough (the boot clock ran on while the monotonic one
//! stood still) that NAT mappings and TURN allocations are likely gone. Netlink link, address and route events wake the check at
//! once; a check every [`POLL`] catches anything they missed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::device::outward_addresses;

/// How often the path is checked without a netlink event.
pub const POLL: Duration = Duration::from_secs(2);
/// Events come in bursts (an address, then its routes): one check after.
const SETTLE: Duration = Duration::from_millis(150);
/// A check this late means the process did not run meanwhile.
pub const FROZEN: Duration = Duration::from_secs(5);

/// The way toward the portal as this host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPath {
    pub source: IpAddr,
    /// The source toward the internet in the other family, if the host
    /// has a route there (a dual-stack host; its change is a move too).
    pub other: Option<IpAddr>,
    pub interface: Option<String>,
    pub running: bool,
}

/// What the daemon must react to: gather again from `sources` (toward the
/// portal first, then the other family's if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkChange {
    pub sources: Vec<IpAddr>,
    /// The process was frozen (suspend), not a visible change.
    pub woke: bool,
}

/// The decision, without I/O: each check's path and how late it came.
#[derive(Debug, Default)]
pub struct PathWatch {
    last: Option<HostPath>,
}

impl PathWatch {
    pub fn new(initial: Option<HostPath>) -> PathWatch {
        PathWatch { last: initial }
    }

    /// A check found `path` (`None`: no route toward the portal), `late`
    /// after it was due. A path that differs from the last one, and runs,
    /// is a change; no path or a link that does not run is remembered (so
    /// its return is one) but says nothing; a check that came [`FROZEN`]
    /// late is a change even on the same path.
    pub fn observe(&mut self, path: Option<HostPath>, late: Duration) -> Option<NetworkChange> {
        let changed = path != self.last;
        self.last = path.clone();
        let path = path.filter(|p| p.running)?;
        let woke = late >= FROZEN;
        (changed || woke).then_some(NetworkChange {
            sources: std::iter::once(path.source).chain(path.other).collect(),
            woke: woke && !changed,
        })
    }
}

/// The path toward `toward` now.
pub fn host_path(toward: IpAddr) -> Option<HostPath> {
    let sources = outward_addresses(toward).ok()?;
    let source = *sources.first()?;
    let mut path = HostPath {
        source,
        other: sources.get(1).copied(),
        interface: None,
        running: true,
    };
    if let Ok(interfaces) = nix::ifaddrs::getifaddrs() {
        for interface in interfaces {
            let address = interface.address.as_ref().and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            });
            if address == Some(source) {
                path.running = interface
                    .flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_RUNNING);
                path.interface = Some(interface.interface_name);
                break;
            }
        }
    }
    Some(path)
}

/// Watches the path toward `toward` (needs a tokio runtime); changes come
/// out of the receiver.
pub fn watch(toward: IpAddr) -> mpsc::Receiver<NetworkChange> {
    let (changes, receiver) = mpsc::channel(8);
    let wake = Arc::new(Notify::new());
    if let Err(error) = listen_netlink(Arc::clone(&wake)) {
        tracing::debug!(%error, "no netlink events; checking the network every {} s", POLL.as_secs());
    }
    tokio::spawn(async move {
        let mut watch = PathWatch::new(host_path(toward));
        let mut due = Instant::now() + POLL;
        let mut last = (Instant::now(), boot_time());
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = wake.notified() => tokio::time::sleep(SETTLE).await,
            }
            let now = Instant::now();
            let boot = boot_time();
            // A frozen process wakes late on the monotonic clock; a
            // suspended host does not (that clock stops), but the boot
            // clock ran on.
            let suspended = boot
                .zip(last.1)
                .map(|(boot, before)| boot.saturating_sub(before))
                .unwrap_or_default()
                .saturating_sub(now.saturating_duration_since(last.0));
            let late = now.saturating_duration_since(due).max(suspended);
            last = (now, boot);
            due = now + POLL;
            let path = host_path(toward);
            if let Some(change) = watch.observe(path.clone(), late) {
                tracing::info!(
                    sources = ?change.sources,
                    interface = path.and_then(|p| p.interface).as_deref().unwrap_or("?"),
                    woke = change.woke,
                    "the network changed"
                );
                if changes.send(change).await.is_err() {
                    return;
                }
            }
        }
    });
    receiver
}

/// CLOCK_BOOTTIME: monotonic, and running through suspend.
fn boot_time() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .ok()
        .map(Duration::from)
}

/// Wakes `wake` on every link, address and route event (IPv4 and IPv6).
fn listen_netlink(wake: Arc<Notify>) -> std::io::Result<()> {
    use rtnetlink::constants::{
        RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
    };
    use rtnetlink::sys::AsyncSocket as _;
    let (mut connection, _handle, mut messages) = rtnetlink::new_connection()?;
    let groups = RTMGRP_LINK
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV6_ROUTE;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(0, groups))?;
    tokio::spawn(connection);
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            wake.notify_one();
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(source: &str, running: bool) -> Option<HostPath> {
        Some(HostPath {
            source: source.parse().unwrap(),
            other: None,
            interface: Some("wlan0".into()),
            running,
        })
    }

    const ON_TIME: Duration = Duration::ZERO;

    #[test]
    fn a_new_source_address_is_a_change_and_the_same_one_is_not() {
        let mut watch = PathWatch::new(path("192.168.1.23", true));
        assert_eq!(watch.observe(path("192.168.1.23", true), ON_TIME), None);
        assert_eq!(
            watch.observe(path("10.8.0.5", true), ON_TIME),
            Some(NetworkChange {
                sources: vec!["10.8.0.5".parse().unwrap()],
                woke: false
            })
        );
        assert_eq!(watch.observe(path("10.8.0.5", true), ON_TIME), None);
    }

    #[test]
    fn an_ipv6_address_that_comes_or_goes_is_a_change() {
        let mut watch = PathWatch::new(path("192.168.1.23", true));
        let mut dual = path("192.168.1.23", true);
        if let Some(p) = dual.as_mut() {
            p.other = Some("2001:2:10::10".parse().unwrap());
        }
        assert_eq!(
            watch.observe(dual.clone(), ON_TIME),
            Some(NetworkChange {
                sources: vec![
                    "192.168.1.23".parse().unwrap(),
                    "2001:2:10::10".parse().unwrap()
                ],
                woke: false
            })
        );
        assert_eq!(watch.observe(dual, ON_TIME), None);
        assert!(watch.observe(path("192.168.1.23", true), ON_TIME).is_some());
    }

    #[test]
    fn a_link_that_drops_and_returns_with_the_same_address_is_a_change() {
        // Two home routers handing out the same 192.168.1.23: only the
        // link going down on the way tells the networks apart.
        let mut watch = PathWatch::new(path("192.168.1.23", true));
        assert_eq!(watch.observe(path("192.168.1.23", false), ON_TIME), None);
        assert_eq!(
            watch.observe(None, ON_TIME),
            None,
            "no route: nothing to do"
        );
        assert!(watch.observe(path("192.168.1.23", true), ON_TIME).is_some());
    }

    #[test]
    fn a_check_that_comes_frozen_late_is_a_wake_up() {
        let mut watch = PathWatch::new(path("192.168.1.23", true));
        assert_eq!(
            watch.observe(path("192.168.1.23", true), Duration::from_secs(120)),
            Some(NetworkChange {
                sources: vec!["192.168.1.23".parse().unwrap()],
                woke: true
            })
        );
        assert_eq!(
            watch.observe(path("192.168.1.23", true), Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn the_path_toward_loopback_is_found_on_lo() {
        let found = host_path("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(found.source, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(found.interface.as_deref(), Some("lo"));
        assert!(found.running);
    }
}
