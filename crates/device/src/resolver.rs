//! The gateway's lookups for DNS resources (F24), with its own system
//! resolver (`hickory-resolver`, configured from /etc/resolv.conf), so the
//! real addresses never leave the site; and clients' other questions about
//! those names, passed to the same resolvers as they are. Lookups run as
//! tasks beside the loop; results come back as the role's inputs.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use postern_tunnel::effect::{Input, LookupId, Resolution};
use tokio::sync::mpsc;

pub struct Resolver {
    resolver: Option<TokioResolver>,
    /// The system's nameservers, for queries passed through as they are.
    upstreams: Arc<Vec<SocketAddr>>,
    results: mpsc::Sender<Input>,
}

impl Resolver {
    /// The system's resolver; without a usable configuration every lookup
    /// fails with that reason (the gateway still forwards everything else).
    pub fn new(results: mpsc::Sender<Input>) -> Self {
        let resolver = match TokioResolver::builder_tokio().and_then(|builder| builder.build()) {
            Ok(resolver) => Some(resolver),
            Err(error) => {
                tracing::warn!(%error, "no system resolver: DNS resources cannot be resolved");
                None
            }
        };
        let upstreams = std::fs::read_to_string("/etc/resolv.conf")
            .map(|text| postern_sys::dns::nameservers(&text, &[]))
            .unwrap_or_default();
        Resolver {
            resolver,
            upstreams: Arc::new(upstreams),
            results,
        }
    }

    /// Looks `name` up (A and AAAA) in a task of its own.
    pub fn resolve(&self, lookup: LookupId, name: String) {
        let results = self.results.clone();
        let Some(resolver) = self.resolver.clone() else {
            let result = Err("the gateway has no resolver configuration".to_string());
            tokio::spawn(async move {
                let _ = results.send(Input::Resolved { lookup, result }).await;
            });
            return;
        };
        tokio::spawn(async move {
            let result = match resolver.lookup_ip(name.as_str()).await {
                Ok(found) => Ok(Resolution {
                    valid_for: found
                        .valid_until()
                        .saturating_duration_since(std::time::Instant::now()),
                    addresses: found.iter().collect(),
                }),
                Err(error) => Err(error.to_string()),
            };
            let _ = results.send(Input::Resolved { lookup, result }).await;
        });
    }

    /// Asks the system's resolvers `query` as it is.
    pub fn ask(&self, lookup: LookupId, query: Vec<u8>) {
        let results = self.results.clone();
        let upstreams = Arc::clone(&self.upstreams);
        tokio::spawn(async move {
            let answer = postern_sys::dns::forward(&query, &upstreams).await;
            let _ = results.send(Input::ResolverAnswer { lookup, answer }).await;
        });
    }
}
