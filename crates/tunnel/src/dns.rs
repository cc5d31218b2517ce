//! The client's DNS stub (SPEC F23, F24): answers A/AAAA questions for names
//! of the DNS resources the client may use with proxy addresses of its own,
//! so the resources' real addresses never reach the machine; the gateway
//! maps each proxy to what it resolved (see `gateway::assign_proxies`).
//! Other questions about resource names go through the tunnel to the
//! gateway's resolver, every other name to the upstream resolvers. The wire
//! format is `hickory-proto`'s; this type only decides and answers, no I/O.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use postern_model::ResourceId;
use postern_model::dns::{DnsPattern, best_match};
use postern_model::plan::{DNS_PROXY_V4, DNS_PROXY_V6, DNS_SENTINEL_V4};
use postern_model::protocol::ResourceDescription;

/// Proxy addresses per name and family (SPEC F24).
pub const PROXIES_PER_FAMILY: usize = 4;
/// TTL of proxy answers: apps ask again soon, so a changed resource or
/// policy takes effect quickly.
pub const PROXY_TTL: u32 = 1;
/// Firefox asks this name before it turns on DNS over HTTPS by itself; an
/// NXDOMAIN keeps it on the system resolver (and so on this stub).
pub const CANARY: &str = "use-application-dns.net";

/// What to do with a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StubAnswer {
    /// Send these bytes back to the app.
    Reply(Vec<u8>),
    /// Not a resource name: forward the query unchanged to the upstream
    /// resolvers.
    Upstream,
    /// A resource name with a question the stub does not answer (MX, TXT,
    /// ...): through the tunnel to the gateway's resolver.
    Gateway { resource: ResourceId },
    /// Not a DNS query at all: nothing to answer.
    Drop,
}

/// The proxies of one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub resource: ResourceId,
    pub name: String,
    pub ipv4: [Ipv4Addr; PROXIES_PER_FAMILY],
    pub ipv6: [Ipv6Addr; PROXIES_PER_FAMILY],
}

impl Assignment {
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ipv4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(self.ipv6.iter().map(|a| IpAddr::V6(*a)))
            .collect()
    }
}

#[derive(Default)]
pub struct DnsStub {
    resources: Vec<(DnsPattern, ResourceId)>,
    /// Lowercase name -> its proxies; stable while the client runs.
    names: HashMap<String, Assignment>,
    by_proxy: HashMap<IpAddr, String>,
    next_v4: u32,
    next_v6: u128,
    /// Names assigned since the last poll: the gateway must hear of them.
    fresh: Vec<String>,
}

/// A name in lowercase presentation form without the trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsStub {
    pub fn new() -> Self {
        DnsStub::default()
    }

    /// The DNS resources the client may use now (others are ignored).
    pub fn set_resources(&mut self, resources: &[ResourceDescription]) {
        self.resources = resources
            .iter()
            .filter_map(|r| Some((r.address.dns_pattern()?.clone(), r.id)))
            .collect();
    }

    /// The resource a name belongs to, the most specific pattern winning.
    pub fn resource_for(&self, name: &str) -> Option<ResourceId> {
        let name = normalize(name);
        best_match(self.resources.iter().map(|(p, id)| (p, *id)), &name)
    }

    /// Which name (and so resource) a proxy address stands for.
    pub fn assignment_of(&self, proxy: IpAddr) -> Option<&Assignment> {
        self.names.get(self.by_proxy.get(&proxy)?)
    }

    /// Names whose proxies the gateway has not been told about yet.
    pub fn poll_assigned(&mut self) -> Option<Assignment> {
        let name = self.fresh.pop()?;
        self.names.get(&name).cloned()
    }

    /// Decides about one query from an app.
    pub fn handle_query(&mut self, bytes: &[u8]) -> StubAnswer {
        let message = match Message::from_vec(bytes) {
            Ok(message) => message,
            // Something with a DNS header but not a valid message: say so.
            Err(_) if bytes.len() >= 12 && bytes[2] & 0x80 == 0 => {
                return error_reply(
                    u16::from_be_bytes([bytes[0], bytes[1]]),
                    ResponseCode::FormErr,
                );
            }
            Err(_) => return StubAnswer::Drop,
        };
        if message.metadata.message_type != MessageType::Query {
            return StubAnswer::Drop;
        }
        if message.metadata.op_code != OpCode::Query {
            return reply(&message, ResponseCode::NotImp, Vec::new());
        }
        let [query] = message.queries.as_slice() else {
            return reply(&message, ResponseCode::FormErr, Vec::new());
        };
        let name = normalize(&query.name().to_ascii());
        if name == CANARY {
            return reply(&message, ResponseCode::NXDomain, Vec::new());
        }
        let Some(resource) = self.resource_for(&name) else {
            return StubAnswer::Upstream;
        };
        let answers = match query.query_type() {
            RecordType::A => {
                let assignment = self.assign(&name, resource);
                assignment
                    .ipv4
                    .iter()
                    .map(|ip| Record::from_rdata(query.name().clone(), PROXY_TTL, RData::A(A(*ip))))
                    .collect()
            }
            RecordType::AAAA => {
                let assignment = self.assign(&name, resource);
                assignment
                    .ipv6
                    .iter()
                    .map(|ip| {
                        Record::from_rdata(query.name().clone(), PROXY_TTL, RData::AAAA(AAAA(*ip)))
                    })
                    .collect()
            }
            _ => return StubAnswer::Gateway { resource },
        };
        reply(&message, ResponseCode::NoError, answers)
    }

    /// The proxies of `name`, assigning them on first use. A name may move
    /// to another resource (a more specific pattern appeared): its proxies
    /// stay, the owner changes.
    fn assign(&mut self, name: &str, resource: ResourceId) -> Assignment {
        if let Some(assignment) = self.names.get_mut(name) {
            assignment.resource = resource;
            return assignment.clone();
        }
        let ipv4 = std::array::from_fn(|_| self.next_proxy_v4());
        let ipv6 = std::array::from_fn(|_| self.next_proxy_v6());
        let assignment = Assignment {
            resource,
            name: name.to_string(),
            ipv4,
            ipv6,
        };
        for proxy in assignment.addresses() {
            self.by_proxy.insert(proxy, name.to_string());
        }
        self.names.insert(name.to_string(), assignment.clone());
        self.fresh.push(name.to_string());
        assignment
    }

    fn next_proxy_v4(&mut self) -> Ipv4Addr {
        loop {
            // Skip the network address; wrap within the range.
            let span = (1u32 << (32 - DNS_PROXY_V4.prefix_len())) - 2;
            self.next_v4 = self.next_v4 % span + 1;
            let ip = Ipv4Addr::from(u32::from(DNS_PROXY_V4.network()) + self.next_v4);
            if ip != DNS_SENTINEL_V4 {
                return ip;
            }
        }
    }

    fn next_proxy_v6(&mut self) -> Ipv6Addr {
        let span = (1u128 << (128 - DNS_PROXY_V6.prefix_len())) - 2;
        self.next_v6 = self.next_v6 % span + 1;
        Ipv6Addr::from(u128::from(DNS_PROXY_V6.network()) + self.next_v6)
    }
}

/// A response to `query` with `code` and `answers`.
fn reply(query: &Message, code: ResponseCode, answers: Vec<Record>) -> StubAnswer {
    let mut response = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.queries = query.queries.clone();
    response.answers = answers;
    match response.to_vec() {
        Ok(bytes) => StubAnswer::Reply(bytes),
        Err(_) => StubAnswer::Drop,
    }
}

/// A bare error response for a message that would not parse.
fn error_reply(id: u16, code: ResponseCode) -> StubAnswer {
    let response = Message::error_msg(id, OpCode::Query, code);
    match response.to_vec() {
        Ok(bytes) => StubAnswer::Reply(bytes),
        Err(_) => StubAnswer::Drop,
    }
}

/// The routing domain of a resource pattern: what follows its last
/// wildcard label (`*.apps.corp.test` -> `apps.corp.test`, `db?.corp.test`
/// -> `corp.test`), the name itself without one. systemd-resolved sends
/// only names under these to the stub.
pub fn routing_domain(pattern: &str) -> Option<String> {
    let labels: Vec<&str> = pattern.trim_end_matches('.').split('.').collect();
    let after = labels
        .iter()
        .rposition(|label| label.contains('*') || label.contains('?'))
        .map_or(0, |last| last + 1);
    let domain = labels.get(after..)?.join(".");
    (!domain.is_empty()).then_some(domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_domains_come_from_what_follows_the_wildcards() {
        assert_eq!(
            routing_domain("*.apps.corp.test").as_deref(),
            Some("apps.corp.test")
        );
        assert_eq!(routing_domain("**.corp.test").as_deref(), Some("corp.test"));
        assert_eq!(
            routing_domain("db?.corp.test").as_deref(),
            Some("corp.test")
        );
        assert_eq!(routing_domain("a.*.b.test").as_deref(), Some("b.test"));
        assert_eq!(
            routing_domain("Web.Corp.Test.").as_deref(),
            Some("web.corp.test")
        );
        assert_eq!(routing_domain("*"), None);
    }
}
