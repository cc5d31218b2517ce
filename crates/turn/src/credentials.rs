//! Long-term credentials as the relay uses them: time-limited TURN REST
//! credentials (the scheme coturn's `use-auth-secret` speaks) and stateless
//! nonces with an expiry.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

/// `expiry:id`: the username of a TURN REST credential valid until `expiry`
/// (Unix seconds).
pub fn rest_username(expiry_unix: u64, id: &str) -> String {
    format!("{expiry_unix}:{id}")
}

/// `base64(HMAC-SHA1(secret, username))`: the password that goes with a
/// TURN REST username.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The expiry of a TURN REST username: the digits before the first `:` (or
/// the whole name), as coturn reads it.
pub fn rest_expiry(username: &str) -> Option<u64> {
    let stamp = username.split(':').next()?;
    if stamp.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stamp.parse().ok()
}

/// Who a TURN REST username is for: the part after `expiry:` (the portal
/// puts a device id there), or `None` for a name without a valid expiry
/// and id. Credentials renewed for the same id are the same user.
pub fn rest_id(username: &str) -> Option<&str> {
    let (_, id) = username.split_once(':')?;
    (rest_expiry(username).is_some() && !id.is_empty()).then_some(id)
}

/// The long-term credential key, `MD5(username ":" realm ":" password)`
/// (RFC 8489 section 9.2.2), for both MESSAGE-INTEGRITY kinds.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    md5.finalize().into()
}

/// What a nonce check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    Valid,
    /// Ours, but past its expiry: answer 438 with a fresh one.
    Stale,
    /// Not ours (or tampered with).
    Invalid,
}

/// Mints and checks nonces without storing them: a nonce is its expiry and a
/// MAC over it, so every worker (and a restarted relay with the same key)
/// can check it.
#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl NonceKey {
    pub fn new(key: [u8; 32]) -> Self {
        NonceKey(key)
    }

    fn tag(&self, expiry: u64) -> [u8; 8] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(&expiry.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&full[..8]);
        tag
    }

    /// A nonce valid until `expiry_unix`: 32 hex digits.
    pub fn mint(&self, expiry_unix: u64) -> String {
        let tag = self.tag(expiry_unix);
        format!("{expiry_unix:016x}{:016x}", u64::from_be_bytes(tag))
    }

    pub fn check(&self, nonce: &str, now_unix: u64) -> NonceState {
        let parsed = (nonce.len() == 32 && nonce.is_ascii())
            .then(|| {
                let expiry = u64::from_str_radix(&nonce[..16], 16).ok()?;
                let tag = u64::from_str_radix(&nonce[16..], 16).ok()?;
                Some((expiry, tag))
            })
            .flatten();
        let Some((expiry, tag)) = parsed else {
            return NonceState::Invalid;
        };
        // Comparing a MAC of a public value: timing reveals nothing useful,
        // but compare without early exit anyway.
        let expected = self.tag(expiry);
        let diff = expected
            .iter()
            .zip(tag.to_be_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        match (diff == 0, expiry > now_unix) {
            (false, _) => NonceState::Invalid,
            (true, true) => NonceState::Valid,
            (true, false) => NonceState::Stale,
        }
    }
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_coturn_s_scheme() {
        // HMAC-SHA1("key", "data") is a published vector; the password is its base64.
        assert_eq!(
            rest_password(b"key", "data"),
            "EEFSxb/coHvGM+69RhmfAlXJ9J0="
        );
        let username = rest_username(1_700_000_000, "client-7");
        assert_eq!(username, "1700000000:client-7");
        assert_eq!(rest_expiry(&username), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice:1700000000"), None);
        assert_eq!(rest_expiry(":x"), None);
        assert_eq!(rest_expiry("99999999999999999999999:x"), None, "overflow");
        assert_eq!(rest_id(&username), Some("client-7"));
        assert_eq!(rest_id("1700000000:a:b"), Some("a:b"));
        for none in ["1700000000", "1700000000:", "alice:x", ":x", "x"] {
            assert_eq!(rest_id(none), None, "{none:?}");
        }
    }

    #[test]
    fn long_term_key_is_md5_of_the_triple() {
        // MD5("user:realm:pass"), computed independently.
        let key = long_term_key("user", "realm", "pass");
        assert_eq!(
            key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "8493fbc53ba582fb4c044c456bdc40eb"
        );
    }

    #[test]
    fn nonces_expire_and_resist_tampering() {
        let key = NonceKey::new([5; 32]);
        let nonce = key.mint(1000);
        assert_eq!(nonce.len(), 32);
        assert_eq!(key.check(&nonce, 999), NonceState::Valid);
        assert_eq!(key.check(&nonce, 1000), NonceState::Stale);
        let mut forged = nonce.clone().into_bytes();
        forged[15] = if forged[15] == b'9' { b'8' } else { b'9' }; // move the expiry
        assert_eq!(
            key.check(std::str::from_utf8(&forged).unwrap(), 0),
            NonceState::Invalid
        );
        assert_eq!(NonceKey::new([6; 32]).check(&nonce, 0), NonceState::Invalid);
        for junk in ["", "zz", "é".repeat(16).as_str(), &"0".repeat(32)] {
            assert_eq!(key.check(junk, 0), NonceState::Invalid, "{junk:?}");
        }
    }
}
