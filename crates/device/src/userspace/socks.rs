//! SOCKS5 (RFC 1928) as the userspace client's proxy speaks it: no
//! authentication (the proxy listens on loopback by default), CONNECT and
//! UDP ASSOCIATE, addresses and domain names.
//!
//! Written by hand: the protocol is a few fixed fields, and the SOCKS5
//! crates (fast-socks5, socks5-server) bring their own listener and open
//! the outgoing connection themselves with the host's sockets, which is
//! exactly the part Postern does differently (through its own TCP/IP stack
//! and the tunnel). The parsers never panic on what a client sends
//! (`hostile_bytes_never_panic` below).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const VERSION: u8 = 5;
const NO_AUTHENTICATION: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const ADDRESS_V4: u8 = 1;
const ADDRESS_NAME: u8 = 3;
const ADDRESS_V6: u8 = 4;

/// What a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Connect,
    UdpAssociate,
}

/// Where to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Address(SocketAddr),
    /// A name (`curl --socks5-hostname`): resolved by the client's DNS
    /// path, so names of DNS resources get their proxy addresses.
    Name(String, u16),
}

/// The reply codes (RFC 1928 section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0,
    GeneralFailure = 1,
    /// "connection not allowed by ruleset": no policy, a filter, or an
    /// address of no resource.
    NotAllowed = 2,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TtlExpired = 6,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("not SOCKS version 5")]
    Version,
    #[error("the client offers no method without authentication")]
    NoMethod,
    #[error("command {0} is not supported (only CONNECT and UDP ASSOCIATE)")]
    Command(u8),
    #[error("address type {0} is not supported")]
    AddressType(u8),
    #[error("the name is not valid")]
    Name,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The greeting and the request; an error has been answered already where
/// the protocol has an answer for it.
pub async fn handshake<S>(stream: &mut S) -> Result<(Command, Destination), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(HandshakeError::Version);
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTHENTICATION) {
        stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(HandshakeError::NoMethod);
    }
    stream.write_all(&[VERSION, NO_AUTHENTICATION]).await?;
    let mut request = [0u8; 4];
    stream.read_exact(&mut request).await?;
    if request[0] != VERSION {
        return Err(HandshakeError::Version);
    }
    let command = match request[1] {
        1 => Command::Connect,
        3 => Command::UdpAssociate,
        other => {
            stream
                .write_all(&reply(Reply::CommandNotSupported, None))
                .await?;
            return Err(HandshakeError::Command(other));
        }
    };
    let destination = match request[3] {
        ADDRESS_V4 => {
            let mut bytes = [0u8; 6];
            stream.read_exact(&mut bytes).await?;
            let ip = Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
            Destination::Address(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([bytes[4], bytes[5]]),
            ))
        }
        ADDRESS_V6 => {
            let mut bytes = [0u8; 18];
            stream.read_exact(&mut bytes).await?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[..16]);
            Destination::Address(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([bytes[16], bytes[17]]),
            ))
        }
        ADDRESS_NAME => {
            let length = usize::from(stream.read_u8().await?);
            let mut bytes = vec![0u8; length + 2];
            stream.read_exact(&mut bytes).await?;
            let port = u16::from_be_bytes([bytes[length], bytes[length + 1]]);
            match name(&bytes[..length]) {
                Some(name) => Destination::Name(name, port),
                None => {
                    stream
                        .write_all(&reply(Reply::HostUnreachable, None))
                        .await?;
                    return Err(HandshakeError::Name);
                }
            }
        }
        other => {
            stream
                .write_all(&reply(Reply::AddressTypeNotSupported, None))
                .await?;
            return Err(HandshakeError::AddressType(other));
        }
    };
    Ok((command, destination))
}

/// Reads the greeting and answers that no method is acceptable (a client
/// this proxy does not serve).
pub async fn refuse<S>(stream: &mut S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    let mut methods = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut methods).await?;
    stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await
}

/// A name as DNS takes it: letters, digits, `-`, `_`, dots; an address
/// written as a name is an address.
fn name(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.strip_suffix('.').unwrap_or(text);
    let valid = !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| text.to_ascii_lowercase())
}

impl Destination {
    /// A name that is an address literal ("10.0.1.80") is that address.
    pub fn literal(self) -> Destination {
        match self {
            Destination::Name(name, port) => match name.parse::<IpAddr>() {
                Ok(ip) => Destination::Address(SocketAddr::new(ip, port)),
                Err(_) => Destination::Name(name, port),
            },
            address => address,
        }
    }
}

/// The reply to a request: the code and the address bound (zeros when
/// there is none).
pub fn reply(code: Reply, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut bytes = vec![VERSION, code as u8, 0];
    put_address(&mut bytes, bound);
    bytes
}

fn put_address(bytes: &mut Vec<u8>, address: SocketAddr) {
    match address.ip() {
        IpAddr::V4(ip) => {
            bytes.push(ADDRESS_V4);
            bytes.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            bytes.push(ADDRESS_V6);
            bytes.extend_from_slice(&ip.octets());
        }
    }
    bytes.extend_from_slice(&address.port().to_be_bytes());
}

/// A datagram of a UDP association: where it goes and its payload.
/// Fragments (FRAG other than 0) are not reassembled: `None`, dropped, as
/// RFC 1928 section 7 allows.
pub fn parse_datagram(datagram: &[u8]) -> Option<(Destination, &[u8])> {
    let [0, 0, 0, kind, rest @ ..] = datagram else {
        return None;
    };
    let (destination, at) = match *kind {
        ADDRESS_V4 => {
            let octets: [u8; 4] = rest.get(..4)?.try_into().ok()?;
            let port = u16::from_be_bytes(rest.get(4..6)?.try_into().ok()?);
            (
                Destination::Address(SocketAddr::new(Ipv4Addr::from(octets).into(), port)),
                6,
            )
        }
        ADDRESS_V6 => {
            let octets: [u8; 16] = rest.get(..16)?.try_into().ok()?;
            let port = u16::from_be_bytes(rest.get(16..18)?.try_into().ok()?);
            (
                Destination::Address(SocketAddr::new(Ipv6Addr::from(octets).into(), port)),
                18,
            )
        }
        ADDRESS_NAME => {
            let length = usize::from(*rest.first()?);
            let text = name(rest.get(1..1 + length)?)?;
            let port = u16::from_be_bytes(rest.get(1 + length..3 + length)?.try_into().ok()?);
            (Destination::Name(text, port), 3 + length)
        }
        _ => return None,
    };
    Some((destination.literal(), rest.get(at..)?))
}

/// A datagram from `source` for the app, with the association's header.
pub fn datagram(source: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload.len() + 22);
    bytes.extend_from_slice(&[0, 0, 0]);
    put_address(&mut bytes, source);
    bytes.extend_from_slice(payload);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn shake(bytes: &[u8]) -> (Result<(Command, Destination), String>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(bytes).await.unwrap();
        let result = handshake(&mut server).await.map_err(|e| e.to_string());
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        (result, answer)
    }

    #[tokio::test]
    async fn connect_by_address_and_by_name() {
        let (result, answer) = shake(&[5, 1, 0, 5, 1, 0, 1, 10, 0, 1, 80, 0, 80]).await;
        assert_eq!(
            result.unwrap(),
            (
                Command::Connect,
                Destination::Address("10.0.1.80:80".parse().unwrap())
            )
        );
        assert_eq!(answer, [5, 0]);
        let mut by_name = vec![5, 2, 2, 0, 5, 1, 0, 3, 14];
        by_name.extend_from_slice(b"Web.Corp.Test.");
        by_name.extend_from_slice(&443u16.to_be_bytes());
        let (result, _) = shake(&by_name).await;
        assert_eq!(
            result.unwrap().1,
            Destination::Name("web.corp.test".into(), 443)
        );
    }

    #[tokio::test]
    async fn what_the_proxy_cannot_do_is_answered_as_the_rfc_says() {
        // Only username/password offered: no acceptable method.
        let (result, answer) = shake(&[5, 1, 2]).await;
        assert!(result.is_err());
        assert_eq!(answer, [5, 0xff]);
        // BIND: command not supported, with a full reply.
        let (result, answer) = shake(&[5, 1, 0, 5, 2, 0, 1, 10, 0, 1, 80, 0, 80]).await;
        assert!(result.is_err());
        assert_eq!(answer, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
        // An address type that does not exist.
        let (_, answer) = shake(&[5, 1, 0, 5, 1, 0, 9]).await;
        assert_eq!(answer[..4], [5, 0, 5, 8]);
        // A name with a space in it.
        let (_, answer) = shake(&[5, 1, 0, 5, 1, 0, 3, 3, b'a', b' ', b'b', 0, 80]).await;
        assert_eq!(answer[..4], [5, 0, 5, 4]);
        // SOCKS4.
        let (result, _) = shake(&[4, 1, 0, 80, 10, 0, 1, 80, 0]).await;
        assert!(result.is_err());
    }

    #[test]
    fn datagrams_round_trip_and_fragments_are_dropped() {
        let to: SocketAddr = "[fd10::3]:53".parse().unwrap();
        let framed = datagram(to, b"query");
        assert_eq!(
            parse_datagram(&framed),
            Some((Destination::Address(to), &b"query"[..]))
        );
        let mut named = vec![0, 0, 0, 3, 8];
        named.extend_from_slice(b"10.0.1.8");
        named.extend_from_slice(&[0, 53]);
        named.extend_from_slice(b"x");
        assert_eq!(
            parse_datagram(&named),
            Some((
                Destination::Address("10.0.1.8:53".parse().unwrap()),
                &b"x"[..]
            ))
        );
        let mut fragment = framed.clone();
        fragment[2] = 1;
        assert_eq!(parse_datagram(&fragment), None);
    }

    proptest::proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_datagram(&bytes);
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let (mut client, mut server) = tokio::io::duplex(4096);
                client.write_all(&bytes).await.unwrap();
                drop(client);
                let _ = handshake(&mut server).await;
            });
        }
    }
}
