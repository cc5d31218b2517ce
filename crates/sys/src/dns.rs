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

/// The nameservers of a resolv.conf, except those in `skip` (the client
/// stub's own sentinels).
pub fn nameservers(resolv_conf: &str, skip: &[IpAddr]) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|word| word.parse::<IpAddr>().ok())
        .filter(|ip| !skip.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test: unwrap is the assertion
    use super::*;

    /// A query with id 0x4242 and one question.
    const QUERY: [u8; 17] = [0x42, 0x42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];

    #[tokio::test]
    async fn a_truncated_udp_answer_is_asked_again_over_tcp() {
        // One resolver on loopback: UDP says "truncated", TCP has it all.
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = udp.local_addr().unwrap();
        let tcp = tokio::net::TcpListener::bind(address).await.unwrap();
        let mut truncated = QUERY.to_vec();
        truncated[2] = 0x82; // response, TC
        let mut full = QUERY.to_vec();
        full[2] = 0x80;
        full.extend_from_slice(&[0xab; 600]);
        let udp_answer = truncated.clone();
        tokio::spawn(async move {
            let mut buffer = [0u8; 512];
            let (_, peer) = udp.recv_from(&mut buffer).await.unwrap();
            udp.send_to(&udp_answer, peer).await.unwrap();
        });
        let tcp_answer = full.clone();
        tokio::spawn(async move {
            let (mut stream, _) = tcp.accept().await.unwrap();
            let length = stream.read_u16().await.unwrap();
            let mut query = vec![0u8; usize::from(length)];
            stream.read_exact(&mut query).await.unwrap();
            stream.write_u16(tcp_answer.len() as u16).await.unwrap();
            stream.write_all(&tcp_answer).await.unwrap();
        });
        assert_eq!(forward(&QUERY, &[address]).await, Some(full));
    }

    #[tokio::test]
    async fn a_silent_resolver_gives_way_to_the_next_and_none_means_none() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let answering = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (silent_address, answering_address) = (
            silent.local_addr().unwrap(),
            answering.local_addr().unwrap(),
        );
        let mut answer = QUERY.to_vec();
        answer[2] = 0x80;
        let expected = answer.clone();
        tokio::spawn(async move {
            let mut buffer = [0u8; 512];
            let (_, peer) = answering.recv_from(&mut buffer).await.unwrap();
            answering.send_to(&answer, peer).await.unwrap();
        });
        let started = std::time::Instant::now();
        assert_eq!(
            forward(&QUERY, &[silent_address, answering_address]).await,
            Some(expected)
        );
        assert!(
            started.elapsed() >= UPSTREAM_TIMEOUT,
            "the first one had its time"
        );
        drop(silent);
        assert_eq!(forward(&QUERY, &[]).await, None);
    }

    #[test]
    fn nameservers_skip_the_stub_itself() {
        let conf = "# comment\nnameserver 10.0.0.53\nnameserver 100.100.111.1\nsearch x\nnameserver fd00::53\nnameserver bogus\n";
        let skip = ["100.100.111.1".parse().unwrap()];
        let found: Vec<String> = nameservers(conf, &skip)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(found, ["10.0.0.53:53", "[fd00::53]:53"]);
    }
}
