//! One live channel per device: the same device back on a new connection
//! replaces its old one; a second device under the same id with another
//! key (a copied state directory, a cloned VM image) is refused and the
//! first is left alone.

use postern_model::protocol::{DisconnectReason, PortalToClient, PortalToGateway};

use super::*;

#[test]
fn a_second_gateway_with_the_same_id_and_another_key_is_refused_and_the_first_stays() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    w.grant();
    for attempt in 0..3 {
        let conn = 10 + attempt;
        let out = w.join_gateway(conn, SITE, GATEWAY, 7);
        assert_eq!(
            gateway_frames(&out, conn),
            vec![PortalToGateway::Disconnect {
                reason: DisconnectReason::DuplicateDevice
            }],
            "the second is told why"
        );
        assert!(out.contains(&Output::Close { conn }));
        assert!(
            !out.contains(&Output::Close { conn: 2 }) && gateway_frames(&out, 2).is_empty(),
            "the first is not touched: {out:?}"
        );
        assert!(
            client_frames(&out, 1).is_empty(),
            "no flap for the client: {out:?}"
        );
    }
    // The first still serves: a new request goes to it.
    let out = w.input(request(1, "again", resource(1).id));
    assert!(
        gateway_frames(&out, 2)
            .iter()
            .any(|m| matches!(m, PortalToGateway::Authorize { .. })),
        "{out:?}"
    );
}

#[test]
fn a_second_client_with_the_same_id_and_another_key_is_refused() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    let out = w.input(client(5, ACCOUNT, CLIENT, 9));
    assert_eq!(
        client_frames(&out, 5),
        vec![PortalToClient::Disconnect {
            reason: DisconnectReason::DuplicateDevice
        }]
    );
    assert!(out.contains(&Output::Close { conn: 5 }));
    assert!(!out.contains(&Output::Close { conn: 1 }), "{out:?}");
}

#[test]
fn the_same_client_back_on_a_new_connection_replaces_the_old_one() {
    // A laptop that moved: its process and key are the same, the old
    // connection (on the old network) is dead but not yet noticed.
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    let out = w.input(client(5, ACCOUNT, CLIENT, 1));
    assert!(init_of_client(&out, 5).is_some(), "{out:?}");
    assert!(out.contains(&Output::Close { conn: 1 }));
    assert_eq!(
        client_frames(&out, 1),
        vec![PortalToClient::Disconnect {
            reason: DisconnectReason::Shutdown
        }]
    );
}
