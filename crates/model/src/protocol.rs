//! The control protocol (DESIGN.md section 5, SPEC section 5): JSON text
//! frames over WebSockets, `{"type": ..., ...}`, with `ref` echoing requests.
//! Unknown fields are ignored for forward compatibility; an unknown `type`
//! fails to parse and the receiver decides (the portal answers `error`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::filter::Filter;
use crate::resource::ResourceType;

/// A device's tunnel interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Upstream resolvers the portal configured (empty: keep the system's).
    #[serde(default)]
    pub dns_upstreams: Vec<IpAddr>,
    #[serde(default)]
    pub search_domain: Option<String>,
}

/// A resource as clients and gateways see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescription {
    pub id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ResourceType,
    pub address: Option<String>,
    #[serde(default)]
    pub address_description: Option<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    pub site_id: Uuid,
}

/// A TURN relay with time-limited credentials (TURN REST scheme).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayInfo {
    pub id: Uuid,
    pub addresses: Vec<SocketAddr>,
    pub username: String,
    pub password: String,
    pub expires_at: Timestamp,
}

/// ICE username fragment and password of one side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCredentials {
    pub username_fragment: String,
    pub password: String,
}

/// Both sides' ICE credentials for one (client, gateway) pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairIce {
    pub client: IceCredentials,
    pub gateway: IceCredentials,
}

/// A peer device (the other end of a tunnel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub id: Uuid,
    /// Base64 of the 32-byte X25519 key of the peer's current process.
    pub public_key: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// One (client, resource) authorization a gateway enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub client: Peer,
    pub resource: ResourceDescription,
    /// Base64 of the 32-byte WireGuard preshared key of the pair.
    pub preshared_key: String,
    pub ice: PairIce,
    pub expires_at: Option<Timestamp>,
}

/// Why access was denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// Policies do not allow it; `violated` names the failing conditions.
    Forbidden,
    /// No gateway of the resource's site is online (or none answered in time).
    Offline,
    /// The resource does not exist or is not offered to this client.
    NotFound,
}

/// Why the portal closes a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// Revoked token, disabled or deleted actor, deleted device: do not retry.
    TokenRevoked,
    /// The token expired: sign in again.
    TokenExpired,
    /// The connection could not keep up with its messages: reconnect.
    Overloaded,
    /// The portal is shutting down: reconnect with backoff.
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PortalToClient {
    Init {
        interface: Interface,
        resources: Vec<ResourceDescription>,
        relays: Vec<RelayInfo>,
    },
    ResourceUpserted {
        resource: ResourceDescription,
    },
    ResourceRemoved {
        id: Uuid,
    },
    RelaysChanged {
        added: Vec<RelayInfo>,
        removed: Vec<Uuid>,
    },
    AccessGranted {
        #[serde(rename = "ref")]
        reference: String,
        resource_id: Uuid,
        gateway: Peer,
        preshared_key: String,
        ice: PairIce,
        expires_at: Option<Timestamp>,
    },
    AccessDenied {
        #[serde(rename = "ref")]
        reference: String,
        resource_id: Uuid,
        reason: DenyReason,
        /// For `forbidden`: the condition properties that failed (empty when
        /// no policy applies at all).
        #[serde(default)]
        violated: Vec<String>,
    },
    IceCandidates {
        peer_id: Uuid,
        candidates: Vec<String>,
    },
    IceCandidatesRemoved {
        peer_id: Uuid,
        candidates: Vec<String>,
    },
    AccessRevoked {
        resource_id: Uuid,
    },
    Disconnect {
        reason: DisconnectReason,
    },
    Error {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientToPortal {
    RequestAccess {
        #[serde(rename = "ref")]
        reference: String,
        resource_id: Uuid,
        #[serde(default)]
        connected_gateway_ids: Vec<Uuid>,
    },
    IceCandidates {
        peer_id: Uuid,
        candidates: Vec<String>,
    },
    IceCandidatesRemoved {
        peer_id: Uuid,
        candidates: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PortalToGateway {
    Init {
        interface: Interface,
        relays: Vec<RelayInfo>,
        /// What this gateway enforced before a reconnect (resync).
        authorizations: Vec<Authorization>,
    },
    Authorize {
        #[serde(rename = "ref")]
        reference: String,
        #[serde(flatten)]
        authorization: Box<Authorization>,
    },
    Revoke {
        client_id: Uuid,
        resource_id: Uuid,
    },
    ResourceUpdated {
        resource: ResourceDescription,
    },
    IceCandidates {
        peer_id: Uuid,
        candidates: Vec<String>,
    },
    IceCandidatesRemoved {
        peer_id: Uuid,
        candidates: Vec<String>,
    },
    RelaysChanged {
        added: Vec<RelayInfo>,
        removed: Vec<Uuid>,
    },
    Disconnect {
        reason: DisconnectReason,
    },
    Error {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GatewayToPortal {
    Authorized {
        #[serde(rename = "ref")]
        reference: String,
    },
    IceCandidates {
        peer_id: Uuid,
        candidates: Vec<String>,
    },
    IceCandidatesRemoved {
        peer_id: Uuid,
        candidates: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayToPortal {
    Register {
        public_addresses: Vec<IpAddr>,
        port: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PortalToRelay {
    /// The first message; the relay answers with `register`.
    Init {},
    /// The shared secret for TURN REST credentials.
    Registered {
        relay_id: Uuid,
        auth_secret: String,
    },
    Disconnect {
        reason: DisconnectReason,
    },
    Error {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        message: String,
    },
}

/// The fuzz entry point (crates/model/fuzz): every message kind is parsed
/// from `data`; what parses must serialize and parse back to itself. Returns
/// how many kinds parsed it.
pub fn fuzz_one(data: &[u8]) -> usize {
    fn round_trip<T>(data: &[u8]) -> usize
    where
        T: serde::de::DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
    {
        let Ok(message) = serde_json::from_slice::<T>(data) else {
            return 0;
        };
        let text = serde_json::to_vec(&message).expect("a parsed message serializes");
        let again: T = serde_json::from_slice(&text).expect("a serialized message parses");
        assert_eq!(again, message);
        1
    }
    round_trip::<PortalToClient>(data)
        + round_trip::<ClientToPortal>(data)
        + round_trip::<PortalToGateway>(data)
        + round_trip::<GatewayToPortal>(data)
        + round_trip::<RelayToPortal>(data)
        + round_trip::<PortalToRelay>(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_uses_type_and_ref_and_ignores_unknown_fields() {
        let message: ClientToPortal = serde_json::from_str(
            r#"{"type": "request_access", "ref": "7", "resource_id": "00000000-0000-0000-0000-000000000001", "future_field": 1}"#,
        )
        .unwrap();
        assert_eq!(
            message,
            ClientToPortal::RequestAccess {
                reference: "7".into(),
                resource_id: Uuid::from_u128(1),
                connected_gateway_ids: vec![],
            }
        );
        assert!(serde_json::from_str::<ClientToPortal>(r#"{"type": "teleport"}"#).is_err());
        let denied = serde_json::to_value(PortalToClient::AccessDenied {
            reference: "7".into(),
            resource_id: Uuid::from_u128(1),
            reason: DenyReason::Forbidden,
            violated: vec!["time".into()],
        })
        .unwrap();
        assert_eq!(denied["type"], "access_denied");
        assert_eq!(denied["ref"], "7");
        assert_eq!(denied["reason"], "forbidden");
    }
}
