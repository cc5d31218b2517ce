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
    // Readiness (`/readyz`) asks the same query of PostgreSQL.
    store.ready().await.unwrap();
    store.close().await;
    assert!(store.ready().await.is_err(), "a closed pool is not ready");
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

    // The connect's session line, written with its group's on PostgreSQL.
    let (status, sessions) = first.call("GET", "/sessions", None).await;
    assert_eq!(status, StatusCode::OK, "{sessions}");
    assert!(
        sessions["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "client_connect" && s["device_id"] == client_id),
        "no session line for the client: {sessions}"
    );

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

/// Nothing but heartbeat-like chatter reaches the gateway for 1.5 s.
async fn assert_no_authorize(gateway: &mut support::channel::Peer, what: &str) {
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(1500);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let Some(message) = gateway.next_within(left).await else {
            return;
        };
        assert_ne!(
            message["type"], "authorize",
            "{what} authorize reached the gateway: {message}"
        );
    }
}

/// A database role that may only connect (and so LISTEN and NOTIFY) forges
/// an `authorize` for a gateway on the cluster bus: unsealed, sealed with
/// another key, sealed but stale, and a genuine message replayed. Nothing
/// reaches the gateway, and every one is counted (issue 15, M2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cluster_messages_are_dropped_and_counted() {
    use std::time::Duration;

    use axum::http::StatusCode;
    use serde_json::json;
    use sqlx::Connection;
    use support::channel::{Peer, key};

    let server = TempPostgres::start_named("forge");
    let url = server.database("forge").await;
    let app = TestApp::open(&url, "acme").await;
    let addr = app.serve().await;
    let seeded = support::seed(&app).await;
    let mut gateway = Peer::connect(addr, "/v1/gateway", &seeded.gateway_token, "gw-1", &key(1))
        .await
        .unwrap();
    assert_eq!(gateway.next().await["type"], "init");
    let gateways = app
        .expect(
            StatusCode::OK,
            "GET",
            &format!("/sites/{}/gateways", seeded.site),
            None,
        )
        .await;
    let gateway_id = gateways["data"][0]["id"].as_str().unwrap().to_string();

    // Mallory: no privilege but CONNECT (which PUBLIC has).
    {
        let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE ROLE mallory LOGIN")
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
    }
    let mallory_url = url.replace("postern@", "mallory@");
    let mut listener = sqlx::postgres::PgListener::connect(&mallory_url)
        .await
        .unwrap();
    listener.listen("postern_cluster").await.unwrap();
    // The portal's heartbeat gives its node away (and a message to replay).
    let heard = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a heartbeat within 10 s")
        .unwrap();
    let genuine = heard.payload().to_string();
    let node = match genuine.strip_prefix("v1.") {
        Some(rest) => rest.split('.').next().unwrap().to_string(),
        None => serde_json::from_str::<serde_json::Value>(&genuine).unwrap()["from"]
            .as_str()
            .unwrap()
            .to_string(),
    };
    let forged = json!({
        "kind": "to_gateway",
        "from": "6d616c6c-6f72-7900-0000-000000000001",
        "to": node,
        "device": gateway_id,
        "message": {
            "type": "authorize",
            "ref": "evil",
            "client": {
                "id": "6d616c6c-6f72-7900-0000-000000000002",
                "public_key": key(66),
                "ipv4": "100.64.9.9",
                "ipv6": "fd7e:5057:6e00::909",
            },
            "resource": {
                "id": "6d616c6c-6f72-7900-0000-000000000003",
                "name": "everything",
                "type": "internet",
                "address": null,
                "filters": [],
                "site_id": seeded.site,
            },
            "preshared_key": key(67),
            "ice": {
                "client": {"username_fragment": "mall", "password": "orymalloryMALLORYmallory"},
                "gateway": {"username_fragment": "orym", "password": "alloryMALLORYmallorymall"},
            },
            "expires_at": null,
        },
    })
    .to_string();
    let mut mallory = sqlx::PgConnection::connect(&mallory_url).await.unwrap();
    let notify = async |conn: &mut sqlx::PgConnection, payload: &str| {
        sqlx::query("SELECT pg_notify('postern_cluster', $1)")
            .bind(payload)
            .execute(conn)
            .await
            .unwrap();
    };
    let now_ms = jiff::Timestamp::now().as_millisecond();
    // Unsealed, and sealed with a key of Mallory's own.
    notify(&mut mallory, &forged).await;
    let other_key = postern_portal::secrets::SecretKey::generate().unwrap();
    let node_id: uuid::Uuid = node.parse().unwrap();
    let wrong = postern_portal::testing::seal_cluster_message(&other_key, node_id, now_ms, &forged);
    notify(&mut mallory, &wrong).await;
    assert_no_authorize(&mut gateway, "a forged").await;

    // With the portal's key (a leaked old message) but a minute old, and a
    // genuine message heard again.
    let key = app.state.secret_key.clone().unwrap();
    let stale =
        postern_portal::testing::seal_cluster_message(&key, node_id, now_ms - 60_000, &forged);
    notify(&mut mallory, &stale).await;
    notify(&mut mallory, &genuine).await;
    assert_no_authorize(&mut gateway, "a stale or replayed").await;
    let metrics = &app.state.metrics;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(count(&metrics.cluster_unsigned) >= 1);
    assert!(count(&metrics.cluster_bad_mac) >= 1);
    assert!(count(&metrics.cluster_stale) >= 1);
    assert!(count(&metrics.cluster_replayed) >= 1);
    let text = metrics.render(1, 0);
    assert!(
        text.contains("postern_portal_cluster_messages_rejected_total{reason=\"unsigned\"} 1"),
        "{text}"
    );
    // The control: the same message sealed with the portal's key, now, is
    // what a node would send, and it is taken.
    let sender: uuid::Uuid = "6d616c6c-6f72-7900-0000-000000000001".parse().unwrap();
    let sealed = postern_portal::testing::seal_cluster_message(
        &key,
        sender,
        jiff::Timestamp::now().as_millisecond(),
        &forged,
    );
    notify(&mut mallory, &sealed).await;
    assert_eq!(gateway.next_of("authorize").await["ref"], "evil");
}

/// The last two admins demote each other at the same moment, again and
/// again: one of them always stays admin (L12: the check and the write are
/// one step on PostgreSQL too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_demoting_each_other_leave_one() {
    use axum::http::StatusCode;
    use serde_json::json;

    let server = TempPostgres::start_named("admins");
    let url = server.database("admins").await;
    let app = TestApp::open(&url, "acme").await;
    let first = app.admin_id.to_string();
    let second = support::id(
        &app.expect(
            StatusCode::CREATED,
            "POST",
            "/actors",
            Some(json!({"name": "b", "email": "b@example.test", "role": "admin"})),
        )
        .await,
    );
    let minted = app
        .expect(
            StatusCode::CREATED,
            "POST",
            &format!("/actors/{second}/tokens"),
            None,
        )
        .await;
    let tokens = [
        app.token.clone(),
        minted["token"].as_str().unwrap().to_string(),
    ];
    let enabled_admins = async || {
        let (_, actors) = app.call_as(Some(&tokens[0]), "GET", "/actors", None).await;
        let (_, more) = app.call_as(Some(&tokens[1]), "GET", "/actors", None).await;
        // Neither token works once neither actor is an admin.
        let list = if actors["data"].is_array() {
            actors
        } else {
            more
        };
        list["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|a| a["role"] == "admin" && a["disabled"] == false)
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    for round in 0..15 {
        let (path_a, path_b) = (format!("/actors/{second}"), format!("/actors/{first}"));
        let (a, b) = tokio::join!(
            app.call_as(
                Some(&tokens[0]),
                "PATCH",
                &path_a,
                Some(json!({"role": "user"}))
            ),
            app.call_as(
                Some(&tokens[1]),
                "PATCH",
                &path_b,
                Some(json!({"role": "user"}))
            ),
        );
        let left = enabled_admins().await;
        assert!(
            !left.is_empty(),
            "round {round}: no admin left ({a:?}, {b:?})"
        );
        // Promote the demoted one again for the next round.
        let (keeper, demoted) = if left.contains(&first) {
            (&tokens[0], &second)
        } else {
            (&tokens[1], &first)
        };
        let (status, body) = app
            .call_as(
                Some(keeper),
                "PATCH",
                &format!("/actors/{demoted}"),
                Some(json!({"role": "admin"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
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

/// What the next release's migration may do (expand only, see
/// `store/rolling.rs`): add a table and a nullable column.
const NEXT_RELEASE: &str = "CREATE TABLE next_release_flows (id TEXT PRIMARY KEY, bytes BIGINT); \
                            ALTER TABLE sites ADD COLUMN next_release_note TEXT;";

/// A rolling upgrade of two nodes on one PostgreSQL: the second node is
/// stopped and comes back as the next release (one more migration) while
/// the first keeps serving a stream of API writes and a connected client;
/// nothing fails, both nodes see the same data and a change through the
/// upgraded node reaches the client on the old one. An old node that
/// restarts now is refused (it cannot know the newer schema) until it is
/// upgraded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_upgrade_one_at_a_time() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use axum::http::StatusCode;
    use serde_json::json;
    use support::channel::{Peer, key};

    let server = TempPostgres::start_named("rolling");
    let url = server.database("rolling").await;
    // The write stream is far above the API's rate limit for one token.
    let first = Arc::new(
        TestApp::open_with(&url, "acme", |state| {
            state.api_limiter = postern_portal::testing::RateLimiter::new(1_000_000, 1_000_000);
        })
        .await,
    );
    let first_addr = first.serve().await;
    let second = first.another_node(&url).await;
    let seeded = support::seed(&first).await;
    let mut client = Peer::connect(
        first_addr,
        "/v1/client",
        &seeded.client_token,
        "laptop",
        &key(2),
    )
    .await
    .unwrap();
    assert_eq!(client.next().await["type"], "init");

    // Writes through the first node, all through the upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (first, stop) = (Arc::clone(&first), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let name = format!("during-{}", statuses.len());
                let (status, _) = first
                    .call("POST", "/sites", Some(json!({ "name": name })))
                    .await;
                statuses.push(status);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    second.state.store.close().await;
    let started = Instant::now();
    let next = postern_portal::testing::open_store_with_next_migration(&url, NEXT_RELEASE)
        .await
        .expect("the next release migrates under a serving node");
    let migrated_in = started.elapsed();
    let second = TestApp::attach(next, &first).await;
    second.serve().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let statuses = writer.await.unwrap();
    println!(
        "migrated in {migrated_in:?} under {} writes",
        statuses.len()
    );
    assert!(statuses.len() > 5, "{statuses:?}");
    assert!(
        statuses.iter().all(|status| *status == StatusCode::CREATED),
        "every write to the old node during the upgrade succeeded: {statuses:?}"
    );
    let on_second = second
        .expect(StatusCode::OK, "GET", "/sites?limit=500", None)
        .await;
    let during = on_second["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|site| site["name"].as_str().unwrap().starts_with("during-"))
        .count();
    assert_eq!(during, statuses.len(), "the upgraded node sees every write");

    // A change through the upgraded node reaches the client on the old one.
    second
        .expect(
            StatusCode::NO_CONTENT,
            "DELETE",
            &format!("/policies/{}", seeded.policy),
            None,
        )
        .await;
    assert_eq!(
        client.next_of("resource_removed").await["id"],
        json!(seeded.resource)
    );

    // The old node restarting now is refused with the reason; upgraded, it
    // starts (its migration ran already) and is ready.
    let error = postern_portal::Store::open(&url).await.unwrap_err();
    assert!(
        matches!(error, postern_portal::StoreError::NewerSchema(_)),
        "{error}"
    );
    let upgraded = postern_portal::testing::open_store_with_next_migration(&url, NEXT_RELEASE)
        .await
        .unwrap();
    upgraded.ready().await.unwrap();
    upgraded.close().await;
}

/// A batch of connects' writes on PostgreSQL (the admission batcher's SQL:
/// `RETURNING`, a `WITH ... UPDATE ... FROM` of many rows): a known device
/// is touched and read in one statement, details of many devices land
/// together and the newest wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_connect_writes_on_postgres() {
    use postern_portal::domain::DeviceKind;
    use postern_portal::testing::devices::{self, Connecting, DeviceCaps, Seen};

    let server = TempPostgres::start_named("batch");
    let url = server.database("batch").await;
    let app = TestApp::open(&url, "acme").await;
    let (account, actor) = (app.account_id, app.admin_id);
    let connecting = |id: &'static str| Connecting {
        kind: DeviceKind::Client,
        actor_id: Some(actor),
        site_id: None,
        token_id: None,
        device_id: id,
        name: id,
        os: None,
        version: None,
        remote_ip: None,
    };
    let caps = DeviceCaps {
        per_actor: 1000,
        per_token: 1000,
    };
    let mut tx = app.state.store.write().await.unwrap();
    let names = ["a", "b", "c"];
    let mut made = Vec::new();
    for name in names {
        made.push(
            devices::upsert_on_connect(&mut tx, account, &connecting(name), caps, 0)
                .await
                .unwrap(),
        );
    }
    let again = devices::touch_on_connect(&mut tx, account, &connecting("b"))
        .await
        .unwrap()
        .expect("a known device is found");
    assert_eq!((again.id, again.ipv4), (made[1].id, made[1].ipv4));
    assert!(
        devices::touch_on_connect(&mut tx, account, &connecting("new"))
            .await
            .unwrap()
            .is_none()
    );
    let seen = |n: usize, name: &'static str, at_ms: i64| Seen {
        account,
        device: made[n].id,
        name,
        os: Some("linux"),
        version: Some("1.2.3"),
        remote_ip: "198.18.0.9".to_string(),
        at_ms,
    };
    devices::record_seen(&mut tx, &[seen(1, "already newer", 500)])
        .await
        .unwrap();
    devices::record_seen(
        &mut tx,
        &[
            seen(0, "newest", 300),
            seen(1, "older", 100),
            seen(2, "laptop", 100),
            seen(0, "older", 200),
        ],
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    for device in &made {
        let row = devices::get(&mut tx, account, DeviceKind::Client, device.id)
            .await
            .unwrap()
            .unwrap();
        got.push((row.name, row.os, row.last_seen_ip));
    }
    tx.commit().await.unwrap();
    let linux = Some("linux".to_string());
    let ip = Some("198.18.0.9".to_string());
    assert_eq!(
        got,
        vec![
            ("newest".to_string(), linux.clone(), ip.clone()),
            ("already newer".to_string(), linux.clone(), ip.clone()),
            ("laptop".to_string(), linux, ip),
        ]
    );
}
