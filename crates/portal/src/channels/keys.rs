//! Secrets the portal hands to a (client, gateway) pair: the WireGuard
//! preshared key and both sides' ICE credentials. They are derived with
//! HMAC-SHA256 from a portal secret over both device ids and both public keys
//! (docs/architecture.md, security model), so they are stable while both
//! processes live (a reconnect gets the same ones) and useless to any other key
//! pair.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use postern_model::protocol::{IceCredentials, PairIce};
use postern_model::{ClientId, GatewayId, PresharedKey, PublicKey};
use sha2::Sha256;

/// Which two processes a secret is for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PairIds<'a> {
    pub client: ClientId,
    pub client_key: &'a PublicKey,
    pub gateway: GatewayId,
    pub gateway_key: &'a PublicKey,
}

pub(crate) struct PairSecrets {
    secret: [u8; 32],
}

impl PairSecrets {
    pub(crate) fn new(secret: [u8; 32]) -> Self {
        PairSecrets { secret }
    }

    fn derive(&self, label: &str, pair: PairIds<'_>) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        // The keys enter as their base64 text, as they always have.
        let (client_key, gateway_key) = (pair.client_key.to_base64(), pair.gateway_key.to_base64());
        for part in [
            label.as_bytes(),
            pair.client.0.as_bytes(),
            client_key.as_bytes(),
            pair.gateway.0.as_bytes(),
            gateway_key.as_bytes(),
        ] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    pub(crate) fn preshared_key(&self, pair: PairIds<'_>) -> PresharedKey {
        PresharedKey(self.derive("postern psk v1", pair))
    }

    pub(crate) fn ice(&self, pair: PairIds<'_>) -> PairIce {
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
            client: ClientId::from_u128(1),
            client_key: &PublicKey([1; 32]),
            gateway: GatewayId::from_u128(2),
            gateway_key: &PublicKey([2; 32]),
        };
        assert_eq!(secrets.preshared_key(pair), secrets.preshared_key(pair));
        let other_key = PairIds {
            gateway_key: &PublicKey([3; 32]),
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
