//! Relay credentials: none for a device whose right to be here ended
//! (issue 15), and a `RelayRevoke` the relay side could act on.

use std::time::Duration;

use postern_model::RelayId;
use postern_model::protocol::{DisconnectReason, PortalToClient, RelayToPortal};

use super::*;

#[test]
fn a_device_whose_token_expired_gets_no_fresh_relay_credentials() {
    let mut w = World::new();
    // Alice's laptop: its token ends just after the credentials' half-life.
    let Input::Joined(mut joined) = client(1, ACCOUNT, CLIENT, 1) else {
        unreachable!()
    };
    joined.token.expires_at = Some(w.wall + Duration::from_secs(12 * 3600 + 1));
    joined.token.id = Uuid::from_u128(0x71);
    w.input(Input::Joined(joined));
    w.loaded(ACCOUNT, graph(1, &[1]));
    let other = ClientId::from_u128(0xc2);
    w.input(client(7, ACCOUNT, other, 7));
    w.input(super::joined(
        9,
        Party::Relay {
            id: RelayId::from_u128(0x99),
        },
        0,
    ));
    let out = w.input(Input::Message {
        conn: 9,
        message: Inbound::Relay(RelayToPortal::Register {
            public_addresses: vec!["198.51.100.1".parse().unwrap()],
            port: 3478,
        }),
    });
    let changed = |out: &[Output], conn| {
        client_frames(out, conn)
            .iter()
            .any(|m| matches!(m, PortalToClient::RelaysChanged { added, .. } if !added.is_empty()))
    };
    assert!(changed(&out, 1) && changed(&out, 7), "{out:?}");

    w.wait(Duration::from_secs(12 * 3600 + 2));
    let out = w.input(Input::Tick);
    assert!(
        !changed(&out, 1),
        "the expired device got credentials: {out:?}"
    );
    assert!(
        client_frames(&out, 1).contains(&PortalToClient::Disconnect {
            reason: DisconnectReason::TokenExpired
        }),
        "{out:?}"
    );
    assert!(out.contains(&Output::RelayRevoke { device: CLIENT.0 }));
    assert!(changed(&out, 7), "the other client's are renewed: {out:?}");
}
