//! WireGuard keys as the control protocol carries them (base64 of 32 bytes),
//! parsed once at the edge: a message with a malformed key does not parse,
//! so no consumer ever sees one.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn decode(text: &str) -> Option<[u8; 32]> {
    STANDARD.decode(text).ok()?.try_into().ok()
}

/// The X25519 public key of a device's current process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

/// The preshared key of one (client, gateway) pair. Its `Debug` never shows
/// the bytes, so it cannot end up in a log line.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PresharedKey(pub [u8; 32]);

impl PublicKey {
    /// From base64 (what the portal and the query string carry).
    pub fn from_base64(text: &str) -> Option<Self> {
        decode(text).map(PublicKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl PresharedKey {
    pub fn from_base64(text: &str) -> Option<Self> {
        decode(text).map(PresharedKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

macro_rules! base64_serde {
    ($name:ident, $what:literal) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_base64())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                $name::from_base64(&text).ok_or_else(|| {
                    serde::de::Error::custom(concat!($what, " is not base64 of 32 bytes"))
                })
            }
        }
    };
}

base64_serde!(PublicKey, "public_key");
base64_serde!(PresharedKey, "preshared_key");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_base64_of_32_bytes_and_nothing_else() {
        let key = PublicKey([7; 32]);
        let text = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&text).unwrap(), key);
        for bad in ["\"AAAA\"", "\"not base64!\"", "17", "\"\""] {
            assert!(serde_json::from_str::<PublicKey>(bad).is_err(), "{bad}");
            assert!(serde_json::from_str::<PresharedKey>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_preshared_key_never_shows_in_debug() {
        let key = PresharedKey([0xab; 32]);
        let shown = format!("{key:?}");
        assert!(
            !shown.contains(&key.to_base64()) && !shown.contains("171"),
            "{shown}"
        );
    }
}
