//! Names of DNS resources (F24): a client's stub handed out proxy addresses
//! for a name; the gateway resolves the name with its own system resolver
//! (`hickory-resolver`, configured from /etc/resolv.conf), so the real
//! addresses never leave the gateway. Lookups run as tasks beside the loop;
//! results come back on a channel.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
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

pub struct NameResolver {
    resolver: Option<TokioResolver>,
    results: mpsc::UnboundedSender<Resolved>,
}

impl NameResolver {
    /// The system's resolver; without a usable configuration every lookup
    /// fails with that reason (the gateway still forwards everything else).
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Resolved>) {
        let resolver = match TokioResolver::builder_tokio().and_then(|builder| builder.build()) {
            Ok(resolver) => Some(resolver),
            Err(error) => {
                tracing::warn!(%error, "no system resolver: DNS resources cannot be resolved");
                None
            }
        };
        let (results, receiver) = mpsc::unbounded_channel();
        (NameResolver { resolver, results }, receiver)
    }

    /// Looks `assignment.name` up in a task of its own.
    pub fn resolve(&self, client: Uuid, assignment: ProxyAssignment) {
        let results = self.results.clone();
        let Some(resolver) = self.resolver.clone() else {
            let _ = results.send(Resolved {
                client,
                assignment,
                answers: Err("the gateway has no resolver configuration".into()),
                valid_for: MIN_RENEW,
            });
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
            let _ = results.send(Resolved {
                client,
                assignment,
                answers,
                valid_for: valid_for.clamp(MIN_RENEW, MAX_RENEW),
            });
        });
    }
}
