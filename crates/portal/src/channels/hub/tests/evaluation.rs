//! Continuous evaluation and the per-account order: a policy change revokes
//! a grant at both ends; events wait for their account's load in order while
//! other accounts go on; a failed first load closes the channels waiting.

use postern_model::protocol::{DenyReason, PortalToClient, PortalToGateway};
use uuid::Uuid;

use super::*;
use crate::change::Change;
use crate::channels::hub::PresenceUpdate;
use crate::store::StoreError;

#[test]
fn a_policy_change_revokes_the_grant_at_both_ends() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    w.grant();
    let out = w.input(Input::Changes(vec![(
        ACCOUNT,
        Change::Groups(vec![ENGINEERS]),
    )]));
    // The graph is reloaded off the hub's task first.
    assert_eq!(
        out,
        vec![Output::Load(LoadRequest {
            account: ACCOUNT,
            clients: vec![],
            rows: Some(vec![Change::Groups(vec![ENGINEERS])]),
            after: 1,
        })]
    );
    let out = w.loaded(ACCOUNT, graph(1, &[]));
    assert_eq!(
        gateway_frames(&out, 2),
        vec![PortalToGateway::Revoke {
            client_id: CLIENT,
            resource_id: resource(1).id,
        }]
    );
    assert_eq!(
        client_frames(&out, 1),
        vec![
            PortalToClient::ResourceRemoved { id: resource(1).id },
            PortalToClient::AccessRevoked {
                resource_id: resource(1).id
            },
        ]
    );
    assert!(out.contains(&Output::Presence(PresenceUpdate::Gateway {
        device: GATEWAY,
        load: Some(0)
    })));
}

#[test]
fn a_request_after_a_change_waits_for_the_reloaded_graph() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    w.input(Input::Changes(vec![(
        ACCOUNT,
        Change::Groups(vec![ENGINEERS]),
    )]));
    // Asked while the reload is out: it waits, and is decided on the new
    // graph, after the list it answers to.
    assert_eq!(w.input(request(1, "r1", resource(1).id)), vec![]);
    let out = w.loaded(ACCOUNT, graph(1, &[]));
    assert_eq!(
        client_frames(&out, 1),
        vec![
            PortalToClient::ResourceRemoved { id: resource(1).id },
            PortalToClient::AccessDenied {
                reference: "r1".to_string(),
                resource_id: resource(1).id,
                reason: DenyReason::NotFound,
                violated: vec![],
            },
        ]
    );
    assert!(gateway_frames(&out, 2).is_empty(), "{out:?}");
}

#[test]
fn a_slow_load_holds_up_its_own_account_only_and_keeps_its_order() {
    let mut w = World::new();
    let other = Uuid::from_u128(0xb);
    let other_client = ClientId::from_u128(0xc2);
    assert_eq!(
        w.input(client(1, ACCOUNT, CLIENT, 1)),
        vec![Output::Load(LoadRequest {
            account: ACCOUNT,
            clients: vec![],
            rows: None,
            after: 0,
        })]
    );
    // Its request and a change come before its graph: both wait, in order.
    assert_eq!(w.input(request(1, "early", resource(1).id)), vec![]);
    assert_eq!(
        w.input(Input::Changes(vec![(
            ACCOUNT,
            Change::Groups(vec![ENGINEERS])
        )])),
        vec![]
    );
    // Another account is served meanwhile.
    assert_eq!(
        w.input(client(7, other, other_client, 7)),
        vec![Output::Load(LoadRequest {
            account: other,
            clients: vec![],
            rows: None,
            after: 0,
        })]
    );
    let out = w.loaded(other, graph(2, &[1, 2]));
    assert_eq!(init_of_client(&out, 7).map(|r| r.len()), Some(2));
    // The first account's graph: its join, its request (no gateway: offline),
    // then the change asks for a reload of its own.
    let out = w.loaded(ACCOUNT, graph(1, &[1]));
    assert_eq!(init_of_client(&out, 1), Some(vec![resource(1).id]));
    let denied: Vec<_> = client_frames(&out, 1)
        .into_iter()
        .filter(|m| matches!(m, PortalToClient::AccessDenied { .. }))
        .collect();
    assert_eq!(
        denied,
        vec![PortalToClient::AccessDenied {
            reference: "early".to_string(),
            resource_id: resource(1).id,
            reason: DenyReason::Offline,
            violated: vec![],
        }]
    );
    assert_eq!(
        out.last(),
        Some(&Output::Load(LoadRequest {
            account: ACCOUNT,
            clients: vec![],
            rows: Some(vec![Change::Groups(vec![ENGINEERS])]),
            after: 0,
        }))
    );
    let out = w.loaded(ACCOUNT, graph(1, &[]));
    assert_eq!(
        client_frames(&out, 1),
        vec![PortalToClient::ResourceRemoved { id: resource(1).id }]
    );
}

#[test]
fn a_failed_first_load_closes_the_channels_waiting_for_it() {
    let mut w = World::new();
    w.input(client(1, ACCOUNT, CLIENT, 1));
    assert_eq!(w.input(gateway(2, SITE, GATEWAY, 2)), vec![]);
    let failed = StoreError::Corrupt {
        table: "actors",
        detail: "test".to_string(),
    };
    let out = w.input(Input::Loaded {
        account: ACCOUNT,
        result: Box::new(Err(failed)),
    });
    assert_eq!(
        out,
        vec![Output::Close { conn: 1 }, Output::Close { conn: 2 }]
    );
    // The next channel tries again.
    assert_eq!(
        w.input(client(3, ACCOUNT, CLIENT, 1)),
        vec![Output::Load(LoadRequest {
            account: ACCOUNT,
            clients: vec![],
            rows: None,
            after: 0,
        })]
    );
}

#[test]
fn a_filter_change_while_the_gateway_confirms_reaches_it_and_the_grant() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    let out = w.input(request(1, "r1", resource(1).id));
    let Some(PortalToGateway::Authorize { reference, .. }) = gateway_frames(&out, 2).pop() else {
        panic!("no authorize: {out:?}");
    };
    // The resource's filters change before the gateway confirmed.
    let mut narrowed = graph(1, &[1]);
    let filtered = std::sync::Arc::make_mut(narrowed.resources.get_mut(&resource(1).id.0).unwrap());
    filtered.filters = vec![postern_model::Filter {
        protocol: postern_model::Protocol::Tcp,
        ports: Some(postern_model::PortRange {
            start: 443,
            end: 443,
        }),
    }];
    let filtered = filtered.clone();
    w.input(Input::Changes(vec![(
        ACCOUNT,
        Change::Resource(resource(1).id.0),
    )]));
    let out = w.loaded(ACCOUNT, narrowed);
    assert!(
        gateway_frames(&out, 2).contains(&PortalToGateway::ResourceUpdated {
            resource: filtered.clone()
        }),
        "the confirming gateway hears the new filters: {out:?}"
    );
    // And the grant it becomes carries them (a later reconnect's init
    // lists the new ones, not the old).
    w.input(from_gateway(
        2,
        postern_model::protocol::GatewayToPortal::Authorized { reference },
    ));
    let reconnect = w.join_gateway(3, SITE, GATEWAY, 2);
    let init = reconnect.iter().find_map(|o| match o {
        Output::Send {
            frame: Frame::Gateway(PortalToGateway::Init { authorizations, .. }),
            ..
        } => Some(authorizations.clone()),
        _ => None,
    });
    assert_eq!(
        init.map(|a| a.into_iter().map(|a| a.resource).collect::<Vec<_>>()),
        Some(vec![filtered])
    );
}

/// A request decided on the old graph and still waiting on its gateway
/// when a change takes the access away is refused: no grant comes of it.
#[test]
fn a_change_while_the_gateway_confirms_refuses_the_request() {
    let mut w = World::with_client_and_gateway(graph(1, &[1]));
    let out = w.input(request(1, "r1", resource(1).id));
    let Some(PortalToGateway::Authorize { reference, .. }) = gateway_frames(&out, 2).pop() else {
        panic!("no authorize: {out:?}");
    };
    w.input(Input::Changes(vec![(
        ACCOUNT,
        Change::Groups(vec![ENGINEERS]),
    )]));
    // The policy stays but now needs a condition the client does not meet:
    // the resource is still listed, the request no longer allowed.
    let mut narrowed = graph(1, &[]);
    narrowed.policies.upsert(postern_policy::Policy {
        id: Uuid::from_u128(0x201),
        group_id: ENGINEERS,
        resource_id: resource(1).id.0,
        conditions: vec![
            postern_policy::CompiledCondition::compile(&postern_model::Condition {
                property: postern_model::ConditionProperty::ClientVerified,
                operator: postern_model::ConditionOperator::In,
                values: vec!["true".to_string()],
            })
            .unwrap(),
        ],
        disabled: false,
    });
    let out = w.loaded(ACCOUNT, narrowed);
    assert!(
        client_frames(&out, 1).contains(&PortalToClient::AccessDenied {
            reference: "r1".to_string(),
            resource_id: resource(1).id,
            reason: DenyReason::Forbidden,
            violated: vec![],
        }),
        "{out:?}"
    );
    assert!(
        gateway_frames(&out, 2).contains(&PortalToGateway::Revoke {
            client_id: CLIENT,
            resource_id: resource(1).id
        }),
        "{out:?}"
    );
    let out = w.input(from_gateway(
        2,
        postern_model::protocol::GatewayToPortal::Authorized { reference },
    ));
    assert!(client_frames(&out, 1).is_empty(), "{out:?}");
    assert!(w.store.is_empty());
}
