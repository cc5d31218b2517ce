//! Bearer tokens (SPEC F31, docs/architecture.md, security model). A token
//! reads `<secret>.<id>`: the id finds the row, the secret is checked against a
//! salted SHA-256 hash in constant time. Secrets carry 256 random bits, so a
//! fast hash is enough (no password stretching needed).
//!
//! A client token from a sign-in (review L3) is `<nonce>~<fragment>`, the
//! fragment being `<random>.<id>`. The client keeps its nonce and sends the
//! portal only its challenge, `base64url(SHA-256(nonce))` (PKCE-style); the
//! portal stores the hash of `<challenge>~<random>`. Verifying a presented
//! `<nonce>~<random>` hashes `<challenge_of(nonce)>~<random>`, so SHA-256 of
//! the nonce is checked against the stored challenge, and nothing the browser
//! saw (the challenge, the fragment) makes a token.
//!
//! Client tokens minted before that are `<nonce><random>` (no `~`: nonces
//! were URL-safe base64, and so is every other secret) and were hashed as
//! they are. They keep verifying the old way until they expire (7 days by
//! default; admins can revoke them): invalidating them would sign every
//! device out at the upgrade. The two kinds cannot be confused: a secret
//! without `~` is hashed as presented and a stored new-style hash always
//! covers a `~`; a secret with `~` is always rewritten to a `~` form, which
//! no old-style hash covers.

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

/// What joins a client's nonce and the portal's fragment in a client token.
pub const NONCE_SEPARATOR: char = '~';

/// A client's `client_challenge` for its secret `nonce`:
/// `base64url_nopad(SHA-256(nonce))`.
pub fn challenge_of(nonce: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(nonce.as_bytes()))
}

/// Whether `value` can be a challenge: 43 URL-safe base64 characters (the
/// encoding of 32 bytes).
pub fn valid_challenge(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Mints a token: `<random>.<id>`, shown once.
pub fn mint() -> Result<MintedToken, RandomError> {
    mint_hashing(|random| random.to_string())
}

/// Mints a client token for the client's `challenge`. The minted `token` is
/// only the fragment, `<random>.<id>`; the client's token is
/// `<nonce>~<fragment>`, which the portal never sees until it is presented.
pub fn mint_client(challenge: &str) -> Result<MintedToken, RandomError> {
    mint_hashing(|random| format!("{challenge}{NONCE_SEPARATOR}{random}"))
}

/// Mints with fresh randomness; `hashed` says what of it the stored hash
/// covers.
fn mint_hashing(hashed: impl FnOnce(&str) -> String) -> Result<MintedToken, RandomError> {
    let id = Uuid::new_v4();
    let random = random_secret()?;
    let mut salt = [0u8; 16];
    random_bytes(&mut salt)?;
    let salt = URL_SAFE_NO_PAD.encode(salt);
    let hash = hash(&salt, &hashed(&random));
    Ok(MintedToken {
        id,
        token: format!("{random}.{}", id.simple()),
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

/// Whether `secret` matches the stored salt and hash, in constant time. A
/// client's `<nonce>~<random>` is checked as `<challenge_of(nonce)>~<random>`.
pub fn verify(salt: &str, stored_hash: &str, secret: &str) -> bool {
    let computed = match secret.split_once(NONCE_SEPARATOR) {
        Some((nonce, random)) => hash(
            salt,
            &format!("{}{NONCE_SEPARATOR}{random}", challenge_of(nonce)),
        ),
        None => hash(salt, secret),
    };
    computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_tampered_ones_do_not() {
        let minted = mint().unwrap();
        let (secret, id) = parse(&minted.token).unwrap();
        assert_eq!(id, minted.id);
        assert!(verify(&minted.salt, &minted.hash, secret));
        assert!(!verify(&minted.salt, &minted.hash, &format!("{secret}x")));
        assert!(!verify("other-salt", &minted.hash, secret));
        // 256 bits of randomness: 43 base64 characters.
        assert_eq!(secret.len(), 43);
        assert_ne!(mint().unwrap().hash, minted.hash);
    }

    #[test]
    fn a_client_token_needs_the_nonce_of_the_challenge() {
        let nonce = "client-nonce-0123456789";
        let challenge = challenge_of(nonce);
        assert!(valid_challenge(&challenge));
        let minted = mint_client(&challenge).unwrap();
        let fragment = &minted.token;
        let ok = |token: &str| {
            parse(token).is_some_and(|(secret, id)| {
                id == minted.id && verify(&minted.salt, &minted.hash, secret)
            })
        };
        assert!(ok(&format!("{nonce}~{fragment}")));
        for forged in [
            fragment.clone(),
            format!("{challenge}~{fragment}"),
            format!("{challenge}{fragment}"),
            format!("~{fragment}"),
            format!("{nonce}{fragment}"),
            format!("{nonce}x~{fragment}"),
        ] {
            assert!(!ok(&forged), "{forged}");
        }
    }

    #[test]
    fn old_client_tokens_verify_as_they_were_hashed() {
        // Before review L3 the portal hashed `<nonce><random>` as it was.
        let (nonce, random) = ("old-client-nonce-0123", "r".repeat(43));
        let salt = "salt";
        let stored = hash(salt, &format!("{nonce}{random}"));
        assert!(verify(salt, &stored, &format!("{nonce}{random}")));
        assert!(!verify(salt, &stored, &format!("{nonce}~{random}")));
        assert!(!verify(salt, &stored, &random));
    }

    #[test]
    fn the_challenge_is_base64url_sha256() {
        // RFC 7636 appendix B.
        assert_eq!(
            challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(!valid_challenge("short"));
        assert!(!valid_challenge(&"a~".repeat(22)[..43]));
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
