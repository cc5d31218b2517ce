//! Channels joining and speaking: `init` first, then each message is parsed
//! for the party's role. Unknown or malformed messages get an `error` frame.

use std::collections::BTreeMap;
use std::time::Instant;

use postern_model::protocol::{
    ClientToPortal, DisconnectReason, GatewayToPortal, PortalToClient, PortalToGateway,
    PortalToRelay, RelayToPortal,
};
use postern_model::{ClientId, GatewayId, RelayId};
use serde::de::DeserializeOwned;

use super::hub::{
    ClientConn, Conn, ConnId, ConnKind, GatewayConn, Hub, NewConnection, Party, RelayConn,
};

/// Messages bigger than this are refused (the socket also caps frames).
pub const MAX_MESSAGE: usize = 64 * 1024;

impl Hub {
    pub(super) async fn connected(&mut self, new: NewConnection) {
        let id = new.id;
        let now = Instant::now();
        match new.party {
            Party::Relay => {
                self.conns.insert(
                    id,
                    Conn {
                        account: None,
                        token_id: new.token.id,
                        token_expires: new.token.expires_at,
                        public_key: new.public_key,
                        remote_ip: new.remote_ip,
                        sender: new.sender,
                        kind: ConnKind::Relay(RelayConn {
                            relay_id: RelayId(uuid::Uuid::new_v4()),
                            addresses: Vec::new(),
                        }),
                        relays_issued: now,
                    },
                );
                self.send(id, &PortalToRelay::Init {});
            }
            Party::Client {
                account,
                actor_id,
                device,
                country,
            } => {
                if !self.ensure_account(account).await {
                    let _ = new.sender.try_send(super::hub::Outbound::Close);
                    return;
                }
                // A second channel of the same device replaces the first.
                let device_id = ClientId(device.id);
                if let Some(old) = self.clients.get(&device_id).copied() {
                    self.disconnect(old, DisconnectReason::Shutdown);
                }
                // Grants made for an earlier process of this device are for
                // its old key.
                let stale: Vec<_> = self
                    .grants
                    .values()
                    .filter(|g| {
                        g.client_device == device_id
                            && g.authorization.client.public_key != new.public_key
                    })
                    .map(|g| (g.client_device, g.authorization.resource.id))
                    .collect();
                for key in stale {
                    self.revoke_grant(key);
                }
                let graph = &self.accounts[&account];
                let visible: BTreeMap<_, _> = graph
                    .visible(actor_id)
                    .into_iter()
                    .map(|r| (r.id, r.clone()))
                    .collect();
                let interface = Hub::interface(&device, graph.search_domain.clone());
                let relays = self.relay_credentials(device.id);
                self.conns.insert(
                    id,
                    Conn {
                        account: Some(account),
                        token_id: new.token.id,
                        token_expires: new.token.expires_at,
                        public_key: new.public_key,
                        remote_ip: new.remote_ip,
                        sender: new.sender,
                        kind: ConnKind::Client(ClientConn {
                            actor_id,
                            device,
                            country,
                            identity_provider: new.token.identity_provider_id,
                            visible: visible.clone(),
                        }),
                        relays_issued: now,
                    },
                );
                self.clients.insert(device_id, id);
                self.state.online().set_client(device_id.0, true);
                self.send_client(
                    id,
                    PortalToClient::Init {
                        interface,
                        resources: visible.into_values().collect(),
                        relays,
                    },
                );
            }
            Party::Gateway {
                account,
                site_id,
                device,
            } => {
                if !self.ensure_account(account).await {
                    let _ = new.sender.try_send(super::hub::Outbound::Close);
                    return;
                }
                let device_id = GatewayId(device.id);
                if let Some(old) = self.gateways.get(&device_id).copied() {
                    self.disconnect(old, DisconnectReason::Shutdown);
                }
                // A restarted gateway has a new key: what it authorized
                // before is void, and its clients must ask again.
                let stale: Vec<_> = self
                    .grants
                    .values()
                    .filter(|g| g.gateway_device == device_id && g.gateway_key != new.public_key)
                    .map(|g| (g.client_device, g.authorization.resource.id))
                    .collect();
                for key in stale {
                    self.revoke_grant(key);
                }
                let authorizations = self
                    .grants
                    .values()
                    .filter(|g| g.gateway_device == device_id)
                    .map(|g| g.authorization.clone())
                    .collect();
                let search_domain = self
                    .accounts
                    .get(&account)
                    .and_then(|graph| graph.search_domain.clone());
                let interface = Hub::interface(&device, search_domain);
                let relays = self.relay_credentials(device.id);
                self.conns.insert(
                    id,
                    Conn {
                        account: Some(account),
                        token_id: new.token.id,
                        token_expires: new.token.expires_at,
                        public_key: new.public_key,
                        remote_ip: new.remote_ip,
                        sender: new.sender,
                        kind: ConnKind::Gateway(GatewayConn { site_id, device }),
                        relays_issued: now,
                    },
                );
                self.gateways.insert(device_id, id);
                self.remote_gateways.remove(&device_id);
                self.refresh_gateway_presence(device_id);
                if let Some(gateway) = self.announcement(device_id) {
                    self.publish(super::cluster::ClusterMessage::GatewayUp {
                        from: self.node,
                        gateway,
                    });
                }
                self.send_gateway(
                    id,
                    PortalToGateway::Init {
                        interface,
                        relays,
                        authorizations,
                    },
                );
            }
        }
        tracing::debug!(conn = id, "channel joined");
    }

    pub(super) async fn message(&mut self, id: ConnId, text: &str) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        match conn.kind {
            ConnKind::Client(_) => {
                if let Some(message) = self.parse::<ClientToPortal>(id, text) {
                    self.client_message(id, message);
                }
            }
            ConnKind::Gateway(_) => {
                if let Some(message) = self.parse::<GatewayToPortal>(id, text) {
                    self.gateway_message(id, message);
                }
            }
            ConnKind::Relay(_) => {
                if let Some(RelayToPortal::Register {
                    public_addresses,
                    port,
                }) = self.parse::<RelayToPortal>(id, text)
                {
                    self.relay_registered(id, public_addresses, port);
                }
            }
        }
    }

    /// Parses a frame; on failure answers with an `error` frame naming the
    /// problem (and the `ref`, if the frame had one).
    fn parse<T: DeserializeOwned>(&mut self, id: ConnId, text: &str) -> Option<T> {
        if text.len() > MAX_MESSAGE {
            self.error(id, None, format!("message larger than {MAX_MESSAGE} bytes"));
            return None;
        }
        match serde_json::from_str::<T>(text) {
            Ok(message) => Some(message),
            Err(error) => {
                let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
                let reference = value
                    .as_ref()
                    .and_then(|v| v.get("ref"))
                    .and_then(|r| r.as_str())
                    .map(str::to_string);
                let kind = value
                    .as_ref()
                    .and_then(|v| v.get("type"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string);
                let message = match (value, kind) {
                    (None, _) => format!("not a JSON message: {error}"),
                    (Some(_), None) => "a message needs a \"type\"".to_string(),
                    (Some(_), Some(kind)) => format!("cannot handle {kind:?}: {error}"),
                };
                self.error(id, reference, message);
                None
            }
        }
    }

    pub(super) fn error(&mut self, id: ConnId, reference: Option<String>, message: String) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        match conn.kind {
            ConnKind::Client(_) => self.send(id, &PortalToClient::Error { reference, message }),
            ConnKind::Gateway(_) => self.send(id, &PortalToGateway::Error { reference, message }),
            ConnKind::Relay(_) => self.send(id, &PortalToRelay::Error { reference, message }),
        }
    }
}
