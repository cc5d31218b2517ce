//! Who may use the relay: the long-term credential mechanism with TURN REST
//! credentials and stateless nonces (401/438 challenges), and the signing of
//! replies with the integrity kind the caller used.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Now, Server};
use crate::credentials::{NonceState, long_term_key, rest_expiry, rest_id, rest_password};
use crate::stun::{Class, Integrity, Message, MessageWriter, attr, code, method};

/// Attributes this server understands in requests; any other
/// comprehension-required one earns a 420.
pub(super) const KNOWN: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::REALM,
    attr::NONCE,
    attr::LIFETIME,
    attr::REQUESTED_TRANSPORT,
    attr::XOR_PEER_ADDRESS,
    attr::CHANNEL_NUMBER,
    attr::DATA,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
];

/// The authenticated caller of a request.
pub(super) struct Caller {
    pub username: String,
    pub key: [u8; 16],
    pub integrity: Integrity,
    /// When the credentials expire (Unix seconds, in the future).
    pub expiry: u64,
}

impl Caller {
    /// Whom quotas count: the TURN REST id, else the whole username.
    pub fn user(&self) -> &str {
        rest_id(&self.username).unwrap_or(&self.username)
    }
}

/// Whether `renewed` is a credential of the user `current` is for: the
/// same TURN REST id (the portal signs only a device's own id).
fn same_user(current: &str, renewed: &str) -> bool {
    rest_id(current).is_some_and(|id| rest_id(renewed) == Some(id))
}

impl Server {
    /// Runs `handler` for an authenticated caller, or answers 400/401/438.
    pub(super) fn authenticated(
        &mut self,
        now: Now,
        client: SocketAddr,
        message: &Message<'_>,
        handler: impl FnOnce(&mut Server, &Caller) -> Vec<u8>,
    ) -> Vec<u8> {
        // A retransmitted Allocate gets its original answer before anything
        // else (its nonce may have gone stale since).
        if message.method() == method::ALLOCATE
            && let Some(allocation) = self.allocations.get(&client)
            && allocation.transaction == message.transaction_id()
        {
            return allocation.response.clone();
        }
        if !message.has_integrity() {
            return self.challenge(now, message, code::UNAUTHORIZED);
        }
        let (Some(username), Some(realm), Some(nonce)) = (
            message.get_str(attr::USERNAME),
            message.get_str(attr::REALM),
            message.get_str(attr::NONCE),
        ) else {
            return self.error(message, None, code::BAD_REQUEST);
        };
        match self.nonces.check(nonce, now.unix_secs) {
            NonceState::Valid => {}
            NonceState::Stale | NonceState::Invalid => {
                return self.challenge(now, message, code::STALE_NONCE);
            }
        }
        let Some(expiry) = rest_expiry(username).filter(|expiry| *expiry > now.unix_secs) else {
            return self.challenge(now, message, code::UNAUTHORIZED);
        };
        if realm != self.config.realm || self.is_revoked(username, expiry) {
            return self.challenge(now, message, code::UNAUTHORIZED);
        }
        let password = rest_password(&self.config.auth_secret, username);
        let key = long_term_key(username, realm, &password);
        let integrity = message.verify_integrity(&key);
        if !matches!(integrity, Integrity::Sha1 | Integrity::Sha256) {
            return self.challenge(now, message, code::UNAUTHORIZED);
        }
        let caller = Caller {
            username: username.to_string(),
            key,
            integrity,
            expiry,
        };
        // RFC 8656 section 5 wants the username of the Allocate on every
        // later request (441 otherwise) so that nobody else takes the
        // allocation over. Renewed credentials of the same user are let in
        // on purpose: the portal renews a device's short-lived credentials
        // and the device moves its live allocation to them (one socket, one
        // allocation per relay: it cannot make a new one first).
        if let Some(allocation) = self.allocations.get(&client)
            && allocation.username != caller.username
            && !same_user(&allocation.username, &caller.username)
        {
            return self.error(message, Some(&caller), code::WRONG_CREDENTIALS);
        }
        let unknown = message.unknown_required(KNOWN);
        if !unknown.is_empty() {
            tracing::debug!(%client, ?unknown, "request with unknown comprehension-required attributes");
            return self.unknown_attributes(message, Some(&caller), &unknown);
        }
        self.renew(now, client, &caller);
        handler(self, &caller)
    }

    /// Moves a live allocation to credentials that expire later.
    fn renew(&mut self, now: Now, client: SocketAddr, caller: &Caller) {
        let Some(allocation) = self.allocations.get_mut(&client) else {
            return;
        };
        if caller.expiry <= allocation.credential_expiry {
            return;
        }
        allocation.username.clone_from(&caller.username);
        allocation.credential_expiry = caller.expiry;
        allocation.credential_until =
            now.instant + Duration::from_secs(caller.expiry.saturating_sub(now.unix_secs));
        let expires = allocation.update_expiry();
        self.expiries.push(std::cmp::Reverse((expires, client)));
        tracing::debug!(%client, user = caller.user(), expiry = caller.expiry, "allocation moved to renewed credentials");
    }

    /// Whether the portal revoked these credentials (see [`Server::revoke`]).
    fn is_revoked(&self, username: &str, expiry: u64) -> bool {
        rest_id(username)
            .and_then(|id| self.revoked.get(id))
            .is_some_and(|not_after| expiry <= *not_after)
    }

    /// Adds SOFTWARE (when configured), the integrity of the request's kind when it was
    /// authenticated, and FINGERPRINT when the request had one.
    pub(super) fn finish(
        &self,
        mut buf: Vec<u8>,
        request: &Message<'_>,
        caller: Option<&Caller>,
    ) -> Vec<u8> {
        let mut writer = MessageWriter::resume(&mut buf, 0);
        if let Some(software) = &self.config.software {
            writer.attr(attr::SOFTWARE, software.as_bytes());
        }
        match caller {
            Some(Caller {
                key,
                integrity: Integrity::Sha256,
                ..
            }) => {
                writer.integrity_sha256(key);
            }
            Some(Caller { key, .. }) => {
                writer.integrity_sha1(key);
            }
            None => {}
        }
        if request.verify_fingerprint().is_some() {
            writer.fingerprint();
        }
        buf
    }

    pub(super) fn error(
        &self,
        request: &Message<'_>,
        caller: Option<&Caller>,
        error: u16,
    ) -> Vec<u8> {
        tracing::debug!(
            method = request.method(),
            error,
            user = caller.map(|c| c.username.as_str()),
            "request refused"
        );
        let mut buf = Vec::with_capacity(128);
        MessageWriter::new(
            &mut buf,
            request.method(),
            Class::Error,
            request.transaction_id(),
        )
        .error_code(error);
        self.finish(buf, request, caller)
    }

    pub(super) fn unknown_attributes(
        &self,
        request: &Message<'_>,
        caller: Option<&Caller>,
        unknown: &[u16],
    ) -> Vec<u8> {
        let mut buf = Vec::with_capacity(128);
        MessageWriter::new(
            &mut buf,
            request.method(),
            Class::Error,
            request.transaction_id(),
        )
        .error_code(code::UNKNOWN_ATTRIBUTE)
        .unknown_attributes(unknown);
        self.finish(buf, request, caller)
    }

    /// 401 or 438 with REALM and a fresh NONCE, unsigned.
    pub(super) fn challenge(&self, now: Now, request: &Message<'_>, error: u16) -> Vec<u8> {
        let nonce = self
            .nonces
            .mint(now.unix_secs + self.config.nonce_lifetime.as_secs());
        let mut buf = Vec::with_capacity(128);
        MessageWriter::new(
            &mut buf,
            request.method(),
            Class::Error,
            request.transaction_id(),
        )
        .error_code(error)
        .attr(attr::REALM, self.config.realm.as_bytes())
        .attr(attr::NONCE, nonce.as_bytes());
        self.finish(buf, request, None)
    }
}
