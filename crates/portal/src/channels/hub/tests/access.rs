//! Access on first packet: granted only after the gateway confirms, failing
//! closed on its deadline, voided by a gateway's new key, and ICE candidates
//! only between paired devices.

use std::time::Duration;

use postern_model::protocol::{
    ClientToPortal, DenyReason, DisconnectReason, GatewayToPortal, PortalToClient, PortalToGateway,
};
use postern_model::{ClientId, GatewayId};

use super::*;
use crate::channels::hub::{Metric, PresenceUpdate};

#[test]
fn access_is_granted_only_after_the_gateway_authorizes() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    let out = w.input(request(1, "r1", resource(1).id));
    // The gateway is asked first; the client hears nothing yet.
    assert!(client_frames(&out, 1).is_empty(), "{out:?}");
    let to_gateway = gateway_frames(&out, 2);
    let [
        PortalToGateway::Authorize {
            reference,
            authorization,
        },
    ] = to_gateway.as_slice()
    else {
        panic!("one authorize expected: {out:?}");
    };
    assert_eq!(authorization.client.id, CLIENT);
    assert_eq!(authorization.resource, resource(1));
    let out = w.input(from_gateway(
        2,
        GatewayToPortal::Authorized {
            reference: reference.clone(),
        },
    ));
    let to_client = client_frames(&out, 1);
    let [
        PortalToClient::AccessGranted {
            reference: client_ref,
            resource_id,
            gateway,
            preshared_key,
            ice,
            ..
        },
    ] = to_client.as_slice()
    else {
        panic!("one access_granted expected: {out:?}");
    };
    assert_eq!(client_ref, "r1");
    assert_eq!(*resource_id, resource(1).id);
    assert_eq!(gateway.id, GATEWAY);
    // Both ends hold the same pair secrets.
    assert_eq!(*preshared_key, authorization.preshared_key);
    assert_eq!(*ice, authorization.ice);
    assert!(out.contains(&Output::Metric(Metric::Granted)));
    assert!(out.contains(&Output::Presence(PresenceUpdate::Gateway {
        device: GATEWAY,
        load: Some(1)
    })));
}

#[test]
fn a_request_nobody_confirms_fails_closed_after_15_seconds() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    let out = w.input(request(1, "r1", resource(1).id));
    let Some(PortalToGateway::Authorize { reference, .. }) = gateway_frames(&out, 2).pop() else {
        panic!("no authorize: {out:?}");
    };
    w.wait(Duration::from_millis(14_900));
    let out = w.input(Input::Tick);
    assert!(client_frames(&out, 1).is_empty(), "too early: {out:?}");
    w.wait(Duration::from_millis(100));
    let out = w.input(Input::Tick);
    assert_eq!(
        client_frames(&out, 1),
        vec![PortalToClient::AccessDenied {
            reference: "r1".to_string(),
            resource_id: resource(1).id,
            reason: DenyReason::Offline,
            violated: vec![],
        }]
    );
    // The gateway may have applied it without confirming: it is taken back.
    assert_eq!(
        gateway_frames(&out, 2),
        vec![PortalToGateway::Revoke {
            client_id: CLIENT,
            resource_id: resource(1).id,
        }]
    );
    assert!(out.contains(&Output::Metric(Metric::Denied(DenyReason::Offline))));
    // A confirmation after the deadline grants nothing.
    let out = w.input(from_gateway(2, GatewayToPortal::Authorized { reference }));
    assert!(client_frames(&out, 1).is_empty(), "{out:?}");
}

#[test]
fn a_gateway_back_with_a_new_key_voids_its_grants() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    w.grant();
    // The same process reconnecting keeps what it authorized.
    let out = w.join_gateway(3, SITE, GATEWAY, 2);
    let Some(PortalToGateway::Init { authorizations, .. }) = gateway_frames(&out, 3).pop() else {
        panic!("no init: {out:?}");
    };
    assert_eq!(authorizations.len(), 1);
    assert!(client_frames(&out, 1).is_empty(), "{out:?}");
    // The replaced channel is told and closed.
    assert_eq!(
        gateway_frames(&out, 2),
        vec![PortalToGateway::Disconnect {
            reason: DisconnectReason::Shutdown
        }]
    );
    assert!(out.contains(&Output::Close { conn: 2 }));

    // A restarted process (a new key; the old one's channel closed with
    // it) finds its grants void.
    w.input(Input::Closed { conn: 3 });
    let out = w.join_gateway(4, SITE, GATEWAY, 9);
    assert_eq!(
        client_frames(&out, 1),
        vec![PortalToClient::AccessRevoked {
            resource_id: resource(1).id
        }]
    );
    let Some(PortalToGateway::Init { authorizations, .. }) = gateway_frames(&out, 4).pop() else {
        panic!("no init: {out:?}");
    };
    assert!(authorizations.is_empty());
    // The client must ask again, and the new key is what it gets.
    let out = w.input(request(1, "r2", resource(1).id));
    let Some(PortalToGateway::Authorize { authorization, .. }) = gateway_frames(&out, 4).pop()
    else {
        panic!("no authorize on the new channel: {out:?}");
    };
    assert_eq!(authorization.client.id, CLIENT);
}

#[test]
fn candidates_pass_only_between_paired_devices() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    let stranger = GatewayId::from_u128(0x92);
    w.join_gateway(3, OTHER_SITE, stranger, 3);
    let candidates = |peer: GatewayId| {
        from_client(
            1,
            ClientToPortal::IceCandidates {
                peer_id: peer,
                candidates: vec!["candidate:1 1 udp 1 10.1.1.1 5000 typ host".to_string()],
            },
        )
    };
    let to_client = |conn: ConnId, peer: ClientId| {
        from_gateway(
            conn,
            GatewayToPortal::IceCandidates {
                peer_id: peer,
                candidates: vec!["candidate:2 1 udp 1 10.2.2.2 6000 typ host".to_string()],
            },
        )
    };
    // Before any request the two are strangers.
    assert_eq!(w.input(candidates(GATEWAY)), vec![]);
    assert_eq!(w.input(to_client(2, CLIENT)), vec![]);
    // A pending request pairs them.
    w.input(request(1, "r1", resource(1).id));
    let out = w.input(candidates(GATEWAY));
    assert_eq!(
        gateway_frames(&out, 2),
        vec![PortalToGateway::IceCandidates {
            peer_id: CLIENT,
            candidates: vec!["candidate:1 1 udp 1 10.1.1.1 5000 typ host".to_string()],
        }]
    );
    let out = w.input(to_client(2, CLIENT));
    assert_eq!(
        client_frames(&out, 1),
        vec![PortalToClient::IceCandidates {
            peer_id: GATEWAY,
            candidates: vec!["candidate:2 1 udp 1 10.2.2.2 6000 typ host".to_string()],
        }]
    );
    // The gateway it is not paired with reaches nobody, either way.
    assert_eq!(w.input(candidates(stranger)), vec![]);
    assert_eq!(w.input(to_client(3, CLIENT)), vec![]);
}

#[test]
fn a_flood_of_requests_sends_the_gateway_one_authorize_per_resource() {
    let mut w = World::with_client_and_gateway(graph(6, &[1, 2, 3, 4, 5, 6]));
    let mut authorizes = Vec::new();
    let mut errors = Vec::new();
    for n in 0..20 {
        let out = w.input(request(1, &format!("r{n}"), resource(1).id));
        authorizes.extend(
            gateway_frames(&out, 2)
                .into_iter()
                .filter(|m| matches!(m, PortalToGateway::Authorize { .. })),
        );
        errors.extend(client_frames(&out, 1));
    }
    assert_eq!(authorizes.len(), 1, "{authorizes:?}");
    // Eight refs wait on it; the rest are told to wait.
    assert_eq!(errors.len(), 12, "{errors:?}");
    assert!(errors.iter().all(|m| matches!(
        m,
        PortalToClient::Error {
            reference: Some(_),
            ..
        }
    )));
    let Some(PortalToGateway::Authorize { reference, .. }) = authorizes.pop() else {
        unreachable!()
    };
    let out = w.input(from_gateway(2, GatewayToPortal::Authorized { reference }));
    let granted: Vec<String> = client_frames(&out, 1)
        .into_iter()
        .filter_map(|m| match m {
            PortalToClient::AccessGranted { reference, .. } => Some(reference),
            _ => None,
        })
        .collect();
    assert_eq!(granted, (0..8).map(|n| format!("r{n}")).collect::<Vec<_>>());

    // Requests for other resources: at most four wait (the test's cap).
    let mut authorizes = 0;
    let mut refused = 0;
    for n in 2..=6 {
        let out = w.input(request(1, &format!("x{n}"), resource(n).id));
        authorizes += gateway_frames(&out, 2).len();
        refused += client_frames(&out, 1)
            .iter()
            .filter(|m| matches!(m, PortalToClient::Error { .. }))
            .count();
    }
    assert_eq!((authorizes, refused), (4, 1));
}

/// Another node's `authorize` passed to a gateway here is confirmed only by
/// that gateway (L9), and forgotten once its deadline passed.
#[test]
fn only_the_gateway_a_forwarded_authorize_went_to_confirms_it() {
    use postern_model::protocol::{Authorization, IceCredentials, PairIce, Peer};
    use postern_model::{PresharedKey, PublicKey};

    use crate::channels::cluster::ClusterMessage;

    let mut w = World::clustered();
    w.input(gateway(2, SITE, GATEWAY, 2));
    w.loaded(ACCOUNT, graph(1, &[1]));
    let other = GatewayId::from_u128(0x92);
    w.join_gateway(3, OTHER_SITE, other, 3);
    let origin = uuid::Uuid::from_u128(0x0e);
    let ice = IceCredentials {
        username_fragment: "abcd".to_string(),
        password: "0123456789abcdefghijklmn".to_string(),
    };
    let forward = |reference: &str| {
        Input::Cluster(Box::new(ClusterMessage::ToGateway {
            from: origin,
            to: uuid::Uuid::from_u128(0xde),
            device: GATEWAY,
            message: Box::new(PortalToGateway::Authorize {
                reference: reference.to_string(),
                authorization: Box::new(Authorization {
                    client: Peer {
                        id: CLIENT,
                        public_key: PublicKey([1; 32]),
                        ipv4: "100.64.0.9".parse().unwrap(),
                        ipv6: "fd7e:5057:6e00::9".parse().unwrap(),
                    },
                    resource: resource(1),
                    preshared_key: PresharedKey([4; 32]),
                    ice: PairIce {
                        client: ice.clone(),
                        gateway: ice.clone(),
                    },
                    expires_at: None,
                }),
            }),
        }))
    };
    let confirmed = |out: &[Output]| {
        out.iter().any(|o| {
            matches!(o, Output::Publish(ClusterMessage::Authorized { to, .. }) if *to == origin)
        })
    };
    let out = w.input(forward("0000000e-1"));
    assert_eq!(gateway_frames(&out, 2).len(), 1, "{out:?}");
    // Another gateway's `authorized` for that ref confirms nothing.
    let out = w.input(from_gateway(
        3,
        GatewayToPortal::Authorized {
            reference: "0000000e-1".to_string(),
        },
    ));
    assert!(!confirmed(&out), "{out:?}");
    let out = w.input(from_gateway(
        2,
        GatewayToPortal::Authorized {
            reference: "0000000e-1".to_string(),
        },
    ));
    assert!(confirmed(&out), "{out:?}");
    // One nobody confirmed in time is forgotten.
    w.input(forward("0000000e-2"));
    w.wait(Duration::from_secs(16));
    w.input(Input::Tick);
    let out = w.input(from_gateway(
        2,
        GatewayToPortal::Authorized {
            reference: "0000000e-2".to_string(),
        },
    ));
    assert!(!confirmed(&out), "{out:?}");
}

/// A client that presents another device's public key (another client's,
/// or its gateway's) is refused, and the device whose key it is keeps its
/// grant (L12).
#[test]
fn a_client_with_another_devices_key_gets_nothing_and_disturbs_nothing() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    w.grant();
    let impostor = ClientId::from_u128(0xc3);
    for (conn, key) in [(5, 1), (6, 2)] {
        w.input(client(conn, ACCOUNT, impostor, key));
        let out = w.input(request(conn, "steal", resource(1).id));
        assert!(gateway_frames(&out, 2).is_empty(), "{out:?}");
        assert!(
            matches!(
                client_frames(&out, conn).as_slice(),
                [PortalToClient::AccessDenied {
                    reason: DenyReason::Forbidden,
                    ..
                }]
            ),
            "{out:?}"
        );
        assert!(client_frames(&out, 1).is_empty(), "{out:?}");
        w.input(Input::Closed { conn });
    }
    // The real client's grant stands.
    let out = w.join_gateway(3, SITE, GATEWAY, 2);
    let init = gateway_frames(&out, 3).into_iter().find_map(|m| match m {
        PortalToGateway::Init { authorizations, .. } => Some(authorizations.len()),
        _ => None,
    });
    assert_eq!(init, Some(1));
}

#[test]
fn refusals_of_real_resources_are_reported_for_the_console_and_made_up_ids_are_not() {
    use crate::channels::hub::io::Refused;
    // Resource 2 exists but no policy offers it; resource 9 does not exist.
    let mut w = World::with_client_and_gateway(graph(2, &[1]));
    let out = w.input(request(1, "r2", resource(2).id));
    let refused: Vec<&Refused> = out
        .iter()
        .filter_map(|o| match o {
            Output::Refused(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "{out:?}");
    assert_eq!(refused[0].account, ACCOUNT);
    assert_eq!(refused[0].actor, ALICE);
    assert_eq!(refused[0].client, CLIENT);
    assert_eq!(refused[0].resource, resource(2).id);
    assert_eq!(refused[0].reason, DenyReason::NotFound);
    let made_up = postern_model::ResourceId::from_u128(0x9999);
    let out = w.input(request(1, "r9", made_up));
    assert!(
        out.iter().all(|o| !matches!(o, Output::Refused(_))),
        "an id the account does not have is not reported: {out:?}"
    );
    assert!(out.contains(&Output::Metric(Metric::Denied(DenyReason::NotFound))));
}
