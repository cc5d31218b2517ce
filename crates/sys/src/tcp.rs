//! Listening TCP sockets for the daemons' servers (the portal's HTTPS).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Listens on `address`; `[::]` serves IPv4 too (v4-mapped), whatever
/// `net.ipv6.bindv6only` says, as the relay's and devices' sockets do.
pub fn listen(address: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(listening_socket(address, false)?.into())
}

/// A non-blocking listening socket on `address` (`[::]`: both families),
/// rebinding at once after a restart (connections in TIME_WAIT), shared
/// with other sockets of the same user with `reuse_port` (a relay's
/// workers each listen on the port).
pub fn listening_socket(address: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(!address.ip().is_unspecified())?;
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wildcard_ipv6_listener_accepts_ipv4_clients() {
        let listener = listen("[::]:0".parse().unwrap()).expect("a host with IPv6");
        let port = listener.local_addr().unwrap().port();
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        let (accepted, connected) = tokio::join!(listener.accept(), connect);
        let (_, peer) = accepted.unwrap();
        let local = connected.unwrap().local_addr().unwrap();
        assert_eq!(peer.ip().to_canonical(), local.ip());
    }
}
