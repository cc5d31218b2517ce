//! ICE candidates (SPEC section 5, `ice_candidates` both ways): the portal
//! passes them only between the two ends of a grant or a pending request
//! (or, for a gateway here, of a pair another node made), so no device can
//! reach another it was not paired with.

use postern_model::protocol::{PortalToClient, PortalToGateway};
use postern_model::{ClientId, GatewayId};
use uuid::Uuid;

use super::access::Access;
use super::io::ConnId;
use super::post::Post;
use super::presence::ConnKind;

/// Passes candidates to the peer, only between the two ends of a grant
/// or a pending request (or, for a gateway here, of a pair another node
/// made).
pub(super) fn forward(
    access: &Access,
    from: ConnId,
    peer: Uuid,
    candidates: Vec<String>,
    removed: bool,
    post: &mut Post,
) {
    let sender = match &post.presence().get(from).map(|c| &c.kind) {
        Some(ConnKind::Client { device, .. }) => Sender::Client(ClientId(device.id)),
        Some(ConnKind::Gateway { device, .. }) => Sender::Gateway(GatewayId(device.id)),
        Some(ConnKind::Relay) | None => return,
    };
    if candidates.len() > 64 || candidates.iter().any(|c| c.len() > 512) {
        post.error(from, None, "too many or too long candidates".to_string());
        return;
    }
    match sender {
        Sender::Client(me) => {
            let peer = GatewayId(peer);
            if !access.paired(me, peer) {
                return;
            }
            let message = if removed {
                PortalToGateway::IceCandidatesRemoved {
                    peer_id: me,
                    candidates,
                }
            } else {
                PortalToGateway::IceCandidates {
                    peer_id: me,
                    candidates,
                }
            };
            post.deliver_to_gateway(peer, message);
        }
        Sender::Gateway(me) => {
            let peer = ClientId(peer);
            let message = if removed {
                PortalToClient::IceCandidatesRemoved {
                    peer_id: me,
                    candidates,
                }
            } else {
                PortalToClient::IceCandidates {
                    peer_id: me,
                    candidates,
                }
            };
            if access.paired(peer, me) {
                post.deliver_to_client(peer, message);
            } else if let Some(node) = post.routing().pair_node(peer, me) {
                post.deliver_to_remote_client(node, peer, message);
            }
        }
    }
}

enum Sender {
    Client(ClientId),
    Gateway(GatewayId),
}
