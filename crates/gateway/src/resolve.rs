//! Names of DNS resources (F24): a client's stub handed out proxy addresses
//! for a name; the gateway resolves the name with its own system resolver
//! (`hickory-resolver`, configured from /etc/resolv.conf), so the real
//! addresses never leave the gateway. Other questions about those names are
//! asked of the same resolvers and the answers go back through the tunnel.
//! Lookups run as tasks beside the loop; results come back on a channel.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::op::{Message, ResponseCode};
use postern_tunnel::control::MAX_DNS_MESSAGE;
use postern_tunnel::control::ProxyAssignment;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Answers are looked up again after their TTL, within these bounds.
pub const MIN_RENEW: Duration = Duration::from_secs(5);
pub const MAX_RENEW: Duration = Duration::from_secs(300);

/// One finished lookup.
#[derive(Debug)]
pub struct Resolved {
    pub client: Uuid,
    pub assignment: ProxyAssignment,
    /// The addresses, or why there are none.
    pub answers: Result<Vec<IpAddr>, String>,
    /// How long the answers are good for.
    pub valid_for: Duration,
}

/// What a lookup task reports.
#[derive(Debug)]
pub enum Lookup {
    /// Addresses for a proxy assignment.
    Names(Resolved),
    /// The answer to a client's DNS query, ready for the tunnel.
    Answer { client: Uuid, answer: Vec<u8> },
}

pub struct NameResolver {
    resolver: Option<TokioResolver>,
    /// The system's nameservers, for queries passed through as they are.
    upstreams: Arc<Vec<SocketAddr>>,
    results: mpsc::UnboundedSender<Lookup>,
}

impl NameResolver {
    /// The system's resolver; without a usable configuration every lookup
    /// fails with that reason (the gateway still forwards everything else).
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Lookup>) {
        let resolver = match TokioResolver::builder_tokio().and_then(|builder| builder.build()) {
            Ok(resolver) => Some(resolver),
            Err(error) => {
                tracing::warn!(%error, "no system resolver: DNS resources cannot be resolved");
                None
            }
        };
        let upstreams = std::fs::read_to_string("/etc/resolv.conf")
            .map(|text| postern_sys::dns::nameservers(&text))
            .unwrap_or_default();
        let (results, receiver) = mpsc::unbounded_channel();
        (
            NameResolver {
                resolver,
                upstreams: Arc::new(upstreams),
                results,
            },
            receiver,
        )
    }

    /// Looks `assignment.name` up in a task of its own.
    pub fn resolve(&self, client: Uuid, assignment: ProxyAssignment) {
        let results = self.results.clone();
        let Some(resolver) = self.resolver.clone() else {
            let _ = results.send(Lookup::Names(Resolved {
                client,
                assignment,
                answers: Err("the gateway has no resolver configuration".into()),
                valid_for: MIN_RENEW,
            }));
            return;
        };
        tokio::spawn(async move {
            // A fully qualified name: no search domains of the gateway.
            let name = format!("{}.", assignment.name.trim_end_matches('.'));
            let (answers, valid_for) = match resolver.lookup_ip(name.as_str()).await {
                Ok(lookup) => {
                    let valid_for = lookup
                        .valid_until()
                        .saturating_duration_since(std::time::Instant::now());
                    (Ok(lookup.iter().collect()), valid_for)
                }
                Err(error) => (Err(error.to_string()), MIN_RENEW),
            };
            let _ = results.send(Lookup::Names(Resolved {
                client,
                assignment,
                answers,
                valid_for: valid_for.clamp(MIN_RENEW, MAX_RENEW),
            }));
        });
    }

    /// Asks the system's resolvers `query` (already checked to be about a
    /// name the client may use) and reports the answer, cut to what the
    /// tunnel carries.
    pub fn forward(&self, client: Uuid, query: Vec<u8>) {
        let results = self.results.clone();
        let upstreams = Arc::clone(&self.upstreams);
        tokio::spawn(async move {
            let answer = match postern_sys::dns::forward(&query, &upstreams).await {
                Some(answer) => fit(&answer),
                None => answer_with(&query, ResponseCode::ServFail),
            };
            if let Some(answer) = answer {
                let _ = results.send(Lookup::Answer { client, answer });
            }
        });
    }
}

/// An answer small enough for the tunnel: a bigger one becomes its header
/// and question with TC set (the app may ask again over TCP).
fn fit(answer: &[u8]) -> Option<Vec<u8>> {
    if answer.len() <= MAX_DNS_MESSAGE {
        return Some(answer.to_vec());
    }
    let mut message = Message::from_vec(answer).ok()?;
    message.answers.clear();
    message.authorities.clear();
    message.additionals.clear();
    message.metadata.truncation = true;
    message.to_vec().ok()
}

/// An empty answer with `code` to `query`.
pub fn answer_with(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let mut answer = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.queries = query.queries;
    answer.to_vec().ok()
}

/// The name a query asks about (lowercase, no trailing dot).
pub fn query_name(query: &[u8]) -> Option<String> {
    let message = Message::from_vec(query).ok()?;
    let [question] = message.queries.as_slice() else {
        return None;
    };
    Some(
        question
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase(),
    )
}
