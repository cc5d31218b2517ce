#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The store suite on PostgreSQL: a throwaway server started by the test.

mod support;

use support::TestApp;
use support::postgres::TempPostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_postgres_and_newer_schemas_are_refused() {
    let server = TempPostgres::start();

    let url = server.database("crud").await;
    let app = TestApp::open(&url, "acme").await;
    support::scenario::crud_scenario(&app).await;
    app.state.store.close().await;

    // The same migrations twice are fine; a migration this build does not
    // know is refused with a clear message.
    let url = server.database("newer").await;
    let store = postern_portal::Store::open(&url).await.unwrap();
    store.close().await;
    let store = postern_portal::Store::open(&url).await.unwrap();
    store.close().await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (999, 'from the future', true, '\\x00', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let error = postern_portal::Store::open(&url).await.unwrap_err();
    assert!(
        matches!(error, postern_portal::StoreError::NewerSchema(999)),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_postgres_allocate_distinct_addresses() {
    let server = TempPostgres::start_named("addr");
    let url = server.database("addresses").await;
    let app = TestApp::open(&url, "acme").await;
    support::concurrent_devices(&app).await;
}

/// Two portal nodes on one database: a gateway on the first, a client on the
/// second, and changes made through either API reach both (F30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_portal_nodes_serve_one_account() {
    use std::time::{Duration, Instant};

    use axum::http::StatusCode;
    use serde_json::json;
    use support::channel::{Peer, key};

    let server = TempPostgres::start_named("cluster");
    let url = server.database("cluster").await;
    let first = TestApp::open(&url, "acme").await;
    let first_addr = first.serve().await;
    let second = first.another_node(&url).await;
    let second_addr = second.serve().await;

    let support::Seeded {
        site,
        resource,
        policy,
        client_token,
        gateway_token,
        ..
    } = support::seed(&first).await;

    let mut gateway = Peer::connect(first_addr, "/v1/gateway", &gateway_token, "gw-1", &key(1))
        .await
        .unwrap();
    assert_eq!(gateway.next().await["type"], "init");
    // The second node learns of the gateway from the first.
    let started = Instant::now();
    loop {
        let gateways = second
            .expect(
                StatusCode::OK,
                "GET",
                &format!("/sites/{site}/gateways"),
                None,
            )
            .await;
        if gateways["data"][0]["online"] == true {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the second node never saw the gateway: {gateways}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut client = Peer::connect(second_addr, "/v1/client", &client_token, "laptop", &key(2))
        .await
        .unwrap();
    let init = client.next().await;
    assert_eq!(init["resources"][0]["id"], json!(resource));
    client
        .send(json!({"type": "request_access", "ref": "x", "resource_id": resource}))
        .await;
    let authorize = gateway.next_of("authorize").await;
    assert_eq!(authorize["client"]["public_key"], json!(key(2)));
    gateway
        .send(json!({"type": "authorized", "ref": authorize["ref"]}))
        .await;
    let granted = client.next_of("access_granted").await;
    assert_eq!(granted["ref"], "x");
    assert_eq!(granted["gateway"]["public_key"], json!(key(1)));
    assert_eq!(granted["preshared_key"], authorize["preshared_key"]);
    let gateway_id = granted["gateway"]["id"].clone();
    let client_id = authorize["client"]["id"].clone();

    // Candidates cross the nodes both ways.
    client
        .send(
            json!({"type": "ice_candidates", "peer_id": gateway_id, "candidates": ["candidate:c"]}),
        )
        .await;
    let relayed = gateway.next_of("ice_candidates").await;
    assert_eq!(
        (relayed["peer_id"].clone(), relayed["candidates"][0].clone()),
        (client_id.clone(), json!("candidate:c"))
    );
    // A big batch crosses in several notifications, none lost.
    let many: Vec<String> = (0..40)
        .map(|n| format!("candidate:{n} {}", "x".repeat(400)))
        .collect();
    client
        .send(json!({"type": "ice_candidates", "peer_id": gateway_id, "candidates": many}))
        .await;
    let mut got = Vec::new();
    while got.len() < 40 {
        let part = gateway.next_of("ice_candidates").await;
        got.extend(
            part["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string()),
        );
    }
    assert_eq!(got, many);
    gateway
        .send(
            json!({"type": "ice_candidates", "peer_id": client_id, "candidates": ["candidate:g"]}),
        )
        .await;
    let relayed = client.next_of("ice_candidates").await;
    assert_eq!(
        (relayed["peer_id"].clone(), relayed["candidates"][0].clone()),
        (gateway_id, json!("candidate:g"))
    );

    // A relay registered with the second node serves devices of the first,
    // under the secret both nodes share.
    let relay_token = postern_portal::setup::relay_token(&first.state.store)
        .await
        .unwrap();
    let mut relay = Peer::connect(second_addr, "/v1/relay", &relay_token, "", "")
        .await
        .unwrap();
    assert_eq!(relay.next().await["type"], "init");
    relay
        .send(json!({"type": "register", "public_addresses": ["198.18.0.3"], "port": 3478}))
        .await;
    let secret = relay.next_of("registered").await["auth_secret"]
        .as_str()
        .unwrap()
        .to_string();
    let changed = gateway.next_of("relays_changed").await;
    let info = &changed["added"][0];
    assert_eq!(info["addresses"], json!(["198.18.0.3:3478"]));
    assert_eq!(
        info["password"].as_str().unwrap(),
        postern_turn::credentials::rest_password(
            secret.as_bytes(),
            info["username"].as_str().unwrap()
        )
    );

    // A change through the first node's API reaches the client on the second.
    let started = Instant::now();
    first
        .expect(
            StatusCode::NO_CONTENT,
            "DELETE",
            &format!("/policies/{policy}"),
            None,
        )
        .await;
    assert_eq!(
        gateway.next_of("revoke").await["resource_id"],
        json!(resource)
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let kind = client.next().await["type"].as_str().unwrap().to_string();
        // (The client also hears of the relay that registered above.)
        if kind != "relays_changed" {
            seen.push(kind);
        }
    }
    seen.sort();
    assert_eq!(seen, ["access_revoked", "resource_removed"]);
    let latency = started.elapsed();
    println!("cross-node revocation latency: {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    // The gateway leaves: the second node sees it offline at once.
    drop(gateway);
    let started = Instant::now();
    loop {
        let gateways = second
            .expect(
                StatusCode::OK,
                "GET",
                &format!("/sites/{site}/gateways"),
                None,
            )
            .await;
        if gateways["data"][0]["online"] == false {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still online on the second node: {gateways}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Review M6 (a): on PostgreSQL (READ COMMITTED, a pool of 16) many verify
/// requests for one code at once still get only 3 tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_code_guesses_on_postgres_get_three_tries() {
    let server = TempPostgres::start_named("guesses");
    let url = server.database("guesses").await;
    let (portal, mut smtp) = support::email::portal_with_mail(Some(url)).await;
    support::email::parallel_guesses_get_three_tries(&portal, &mut smtp).await;
}
