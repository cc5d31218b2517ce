#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Enforcement that holds across portal restarts, offline gateways and
//! floods (issue 15): test peers play the attacker's targets against a
//! real portal on loopback.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use support::channel::{Peer, key};
use support::{TempDb, TestApp, id};

/// A second resource (and its policy) for the seeded group, on the seeded
/// site: (resource, policy).
async fn second_resource(app: &TestApp, seeded: &support::Seeded) -> (String, String) {
    let resource = id(&app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/resources",
            Some(json!({
                "name": "Wiki", "type": "ip", "address": "10.0.1.5", "site_id": seeded.site,
            })),
        )
        .await);
    let policy = id(&app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/policies",
            Some(json!({"group_id": seeded.group, "resource_id": resource})),
        )
        .await);
    (resource, policy)
}

async fn connect(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    device: &str,
    seed: u8,
) -> (Peer, Value) {
    let mut peer = Peer::connect(addr, path, token, device, &key(seed))
        .await
        .unwrap();
    let init = peer.next().await;
    assert_eq!(init["type"], "init", "{init}");
    (peer, init)
}

/// Requests access to `resource` and plays the gateway's part: the
/// `authorize` the gateway got.
async fn grant(client: &mut Peer, gateway: &mut Peer, resource: &str, reference: &str) -> Value {
    client
        .send(json!({"type": "request_access", "ref": reference, "resource_id": resource}))
        .await;
    let authorize = gateway.next_of("authorize").await;
    gateway
        .send(json!({"type": "authorized", "ref": authorize["ref"]}))
        .await;
    let granted = client.next_of("access_granted").await;
    assert_eq!(granted["ref"], reference);
    authorize
}

/// The resource ids of an `init`'s authorizations, sorted.
fn authorized_resources(init: &Value) -> Vec<String> {
    let mut ids: Vec<String> = init["authorizations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The portal restarts (a new portal over the same database): the
/// gateway's `init` lists what it granted before, with the same pair
/// secrets, and the client keeps its access; a policy deleted while the
/// gateway is away is missing from its next `init`; one deleted while it
/// is connected reaches it as `revoke`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_outlive_a_portal_restart_and_revocations_reach_gateways_that_were_away() {
    let db = TempDb::new("restart");
    let first = TestApp::open(&db.url(), "acme").await;
    let addr = first.serve().await;
    let seeded = support::seed(&first).await;
    let (wiki, wiki_policy) = second_resource(&first, &seeded).await;

    let (mut gateway, _) = connect(addr, "/v1/gateway", &seeded.gateway_token, "gw-1", 1).await;
    let (mut client, _) = connect(addr, "/v1/client", &seeded.client_token, "laptop", 2).await;
    let lan = grant(&mut client, &mut gateway, &seeded.resource, "a").await;
    grant(&mut client, &mut gateway, &wiki, "b").await;
    drop(gateway);
    drop(client);

    // kill -9 and start again: nothing of the first portal's memory is left.
    let second = first.another_node(&db.url()).await;
    let addr = second.serve().await;
    let (gateway, init) = connect(addr, "/v1/gateway", &seeded.gateway_token, "gw-1", 1).await;
    let mut expected = vec![seeded.resource.clone(), wiki.clone()];
    expected.sort();
    assert_eq!(authorized_resources(&init), expected, "{init}");
    let listed = init["authorizations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["resource"]["id"] == json!(seeded.resource))
        .unwrap();
    assert_eq!(listed["preshared_key"], lan["preshared_key"]);
    assert_eq!(listed["ice"], lan["ice"]);
    let (mut client, _) = connect(addr, "/v1/client", &seeded.client_token, "laptop", 2).await;
    let heard = client.next_within(Duration::from_millis(300)).await;
    assert!(
        heard.as_ref().is_none_or(|m| m["type"] != "access_revoked"),
        "the client keeps its access: {heard:?}"
    );

    // The gateway is away while the LAN's policy is deleted.
    drop(gateway);
    tokio::time::sleep(Duration::from_millis(100)).await;
    second
        .expect(
            StatusCode::NO_CONTENT,
            "DELETE",
            &format!("/policies/{}", seeded.policy),
            None,
        )
        .await;
    let revoked = client.next_of("access_revoked").await;
    assert_eq!(revoked["resource_id"], json!(seeded.resource));
    let (mut gateway, init) = connect(addr, "/v1/gateway", &seeded.gateway_token, "gw-1", 1).await;
    assert_eq!(authorized_resources(&init), vec![wiki.clone()], "{init}");

    // Connected, it hears the next revocation at once.
    second
        .expect(
            StatusCode::NO_CONTENT,
            "DELETE",
            &format!("/policies/{wiki_policy}"),
            None,
        )
        .await;
    let revoke = gateway.next_of("revoke").await;
    assert_eq!(revoke["resource_id"], json!(wiki));
}

/// One client floods `request_access` (thousands, without reading): its
/// gateway stays connected and gets one `authorize`, and a client of
/// another account is answered at once meanwhile; the flooder is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_spares_the_gateway_and_other_accounts() {
    let db = TempDb::new("flood");
    let app = TestApp::open_with(&db.url(), "acme", |state| {
        state.limits.channel_rate.abuse_after = Duration::from_secs(2);
    })
    .await;
    let addr = app.serve().await;
    let ours = support::seed(&app).await;
    let theirs_admin = app.second_account("other").await;
    let theirs = support::seed_as(&app, &theirs_admin).await;

    let (mut gateway, _) = connect(addr, "/v1/gateway", &ours.gateway_token, "gw-1", 1).await;
    let (mut their_gateway, _) =
        connect(addr, "/v1/gateway", &theirs.gateway_token, "gw-2", 3).await;
    let (mut their_client, _) =
        connect(addr, "/v1/client", &theirs.client_token, "their-laptop", 4).await;
    let (mut flooder, _) = connect(addr, "/v1/client", &ours.client_token, "laptop", 2).await;

    let resource = ours.resource.clone();
    let flood = tokio::spawn(async move {
        for n in 0..3000 {
            let request =
                json!({"type": "request_access", "ref": format!("f{n}"), "resource_id": resource});
            if tokio::time::timeout(
                Duration::from_secs(5),
                flooder.send_raw(&request.to_string()),
            )
            .await
            .is_err()
            {
                break;
            }
        }
        flooder
    });

    // Another account is served at once, flood or not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    grant(
        &mut their_client,
        &mut their_gateway,
        &theirs.resource,
        "mine",
    )
    .await;
    let latency = started.elapsed();
    println!("another account was granted access in {latency:?} during the flood");
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    // Our gateway, busy meanwhile (it read nothing), is still connected and
    // was asked about once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let authorize = gateway.next_of("authorize").await;
    gateway
        .send(json!({"type": "authorized", "ref": authorize["ref"]}))
        .await;
    let mut more = 0;
    while let Some(message) = gateway.next_within(Duration::from_millis(300)).await {
        assert_ne!(message["type"], "disconnect", "{message}");
        more += usize::from(message["type"] == "authorize");
    }
    // Repeats wait on the request out (a new one only once it is answered).
    assert!(more <= 2, "{more} authorizes for one resource");
    assert!(!gateway.closed_within(Duration::from_millis(200)).await);

    // The flooder is cut off.
    let mut flooder = tokio::time::timeout(Duration::from_secs(20), flood)
        .await
        .expect("the flood ends")
        .unwrap();
    assert!(flooder.closed_within(Duration::from_secs(10)).await);
}

/// A token that mints device after device is refused past its cap with a
/// message saying why (HTTP 403 before the upgrade); known devices still
/// connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_capped_per_token() {
    let db = TempDb::new("caps");
    let app = TestApp::open_with(&db.url(), "acme", |state| {
        state.limits.devices_per_token = 2;
    })
    .await;
    let addr = app.serve().await;
    let seeded = support::seed(&app).await;
    for (n, device) in ["one", "two"].into_iter().enumerate() {
        connect(
            addr,
            "/v1/client",
            &seeded.client_token,
            device,
            n as u8 + 1,
        )
        .await;
    }
    let refused = Peer::connect(addr, "/v1/client", &seeded.client_token, "three", &key(3)).await;
    assert_eq!(refused.err(), Some(403));
    let detail = reqwest::Client::new()
        .get(format!(
            "http://{addr}/v1/client?device_id=three&public_key={}",
            key(3)
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        ))
        .header("authorization", format!("Bearer {}", seeded.client_token))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(detail.status(), 403);
    let body: Value = detail.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("--max-devices-per-token"),
        "{body}"
    );
    connect(addr, "/v1/client", &seeded.client_token, "one", 1).await;
}
