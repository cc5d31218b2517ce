//! The ledger (H1): the authorizations are the store's. A restarted portal
//! (a new hub over the same store) lists them in the gateway's `init` and
//! keeps the client's access; it decides them again and revokes what no
//! longer holds; a revocation made while the gateway was away is missing
//! from its next `init`; a grant another node revoked is dropped.

use std::time::Duration;

use postern_model::protocol::{Authorization, PortalToClient, PortalToGateway};

use super::*;
use crate::change::Change;

/// The authorizations of the `init` a gateway channel got.
fn gateway_init(out: &[Output], conn: ConnId) -> Option<Vec<Authorization>> {
    gateway_frames(out, conn).into_iter().find_map(|m| match m {
        PortalToGateway::Init { authorizations, .. } => Some(authorizations),
        _ => None,
    })
}

fn authorization(authorize: &PortalToGateway) -> Authorization {
    match authorize {
        PortalToGateway::Authorize { authorization, .. } => (**authorization).clone(),
        other => panic!("not an authorize: {other:?}"),
    }
}

fn revoked(out: &[Output], conn: ConnId) -> bool {
    client_frames(out, conn)
        .iter()
        .any(|m| matches!(m, PortalToClient::AccessRevoked { .. }))
}

/// The client (conn 11) and then the gateway (conn 12) come back to a
/// restarted portal; the gateway's `init`.
fn both_come_back(w: &mut World, graph: AccountGraph) -> (Vec<Output>, Vec<Authorization>) {
    let mut out = w.input(client(11, ACCOUNT, CLIENT, 1));
    out.extend(w.loaded(ACCOUNT, graph));
    let joined = w.join_gateway(12, SITE, GATEWAY, 2);
    let init = gateway_init(&joined, 12).unwrap_or_else(|| panic!("no init: {joined:?}"));
    out.extend(joined);
    (out, init)
}

#[test]
fn a_grant_is_stored_before_the_client_hears_of_it() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    let out = w.input(request(1, "r1", resource(1).id));
    assert!(w.store.is_empty(), "not before the gateway confirmed");
    let Some(PortalToGateway::Authorize { reference, .. }) = gateway_frames(&out, 2).pop() else {
        panic!("no authorize: {out:?}");
    };
    let out = w.input(from_gateway(
        2,
        postern_model::protocol::GatewayToPortal::Authorized { reference },
    ));
    let persisted = out
        .iter()
        .position(|o| matches!(o, Output::Persist { .. }))
        .expect("a write");
    let granted = out
        .iter()
        .position(|o| matches!(o, Output::Send { conn: 1, .. }))
        .expect("access_granted");
    assert!(persisted < granted, "{out:?}");
    assert_eq!(w.store.len(), 1);
}

#[test]
fn after_a_restart_the_gateway_init_lists_the_grant_and_the_client_keeps_it() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    let authorize = w.grant();
    w.restart();
    let (out, init) = both_come_back(&mut w, graph(1, &[1]));
    // The very authorization it had: the pair's secrets are derived again.
    assert_eq!(init, vec![authorization(&authorize)]);
    assert!(!revoked(&out, 11), "the client keeps its access: {out:?}");
    assert_eq!(w.store.len(), 1);
}

#[test]
fn after_a_restart_a_policy_deletion_revokes_the_stored_grant() {
    let mut w = World::with_client_and_gateway(graph(2, &[1, 2]));
    w.grant();
    let out = w.input(request(1, "r2", resource(2).id));
    let second = gateway_frames(&out, 2).pop().expect("authorize");
    let PortalToGateway::Authorize { reference, .. } = &second else {
        panic!("{second:?}")
    };
    w.input(from_gateway(
        2,
        postern_model::protocol::GatewayToPortal::Authorized {
            reference: reference.clone(),
        },
    ));
    w.restart();
    // The client comes back, the gateway does not (yet); the policy of
    // resource 1 goes.
    w.input(client(11, ACCOUNT, CLIENT, 1));
    w.loaded(ACCOUNT, graph(2, &[1, 2]));
    w.input(Input::Changes(vec![(
        ACCOUNT,
        Change::Groups(vec![ENGINEERS]),
    )]));
    let out = w.loaded(ACCOUNT, graph(2, &[2]));
    assert!(
        client_frames(&out, 11).contains(&PortalToClient::AccessRevoked {
            resource_id: resource(1).id
        }),
        "{out:?}"
    );
    // The gateway's next init lists resource 2's authorization only.
    let out = w.join_gateway(12, SITE, GATEWAY, 2);
    let init = gateway_init(&out, 12).expect("init");
    assert_eq!(init, vec![authorization(&second)]);
}

#[test]
fn a_revocation_while_the_gateway_is_away_is_missing_from_its_next_init() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    w.grant();
    w.input(Input::Closed { conn: 2 });
    w.input(Input::Changes(vec![(
        ACCOUNT,
        Change::Groups(vec![ENGINEERS]),
    )]));
    let out = w.loaded(ACCOUNT, graph(1, &[]));
    assert!(revoked(&out, 1));
    assert!(w.store.is_empty());
    let out = w.join_gateway(3, SITE, GATEWAY, 2);
    assert_eq!(gateway_init(&out, 3), Some(vec![]));
}

#[test]
fn a_restart_after_the_token_expired_revokes_at_the_first_load() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    w.grant();
    let expired = w.wall + Duration::from_secs(1);
    for record in w.store.values_mut() {
        record.token_expires_at = Some(expired);
    }
    w.restart();
    let out = w.input(gateway(12, SITE, GATEWAY, 2));
    assert!(matches!(out.as_slice(), [Output::Load(_)]), "{out:?}");
    let out = w.loaded(ACCOUNT, graph(1, &[1]));
    assert_eq!(gateway_init(&out, 12), Some(vec![]), "{out:?}");
    assert!(w.store.is_empty(), "the row is deleted");
}

#[test]
fn a_gateway_back_with_a_new_key_after_a_restart_voids_the_grant() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    w.grant();
    w.restart();
    w.input(client(11, ACCOUNT, CLIENT, 1));
    w.loaded(ACCOUNT, graph(1, &[1]));
    let out = w.join_gateway(12, SITE, GATEWAY, 9);
    assert_eq!(gateway_init(&out, 12), Some(vec![]));
    assert!(revoked(&out, 11), "{out:?}");
    assert!(w.store.is_empty());
}

/// Node A made a grant; node B (another hub over the same store) revokes
/// it for an API change it handled; A drops it at its own reload.
#[test]
fn a_grant_made_on_one_node_is_revoked_by_another() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    w.grant();
    let a = std::mem::replace(&mut w.hub, Hub::new(config(0xb), w.now));
    // The gateway moved to node B: B learns the grant from the store.
    let out = w.join_gateway(12, SITE, GATEWAY, 2);
    assert_eq!(gateway_init(&out, 12).map(|i| i.len()), Some(1), "{out:?}");
    w.input(Input::Changes(vec![(
        ACCOUNT,
        Change::Groups(vec![ENGINEERS]),
    )]));
    let out = w.loaded(ACCOUNT, graph(1, &[]));
    assert_eq!(
        gateway_frames(&out, 12),
        vec![PortalToGateway::Revoke {
            client_id: CLIENT,
            resource_id: resource(1).id
        }]
    );
    assert!(w.store.is_empty());
    // Node A hears of the change and reloads: the grant is gone from the
    // store, so it is gone here too, and A's client is told.
    let _b = std::mem::replace(&mut w.hub, a);
    w.input(Input::Changes(vec![(
        ACCOUNT,
        Change::Groups(vec![ENGINEERS]),
    )]));
    let out = w.loaded(ACCOUNT, graph(1, &[1]));
    assert!(revoked(&out, 1), "{out:?}");
    let out = w.join_gateway(13, SITE, GATEWAY, 2);
    assert_eq!(gateway_init(&out, 13), Some(vec![]));
}

#[test]
fn a_row_revoked_here_while_a_load_was_out_is_not_taken_back() {
    let mut w = World::new();
    // Alice's token runs out in a minute.
    let Input::Joined(mut joined) = client(1, ACCOUNT, CLIENT, 1) else {
        unreachable!()
    };
    joined.token.expires_at = Some(w.wall + Duration::from_secs(60));
    w.input(Input::Joined(joined));
    w.loaded(ACCOUNT, graph(1, &[1]));
    w.join_gateway(2, SITE, GATEWAY, 2);
    w.grant();
    let stale = w.stored(ACCOUNT);
    assert_eq!(stale.len(), 1);
    // A reload is asked for; before it answers, the token expires and the
    // tick revokes the grant (its row is deleted).
    w.input(Input::Changes(vec![(
        ACCOUNT,
        Change::Groups(vec![ENGINEERS]),
    )]));
    w.wait(Duration::from_secs(61));
    let out = w.input(Input::Tick);
    assert!(
        gateway_frames(&out, 2).contains(&PortalToGateway::Revoke {
            client_id: CLIENT,
            resource_id: resource(1).id
        }),
        "{out:?}"
    );
    assert!(w.store.is_empty());
    // The load read the row before the delete: it is not taken back.
    let loaded = Loaded {
        graph: GraphLoad::Whole(Box::new(graph(1, &[1]))),
        verified: Default::default(),
        grants: Some(stale),
    };
    w.input(Input::Loaded {
        account: ACCOUNT,
        result: Box::new(Ok(loaded)),
    });
    let out = w.join_gateway(3, SITE, GATEWAY, 2);
    assert_eq!(gateway_init(&out, 3), Some(vec![]), "{out:?}");
}
