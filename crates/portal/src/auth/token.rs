//! Bearer tokens (SPEC F31, docs/architecture.md, security model). A token
//! reads `<secret>.<id>`: the id finds the row, the secret is checked against a
//! salted SHA-256 hash in constant time. Secrets carry 256 random bits, so a
//! fast hash is enough (no password stretching needed). A client token from a
//! sign-in is `<nonce><fragment>` where the fragment is `<random>.<id>`: the
//! portal hashed nonce and random together, so the fragment alone is useless.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::domain::MintedToken;

#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed: {0}")]
pub struct RandomError(String);

/// Fills `buf` from the operating system's generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(|e| RandomError(e.to_string()))
}

/// A random 256-bit secret, URL-safe base64.
pub fn random_secret() -> Result<String, RandomError> {
    let mut secret = [0u8; 32];
    random_bytes(&mut secret)?;
    Ok(URL_SAFE_NO_PAD.encode(secret))
}

/// Mints a token whose secret is `prefix` (a client's nonce, or empty) joined
/// with fresh randomness.
pub fn mint(prefix: &str) -> Result<MintedToken, RandomError> {
    let id = Uuid::new_v4();
    let random = random_secret()?;
    let mut salt = [0u8; 16];
    random_bytes(&mut salt)?;
    let salt = URL_SAFE_NO_PAD.encode(salt);
    let secret = format!("{prefix}{random}");
    let hash = hash(&salt, &secret);
    Ok(MintedToken {
        id,
        token: format!("{secret}.{}", id.simple()),
        salt,
        hash,
    })
}

/// Splits a presented token into (secret, id); `None` if it cannot be one of
/// ours.
pub fn parse(token: &str) -> Option<(&str, Uuid)> {
    if token.len() > 1024 {
        return None;
    }
    let (secret, id) = token.rsplit_once('.')?;
    if secret.is_empty() {
        return None;
    }
    Some((secret, Uuid::try_parse(id).ok()?))
}

pub fn hash(salt: &str, secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update([0u8]);
    hasher.update(secret.as_bytes());
    URL_SAFE_NO_PAD.encode(hasher.finalize())
}

/// Whether `secret` matches the stored salt and hash, in constant time.
pub fn verify(salt: &str, stored_hash: &str, secret: &str) -> bool {
    let computed = hash(salt, secret);
    computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_tampered_ones_do_not() {
        let minted = mint("").unwrap();
        let (secret, id) = parse(&minted.token).unwrap();
        assert_eq!(id, minted.id);
        assert!(verify(&minted.salt, &minted.hash, secret));
        assert!(!verify(&minted.salt, &minted.hash, &format!("{secret}x")));
        assert!(!verify("other-salt", &minted.hash, secret));
        // 256 bits of randomness: 43 base64 characters.
        assert_eq!(secret.len(), 43);
        assert_ne!(mint("").unwrap().hash, minted.hash);
    }

    #[test]
    fn a_nonce_prefix_is_part_of_the_secret() {
        let minted = mint("client-nonce").unwrap();
        let fragment = minted.token.strip_prefix("client-nonce").unwrap();
        let (without_nonce, _) = parse(fragment).unwrap();
        assert!(!verify(&minted.salt, &minted.hash, without_nonce));
        let (with_nonce, _) = parse(&minted.token).unwrap();
        assert!(verify(&minted.salt, &minted.hash, with_nonce));
    }

    #[test]
    fn garbage_is_not_a_token() {
        for garbage in [
            "",
            ".",
            "abc",
            "abc.",
            ".0123",
            "x.not-a-uuid",
            &"a".repeat(2000),
        ] {
            assert!(parse(garbage).is_none(), "{garbage:?}");
        }
    }
}
