//! The cluster bus's seal (issue 15, M2). PostgreSQL lets any role that may
//! connect LISTEN and NOTIFY on any channel, so a message on the bus is
//! taken only if it carries an HMAC-SHA256 under a key derived from the
//! portal's secret key (`POSTERN_SECRET_KEY` or the key file: shared by the
//! nodes, never in the database), over the sending node, the time it was
//! sent and the message:
//!
//! ```text
//! v1.<node uuid>.<unix ms>.<base64url HMAC, 43 characters>.<message JSON>
//! HMAC key = HMAC-SHA256(secret key, "postern derive v1\0postern cluster bus v1")
//! HMAC over "postern cluster v1\0" node "\0" unix ms "\0" JSON
//! ```
//!
//! A payload without the prefix, with a MAC that does not verify, sent more
//! than `WINDOW` ago or ahead, or seen before within the window (a replay)
//! is dropped and counted (`postern_portal_cluster_messages_rejected_total`).
//! The seal authenticates; it does not hide: a role that can LISTEN still
//! reads the messages (preshared keys among them), so the database's roles
//! must be kept to the portal's own (docs/architecture.md).

use std::collections::{HashSet, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::secrets::SecretKey;

const VERSION: &str = "v1";
/// How far a message's time may be from the receiver's clock (nodes' clocks
/// are assumed to agree within it).
pub(crate) const WINDOW_MS: i64 = 30_000;
/// Replays are remembered for the window, this many at most.
const MAX_SEEN: usize = 100_000;

/// Why a message from the bus was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// No seal (an old node, or a forger without the key).
    Unsigned,
    /// A seal that does not verify.
    BadMac,
    /// Sent too long ago, or too far ahead.
    Stale,
    /// The very message was heard before.
    Replayed,
    /// Sealed, but not a message this node reads.
    Malformed,
}

impl Rejection {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::BadMac => "bad_mac",
            Rejection::Stale => "stale",
            Rejection::Replayed => "replayed",
            Rejection::Malformed => "malformed",
        }
    }
}

/// Seals and opens bus messages; remembers what it opened, for replays.
pub(crate) struct Seal {
    key: [u8; 32],
    seen: HashSet<[u8; 32]>,
    /// (sent at, MAC) in the order heard, to forget them.
    order: VecDeque<(i64, [u8; 32])>,
}

impl Seal {
    pub(crate) fn new(secret: &SecretKey) -> Self {
        Seal {
            key: secret.derive("postern cluster bus v1"),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    fn mac(&self, node: &str, sent_ms: i64, json: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for part in [node, &sent_ms.to_string(), json] {
            mac.update(b"\0");
            mac.update(part.as_bytes());
        }
        mac.update(b"\0postern cluster v1");
        mac.finalize().into_bytes().into()
    }

    /// The payload for a message `node` sends at `now_ms`.
    pub(crate) fn seal(&self, node: Uuid, now_ms: i64, json: &str) -> String {
        let node = node.hyphenated().to_string();
        let mac = URL_SAFE_NO_PAD.encode(self.mac(&node, now_ms, json));
        format!("{VERSION}.{node}.{now_ms}.{mac}.{json}")
    }

    /// The sender and the message of a payload heard at `now_ms`.
    pub(crate) fn open<'a>(
        &mut self,
        payload: &'a str,
        now_ms: i64,
    ) -> Result<(Uuid, &'a str), Rejection> {
        let mut parts = payload.splitn(5, '.');
        let (Some(VERSION), Some(node), Some(sent), Some(mac), Some(json)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Rejection::Unsigned);
        };
        let given: [u8; 32] = URL_SAFE_NO_PAD
            .decode(mac)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(Rejection::BadMac)?;
        let sent_ms: i64 = sent.parse().map_err(|_| Rejection::BadMac)?;
        let expected = self.mac(node, sent_ms, json);
        // Constant time: the MAC is a secret until it verifies.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&given[..], &expected[..])) {
            return Err(Rejection::BadMac);
        }
        if (now_ms - sent_ms).abs() > WINDOW_MS {
            return Err(Rejection::Stale);
        }
        self.forget_before(now_ms - WINDOW_MS);
        if !self.seen.insert(given) {
            return Err(Rejection::Replayed);
        }
        self.order.push_back((sent_ms, given));
        while self.order.len() > MAX_SEEN {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        let node = Uuid::try_parse(node).map_err(|_| Rejection::Malformed)?;
        Ok((node, json))
    }

    fn forget_before(&mut self, cutoff_ms: i64) {
        while let Some((sent, mac)) = self.order.front().copied() {
            // Heard in about the order sent; one far-future message only
            // delays forgetting, it never keeps a replay out.
            if sent >= cutoff_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&mac);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fresh_messages_sealed_with_the_key_open_once() {
        let key =
            SecretKey::parse(&base64::engine::general_purpose::STANDARD.encode([5u8; 32])).unwrap();
        let mut seal = Seal::new(&key);
        let node = Uuid::from_u128(7);
        let json = r#"{"kind":"gateway_down","from":"x"}"#;
        let payload = seal.seal(node, 1_000_000, json);
        assert_eq!(seal.open(&payload, 1_000_500), Ok((node, json)));
        // The same payload again is a replay.
        assert_eq!(seal.open(&payload, 1_000_600), Err(Rejection::Replayed));
        // Unsigned, tampered, another key, too old, too far ahead.
        assert_eq!(seal.open(json, 1_000_000), Err(Rejection::Unsigned));
        let tampered = payload.replace("gateway_down", "gateway_up__");
        assert_eq!(seal.open(&tampered, 1_000_000), Err(Rejection::BadMac));
        let other =
            SecretKey::parse(&base64::engine::general_purpose::STANDARD.encode([6u8; 32])).unwrap();
        let forged = Seal::new(&other).seal(node, 1_000_000, json);
        assert_eq!(seal.open(&forged, 1_000_000), Err(Rejection::BadMac));
        let old = seal.seal(node, 1_000_000 - WINDOW_MS - 1, json);
        assert_eq!(seal.open(&old, 1_000_000), Err(Rejection::Stale));
        let ahead = seal.seal(node, 1_000_000 + WINDOW_MS + 1, json);
        assert_eq!(seal.open(&ahead, 1_000_000), Err(Rejection::Stale));
        // Another node's sealed message with the node changed does not verify.
        let moved = payload.replace(&node.to_string(), &Uuid::from_u128(8).to_string());
        assert_eq!(seal.open(&moved, 1_000_000), Err(Rejection::BadMac));
    }
}
