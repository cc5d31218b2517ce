//! Routes to the tunnel interface over netlink: a client routes exactly the
//! resources it was given, nothing else (default deny). Routes go away with
//! the interface, so a crash leaves none behind. Every route names its
//! source, the interface's tunnel address of its family: the kernel would
//! otherwise pick any address on the interface (the DNS stub's sentinel
//! wins for IPv6), and the gateway rightly drops a source that is not the
//! client's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{Handle, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("route {prefix} via the tunnel: {message}")]
    Change { prefix: IpNet, message: String },
}

/// Routes on one interface.
pub struct Routes {
    handle: Handle,
    index: u32,
    /// The source every route names, per family.
    sources: (Ipv4Addr, Ipv6Addr),
}

impl Routes {
    /// Routes through interface `index` whose packets leave from
    /// `sources` (the tunnel addresses). Needs a tokio runtime: the
    /// netlink connection runs as a task.
    pub fn new(index: u32, sources: (Ipv4Addr, Ipv6Addr)) -> Result<Routes, RouteError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RouteError::Connect)?;
        tokio::spawn(connection);
        Ok(Routes {
            handle,
            index,
            sources,
        })
    }

    fn message(&self, prefix: IpNet) -> rtnetlink::packet_route::route::RouteMessage {
        match prefix {
            IpNet::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .output_interface(self.index)
                .pref_source(self.sources.0)
                .build(),
            IpNet::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .output_interface(self.index)
                .pref_source(self.sources.1)
                .build(),
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
    pub async fn add(&self, prefix: IpNet) -> Result<(), RouteError> {
        self.handle
            .route()
            .add(self.message(prefix.trunc()))
            .replace()
            .execute()
            .await
            .map_err(|e| RouteError::Change {
                prefix,
                message: e.to_string(),
            })
    }

    /// Removes the route for `prefix`; a route already gone is fine.
    pub async fn remove(&self, prefix: IpNet) -> Result<(), RouteError> {
        match self
            .handle
            .route()
            .del(self.message(prefix.trunc()))
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

    /// The prefixes routed through this interface now (for status and tests).
    pub async fn list(&self) -> Result<Vec<IpNet>, RouteError> {
        let mut found = Vec::new();
        for message in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut routes = self.handle.route().get(message).execute();
            while let Some(route) = routes.try_next().await.map_err(|e| RouteError::Change {
                prefix: IpNet::default(),
                message: e.to_string(),
            })? {
                let mut oif = None;
                let mut destination = None;
                for attribute in &route.attributes {
                    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
                    match attribute {
                        RouteAttribute::Oif(index) => oif = Some(*index),
                        RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                            destination = Some(IpAddr::V4(*v4))
                        }
                        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                            destination = Some(IpAddr::V6(*v6))
                        }
                        _ => {}
                    }
                }
                if oif == Some(self.index)
                    && let Some(address) = destination
                    && let Ok(net) = IpNet::new(address, route.header.destination_prefix_length)
                {
                    found.push(net);
                }
            }
        }
        Ok(found)
    }
}
