//! The control protocol (docs/architecture.md, control protocol): JSON text
//! frames over WebSockets, `{"type": ..., ...}`, with `ref`
//! echoing requests. Unknown fields are ignored for forward compatibility; an
//! unknown `type` fails to parse and the receiver decides (the portal answers
//! `error`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::filter::Filter;
use crate::ids::{ClientId, GatewayId, RelayId, ResourceId, SiteId};
use crate::keys::{PresharedKey, PublicKey};
use crate::resource::{AddressError, ResourceAddress, ResourceType};

/// A list whose elements that do not parse are left out (and logged): one
/// resource of a type this version does not know, or one malformed
/// authorization, must not sink the whole `init` it came in.
fn lenient<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let values = Vec::<serde_json::Value>::deserialize(deserializer)?;
    let mut parsed = Vec::with_capacity(values.len());
    for value in values {
        match serde_json::from_value(value) {
            Ok(item) => parsed.push(item),
            Err(error) => {
                tracing::warn!(%error, "an element the portal sent does not parse; left out")
            }
        }
    }
    Ok(parsed)
}

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

/// A resource as clients and gateways see it. The address is validated
/// when the message is parsed (the same rules as the REST API), so a device
/// never routes or authorizes a prefix the portal could not have accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireResource", into = "WireResource")]
pub struct ResourceDescription {
    pub id: ResourceId,
    pub name: String,
    pub address: ResourceAddress,
    pub address_description: Option<String>,
    pub filters: Vec<Filter>,
    pub site_id: SiteId,
}

impl ResourceDescription {
    pub fn kind(&self) -> ResourceType {
        self.address.kind()
    }
}

/// A resource as the JSON carries it: `type` and `address` side by side.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct WireResource {
    id: ResourceId,
    name: String,
    #[serde(rename = "type")]
    kind: ResourceType,
    address: Option<String>,
    #[serde(default)]
    address_description: Option<String>,
    #[serde(default)]
    filters: Vec<Filter>,
    site_id: SiteId,
    /// The internet resource's exclusions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exclusions: Vec<ipnet::IpNet>,
}

impl TryFrom<WireResource> for ResourceDescription {
    type Error = AddressError;

    fn try_from(wire: WireResource) -> Result<Self, Self::Error> {
        let exclusions: Vec<String> = wire.exclusions.iter().map(|n| n.to_string()).collect();
        Ok(ResourceDescription {
            address: ResourceAddress::parse_with_exclusions(
                wire.kind,
                wire.address.as_deref(),
                &exclusions,
            )?,
            id: wire.id,
            name: wire.name,
            address_description: wire.address_description,
            filters: wire.filters,
            site_id: wire.site_id,
        })
    }
}

impl From<ResourceDescription> for WireResource {
    fn from(resource: ResourceDescription) -> Self {
        WireResource {
            kind: resource.address.kind(),
            address: resource.address.to_text(),
            exclusions: resource.address.exclusions().to_vec(),
            id: resource.id,
            name: resource.name,
            address_description: resource.address_description,
            filters: resource.filters,
            site_id: resource.site_id,
        }
    }
}

/// A TURN relay with time-limited credentials (TURN REST scheme).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayInfo {
    pub id: RelayId,
    pub addresses: Vec<SocketAddr>,
    pub username: String,
    pub password: String,
    pub expires_at: Timestamp,
    /// TURN over TLS, for devices on networks that let only HTTPS out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RelayTls>,
}

/// Where a relay takes TURN over TLS: this port on each of its addresses,
/// its certificate issued to `name` (or, without one, to the address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayTls {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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

/// A peer device (the other end of a tunnel): a gateway for a client, a
/// client for a gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer<Id> {
    pub id: Id,
    /// The X25519 key of the peer's current process (base64 on the wire).
    pub public_key: PublicKey,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl<Id> Peer<Id> {
    /// Both tunnel addresses.
    pub fn addresses(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.ipv4), IpAddr::V6(self.ipv6)]
    }
}

/// One (client, resource) authorization a gateway enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub client: Peer<ClientId>,
    pub resource: ResourceDescription,
    /// The WireGuard preshared key of the pair (base64 on the wire).
    pub preshared_key: PresharedKey,
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
    /// Another device with this device id and another key is connected (a
    /// copied state directory, a cloned VM image): this one is refused,
    /// the first keeps serving. Retry with backoff; give it its own id.
    DuplicateDevice,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PortalToClient {
    Init {
        interface: Interface,
        #[serde(deserialize_with = "lenient")]
        resources: Vec<ResourceDescription>,
        #[serde(deserialize_with = "lenient")]
        relays: Vec<RelayInfo>,
    },
    ResourceUpserted {
        resource: ResourceDescription,
    },
    ResourceRemoved {
        id: ResourceId,
    },
    RelaysChanged {
        #[serde(deserialize_with = "lenient")]
        added: Vec<RelayInfo>,
        removed: Vec<RelayId>,
    },
    AccessGranted {
        #[serde(rename = "ref")]
        reference: String,
        resource_id: ResourceId,
        gateway: Peer<GatewayId>,
        preshared_key: PresharedKey,
        ice: PairIce,
        expires_at: Option<Timestamp>,
    },
    AccessDenied {
        #[serde(rename = "ref")]
        reference: String,
        resource_id: ResourceId,
        reason: DenyReason,
        /// For `forbidden`: the condition properties that failed (empty when
        /// no policy applies at all).
        #[serde(default)]
        violated: Vec<String>,
    },
    IceCandidates {
        peer_id: GatewayId,
        candidates: Vec<String>,
    },
    IceCandidatesRemoved {
        peer_id: GatewayId,
        candidates: Vec<String>,
    },
    AccessRevoked {
        resource_id: ResourceId,
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
        resource_id: ResourceId,
        #[serde(default)]
        connected_gateway_ids: Vec<GatewayId>,
    },
    IceCandidates {
        peer_id: GatewayId,
        candidates: Vec<String>,
    },
    IceCandidatesRemoved {
        peer_id: GatewayId,
        candidates: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PortalToGateway {
    Init {
        interface: Interface,
        #[serde(deserialize_with = "lenient")]
        relays: Vec<RelayInfo>,
        /// What this gateway enforced before a reconnect (resync).
        #[serde(deserialize_with = "lenient")]
        authorizations: Vec<Authorization>,
    },
    Authorize {
        #[serde(rename = "ref")]
        reference: String,
        #[serde(flatten)]
        authorization: Box<Authorization>,
    },
    Revoke {
        client_id: ClientId,
        resource_id: ResourceId,
    },
    ResourceUpdated {
        resource: ResourceDescription,
    },
    IceCandidates {
        peer_id: ClientId,
        candidates: Vec<String>,
    },
    IceCandidatesRemoved {
        peer_id: ClientId,
        candidates: Vec<String>,
    },
    RelaysChanged {
        #[serde(deserialize_with = "lenient")]
        added: Vec<RelayInfo>,
        removed: Vec<RelayId>,
    },
    Disconnect {
        reason: DisconnectReason,
    },
    Error {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        message: String,
    },
    /// The `flows` batch `batch` is stored: the gateway forgets it (until
    /// then it keeps it, and sends it again after a reconnect).
    FlowsStored {
        batch: u64,
    },
}

/// One ended flow through a gateway (SPEC 7.5), as the client saw it:
/// `source` is the client's tunnel address and port, `destination` the
/// resource's real address and port (port 0 for protocols without ports).
/// Bytes are IP packet lengths: `bytes_out` from the client, `bytes_in`
/// toward it. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub client_id: ClientId,
    pub resource_id: ResourceId,
    pub protocol: u8,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub started_ms: i64,
    pub ended_ms: i64,
}

/// Flows one `flows` message carries at most (the portal refuses more): a
/// full batch of the longest records (IPv6 addresses, the largest
/// numbers) stays under the portal's 64 KiB message limit.
pub const MAX_FLOWS_PER_BATCH: usize = 150;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GatewayToPortal {
    Authorized {
        #[serde(rename = "ref")]
        reference: String,
    },
    IceCandidates {
        peer_id: ClientId,
        candidates: Vec<String>,
    },
    IceCandidatesRemoved {
        peer_id: ClientId,
        candidates: Vec<String>,
    },
    /// Ended flows (the flow log, SPEC 7.5), at most
    /// [`MAX_FLOWS_PER_BATCH`]; the portal answers `flows_stored`.
    Flows { batch: u64, flows: Vec<FlowRecord> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayToPortal {
    Register {
        public_addresses: Vec<IpAddr>,
        port: u16,
        /// TURN over TLS (`--tls-listen`), if the relay takes it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<RelayTls>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PortalToRelay {
    /// The first message; the relay answers with `register`.
    Init {},
    /// The shared secret for TURN REST credentials.
    Registered {
        relay_id: RelayId,
        auth_secret: String,
    },
    /// Devices whose access ended (revoked token, deleted device, disabled
    /// actor): the relay ends their allocations and refuses their TURN
    /// credentials that expire at or before `not_after` (every one issued
    /// so far; later ones, after a new sign-in, work).
    RevokeCredentials {
        ids: Vec<uuid::Uuid>,
        not_after: Timestamp,
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

/// The fuzz entry point (crates/model/fuzz, feature `fuzzing`, never in a
/// release build): every message kind is parsed
/// from `data`; what parses must serialize and parse back to itself. Returns
/// how many kinds parsed it.
#[cfg(feature = "fuzzing")]
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
                resource_id: ResourceId::from_u128(1),
                connected_gateway_ids: vec![],
            }
        );
        assert!(serde_json::from_str::<ClientToPortal>(r#"{"type": "teleport"}"#).is_err());
        let denied = serde_json::to_value(PortalToClient::AccessDenied {
            reference: "7".into(),
            resource_id: ResourceId::from_u128(1),
            reason: DenyReason::Forbidden,
            violated: vec!["time".into()],
        })
        .unwrap();
        assert_eq!(denied["type"], "access_denied");
        assert_eq!(denied["ref"], "7");
        assert_eq!(denied["reason"], "forbidden");
    }

    fn resource_json(kind: &str, address: &str) -> String {
        format!(
            r#"{{"id": "00000000-0000-0000-0000-000000000001", "name": "r", "type": "{kind}",
                "address": {address}, "site_id": "00000000-0000-0000-0000-000000000002"}}"#
        )
    }

    #[test]
    fn one_bad_resource_does_not_sink_the_whole_init() {
        let init = format!(
            r#"{{"type": "init",
                "interface": {{"ipv4": "100.64.0.2", "ipv6": "fd7e:5057:6e00::2"}},
                "resources": [{}, {}, {}],
                "relays": []}}"#,
            resource_json("cidr", r#""10.0.0.0/24""#),
            resource_json("teleporter", r#""somewhere""#),
            resource_json("cidr", r#""127.0.0.0/8""#),
        );
        let PortalToClient::Init { resources, .. } = serde_json::from_str(&init).unwrap() else {
            panic!("an init");
        };
        assert_eq!(
            resources.len(),
            1,
            "the good one stays, the others are left out"
        );
    }

    #[test]
    fn resource_addresses_are_checked_when_parsed() {
        let resource: ResourceDescription =
            serde_json::from_str(&resource_json("cidr", r#""10.1.2.3/24""#)).unwrap();
        assert_eq!(resource.kind(), ResourceType::Cidr);
        assert_eq!(resource.address.to_text().as_deref(), Some("10.1.2.0/24"));
        let wire = serde_json::to_value(&resource).unwrap();
        assert_eq!(
            (wire["type"].as_str(), wire["address"].as_str()),
            (Some("cidr"), Some("10.1.2.0/24"))
        );
        // What the REST API would refuse, a device refuses too: a portal (or
        // anyone on the path) cannot route Postern's own ranges or loopback
        // into the tunnel.
        for (kind, address) in [
            ("cidr", r#""100.64.0.0/10""#),
            ("cidr", r#""0.0.0.0/0""#),
            ("ip", r#""127.0.0.1""#),
            ("dns", r#""*.com""#),
            ("cidr", "null"),
            ("internet", r#""0.0.0.0/0""#),
        ] {
            assert!(
                serde_json::from_str::<ResourceDescription>(&resource_json(kind, address)).is_err(),
                "{kind} {address}"
            );
        }
        let internet: ResourceDescription =
            serde_json::from_str(&resource_json("internet", "null")).unwrap();
        assert_eq!(internet.address, ResourceAddress::Internet(Vec::new()));
    }

    #[test]
    fn a_relay_revocation_names_devices_and_a_bound_on_expiry() {
        let message: PortalToRelay = serde_json::from_str(
            r#"{"type":"revoke_credentials","ids":["6a1f0d52-3a4b-4c1e-9a0e-2b7c9d1e4f30"],"not_after":"2026-05-01T12:15:00Z"}"#,
        )
        .unwrap();
        let PortalToRelay::RevokeCredentials { ids, not_after } = message else {
            panic!("{message:?}");
        };
        assert_eq!(ids.len(), 1);
        assert_eq!(not_after.as_second(), 1_777_637_700);
        // A malformed id is an error, not a revocation of someone else.
        assert!(
            serde_json::from_str::<PortalToRelay>(
                r#"{"type":"revoke_credentials","ids":["nope"],"not_after":"2026-05-01T12:15:00Z"}"#
            )
            .is_err()
        );
    }
}
