//! DNS resources on the client (SPEC F24): the stub's answers become routes
//! for their proxy addresses, and the gateway serving a resource learns each
//! name's proxies through the tunnel before traffic to them flows: a grant
//! for a DNS resource waits until the gateway confirmed the names (or a
//! short timeout), and so does the DNS answer for a name that is new while
//! the resource is already granted.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use postern_tunnel::control::{self, AssignmentResult, ProxyAssignment, TunnelMessage};
use postern_tunnel::dns::{Assignment, StubAnswer};
use uuid::Uuid;

use crate::control::Control;
use crate::dns::{DnsQuery, ReplyTo, SharedStub};

/// How long an answer or a grant waits for the gateway's confirmation.
const CONFIRM_WAIT: Duration = Duration::from_secs(2);
/// How long a query for the gateway's resolver waits (access, then answer).
const GATEWAY_QUERY_WAIT: Duration = Duration::from_secs(5);

/// A grant waiting for the gateway to confirm the resource's names.
struct PendingGrant {
    gateway: Uuid,
    expires: Option<Instant>,
    waiting: HashSet<String>,
    deadline: Instant,
}

/// A query only the gateway can answer, waiting for access or the answer.
struct GatewayQuery {
    resource: Uuid,
    query: Vec<u8>,
    reply: ReplyTo,
    deadline: Instant,
    /// Sent to this gateway (the answer comes from it, same DNS id).
    sent_to: Option<Uuid>,
}

/// A DNS answer held until the gateway mapped the name.
struct Held {
    resource: Uuid,
    name: String,
    answer: Vec<u8>,
    reply: ReplyTo,
    deadline: Instant,
}

#[derive(Default)]
pub struct Names {
    pub stub: SharedStub,
    /// Resource -> the names the stub gave proxies.
    assigned: HashMap<Uuid, Vec<Assignment>>,
    pending: HashMap<Uuid, PendingGrant>,
    held: Vec<Held>,
    gateway_queries: Vec<GatewayQuery>,
    /// Where names that are not resources are asked.
    pub upstreams: Arc<Vec<SocketAddr>>,
}

/// SERVFAIL for a query (the stub could not get an answer).
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let message = Message::from_vec(query).ok()?;
    let mut answer = Message::error_msg(message.metadata.id, OpCode::Query, ResponseCode::ServFail);
    answer.metadata.recursion_desired = message.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.queries = message.queries;
    answer.to_vec().ok()
}

impl Names {
    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = self.held.iter().map(|h| h.deadline).min();
        let pending = self.pending.values().map(|p| p.deadline).min();
        let queries = self.gateway_queries.iter().map(|q| q.deadline).min();
        held.into_iter().chain(pending).chain(queries).min()
    }

    /// Whether a resource has names with proxies (its grant must wait for
    /// the gateway).
    fn names_of(&self, resource: Uuid) -> Vec<Assignment> {
        self.assigned.get(&resource).cloned().unwrap_or_default()
    }

    fn poll_assigned(&self) -> Option<Assignment> {
        self.stub.lock().ok()?.poll_assigned()
    }

    /// The DNS resources the stub answers for.
    pub fn set_resources(&self, resources: &[postern_model::protocol::ResourceDescription]) {
        if let Ok(mut stub) = self.stub.lock() {
            stub.set_resources(resources);
        }
    }
}

impl Control {
    /// One query from an app.
    pub fn handle_dns(&mut self, mut query: DnsQuery, now: Instant) {
        let decided = match query.decided.take() {
            Some(decided) => decided,
            None => match self.names.stub.lock() {
                Ok(mut stub) => stub.handle_query(&query.bytes),
                Err(_) => StubAnswer::Drop,
            },
        };
        match decided {
            StubAnswer::Reply(answer) => {
                let mut hold = None;
                while let Some(assignment) = self.names.poll_assigned() {
                    self.state
                        .route_proxies(assignment.resource, &assignment.addresses());
                    if let Some(gateway) = self.state.gateway_of(assignment.resource) {
                        self.send_assignment(gateway, &assignment, now);
                        hold = Some((assignment.resource, assignment.name.clone()));
                    }
                    self.names
                        .assigned
                        .entry(assignment.resource)
                        .or_default()
                        .push(assignment);
                }
                match hold {
                    Some((resource, name)) => self.names.held.push(Held {
                        resource,
                        name,
                        answer,
                        reply: query.reply,
                        deadline: now + CONFIRM_WAIT,
                    }),
                    None => query.reply.send_now(answer),
                }
            }
            StubAnswer::Upstream => {
                let upstreams = Arc::clone(&self.names.upstreams);
                tokio::spawn(async move {
                    let answer = match postern_sys::dns::forward(&query.bytes, &upstreams).await {
                        Some(answer) => Some(answer),
                        None => servfail(&query.bytes),
                    };
                    if let Some(answer) = answer {
                        query.reply.send(answer).await;
                    }
                });
            }
            // Other questions about resource names: the gateway's resolver
            // answers through the tunnel (never the upstream: the name would
            // leak), once access is granted.
            StubAnswer::Gateway { resource } => {
                if query.bytes.len() > control::MAX_DNS_MESSAGE {
                    if let Some(answer) = servfail(&query.bytes) {
                        query.reply.send_now(answer);
                    }
                    return;
                }
                self.state.request(resource, now);
                self.names.gateway_queries.push(GatewayQuery {
                    resource,
                    query: query.bytes,
                    reply: query.reply,
                    deadline: now + GATEWAY_QUERY_WAIT,
                    sent_to: None,
                });
                self.send_gateway_queries(now);
            }
            StubAnswer::Drop => {}
        }
    }

    fn send_assignment(&mut self, gateway: Uuid, assignment: &Assignment, now: Instant) {
        let (Some(from), Some(to)) = (self.tunnel_ipv4(), self.gateway_ipv4(gateway)) else {
            return;
        };
        let message = TunnelMessage::AssignProxies(ProxyAssignment {
            resource: assignment.resource,
            name: assignment.name.clone(),
            proxies: assignment.addresses(),
        });
        self.node
            .send(gateway, &control::encode(&message, from, to), now);
    }

    /// Sends the waiting queries whose resource is granted now.
    pub fn send_gateway_queries(&mut self, now: Instant) {
        let mut ready = Vec::new();
        for (index, query) in self.names.gateway_queries.iter().enumerate() {
            if query.sent_to.is_none()
                && !self.names.pending.contains_key(&query.resource)
                && let Some(gateway) = self.state.gateway_of(query.resource)
            {
                ready.push((index, gateway));
            }
        }
        for (index, gateway) in ready {
            let (Some(from), Some(to)) = (self.tunnel_ipv4(), self.gateway_ipv4(gateway)) else {
                continue;
            };
            let query = &mut self.names.gateway_queries[index];
            query.sent_to = Some(gateway);
            let message = TunnelMessage::DnsQuery {
                resource: query.resource,
                query: query.query.clone(),
            };
            self.node
                .send(gateway, &control::encode(&message, from, to), now);
        }
    }

    /// The gateway answered a query it was sent.
    pub fn on_dns_answer(&mut self, gateway: Uuid, answer: Vec<u8>) {
        let Some(index) = self
            .names
            .gateway_queries
            .iter()
            .position(|q| q.sent_to == Some(gateway) && q.query.get(..2) == answer.get(..2))
        else {
            return;
        };
        let query = self.names.gateway_queries.swap_remove(index);
        query.reply.send_now(answer);
    }

    /// `access_granted` for a resource: DNS resources with names wait until
    /// the gateway has mapped them. Returns true if the grant was applied.
    pub fn grant(&mut self, resource: Uuid, gateway: Uuid, expires: Option<Instant>, now: Instant) {
        let names = self.names.names_of(resource);
        if names.is_empty() {
            self.state.access_granted(resource, gateway, expires);
            self.send_gateway_queries(now);
            return;
        }
        for assignment in &names {
            self.send_assignment(gateway, assignment, now);
        }
        self.names.pending.insert(
            resource,
            PendingGrant {
                gateway,
                expires,
                waiting: names.into_iter().map(|a| a.name).collect(),
                deadline: now + CONFIRM_WAIT,
            },
        );
    }

    /// The gateway's answer to an assignment.
    pub fn on_assigned(&mut self, gateway: Uuid, result: AssignmentResult) {
        match &result.error {
            None => {
                tracing::debug!(name = %result.name, mapped = result.mapped, "gateway mapped the proxies")
            }
            Some(error) => {
                tracing::info!(name = %result.name, %error, "the gateway could not map the proxies")
            }
        }
        let (ready, held): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.names.held)
            .into_iter()
            .partition(|h| h.resource == result.resource && h.name == result.name);
        self.names.held = held;
        for held in ready {
            held.reply.send_now(held.answer);
        }
        let complete = match self.names.pending.get_mut(&result.resource) {
            Some(pending) if pending.gateway == gateway => {
                pending.waiting.remove(&result.name);
                pending.waiting.is_empty()
            }
            _ => false,
        };
        if complete && let Some(pending) = self.names.pending.remove(&result.resource) {
            self.state
                .access_granted(result.resource, pending.gateway, pending.expires);
            self.send_gateway_queries(Instant::now());
        }
    }

    /// Answers and grants whose confirmation did not come in time go ahead.
    pub fn names_timeout(&mut self, now: Instant) {
        let (late, held): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.names.held)
            .into_iter()
            .partition(|h| h.deadline <= now);
        self.names.held = held;
        for held in late {
            held.reply.send_now(held.answer);
        }
        let late: Vec<Uuid> = self
            .names
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(resource, _)| *resource)
            .collect();
        for resource in late {
            if let Some(pending) = self.names.pending.remove(&resource) {
                tracing::info!(%resource, "the gateway did not confirm the names in time; granting anyway");
                self.state
                    .access_granted(resource, pending.gateway, pending.expires);
            }
        }
        self.send_gateway_queries(now);
        // Queries nobody answered in time: SERVFAIL.
        let (late, waiting): (Vec<GatewayQuery>, Vec<GatewayQuery>) =
            std::mem::take(&mut self.names.gateway_queries)
                .into_iter()
                .partition(|q| q.deadline <= now);
        self.names.gateway_queries = waiting;
        for query in late {
            if let Some(answer) = servfail(&query.query) {
                query.reply.send_now(answer);
            }
        }
    }

    /// The proxy addresses' routes: the whole proxy ranges while any DNS
    /// resource exists (the client state refuses proxies it never handed out).
    pub fn proxy_routes(&self) -> Vec<ipnet::IpNet> {
        let any_dns = self
            .resources()
            .iter()
            .any(|r| r.kind == postern_model::resource::ResourceType::Dns);
        if any_dns {
            vec![
                postern_model::plan::DNS_PROXY_V4.into(),
                postern_model::plan::DNS_PROXY_V6.into(),
            ]
        } else {
            Vec::new()
        }
    }

    fn gateway_ipv4(&self, gateway: Uuid) -> Option<std::net::Ipv4Addr> {
        self.gateway_addresses_of(gateway)
            .iter()
            .find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
    }
}
