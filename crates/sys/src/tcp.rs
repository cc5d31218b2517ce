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
    // Room for a reconnect storm's connections while the server is busy;
    // past it SYNs are dropped and clients retry after 1, 3, 7 s. The
    // kernel caps it at net.core.somaxconn (4096 by default): a node for
    // tens of thousands of clients raises that (docs/deployment.md).
    socket.listen(65535)?;
    Ok(socket)
}

/// Raises this process's soft limit on open files to its hard limit (as Go
/// programs do by themselves): a server holds a descriptor per client, and
/// the usual soft limit of 1,024 refuses the 1,025th. The hard limit is the
/// administrator's (`LimitNOFILE=`, `ulimit -Hn`). Returns the limit now in
/// force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // An unlimited hard limit still stops at the kernel's fs.nr_open.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let wanted = hard.min(ceiling);
    if soft >= wanted {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, wanted, hard)?;
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Not far down: the other tests of this binary run meanwhile.
        let low = hard.min(4096);
        setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
        let raised = super::raise_open_file_limit().unwrap();
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, raised);
        assert!(raised >= low, "{raised} < {low}");
        if hard <= 1 << 20 {
            assert_eq!(raised, hard, "the soft limit reaches the hard one");
        }
    }

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

/// The user id owning the local end `peer` of a loopback TCP connection to
/// `local` (ours): the kernel's socket table (`/proc/net/tcp`, `tcp6`)
/// lists each socket with its owner. TCP has no `SO_PEERCRED`; this is how
/// `ss -p` and identd find the owner too. `None` if it is not listed (not
/// a local process).
pub fn loopback_peer_uid(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|table| owner_in_table(&table, peer, local))
}

/// The user id owning the UDP socket bound to `source` (a datagram's
/// sender on loopback), from `/proc/net/udp` and `udp6`.
pub fn loopback_udp_owner(source: SocketAddr) -> Option<u32> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|table| {
            table.lines().skip(1).find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (same(fields.get(1)?, source))
                    .then(|| fields.get(7)?.parse().ok())
                    .flatten()
            })
        })
}

/// The uid of the socket whose local address is `peer` and remote address
/// `local`, in one of the kernel's tables.
pub fn owner_in_table(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (own, remote, uid) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
        (same(own, peer) && same(remote, local))
            .then(|| uid.parse().ok())
            .flatten()
    })
}

/// Whether a table's `HEX:PORT` is `address` (IPv4 as one little-endian
/// word; IPv6 as four, a v4-mapped one matching its IPv4 address).
fn same(field: &str, address: SocketAddr) -> bool {
    let Some((ip, port)) = field.split_once(':') else {
        return false;
    };
    if u16::from_str_radix(port, 16).ok() != Some(address.port()) {
        return false;
    }
    let words: Option<Vec<u32>> = (0..ip.len() / 8)
        .map(|i| {
            ip.get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
        })
        .collect();
    let Some(words) = words else { return false };
    let mut octets = Vec::with_capacity(16);
    for word in words {
        octets.extend_from_slice(&word.to_le_bytes());
    }
    let listed = match octets.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(octets.as_slice()).unwrap_or_default()),
        16 => {
            let v6 = std::net::Ipv6Addr::from(
                <[u8; 16]>::try_from(octets.as_slice()).unwrap_or_default(),
            );
            v6.to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4)
        }
        _ => return false,
    };
    let wanted = match address.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    listed == wanted
}

#[cfg(test)]
mod peer_tests {
    use super::*;

    #[test]
    fn the_owner_of_a_loopback_connection_is_read_off_the_kernels_table() {
        // 127.0.0.1:40000 -> 127.0.0.1:1080, owned by 1000; the proxy's
        // own end (owned by 65534) and the listener are listed too.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0438 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:0438 0100007F:9C40 01 00000000:00000000 00:00000000 00000000 65534        0 2 1 0 100 0 0 10 0\n\
   2: 0100007F:9C40 0100007F:0438 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 100 0 0 10 0\n";
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let proxy: SocketAddr = "127.0.0.1:1080".parse().unwrap();
        assert_eq!(owner_in_table(table, peer, proxy), Some(1000));
        assert_eq!(owner_in_table(table, proxy, peer), Some(65534));
        assert_eq!(
            owner_in_table(table, "127.0.0.1:40001".parse().unwrap(), proxy),
            None
        );
        // IPv6 loopback (::1 is three zero words and 01000000).
        let table6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000001000000:9C40 00000000000000000000000001000000:0438 01 00000000:00000000 00:00000000 00000000  1001        0 3\n";
        assert_eq!(
            owner_in_table(
                table6,
                "[::1]:40000".parse().unwrap(),
                "[::1]:1080".parse().unwrap()
            ),
            Some(1001)
        );
    }

    #[test]
    fn a_udp_sender_is_owned_by_this_process() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(loopback_udp_owner(socket.local_addr().unwrap()), Some(me));
    }

    #[test]
    fn a_real_connection_is_owned_by_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(local).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(loopback_peer_uid(peer, local), Some(me));
    }
}
