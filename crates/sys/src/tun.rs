//! The tunnel interface: a TUN device carrying the device's tunnel
//! addresses, MTU 1280 (DESIGN.md section 4), up.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The tunnel MTU: fits inside any path that carries IPv6's minimum after
/// WireGuard's 32 bytes and the outer headers.
pub const MTU: u16 = 1280;

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("cannot create the tunnel interface {name:?} (needs root and /dev/net/tun): {source}")]
    Create { name: String, source: io::Error },
    #[error("tunnel interface {name:?}: {source}")]
    Setup { name: String, source: io::Error },
}

/// The device's addresses on the tunnel interface, with the prefix each
/// gets (a gateway takes the whole device range so replies to clients route
/// into the tunnel; a client takes a host route).
#[derive(Clone, Copy, Debug)]
pub struct TunAddresses {
    pub ipv4: Ipv4Addr,
    pub ipv4_prefix: u8,
    pub ipv6: Ipv6Addr,
    pub ipv6_prefix: u8,
}

pub struct Tun {
    device: tun_rs::AsyncDevice,
    name: String,
    index: u32,
}

impl Tun {
    /// Creates the interface `name` with `addresses` and brings it up.
    pub fn create(name: &str, addresses: TunAddresses) -> Result<Tun, TunError> {
        let device = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(MTU)
            .ipv4(addresses.ipv4, addresses.ipv4_prefix, None)
            .ipv6(addresses.ipv6, addresses.ipv6_prefix)
            .build_async()
            .map_err(|source| TunError::Create {
                name: name.to_string(),
                source,
            })?;
        let setup = |source| TunError::Setup {
            name: name.to_string(),
            source,
        };
        let index = device.if_index().map_err(setup)?;
        let name = device.name().map_err(setup)?;
        Ok(Tun {
            device,
            name,
            index,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index, for routes.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// One IP packet from the kernel.
    pub async fn recv(&self, buffer: &mut [u8]) -> io::Result<usize> {
        self.device.recv(buffer).await
    }

    /// Waits until a packet can be read.
    pub async fn readable(&self) -> io::Result<()> {
        self.device.readable().await
    }

    /// Another packet if one is waiting, without blocking.
    pub fn try_recv(&self, buffer: &mut [u8]) -> io::Result<usize> {
        self.device.try_recv(buffer)
    }

    /// One IP packet to the kernel. A full queue drops it (as a NIC would)
    /// rather than stall the loop.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        match self.device.try_send(packet) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }
}
