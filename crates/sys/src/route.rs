//! Routes to the tunnel interface over netlink: a client routes exactly the
//! resources it was given, nothing else (default deny). Routes go away with
//! the interface, so a crash leaves none behind.

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
}

impl Routes {
    /// Needs a tokio runtime: the netlink connection runs as a task.
    pub fn new(index: u32) -> Result<Routes, RouteError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RouteError::Connect)?;
        tokio::spawn(connection);
        Ok(Routes { handle, index })
    }

    fn message(&self, prefix: IpNet) -> rtnetlink::packet_route::route::RouteMessage {
        match prefix {
            IpNet::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .output_interface(self.index)
                .build(),
            IpNet::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .output_interface(self.index)
                .build(),
        }
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
