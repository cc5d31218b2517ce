//! Names of DNS resources on the gateway (F24): a client's stub handed out
//! proxy addresses for a name; the gateway resolves the name with its own
//! resolver, so the real addresses never leave the site, and looks it up
//! again when the answers expire. Other questions about those names are
//! passed to the same resolvers. The lookups themselves are the shell's
//! ([`crate::effect::Effect::Resolve`]); this keeps what each one is for.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use postern_model::{ClientId, ResourceId};

use crate::control::{MAX_DNS_MESSAGE, ProxyAssignment};
use crate::effect::{Effect, LookupId};

/// Lookups one client may have in flight (a bound on what a client can
/// make the gateway ask its resolvers).
pub const MAX_LOOKUPS: usize = 64;

/// Answers are looked up again after their TTL, within these bounds.
pub const MIN_RENEW: Duration = Duration::from_secs(5);
pub const MAX_RENEW: Duration = Duration::from_secs(300);

/// What a lookup is for.
pub(super) enum Lookup {
    /// Addresses for a client's proxies of a name.
    Names {
        client: ClientId,
        assignment: ProxyAssignment,
    },
    /// A client's own question, answered through its tunnel (SERVFAIL
    /// when no resolver answers).
    Query { client: ClientId, query: Vec<u8> },
}

/// A name kept fresh for a client's proxies.
type Renewal = (ClientId, ResourceId, String);

#[derive(Default)]
pub(super) struct Lookups {
    next: u64,
    pending: HashMap<LookupId, Lookup>,
    /// Lookups in flight per client (their bound, without a scan).
    in_flight: HashMap<ClientId, usize>,
    /// Names to look up again when their answers expire.
    renew: HashMap<Renewal, (ProxyAssignment, Instant)>,
    /// The same by time, so timers read only the front (every client's
    /// names add up on a busy gateway).
    renew_order: BTreeSet<(Instant, Renewal)>,
}

impl Lookup {
    fn client(&self) -> ClientId {
        match self {
            Lookup::Names { client, .. } | Lookup::Query { client, .. } => *client,
        }
    }
}

impl Lookups {
    /// A new lookup, unless its client has [`MAX_LOOKUPS`] in flight.
    fn start(&mut self, lookup: Lookup) -> Option<LookupId> {
        let in_flight = self.in_flight.entry(lookup.client()).or_default();
        if *in_flight >= MAX_LOOKUPS {
            return None;
        }
        *in_flight += 1;
        self.next += 1;
        let id = LookupId(self.next);
        self.pending.insert(id, lookup);
        Some(id)
    }

    /// Resolves `assignment.name` for `client`'s proxies (`None`: too many
    /// lookups of that client in flight).
    pub fn resolve(&mut self, client: ClientId, assignment: ProxyAssignment) -> Option<Effect> {
        // A fully qualified name: no search domains of the gateway.
        let name = format!("{}.", assignment.name.trim_end_matches('.'));
        let lookup = self.start(Lookup::Names { client, assignment })?;
        Some(Effect::Resolve { lookup, name })
    }

    /// Asks the resolvers a client's query as it is (`None`: too many
    /// lookups of that client in flight).
    pub fn ask(&mut self, client: ClientId, query: Vec<u8>) -> Option<Effect> {
        let lookup = self.start(Lookup::Query {
            client,
            query: query.clone(),
        })?;
        Some(Effect::AskResolvers { lookup, query })
    }

    /// The lookup a result is for (once).
    pub fn take(&mut self, lookup: LookupId) -> Option<Lookup> {
        let taken = self.pending.remove(&lookup)?;
        let client = taken.client();
        if let Some(count) = self.in_flight.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                self.in_flight.remove(&client);
            }
        }
        Some(taken)
    }

    /// Looks the name up again after `valid_for` (within the bounds).
    pub fn renew_after(
        &mut self,
        client: ClientId,
        assignment: ProxyAssignment,
        valid_for: Duration,
        now: Instant,
    ) {
        let key = (client, assignment.resource, assignment.name.clone());
        let at = now + valid_for.clamp(MIN_RENEW, MAX_RENEW);
        if let Some((_, old)) = self.renew.insert(key.clone(), (assignment, at)) {
            self.renew_order.remove(&(old, key.clone()));
        }
        self.renew_order.insert((at, key));
    }

    pub fn forget_renewal(&mut self, client: ClientId, assignment: &ProxyAssignment) {
        let key = (client, assignment.resource, assignment.name.clone());
        if let Some((_, at)) = self.renew.remove(&key) {
            self.renew_order.remove(&(at, key));
        }
    }

    /// Renewals whose time came (removed; a successful lookup schedules
    /// the next).
    pub fn due(&mut self, now: Instant) -> Vec<(ClientId, ProxyAssignment)> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.renew_order.first()
            && *at <= now
        {
            let Some((_, key)) = self.renew_order.pop_first() else {
                break;
            };
            if let Some((assignment, _)) = self.renew.remove(&key) {
                due.push((key.0, assignment));
            }
        }
        due
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.renew_order.first().map(|(at, _)| *at)
    }

    /// How many names are kept fresh (for tests and status).
    pub fn renewals(&self) -> usize {
        self.renew.len()
    }
}

/// An answer small enough for the tunnel: a bigger one becomes its header
/// and question with TC set (the app may ask again over TCP).
pub fn fit(answer: &[u8]) -> Option<Vec<u8>> {
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
