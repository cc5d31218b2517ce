//! The one UDP socket a device uses for WireGuard, ICE and TURN
//! (docs/architecture.md, performance: large buffers asked for explicitly, so
//! bursts are not dropped).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// What each socket buffer is asked to hold.
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Binds `address` non-blocking with large buffers; returns the socket and
/// the receive/send buffer sizes the kernel granted.
pub fn bind(address: SocketAddr) -> io::Result<(tokio::net::UdpSocket, usize, usize)> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // Root may go past net.core.rmem_max; others get what the limit allows.
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if setsockopt(&socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
    // Our own datagrams take the host's path, never the tunnel's routes
    // (`route::FWMARK`). Needs CAP_NET_ADMIN; without it there are no
    // tunnel routes either.
    if let Err(error) = setsockopt(&socket, sockopt::Mark, &crate::route::FWMARK) {
        tracing::debug!(%error, "cannot mark the UDP socket");
    }
    if address.is_ipv6() && address.ip().is_unspecified() {
        // Dual-stack: IPv4 peers come and go as v4-mapped addresses
        // (`batch` maps them), one port for both families' candidates.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    let (receive, send) = (socket.recv_buffer_size()?, socket.send_buffer_size()?);
    let socket = tokio::net::UdpSocket::from_std(socket.into())?;
    Ok((socket, receive, send))
}

/// Binds `port` for both families (`[::]`, dual-stack) where the host has
/// IPv6, else on IPv4 only (IPv6 disabled at boot, or a container without
/// it). Returns what [`bind`] returns.
pub fn bind_dual_stack(port: u16) -> io::Result<(tokio::net::UdpSocket, usize, usize)> {
    match bind(SocketAddr::from(([0u16; 8], port))) {
        Err(error)
            if matches!(
                error.raw_os_error().map(nix::errno::Errno::from_raw),
                Some(
                    nix::errno::Errno::EAFNOSUPPORT
                        | nix::errno::Errno::EADDRNOTAVAIL
                        | nix::errno::Errno::EPROTONOSUPPORT
                )
            ) =>
        {
            tracing::debug!(%error, "no IPv6 on this host: IPv4 only");
            bind(SocketAddr::from(([0, 0, 0, 0], port)))
        }
        result => result,
    }
}
