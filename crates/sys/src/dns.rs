//! Asking DNS resolvers on the device's behalf: the client's stub forwards
//! names that are not resources to the resolvers the system had; a gateway
//! forwards its clients' other questions about resource names to its own.
//! UDP first, TCP when the answer came back truncated.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream resolver gets before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer handled.
const MAX_MESSAGE: usize = 65_535;

/// Asks the upstream resolvers in turn; the first answer wins. A truncated
/// UDP answer is asked again over TCP. `None` if nobody answered.
pub async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        match tokio::time::timeout(UPSTREAM_TIMEOUT, over_udp(query, *upstream)).await {
            Ok(Ok(answer)) if truncated(&answer) => {
                if let Ok(Ok(full)) =
                    tokio::time::timeout(UPSTREAM_TIMEOUT, over_tcp(query, *upstream)).await
                {
                    return Some(full);
                }
                return Some(answer);
            }
            Ok(Ok(answer)) => return Some(answer),
            _ => continue,
        }
    }
    None
}

fn truncated(answer: &[u8]) -> bool {
    answer.get(2).is_some_and(|flags| flags & 0x02 != 0)
}

async fn over_udp(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let wildcard: SocketAddr = if upstream.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(wildcard).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let n = socket.recv(&mut buffer).await?;
        // Only the answer to this query (same id).
        if n >= 2 && query.len() >= 2 && buffer[..2] == query[..2] {
            return Ok(buffer[..n].to_vec());
        }
    }
}

async fn over_tcp(query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let length = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    stream.write_u16(length).await?;
    stream.write_all(query).await?;
    let length = stream.read_u16().await?;
    let mut answer = vec![0u8; usize::from(length)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

/// The nameservers of a resolv.conf, except the stub's own sentinels.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|word| word.parse::<IpAddr>().ok())
        .filter(|ip| {
            *ip != IpAddr::V4(postern_model::plan::DNS_SENTINEL_V4)
                && *ip != IpAddr::V6(postern_model::plan::DNS_SENTINEL_V6)
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}
