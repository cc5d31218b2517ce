//! The client's routes over netlink, in a routing table of its own
//! ([`TABLE`]) that two policy rules put in front of the main table (the
//! way `wg-quick` and Tailscale keep theirs apart): the host's own routes
//! are never changed or deleted, whatever the portal says, and cleanup is
//! exact. A client routes exactly the resources it was given (default
//! deny); "throw" routes in the table send chosen destinations back to the
//! host's own path (its default gateway, its DNS servers, the portal, local
//! networks when they are to win), and the device's own UDP socket is
//! marked ([`FWMARK`]) so its datagrams always take that path too.
//!
//! Every route names its source, the interface's tunnel address of its
//! family: the kernel would otherwise pick any address on the interface
//! (the DNS stub's sentinel wins for IPv6), and the gateway rightly drops a
//! source that is not the client's.
//!
//! Routes through the interface go with it; the rules and throw routes of
//! a run that died are removed when the next one starts ([`Routes::new`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

/// The routing table the client's routes live in.
pub const TABLE: u32 = 5057;
/// The mark on the device's own UDP socket: its datagrams look up the main
/// table, never the tunnel's (a resource that covers a gateway's or a
/// relay's public address must not swallow the tunnel itself).
pub const FWMARK: u32 = 0x5057;
/// Rule priorities: the mark first, then the table (for unmarked packets
/// only), both before the main table's 32766.
const MARK_RULE: u32 = 5207;
const TABLE_RULE: u32 = 5208;
/// The kernel's main table.
const MAIN: u32 = 254;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("route {prefix} via the tunnel: {message}")]
    Change { prefix: IpNet, message: String },
    #[error("routing rules: {0}")]
    Rules(String),
}

/// The client's table and rules, and routes through one interface.
pub struct Routes {
    handle: Handle,
    index: u32,
    /// The source every route names, per family.
    sources: (Ipv4Addr, Ipv6Addr),
    /// The rules are in (from the first route on: a gateway that routes
    /// nothing never adds them).
    rules: bool,
}

impl Routes {
    /// Routes through interface `index` whose packets leave from
    /// `sources` (the tunnel addresses). A client (`owner`) removes what a
    /// run that died left (rules, throw routes); a gateway, which routes
    /// nothing, leaves the table alone (a client may run on its host).
    /// Needs a tokio runtime: the netlink connection runs as a task.
    pub async fn new(
        index: u32,
        sources: (Ipv4Addr, Ipv6Addr),
        owner: bool,
    ) -> Result<Routes, RouteError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RouteError::Connect)?;
        tokio::spawn(connection);
        let routes = Routes {
            handle,
            index,
            sources,
            rules: false,
        };
        if owner {
            routes.clean().await?;
        }
        Ok(routes)
    }

    /// Puts the rules in again at the next change (the host moved: a
    /// network manager may have flushed rules it did not make).
    pub fn reassert(&mut self) {
        self.rules = false;
    }

    fn message(&self, prefix: IpNet, kind: RouteType) -> RouteMessage {
        let mut message = match prefix {
            IpNet::V4(net) => {
                let builder = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(net.network(), net.prefix_len())
                    .table_id(TABLE)
                    .kind(kind);
                match kind {
                    RouteType::Throw => builder.build(),
                    _ => builder
                        .output_interface(self.index)
                        .pref_source(self.sources.0)
                        .build(),
                }
            }
            IpNet::V6(net) => {
                let builder = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(net.network(), net.prefix_len())
                    .table_id(TABLE)
                    .kind(kind);
                match kind {
                    RouteType::Throw => builder.build(),
                    _ => builder
                        .output_interface(self.index)
                        .pref_source(self.sources.1)
                        .build(),
                }
            }
        };
        if kind == RouteType::Throw {
            // A throw route has no next hop: universe scope, as `ip route
            // add throw` makes it.
            message.header.scope = rtnetlink::packet_route::route::RouteScope::Universe;
        }
        message
    }

    /// The two rules, both families: marked packets look up the main table,
    /// everything else the client's table first.
    async fn ensure_rules(&mut self) -> Result<(), RouteError> {
        if self.rules {
            return Ok(());
        }
        // A rule in place already (EEXIST) is the one we want.
        let failed = |e: rtnetlink::Error| match e {
            rtnetlink::Error::NetlinkError(ref n) if n.raw_code() == -17 => None,
            e => Some(RouteError::Rules(e.to_string())),
        };
        let done = |result: Result<(), rtnetlink::Error>| match result {
            Ok(()) => Ok(()),
            Err(e) => failed(e).map_or(Ok(()), Err),
        };
        for v6 in [false, true] {
            let mark = self
                .handle
                .rule()
                .add()
                .priority(MARK_RULE)
                .fw_mark(FWMARK)
                .table_id(MAIN)
                .action(RuleAction::ToTable);
            // `not fwmark`: a marked datagram main has no route for (a host
            // briefly without a default route) must not fall through into
            // the tunnel and loop.
            let mut table = self
                .handle
                .rule()
                .add()
                .priority(TABLE_RULE)
                .fw_mark(FWMARK)
                .table_id(TABLE)
                .action(RuleAction::ToTable);
            table.message_mut().header.flags |= RuleFlags::Invert;
            if v6 {
                done(mark.v6().execute().await)?;
                done(table.v6().execute().await)?;
            } else {
                done(mark.v4().execute().await)?;
                done(table.v4().execute().await)?;
            }
        }
        self.rules = true;
        Ok(())
    }

    async fn change(&mut self, prefix: IpNet, kind: RouteType) -> Result<(), RouteError> {
        self.ensure_rules().await?;
        // Just after the interface came up its IPv6 address may still be
        // tentative for a moment (addrconf finishes on a work queue), and a
        // route whose preferred source is not usable yet is refused with
        // EINVAL: tried again for up to a second.
        let mut attempts = 0;
        loop {
            let result = self
                .handle
                .route()
                .add(self.message(prefix.trunc(), kind))
                .replace()
                .execute()
                .await;
            match result {
                Ok(()) => return Ok(()),
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code() == -22 && prefix.addr().is_ipv6() && attempts < 50 =>
                {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(RouteError::Change {
                        prefix,
                        message: e.to_string(),
                    });
                }
            }
        }
    }

    async fn delete(&self, prefix: IpNet, kind: RouteType) -> Result<(), RouteError> {
        match self
            .handle
            .route()
            .del(self.message(prefix.trunc(), kind))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            // ESRCH: no such route.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -3 => Ok(()),
            Err(e) => Err(RouteError::Change {
                prefix,
                message: e.to_string(),
            }),
        }
    }

    /// Gives the interface an address only to receive on (the DNS stub's
    /// sentinel): an IPv6 one deprecated (preferred lifetime 0, no duplicate
    /// address detection), so source selection never picks it (RFC 6724
    /// rule 3); IPv4 has no such state, the routes' sources decide there.
    pub async fn add_receive_only_address(&self, address: IpAddr) -> Result<(), RouteError> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, CacheInfo};
        let prefix = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let mut request = self
            .handle
            .address()
            .add(self.index, address, prefix)
            .replace();
        if address.is_ipv6() {
            let mut lifetimes = CacheInfo::default();
            lifetimes.ifa_preferred = 0;
            lifetimes.ifa_valid = u32::MAX;
            let message = request.message_mut();
            message
                .attributes
                .push(AddressAttribute::CacheInfo(lifetimes));
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request.execute().await.map_err(|e| RouteError::Change {
            prefix: IpNet::from(address),
            message: format!("address: {e}"),
        })
    }

    /// Adds (or replaces) the route for `prefix` through the interface.
    pub async fn add(&mut self, prefix: IpNet) -> Result<(), RouteError> {
        self.change(prefix, RouteType::Unicast).await
    }

    /// Removes the route for `prefix`; a route already gone is fine.
    pub async fn remove(&self, prefix: IpNet) -> Result<(), RouteError> {
        self.delete(prefix, RouteType::Unicast).await
    }

    /// Sends `prefix` back to the host's own routes (a throw route in the
    /// client's table: the lookup goes on with the main table).
    pub async fn throw(&mut self, prefix: IpNet) -> Result<(), RouteError> {
        self.change(prefix, RouteType::Throw).await
    }

    pub async fn unthrow(&self, prefix: IpNet) -> Result<(), RouteError> {
        self.delete(prefix, RouteType::Throw).await
    }

    /// Removes the rules and every route of the client's table (at a
    /// clean stop; [`Routes::new`] does the same for a run that died).
    pub async fn clean(&self) -> Result<(), RouteError> {
        let failed = |e: rtnetlink::Error| RouteError::Rules(e.to_string());
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
                .map_err(failed)?;
            for rule in rules.into_iter().filter(is_ours) {
                match self.handle.rule().del(rule).execute().await {
                    Ok(()) => {}
                    // ENOENT: gone already.
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -2 => {}
                    Err(e) => return Err(failed(e)),
                }
            }
        }
        for route in self.table_routes().await? {
            match self.handle.route().del(route).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -3 => {}
                Err(e) => return Err(RouteError::Rules(e.to_string())),
            }
        }
        Ok(())
    }

    /// Every route of the client's table.
    async fn table_routes(&self) -> Result<Vec<RouteMessage>, RouteError> {
        self.dump(TABLE).await
    }

    /// Every route of `table`, both families (the kernel dumps them all;
    /// the table is filtered here).
    async fn dump(&self, table: u32) -> Result<Vec<RouteMessage>, RouteError> {
        let mut found = Vec::new();
        for message in [
            RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(table)
                .build(),
            RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(table)
                .build(),
        ] {
            let mut routes = self.handle.route().get(message).execute();
            while let Some(route) = routes
                .try_next()
                .await
                .map_err(|e| RouteError::Rules(e.to_string()))?
            {
                if table_of(&route) == table {
                    found.push(route);
                }
            }
        }
        Ok(found)
    }

    /// The prefixes routed through this interface now (for status and tests).
    pub async fn list(&self) -> Result<Vec<IpNet>, RouteError> {
        let mut found = Vec::new();
        for route in self.table_routes().await? {
            let oif = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            });
            if oif == Some(self.index)
                && let Some(address) = destination(&route)
                && let Ok(net) = IpNet::new(address, route.header.destination_prefix_length)
            {
                found.push(net);
            }
        }
        Ok(found)
    }

    /// The next hops of the main table's default routes: the host's own
    /// gateways, which must stay on its path.
    pub async fn default_gateways(&self) -> Result<Vec<IpAddr>, RouteError> {
        use rtnetlink::packet_route::route::RouteAddress;
        let mut found = Vec::new();
        for route in self.dump(MAIN).await? {
            if route.header.destination_prefix_length != 0 {
                continue;
            }
            for attribute in &route.attributes {
                match attribute {
                    RouteAttribute::Gateway(RouteAddress::Inet(v4)) => found.push(IpAddr::V4(*v4)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => found.push(IpAddr::V6(*v6)),
                    _ => {}
                }
            }
        }
        Ok(found)
    }
}

/// Whether a rule is one of the two this module adds.
fn is_ours(rule: &RuleMessage) -> bool {
    let priority = rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    });
    let table = rule
        .attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table));
    let mark = rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::FwMark(m) => Some(*m),
        _ => None,
    });
    matches!(
        (priority, table, mark),
        (Some(MARK_RULE), MAIN, Some(FWMARK)) | (Some(TABLE_RULE), TABLE, Some(FWMARK))
    )
}

fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn destination(route: &RouteMessage) -> Option<IpAddr> {
    use rtnetlink::packet_route::route::RouteAddress;
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

/// The host's local networks: each address's prefix on every interface
/// but loopback and `tunnel`, with the interface's name.
pub fn local_networks(tunnel: &str) -> Vec<(IpNet, String)> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for interface in interfaces {
        if interface.interface_name == tunnel || interface.interface_name == "lo" {
            continue;
        }
        let (Some(address), Some(mask)) = (interface.address, interface.netmask) else {
            continue;
        };
        let net = if let (Some(a), Some(m)) = (address.as_sockaddr_in(), mask.as_sockaddr_in()) {
            ipnet::Ipv4Net::with_netmask(a.ip(), m.ip())
                .ok()
                .map(|n| IpNet::V4(n.trunc()))
        } else if let (Some(a), Some(m)) = (address.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            ipnet::Ipv6Net::with_netmask(a.ip(), m.ip())
                .ok()
                .filter(|n| !n.addr().is_unicast_link_local())
                .map(|n| IpNet::V6(n.trunc()))
        } else {
            None
        };
        if let Some(net) = net
            && !found.iter().any(|(known, _)| *known == net)
        {
            found.push((net, interface.interface_name.clone()));
        }
    }
    found
}
