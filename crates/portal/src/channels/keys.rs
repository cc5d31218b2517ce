//! Secrets the portal hands to a (client, gateway) pair: the WireGuard
//! preshared key and both sides' ICE credentials. They are derived with
//! HMAC-SHA256 from a portal secret over both device ids and both public keys
//! (DESIGN.md section 6), so they are stable while both processes live (a
//! reconnect gets the same ones) and useless to any other key pair.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use postern_model::protocol::{IceCredentials, PairIce};
use sha2::Sha256;
use uuid::Uuid;

/// Which two processes a secret is for.
#[derive(Clone, Copy, Debug)]
pub struct PairIds<'a> {
    pub client: Uuid,
    pub client_key: &'a str,
    pub gateway: Uuid,
    pub gateway_key: &'a str,
}

pub struct PairSecrets {
    secret: [u8; 32],
}

impl PairSecrets {
    pub fn new(secret: [u8; 32]) -> Self {
        PairSecrets { secret }
    }

    fn derive(&self, label: &str, pair: PairIds<'_>) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for part in [
            label.as_bytes(),
            pair.client.as_bytes(),
            pair.client_key.as_bytes(),
            pair.gateway.as_bytes(),
            pair.gateway_key.as_bytes(),
        ] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Base64 of the 32-byte preshared key.
    pub fn preshared_key(&self, pair: PairIds<'_>) -> String {
        STANDARD.encode(self.derive("postern psk v1", pair))
    }

    pub fn ice(&self, pair: PairIds<'_>) -> PairIce {
        let side = |label: &str| {
            let bytes = self.derive(label, pair);
            let text = URL_SAFE_NO_PAD.encode(bytes);
            // RFC 8445: ufrag at least 4 characters, password at least 22.
            IceCredentials {
                username_fragment: text[..8].to_string(),
                password: text[8..32].to_string(),
            }
        };
        PairIce {
            client: side("postern ice client v1"),
            gateway: side("postern ice gateway v1"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_stable_per_pair_and_differ_between_pairs() {
        let secrets = PairSecrets::new([7; 32]);
        let pair = PairIds {
            client: Uuid::from_u128(1),
            client_key: "client-key",
            gateway: Uuid::from_u128(2),
            gateway_key: "gateway-key",
        };
        assert_eq!(secrets.preshared_key(pair), secrets.preshared_key(pair));
        let psk = STANDARD.decode(secrets.preshared_key(pair)).unwrap();
        assert_eq!(psk.len(), 32);
        let other_key = PairIds {
            gateway_key: "restarted-gateway",
            ..pair
        };
        assert_ne!(
            secrets.preshared_key(pair),
            secrets.preshared_key(other_key)
        );
        let ice = secrets.ice(pair);
        assert_ne!(ice.client, ice.gateway);
        assert_eq!(ice.client.password.len(), 24);
        assert_ne!(
            PairSecrets::new([8; 32]).preshared_key(pair),
            secrets.preshared_key(pair)
        );
    }
}
