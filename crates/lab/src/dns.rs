//! A tiny authoritative DNS server for lab hosts (UDP): the office's
//! resolver that only the gateway can reach, a "public" one for the rest.
//! Hand-written on `hickory-proto`'s wire format: a test fixture, one
//! thread, fixed records.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

use crate::error::{LabError, Result};
use crate::host::Host;

/// TTL of the answers.
pub const TTL: u32 = 60;

pub struct DnsServer {
    pub address: SocketAddr,
    /// Queries answered so far.
    pub queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    /// Serves `records` (name, address) on `address` inside `host`.
    pub fn start(
        host: &Host,
        address: SocketAddr,
        records: &[(&str, IpAddr)],
    ) -> Result<DnsServer> {
        let socket = host.enter(|| UdpSocket::bind(address))??;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let records: Vec<(String, IpAddr)> = records
            .iter()
            .map(|(name, ip)| (name.trim_end_matches('.').to_ascii_lowercase(), *ip))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let (stop_flag, counter) = (Arc::clone(&stop), Arc::clone(&queries));
        std::thread::Builder::new()
            .name("lab-dns".into())
            .spawn(move || {
                let mut buffer = [0u8; 4096];
                while !stop_flag.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    if let Some(answer) = answer(&buffer[..n], &records) {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send_to(&answer, peer);
                    }
                }
            })
            .map_err(LabError::Io)?;
        Ok(DnsServer {
            address,
            queries,
            stop,
        })
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(query: &[u8], records: &[(String, IpAddr)]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let question = query.queries.first()?.clone();
    let name = question
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let known: Vec<&IpAddr> = records
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, ip)| ip)
        .collect();
    let code = if known.is_empty() {
        ResponseCode::NXDomain
    } else {
        ResponseCode::NoError
    };
    let mut response = Message::error_msg(query.metadata.id, OpCode::Query, code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.answers = known
        .into_iter()
        .filter_map(|ip| match (ip, question.query_type()) {
            (IpAddr::V4(v4), RecordType::A) => Some(Record::from_rdata(
                question.name().clone(),
                TTL,
                RData::A(A(*v4)),
            )),
            (IpAddr::V6(v6), RecordType::AAAA) => Some(Record::from_rdata(
                question.name().clone(),
                TTL,
                RData::AAAA(AAAA(*v6)),
            )),
            _ => None,
        })
        .collect();
    response.queries = vec![question];
    response.to_vec().ok()
}
