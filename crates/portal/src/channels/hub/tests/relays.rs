//! Relay credentials: none for a device whose right to be here ended, none
//! outliving the token, and every relay of the cluster told to end the
//! device's allocations and refuse the credentials it got, connected or not
//! (issue 15).

use std::time::Duration;

use jiff::Timestamp;
use postern_model::RelayId;
use postern_model::protocol::{DisconnectReason, PortalToClient, PortalToRelay, RelayToPortal};

use super::*;
use crate::change::Change;
use crate::channels::cluster::ClusterMessage;

/// Half the credentials' lifetime (they are renewed past it).
const HALF_LIFE: Duration = Duration::from_secs(450);

/// A relay joins on `conn` (with a relay token of its own) and registers.
fn relay(w: &mut World, conn: ConnId) -> Vec<Output> {
    let id = RelayId::from_u128(0x90 + conn as u128);
    let Input::Joined(mut joined) = super::joined(conn, Party::Relay { id }, 0) else {
        unreachable!()
    };
    joined.token.id = Uuid::from_u128(0x7e);
    w.input(Input::Joined(joined));
    w.input(Input::Message {
        conn,
        message: Inbound::Relay(RelayToPortal::Register {
            public_addresses: vec!["198.51.100.1".parse().unwrap()],
            port: 3478,
            tls: None,
        }),
    })
}

fn relay_frames(out: &[Output], conn: ConnId) -> Vec<PortalToRelay> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                conn: c,
                frame: Frame::Relay(message),
            } if *c == conn => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn revocations(out: &[Output], conn: ConnId) -> Vec<(Vec<Uuid>, Timestamp)> {
    relay_frames(out, conn)
        .into_iter()
        .filter_map(|m| match m {
            PortalToRelay::RevokeCredentials { ids, not_after } => Some((ids, not_after)),
            _ => None,
        })
        .collect()
}

/// Alice's laptop on conn 1 with the account loaded, and a relay on conn 9.
fn with_client_and_relay(w: &mut World) {
    w.input(client(1, ACCOUNT, CLIENT, 1));
    w.loaded(ACCOUNT, graph(1, &[1]));
    relay(w, 9);
}

/// A revocation's bound: past every credential issued until `wall` (15
/// minutes), rounded up to the minute.
fn assert_bound(bound: Timestamp, wall: Timestamp) {
    let lifetime_later = wall + Duration::from_secs(900);
    assert!(
        bound >= lifetime_later
            && bound < lifetime_later + Duration::from_secs(60)
            && bound.as_second() % 60 == 0
            && bound.subsec_nanosecond() == 0,
        "bound {bound} for a revocation at {wall}"
    );
}

/// The expiry of the credentials a client got in a `relays_changed`.
fn credential_expiries(out: &[Output], conn: ConnId) -> Vec<Timestamp> {
    client_frames(out, conn)
        .into_iter()
        .flat_map(|m| match m {
            PortalToClient::RelaysChanged { added, .. } => {
                added.into_iter().map(|r| r.expires_at).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn a_device_whose_token_expired_gets_no_fresh_relay_credentials() {
    let mut w = World::new();
    // Alice's laptop: its token ends just after the credentials' half-life.
    let Input::Joined(mut joined) = client(1, ACCOUNT, CLIENT, 1) else {
        unreachable!()
    };
    let token_ends = w.wall + HALF_LIFE + Duration::from_secs(1);
    joined.token.expires_at = Some(token_ends);
    joined.token.id = Uuid::from_u128(0x71);
    w.input(Input::Joined(joined));
    w.loaded(ACCOUNT, graph(1, &[1]));
    let other = ClientId::from_u128(0xc2);
    w.input(client(7, ACCOUNT, other, 7));
    let out = relay(&mut w, 9);
    // No credential outlives the token it was given under.
    assert_eq!(credential_expiries(&out, 1), vec![token_ends]);
    assert_eq!(
        credential_expiries(&out, 7),
        vec![w.wall + Duration::from_secs(900)]
    );

    w.wait(HALF_LIFE + Duration::from_secs(2));
    let out = w.input(Input::Tick);
    assert_eq!(
        credential_expiries(&out, 1),
        vec![],
        "the expired device got credentials"
    );
    assert!(
        client_frames(&out, 1).contains(&PortalToClient::Disconnect {
            reason: DisconnectReason::TokenExpired
        }),
        "{out:?}"
    );
    let told = revocations(&out, 9);
    assert_eq!(told.len(), 1, "the relay is told at once: {out:?}");
    assert_eq!(told[0].0, vec![CLIENT.0]);
    assert_bound(told[0].1, w.wall);
    assert_eq!(
        credential_expiries(&out, 7).len(),
        1,
        "the other client's are renewed: {out:?}"
    );
}

#[test]
fn a_revoked_token_ends_the_devices_relaying_at_every_relay() {
    let mut w = World::new();
    with_client_and_relay(&mut w);
    relay(&mut w, 10);
    // The relays hear at once, before the account's graph is reloaded.
    let out = w.input(Input::Changes(vec![(ACCOUNT, Change::TokenRevoked(TOKEN))]));
    let told = revocations(&out, 9);
    assert_eq!(told.len(), 1, "{out:?}");
    assert_eq!(told[0].0, vec![CLIENT.0]);
    assert_bound(told[0].1, w.wall);
    assert_eq!(revocations(&out, 10), told);
    let out = w.loaded(ACCOUNT, graph(1, &[1]));
    assert!(
        client_frames(&out, 1).contains(&PortalToClient::Disconnect {
            reason: DisconnectReason::TokenRevoked
        })
    );
}

#[test]
fn a_device_whose_channel_is_gone_is_revoked_all_the_same() {
    let mut w = World::new();
    with_client_and_relay(&mut w);
    // The laptop's channel drops; it may still hold its allocation.
    w.input(Input::Closed { conn: 1 });
    w.wait(Duration::from_secs(60));
    let out = w.input(Input::Changes(vec![(ACCOUNT, Change::TokenRevoked(TOKEN))]));
    let told = revocations(&out, 9);
    assert_eq!(told.len(), 1, "{out:?}");
    assert_eq!(told[0].0, vec![CLIENT.0]);
    // Another token's revocation names nobody.
    let out = w.input(Input::Changes(vec![(
        ACCOUNT,
        Change::TokenRevoked(Uuid::from_u128(0x7f)),
    )]));
    assert_eq!(revocations(&out, 9), vec![]);
}

#[test]
fn credentials_given_after_a_revocation_outlive_its_bound() {
    let mut w = World::new();
    with_client_and_relay(&mut w);
    let out = w.input(Input::Changes(vec![(ACCOUNT, Change::TokenRevoked(TOKEN))]));
    let bound = revocations(&out, 9)[0].1;
    w.loaded(ACCOUNT, graph(1, &[1]));
    // Signed in again at once, with a new token: the relay refuses
    // credentials that expire at or before the bound (in whole seconds).
    let Input::Joined(mut joined) = client(2, ACCOUNT, CLIENT, 1) else {
        unreachable!()
    };
    joined.token.id = Uuid::from_u128(0x72);
    let out = w.input(Input::Joined(joined));
    let given: Vec<Timestamp> = client_frames(&out, 2)
        .into_iter()
        .flat_map(|m| match m {
            PortalToClient::Init { relays, .. } => {
                relays.into_iter().map(|r| r.expires_at).collect()
            }
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(given.len(), 1, "{out:?}");
    assert!(
        given[0].as_second() > bound.as_second(),
        "{} not past {bound}",
        given[0]
    );
}

#[test]
fn a_relay_that_registers_later_hears_of_revocations_while_they_matter() {
    let mut w = World::new();
    with_client_and_relay(&mut w);
    let out = w.input(Input::Changes(vec![(
        ACCOUNT,
        Change::ClientDeleted(CLIENT.0),
    )]));
    let bound = revocations(&out, 9)[0].1;
    w.loaded(ACCOUNT, graph(1, &[1]));
    // A relay restarted (its allocations and revocations gone): the
    // deleted laptop's credentials are still within their lifetime.
    w.wait(Duration::from_secs(60));
    let out = relay(&mut w, 11);
    assert_eq!(revocations(&out, 11), vec![(vec![CLIENT.0], bound)]);
    // Once every credential issued before the deletion expired, there is
    // nothing left to tell, and nothing is kept.
    w.wait(Duration::from_secs(900));
    w.input(Input::Tick);
    assert_eq!(w.hub.relays.remembered(), (0, 0));
    let out = relay(&mut w, 12);
    assert_eq!(revocations(&out, 12), vec![]);
}

#[test]
fn revocations_cross_the_cluster_to_other_nodes_relays() {
    let mut w = World::clustered();
    with_client_and_relay(&mut w);
    let out = w.input(Input::Changes(vec![(ACCOUNT, Change::TokenRevoked(TOKEN))]));
    let bound = revocations(&out, 9)[0].1;
    assert!(
        out.iter().any(
            |o| matches!(o, Output::Publish(ClusterMessage::RelayRevoke { devices, not_after, .. })
            if devices == &vec![CLIENT.0] && *not_after == bound)
        ),
        "{out:?}"
    );

    // Another node revoked a device: this node's relays hear of it, and a
    // bound past one credential lifetime is cut to it.
    let elsewhere = Uuid::from_u128(0xe1);
    let out = w.input(Input::Cluster(Box::new(ClusterMessage::RelayRevoke {
        from: Uuid::from_u128(0x2),
        devices: vec![elsewhere],
        not_after: w.wall + Duration::from_secs(365 * 24 * 3600),
    })));
    assert_eq!(revocations(&out, 9), vec![(vec![elsewhere], bound)]);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Publish(_))),
        "a remote revocation is not published again: {out:?}"
    );
}

/// A relay that takes TURN over TLS says so at registration; devices get
/// the port and the name to check with their relay credentials, and a
/// register with a TLS port 0 or an empty name is refused.
#[test]
fn a_relays_tls_endpoint_reaches_the_devices() {
    let mut w = World::new();
    w.input(client(1, ACCOUNT, CLIENT, 1));
    w.loaded(ACCOUNT, graph(1, &[1]));
    let id = RelayId::from_u128(0x99);
    let Input::Joined(mut joined) = super::joined(9, Party::Relay { id }, 0) else {
        unreachable!()
    };
    joined.token.id = Uuid::from_u128(0x7e);
    w.input(Input::Joined(joined));
    let register = |tls| Input::Message {
        conn: 9,
        message: Inbound::Relay(RelayToPortal::Register {
            public_addresses: vec!["198.51.100.1".parse().unwrap()],
            port: 3478,
            tls,
        }),
    };
    let refused = w.input(register(Some(postern_model::protocol::RelayTls {
        port: 443,
        name: Some(String::new()),
    })));
    assert!(
        !relay_frames(&refused, 9)
            .iter()
            .any(|m| matches!(m, PortalToRelay::Registered { .. })),
        "an empty TLS name is refused: {:?}",
        relay_frames(&refused, 9)
    );
    let out = w.input(register(Some(postern_model::protocol::RelayTls {
        port: 443,
        name: Some("relay.example.com".into()),
    })));
    let tls: Vec<_> = client_frames(&out, 1)
        .into_iter()
        .flat_map(|m| match m {
            PortalToClient::RelaysChanged { added, .. } => {
                added.into_iter().map(|r| r.tls).collect()
            }
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        tls,
        [Some(postern_model::protocol::RelayTls {
            port: 443,
            name: Some("relay.example.com".into()),
        })]
    );
}
