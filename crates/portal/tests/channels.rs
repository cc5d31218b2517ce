#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Channel tests: test WebSocket peers play client and gateway against a real
//! portal on loopback.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};
use support::channel::{Peer, key};
use support::{TempDb, TestApp, id};

/// A portal on loopback with the seeded account of `support::Seeded`.
struct World {
    app: TestApp,
    addr: SocketAddr,
    site: String,
    resource: String,
    group: String,
    robot: String,
    policy: String,
    client_token: String,
    client_token_id: String,
    gateway_token: String,
    _db: TempDb,
}

async fn world(tag: &str) -> World {
    world_with(tag, |_| {}).await
}

async fn world_with(
    tag: &str,
    configure: impl FnOnce(&mut postern_portal::state::AppState),
) -> World {
    let db = TempDb::new(tag);
    let app = TestApp::open_with(&db.url(), "acme", configure).await;
    let addr = app.serve().await;
    let seeded = support::seed(&app).await;
    World {
        addr,
        site: seeded.site,
        resource: seeded.resource,
        group: seeded.group,
        robot: seeded.robot,
        policy: seeded.policy,
        client_token: seeded.client_token,
        client_token_id: seeded.client_token_id,
        gateway_token: seeded.gateway_token,
        app,
        _db: db,
    }
}

impl World {
    async fn gateway(&self, device: &str, seed: u8) -> (Peer, Value) {
        let mut peer = Peer::connect(
            self.addr,
            "/v1/gateway",
            &self.gateway_token,
            device,
            &key(seed),
        )
        .await
        .unwrap();
        let init = peer.next().await;
        assert_eq!(init["type"], "init", "{init}");
        (peer, init)
    }

    async fn client(&self, device: &str, seed: u8) -> (Peer, Value) {
        let mut peer = Peer::connect(
            self.addr,
            "/v1/client",
            &self.client_token,
            device,
            &key(seed),
        )
        .await
        .unwrap();
        let init = peer.next().await;
        assert_eq!(init["type"], "init", "{init}");
        (peer, init)
    }

    /// Requests access and plays the gateway's part; returns (authorize, granted).
    async fn grant(
        &self,
        client: &mut Peer,
        gateway: &mut Peer,
        reference: &str,
    ) -> (Value, Value) {
        client
            .send(json!({"type": "request_access", "ref": reference, "resource_id": self.resource}))
            .await;
        let authorize = gateway.next_of("authorize").await;
        gateway
            .send(json!({"type": "authorized", "ref": authorize["ref"]}))
            .await;
        let granted = client.next().await;
        assert_eq!(granted["type"], "access_granted", "{granted}");
        (authorize, granted)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_is_granted_through_the_gateway_and_candidates_are_relayed() {
    let w = world("grant").await;
    // The account's search domain reaches devices in `init` (F25).
    w.app
        .expect(
            StatusCode::OK,
            "PATCH",
            "/account",
            Some(json!({"search_domain": "corp.example"})),
        )
        .await;
    let (mut gateway, gateway_init) = w.gateway("gw-1", 1).await;
    assert_eq!(gateway_init["authorizations"], json!([]));
    let gateway_ip = gateway_init["interface"]["ipv4"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(gateway_ip.starts_with("100.64."), "{gateway_ip}");
    let (mut client, init) = w.client("laptop", 2).await;
    assert_eq!(init["interface"]["search_domain"], "corp.example", "{init}");
    let resources = init["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 1);
    assert_eq!(resources[0]["address"], "10.0.0.0/24");
    assert_eq!(
        resources[0]["filters"],
        json!([{"protocol": "tcp", "ports": "80"}])
    );
    let client_ip = init["interface"]["ipv4"].as_str().unwrap();
    assert_ne!(
        client_ip, gateway_ip,
        "devices get distinct tunnel addresses"
    );

    let (authorize, granted) = w.grant(&mut client, &mut gateway, "r1").await;
    assert_eq!(granted["ref"], "r1");
    assert_eq!(granted["resource_id"], json!(w.resource));
    assert_eq!(granted["gateway"]["public_key"], json!(key(1)));
    assert_eq!(granted["gateway"]["ipv4"], json!(gateway_ip));
    assert_eq!(authorize["client"]["public_key"], json!(key(2)));
    assert_eq!(authorize["client"]["ipv4"], json!(client_ip));
    assert_eq!(
        authorize["resource"]["filters"],
        json!([{"protocol": "tcp", "ports": "80"}])
    );
    // Both sides hold the same pair secrets.
    assert_eq!(authorize["preshared_key"], granted["preshared_key"]);
    assert_eq!(authorize["ice"], granted["ice"]);
    assert_ne!(granted["ice"]["client"], granted["ice"]["gateway"]);

    let gateway_id = granted["gateway"]["id"].as_str().unwrap().to_string();
    let client_id = authorize["client"]["id"].as_str().unwrap().to_string();
    client
        .send(json!({"type": "ice_candidates", "peer_id": gateway_id, "candidates": ["candidate:1 1 udp 2130706431 198.18.0.10 51820 typ host"]}))
        .await;
    let relayed = gateway.next().await;
    assert_eq!(relayed["type"], "ice_candidates");
    assert_eq!(relayed["peer_id"], json!(client_id));
    assert_eq!(
        relayed["candidates"][0],
        "candidate:1 1 udp 2130706431 198.18.0.10 51820 typ host"
    );
    gateway
        .send(json!({"type": "ice_candidates_removed", "peer_id": client_id, "candidates": ["candidate:2"]}))
        .await;
    let relayed = client.next().await;
    assert_eq!(
        (relayed["type"].as_str(), relayed["peer_id"].as_str()),
        (Some("ice_candidates_removed"), Some(gateway_id.as_str()))
    );

    // Presence and load in the API.
    let gateways = w
        .app
        .expect(
            StatusCode::OK,
            "GET",
            &format!("/sites/{}/gateways", w.site),
            None,
        )
        .await;
    assert_eq!(gateways["data"][0]["online"], true);
    assert_eq!(gateways["data"][0]["load"], 1);
    let clients = w.app.expect(StatusCode::OK, "GET", "/clients", None).await;
    assert_eq!(clients["data"][0]["online"], true);
    assert_eq!(clients["data"][0]["os"], "Linux");

    // A gateway reconnecting with the same key gets its authorizations back.
    drop(gateway);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_gateway, again) = w.gateway("gw-1", 1).await;
    assert_eq!(again["authorizations"].as_array().unwrap().len(), 1);
    assert_eq!(
        again["authorizations"][0]["preshared_key"],
        authorize["preshared_key"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_carry_their_reasons() {
    let w = world("deny").await;
    let (mut gateway, _) = w.gateway("gw-1", 1).await;
    let (mut client, _) = w.client("laptop", 2).await;
    // Not offered to this client at all.
    let unknown = uuid::Uuid::new_v4();
    client
        .send(json!({"type": "request_access", "ref": "a", "resource_id": unknown}))
        .await;
    let denied = client.next().await;
    assert_eq!(
        (
            denied["type"].as_str(),
            denied["reason"].as_str(),
            denied["ref"].as_str()
        ),
        (Some("access_denied"), Some("not_found"), Some("a"))
    );
    // A condition that does not hold: client not verified.
    w.app
        .expect(
            StatusCode::OK,
            "PATCH",
            &format!("/policies/{}", w.policy),
            Some(json!({"conditions": [
                {"property": "client_verified", "values": ["true"]},
                {"property": "client_os", "values": ["linux"]}
            ]})),
        )
        .await;
    client
        .send(json!({"type": "request_access", "ref": "b", "resource_id": w.resource}))
        .await;
    let denied = client.next_of("access_denied").await;
    assert_eq!(denied["reason"], "forbidden");
    assert_eq!(denied["violated"], json!(["client_verified"]));
    // An admin verifies the client: now it is granted.
    let clients = w.app.expect(StatusCode::OK, "GET", "/clients", None).await;
    let client_id = id(&clients["data"][0]);
    w.app
        .expect(
            StatusCode::OK,
            "PATCH",
            &format!("/clients/{client_id}"),
            Some(json!({"verified": true})),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.grant(&mut client, &mut gateway, "c").await;
    // Unknown or malformed messages get an error frame, with the ref.
    client.send(json!({"type": "teleport", "ref": "t1"})).await;
    let error = client.next().await;
    assert_eq!(
        (error["type"].as_str(), error["ref"].as_str()),
        (Some("error"), Some("t1"))
    );
    client.send_raw("{not json").await;
    assert_eq!(client.next().await["type"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_closed_when_no_gateway_answers() {
    let w = world_with("timeout", |state| {
        state.authorize_timeout = Duration::from_millis(800)
    })
    .await;
    let (mut client, _) = w.client("laptop", 2).await;
    // No gateway online at all: offline at once.
    client
        .send(json!({"type": "request_access", "ref": "1", "resource_id": w.resource}))
        .await;
    let denied = client.next().await;
    assert_eq!(
        (denied["type"].as_str(), denied["reason"].as_str()),
        (Some("access_denied"), Some("offline"))
    );
    // A gateway that never confirms: offline after the timeout.
    let (mut gateway, _) = w.gateway("gw-1", 1).await;
    let started = Instant::now();
    client
        .send(json!({"type": "request_access", "ref": "2", "resource_id": w.resource}))
        .await;
    gateway.next_of("authorize").await;
    let denied = client.next().await;
    assert_eq!(
        (denied["reason"].as_str(), denied["ref"].as_str()),
        (Some("offline"), Some("2"))
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // What the gateway never confirmed is taken back.
    assert_eq!(
        gateway.next_of("revoke").await["resource_id"],
        json!(w.resource)
    );
    // A gateway that disconnects while a request waits: offline at once.
    client
        .send(json!({"type": "request_access", "ref": "3", "resource_id": w.resource}))
        .await;
    gateway.next_of("authorize").await;
    let started = Instant::now();
    drop(gateway);
    let denied = client.next().await;
    assert_eq!(
        (denied["reason"].as_str(), denied["ref"].as_str()),
        (Some("offline"), Some("3"))
    );
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    let gateways = w
        .app
        .expect(
            StatusCode::OK,
            "GET",
            &format!("/sites/{}/gateways", w.site),
            None,
        )
        .await;
    assert_eq!(
        gateways["data"][0]["online"], false,
        "a gateway that disconnects is offline at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_policy_revokes_within_a_second() {
    let w = world("revoke").await;
    let (mut gateway, _) = w.gateway("gw-1", 1).await;
    let (mut client, _) = w.client("laptop", 2).await;
    w.grant(&mut client, &mut gateway, "r").await;
    let started = Instant::now();
    w.app
        .expect(
            StatusCode::NO_CONTENT,
            "DELETE",
            &format!("/policies/{}", w.policy),
            None,
        )
        .await;
    let revoke = gateway.next_of("revoke").await;
    let gateway_latency = started.elapsed();
    assert_eq!(revoke["resource_id"], json!(w.resource));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = client.next().await;
        seen.push(message["type"].as_str().unwrap().to_string());
    }
    let client_latency = started.elapsed();
    seen.sort();
    assert_eq!(seen, ["access_revoked", "resource_removed"]);
    println!("revocation latency: gateway {gateway_latency:?}, client {client_latency:?}");
    assert!(
        client_latency < Duration::from_secs(1),
        "{client_latency:?}"
    );
    // A new policy brings the resource back.
    w.app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/policies",
            Some(json!({"group_id": w.group, "resource_id": w.resource})),
        )
        .await;
    let upserted = client.next().await;
    assert_eq!(upserted["type"], "resource_upserted");
    // Removing the robot from the group takes it away again.
    w.app
        .expect(
            StatusCode::OK,
            "PUT",
            &format!("/groups/{}/members", w.group),
            Some(json!({"actor_ids": []})),
        )
        .await;
    assert_eq!(client.next().await["type"], "resource_removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_changes_reach_the_gateway_live() {
    let w = world("filters").await;
    let (mut gateway, _) = w.gateway("gw-1", 1).await;
    let (mut client, _) = w.client("laptop", 2).await;
    w.grant(&mut client, &mut gateway, "r").await;
    w.app
        .expect(
            StatusCode::OK,
            "PATCH",
            &format!("/resources/{}", w.resource),
            Some(json!({"filters": [{"protocol": "tcp", "ports": "443"}]})),
        )
        .await;
    let updated = gateway.next_of("resource_updated").await;
    assert_eq!(
        updated["resource"]["filters"],
        json!([{"protocol": "tcp", "ports": "443"}])
    );
    let upserted = client.next_of("resource_upserted").await;
    assert_eq!(
        upserted["resource"]["filters"],
        json!([{"protocol": "tcp", "ports": "443"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_disconnect_and_cannot_reconnect() {
    let w = world("token").await;
    let (mut gateway, _) = w.gateway("gw-1", 1).await;
    let (mut client, _) = w.client("laptop", 2).await;
    w.grant(&mut client, &mut gateway, "r").await;
    let started = Instant::now();
    w.app
        .expect(
            StatusCode::NO_CONTENT,
            "DELETE",
            &format!("/tokens/{}", w.client_token_id),
            None,
        )
        .await;
    let disconnect = client.next_of("disconnect").await;
    assert_eq!(disconnect["reason"], "token_revoked");
    assert!(client.closed_within(Duration::from_secs(2)).await);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The gateway stops forwarding for it too.
    assert_eq!(
        gateway.next_of("revoke").await["resource_id"],
        json!(w.resource)
    );
    let refused = Peer::connect(w.addr, "/v1/client", &w.client_token, "laptop", &key(2))
        .await
        .err();
    assert_eq!(refused, Some(401));
    // Disabling the actor does the same to a fresh token.
    let token = w
        .app
        .expect(
            StatusCode::CREATED,
            "POST",
            &format!("/actors/{}/tokens", w.robot),
            None,
        )
        .await;
    let token = token["token"].as_str().unwrap();
    let mut client = Peer::connect(w.addr, "/v1/client", token, "laptop", &key(3))
        .await
        .unwrap();
    assert_eq!(client.next().await["type"], "init");
    w.app
        .expect(
            StatusCode::OK,
            "PATCH",
            &format!("/actors/{}", w.robot),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(
        client.next_of("disconnect").await["reason"],
        "token_revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_are_refused_with_http_errors() {
    let w = world("handshake").await;
    assert_eq!(
        Peer::connect(w.addr, "/v1/client", "nonsense", "d", &key(1))
            .await
            .err(),
        Some(401)
    );
    // A gateway token is not a client token.
    assert_eq!(
        Peer::connect(w.addr, "/v1/client", &w.gateway_token, "d", &key(1))
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        Peer::connect(w.addr, "/v1/client", &w.client_token, "d", "c2hvcnQ=")
            .await
            .err(),
        Some(400)
    );
    assert_eq!(
        Peer::connect(w.addr, "/v1/client", &w.client_token, "", &key(1))
            .await
            .err(),
        Some(400)
    );
    assert_eq!(
        Peer::connect(w.addr, "/v1/relay", &w.client_token, "d", &key(1))
            .await
            .err(),
        Some(401)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_register_and_clients_get_turn_credentials() {
    let w = world("relay").await;
    let relay_token = postern_portal::setup::relay_token(&w.app.state.store)
        .await
        .unwrap();
    let (mut client, init) = w.client("laptop", 2).await;
    assert_eq!(init["relays"], json!([]));
    let mut relay = Peer::connect(w.addr, "/v1/relay", &relay_token, "", "")
        .await
        .unwrap();
    assert_eq!(relay.next().await["type"], "init");
    relay
        .send(json!({"type": "register", "public_addresses": ["198.18.0.3"], "port": 3478}))
        .await;
    let registered = relay.next().await;
    assert_eq!(registered["type"], "registered");
    let secret = registered["auth_secret"].as_str().unwrap().to_string();
    let changed = client.next_of("relays_changed").await;
    let info = &changed["added"][0];
    assert_eq!(info["addresses"], json!(["198.18.0.3:3478"]));
    // The credentials are TURN REST credentials under the relay's secret.
    let username = info["username"].as_str().unwrap();
    assert_eq!(
        info["password"].as_str().unwrap(),
        postern_turn::credentials::rest_password(secret.as_bytes(), username)
    );
    let expiry = postern_turn::credentials::rest_expiry(username).unwrap();
    let now = jiff::Timestamp::now().as_second() as u64;
    // Short-lived: a revoked device stops relaying soon even at a relay
    // that missed the revocation.
    assert!(
        expiry > now + 14 * 60 && expiry <= now + 15 * 60 + 5,
        "{expiry} vs {now}"
    );
    drop(relay);
    let changed = client.next_of("relays_changed").await;
    assert_eq!(changed["removed"], json!([registered["relay_id"]]));
    // At rest the secret is sealed: the database alone mints no credentials.
    let stored = stored_setting(&w.app, "turn_secret").await;
    assert!(
        stored.starts_with("v1:") && !stored.contains(&secret),
        "{stored}"
    );
}

async fn stored_setting(app: &TestApp, key: &str) -> String {
    let mut tx = app.state.store.read().await.unwrap();
    let value = postern_portal::testing::settings::get(&mut tx, key).await;
    value.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_secrets_stored_in_plaintext_are_sealed_in_place_and_kept() {
    let db = TempDb::new("legacy-secrets");
    // A database from before sealing: the TURN secret in plaintext.
    let store = postern_portal::Store::open(&db.url()).await.unwrap();
    let mut tx = store.write().await.unwrap();
    postern_portal::testing::settings::get_or_create(&mut tx, "turn_secret", || {
        "legacy-turn-secret".to_string()
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    drop(store);
    let app = TestApp::open(&db.url(), "acme").await;
    let addr = app.serve().await;
    let relay_token = postern_portal::setup::relay_token(&app.state.store)
        .await
        .unwrap();
    let mut relay = Peer::connect(addr, "/v1/relay", &relay_token, "", "")
        .await
        .unwrap();
    assert_eq!(relay.next().await["type"], "init");
    relay
        .send(json!({"type": "register", "public_addresses": ["198.18.0.3"], "port": 3478}))
        .await;
    // Relays already running with the old secret keep working...
    assert_eq!(relay.next().await["auth_secret"], "legacy-turn-secret");
    // ...and the database no longer holds it readable.
    let stored = stored_setting(&app, "turn_secret").await;
    assert!(stored.starts_with("v1:"), "{stored}");
    assert!(stored_setting(&app, "pair_secret").await.starts_with("v1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn country_conditions_use_the_geoip_database_and_fail_closed() {
    use postern_portal::geoip::{GeoIp, write_country_db};
    // The test peers connect from 127.0.0.1, which this database puts in Germany.
    let database = write_country_db(&[("127.0.0.0/8".parse().unwrap(), "DE")]);
    let w = world_with("country", |state| {
        state.geoip = Some(GeoIp::from_bytes(database).unwrap())
    })
    .await;
    let (mut gateway, _) = w.gateway("gw-1", 1).await;
    let (mut client, _) = w.client("laptop", 2).await;
    let set_countries = |operator: &'static str, countries: Vec<&'static str>| {
        let path = format!("/policies/{}", w.policy);
        let app = &w.app;
        async move {
            app.expect(
                StatusCode::OK,
                "PATCH",
                &path,
                Some(json!({"conditions": [
                    {"property": "country", "operator": operator, "values": countries}
                ]})),
            )
            .await;
        }
    };
    set_countries("in", vec!["de", "AT"]).await;
    w.grant(&mut client, &mut gateway, "de").await;
    set_countries("not_in", vec!["DE"]).await;
    // The grant made from Germany is revoked at once.
    assert_eq!(
        client.next_of("access_revoked").await["resource_id"],
        json!(w.resource)
    );
    client
        .send(json!({"type": "request_access", "ref": "x", "resource_id": w.resource}))
        .await;
    let denied = client.next_of("access_denied").await;
    assert_eq!(
        (denied["reason"].as_str(), denied["violated"].clone()),
        (Some("forbidden"), json!(["country"]))
    );

    // Without a database the country is unknown: both operators deny.
    let w = world("nocountry").await;
    let (_gateway, _) = w.gateway("gw-1", 1).await;
    let (mut client, _) = w.client("laptop", 2).await;
    for operator in ["in", "not_in"] {
        w.app
            .expect(
                StatusCode::OK,
                "PATCH",
                &format!("/policies/{}", w.policy),
                Some(json!({"conditions": [
                    {"property": "country", "operator": operator, "values": ["DE"]}
                ]})),
            )
            .await;
        client
            .send(json!({"type": "request_access", "ref": operator, "resource_id": w.resource}))
            .await;
        let denied = client.next_of("access_denied").await;
        assert_eq!(denied["violated"], json!(["country"]), "{operator}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_ends_when_the_time_window_closes() {
    use jiff::{SignedDuration, Timestamp, tz::TimeZone};
    let w = world("window").await;
    let (mut gateway, _) = w.gateway("gw-1", 1).await;
    let (mut client, _) = w.client("laptop", 2).await;
    // Stay clear of midnight, where a window cannot span the day change.
    let mut now = Timestamp::now().to_zoned_datetime(TimeZone::UTC);
    let second_of_day = |z: &jiff::ZonedDateTime| {
        let t = z.time();
        t.hour() as i64 * 3600 + t.minute() as i64 * 60 + t.second() as i64
    };
    if second_of_day(&now) > 86_400 - 15 {
        tokio::time::sleep(Duration::from_secs(16)).await;
        now = Timestamp::now().to_zoned_datetime(TimeZone::UTC);
    }
    let day = ['M', 'T', 'W', 'R', 'F', 'S', 'U'][now.weekday().to_monday_zero_offset() as usize];
    let start = (second_of_day(&now) - 60).max(0);
    let end = second_of_day(&now) + 3;
    let hms = |s: i64| format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    let window = format!("{day}/{}-{}/UTC", hms(start), hms(end));
    w.app
        .expect(
            StatusCode::OK,
            "PATCH",
            &format!("/policies/{}", w.policy),
            Some(json!({"conditions": [
                {"property": "time", "values": [window]}
            ]})),
        )
        .await;
    let (authorize, granted) = w.grant(&mut client, &mut gateway, "w").await;
    let expires: Timestamp = granted["expires_at"].as_str().unwrap().parse().unwrap();
    let window_end = now
        .date()
        .at(0, 0, 0, 0)
        .to_zoned_datetime(TimeZone::UTC)
        .unwrap()
        .timestamp()
        + SignedDuration::from_secs(end);
    assert_eq!(
        expires, window_end,
        "access expires exactly at the window's end"
    );
    assert_eq!(authorize["expires_at"], granted["expires_at"]);
    let revoked = client.next_of("access_revoked").await;
    let late = Timestamp::now().duration_since(window_end);
    assert!(
        late < SignedDuration::from_secs(1),
        "revoked {late:?} after the window closed"
    );
    assert_eq!(revoked["resource_id"], json!(w.resource));
    assert_eq!(
        gateway.next_of("revoke").await["resource_id"],
        json!(w.resource)
    );
    client
        .send(json!({"type": "request_access", "ref": "late", "resource_id": w.resource}))
        .await;
    assert_eq!(
        client.next_of("access_denied").await["violated"],
        json!(["time"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_tokens_bound_access_and_end_the_channel() {
    let w = world("tokenexp").await;
    let (mut gateway, _) = w.gateway("gw-1", 1).await;
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
    let token = w
        .app
        .expect(
            StatusCode::CREATED,
            "POST",
            &format!("/actors/{}/tokens", w.robot),
            Some(json!({"expires_at": expires})),
        )
        .await;
    let mut client = Peer::connect(
        w.addr,
        "/v1/client",
        token["token"].as_str().unwrap(),
        "laptop",
        &key(2),
    )
    .await
    .unwrap();
    assert_eq!(client.next().await["type"], "init");
    let (_, granted) = w.grant(&mut client, &mut gateway, "t").await;
    let granted_until: jiff::Timestamp = granted["expires_at"].as_str().unwrap().parse().unwrap();
    let gap = (granted_until - expires).abs();
    assert!(
        gap < jiff::SignedDuration::from_millis(1),
        "no access outlives its token: {granted_until} vs {expires}"
    );
    assert_eq!(
        client.next_of("disconnect").await["reason"],
        "token_expired"
    );
    assert_eq!(
        gateway.next_of("revoke").await["resource_id"],
        json!(w.resource)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_are_chosen_by_use_then_load() {
    let w = world("select").await;
    let (mut first, first_init) = w.gateway("gw-a", 1).await;
    let (mut second, second_init) = w.gateway("gw-b", 2).await;
    let first_ip = first_init["interface"]["ipv4"].clone();
    let second_ip = second_init["interface"]["ipv4"].clone();
    let (mut alice, _) = w.client("alice", 3).await;
    let (mut bob, _) = w.client("bob", 4).await;
    // Alice goes to whichever; Bob then goes to the other (least loaded).
    alice
        .send(json!({"type": "request_access", "ref": "a", "resource_id": w.resource}))
        .await;
    let (alice_gateway, alice_gateway_ip) = tokio::select! {
        m = first.next_of("authorize") => { first.send(json!({"type": "authorized", "ref": m["ref"]})).await; ("a", first_ip.clone()) }
        m = second.next_of("authorize") => { second.send(json!({"type": "authorized", "ref": m["ref"]})).await; ("b", second_ip.clone()) }
    };
    let granted = alice.next_of("access_granted").await;
    assert_eq!(granted["gateway"]["ipv4"], alice_gateway_ip);
    bob.send(json!({"type": "request_access", "ref": "b", "resource_id": w.resource}))
        .await;
    let bob_on = if alice_gateway == "a" {
        &mut second
    } else {
        &mut first
    };
    let authorize = bob_on.next_of("authorize").await;
    bob_on
        .send(json!({"type": "authorized", "ref": authorize["ref"]}))
        .await;
    let granted = bob.next_of("access_granted").await;
    assert_ne!(
        granted["gateway"]["ipv4"], alice_gateway_ip,
        "the less loaded gateway serves Bob"
    );
    // A gateway the client already uses wins over load.
    let alice_gateway_id = {
        let gateways = w
            .app
            .expect(
                StatusCode::OK,
                "GET",
                &format!("/sites/{}/gateways", w.site),
                None,
            )
            .await;
        gateways["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["ipv4"] == alice_gateway_ip)
            .unwrap()["id"]
            .clone()
    };
    for n in 0..4 {
        bob.send(json!({"type": "request_access", "ref": format!("again{n}"), "resource_id": w.resource, "connected_gateway_ids": [alice_gateway_id]})).await;
        let on = if alice_gateway == "a" {
            &mut first
        } else {
            &mut second
        };
        let authorize = on.next_of("authorize").await;
        on.send(json!({"type": "authorized", "ref": authorize["ref"]}))
            .await;
        assert_eq!(
            bob.next_of("access_granted").await["gateway"]["id"],
            alice_gateway_id
        );
    }
    // Every connection is in the session log.
    let sessions = w.app.expect(StatusCode::OK, "GET", "/sessions", None).await;
    let kinds: Vec<&str> = sessions["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "client_connect").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "gateway_connect").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(sessions["data"][0]["remote_ip"], "127.0.0.1");
}

/// On a single-threaded runtime the hub queues a whole change before the
/// socket task can drain anything, so a queue of two overflows for sure.
#[tokio::test(flavor = "current_thread")]
async fn a_connection_that_cannot_keep_up_is_dropped_alone() {
    let w = world_with("slow", |state| state.outbound_queue = 2).await;
    // Three more resources behind three more policies for the robots.
    let mut policies = Vec::new();
    for n in 1..=3 {
        let resource = id(&w.app
            .expect(StatusCode::CREATED, "POST", "/resources", Some(json!({
                "name": format!("r{n}"), "type": "ip", "address": format!("10.9.0.{n}"), "site_id": w.site
            })))
            .await);
        policies.push(id(&w
            .app
            .expect(
                StatusCode::CREATED,
                "POST",
                "/policies",
                Some(json!({"group_id": w.group, "resource_id": resource})),
            )
            .await));
    }
    let (mut slow, init) = w.client("slow", 2).await;
    assert_eq!(init["resources"].as_array().unwrap().len(), 4);
    let (mut _gateway, _) = w.gateway("gw-1", 1).await;
    // Deleting the group removes four resources at once: more than fit.
    w.app
        .expect(
            StatusCode::NO_CONTENT,
            "DELETE",
            &format!("/groups/{}", w.group),
            None,
        )
        .await;
    assert!(
        slow.closed_within(Duration::from_secs(5)).await,
        "the overloaded channel is closed"
    );
    // Others are not affected, and the device may come back.
    let (_again, init) = w.client("slow", 2).await;
    assert_eq!(init["resources"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_site_removes_its_resources_from_clients() {
    let w = world("sitedelete").await;
    let (mut client, init) = w.client("laptop", 2).await;
    assert_eq!(init["resources"].as_array().unwrap().len(), 1);
    w.app
        .expect(
            StatusCode::NO_CONTENT,
            "DELETE",
            &format!("/sites/{}", w.site),
            None,
        )
        .await;
    let removed = client.next_of("resource_removed").await;
    assert_eq!(removed["id"], json!(w.resource));
}

/// Random and hostile frames on a live channel get error frames (or are
/// ignored), never take the portal down, and the channel keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_do_not_break_the_channel() {
    let w = world("hostile").await;
    let (mut gateway, _) = w.gateway("gw-1", 1).await;
    let (mut client, _) = w.client("laptop", 2).await;
    let mut frames: Vec<String> = vec![
        String::new(),
        "null".into(),
        "[]".into(),
        "\"text\"".into(),
        "{\"type\": 7}".into(),
        "{\"type\": \"request_access\"}".into(),
        "{\"type\": \"request_access\", \"ref\": 1, \"resource_id\": \"x\"}".into(),
        format!(
            "{{\"type\": \"request_access\", \"ref\": \"{}\", \"resource_id\": \"{}\"}}",
            "r".repeat(60_000),
            w.resource
        ),
        format!(
            "{{\"type\": \"ice_candidates\", \"peer_id\": \"{}\", \"candidates\": [{}]}}",
            uuid::Uuid::new_v4(),
            vec!["\"c\""; 1000].join(",")
        ),
        "{\"type\": \"authorized\", \"ref\": \"p999\"}".into(),
        "{".repeat(10_000),
        "\u{0}\u{1}\u{2}".into(),
    ];
    // A little deterministic noise too.
    let mut seed = 0x2545_f491u32;
    for _ in 0..50 {
        let length = (seed % 200) as usize;
        let mut frame = String::new();
        for _ in 0..length {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            frame.push(b"{}[]\":,0123abc truelnul\\"[(seed % 24) as usize] as char);
        }
        frames.push(frame);
    }
    for frame in &frames {
        client.send_raw(frame).await;
        gateway.send_raw(frame).await;
    }
    // Both channels still work: a request goes through.
    client
        .send(json!({"type": "request_access", "ref": "after", "resource_id": w.resource}))
        .await;
    let authorize = gateway.next_of("authorize").await;
    gateway
        .send(json!({"type": "authorized", "ref": authorize["ref"]}))
        .await;
    let granted = client.next_of("access_granted").await;
    // (Compared as a bool: a failure must not print a 60 KB ref.)
    assert!(granted["ref"] == "after", "an oversized ref was honoured");
}

/// The portal's version with its minor moved by `step` (and the patch 0);
/// `None` below 0.
fn minor_away(step: i64) -> Option<String> {
    let portal = env!("CARGO_PKG_VERSION");
    let mut parts = portal.split('.').map(|p| p.parse::<i64>().unwrap());
    let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
    (minor + step >= 0).then(|| format!("{major}.{}.0", minor + step))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_say_their_version_and_other_minors_are_refused_with_the_reason() {
    let w = world("version").await;
    let portal = env!("CARGO_PKG_VERSION");
    let device = |id: &str, version: &str| {
        format!(
            "device_id={id}&public_key={}&name={id}&os=Linux&version={version}",
            key(7)
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        )
    };
    // Too new, then too old (the minor before the portal's, if any).
    let newer = minor_away(1).unwrap();
    let refused = Peer::connect_query(
        w.addr,
        "/v1/gateway",
        &w.gateway_token,
        &device("gw", &newer),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.0, 426, "{}", refused.1);
    let detail: serde_json::Value = serde_json::from_str(&refused.1).unwrap();
    let detail = detail["detail"].as_str().unwrap();
    assert!(detail.contains("accepts daemons"), "{detail}");
    assert!(detail.contains(&format!("this one is {newer}")), "{detail}");
    assert!(detail.contains("update the portal"), "{detail}");
    if let Some(older) = minor_away(-1) {
        let refused =
            Peer::connect_query(w.addr, "/v1/client", &w.client_token, &device("c", &older))
                .await
                .err()
                .unwrap();
        assert_eq!(refused.0, 426, "{}", refused.1);
        assert!(refused.1.contains("update postern"), "{}", refused.1);
    }
    let relay_token = postern_portal::setup::relay_token(&w.app.state.store)
        .await
        .unwrap();
    let refused = Peer::connect_query(
        w.addr,
        "/v1/relay",
        &relay_token,
        &format!("version={newer}"),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.0, 426, "{}", refused.1);
    // Not a version at all.
    let refused = Peer::connect_query(w.addr, "/v1/client", &w.client_token, &device("c", "soon"))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.0, 400, "{}", refused.1);
    // Nothing refused was recorded.
    let clients = w.app.expect(StatusCode::OK, "GET", "/clients", None).await;
    assert_eq!(clients["data"], json!([]), "{clients}");

    // The same minor joins, and the listings show the version; so does a
    // daemon from before versions were sent, without one.
    let mut gateway = Peer::connect_query(
        w.addr,
        "/v1/gateway",
        &w.gateway_token,
        &device("gw", portal),
    )
    .await
    .unwrap();
    assert_eq!(gateway.next().await["type"], "init");
    let mut client = Peer::connect(w.addr, "/v1/client", &w.client_token, "old", &key(8))
        .await
        .unwrap();
    assert_eq!(client.next().await["type"], "init");
    let mut relay = Peer::connect_query(
        w.addr,
        "/v1/relay",
        &relay_token,
        &format!("version={portal}"),
    )
    .await
    .unwrap();
    assert_eq!(relay.next().await["type"], "init");
    let gateways = w
        .app
        .expect(
            StatusCode::OK,
            "GET",
            &format!("/sites/{}/gateways", w.site),
            None,
        )
        .await;
    assert_eq!(gateways["data"][0]["version"], portal, "{gateways}");
    let clients = w.app.expect(StatusCode::OK, "GET", "/clients", None).await;
    assert_eq!(clients["data"][0]["version"], json!(null), "{clients}");
}

/// The flow log from the attacker's side: a gateway's `flows` are stored
/// in its own account only, and only for that account's resources (a
/// compromised gateway cannot write into another account's log, nor
/// invent resources); every batch is confirmed; an oversized batch is
/// refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_writes_flows_only_into_its_own_account() {
    let w = world("flows").await;
    let other_token = w.app.second_account("other").await;
    let (status, other_site) = w
        .app
        .call_as(
            Some(&other_token),
            "POST",
            "/sites",
            Some(json!({"name": "theirs"})),
        )
        .await;
    assert_eq!(status, 201, "{other_site}");
    let (status, other_resource) = w
        .app
        .call_as(
            Some(&other_token),
            "POST",
            "/resources",
            Some(json!({"name": "their-db", "type": "ip", "address": "10.9.9.9", "site_id": other_site["id"]})),
        )
        .await;
    assert_eq!(status, 201, "{other_resource}");
    // Another site of the same account: not this gateway's to log.
    let (_, elsewhere) = w
        .app
        .call("POST", "/sites", Some(json!({"name": "branch"})))
        .await;
    let (status, branch_db) = w
        .app
        .call(
            "POST",
            "/resources",
            Some(json!({"name": "branch-db", "type": "ip", "address": "10.8.8.8", "site_id": elsewhere["id"]})),
        )
        .await;
    assert_eq!(status, 201, "{branch_db}");
    let (mut gateway, _) = w.gateway("gw-flows", 9).await;
    let flow = |resource: &str, port: u16| {
        json!({
            "client_id": "7f3c0b9e-0000-4000-8000-000000000001",
            "resource_id": resource,
            "protocol": 6,
            "source": format!("100.64.0.2:{port}"),
            "destination": "10.0.0.5:443",
            "bytes_out": 1200,
            "bytes_in": 34000,
            "started_ms": 1_764_000_000_000i64,
            "ended_ms": 1_764_000_002_000i64,
        })
    };
    gateway
        .send(json!({"type": "flows", "batch": 1, "flows": [
            flow(&w.resource, 40001),
            flow(other_resource["id"].as_str().unwrap(), 40002),
            flow(branch_db["id"].as_str().unwrap(), 40003),
        ]}))
        .await;
    let stored = gateway.next_of("flows_stored").await;
    assert_eq!(stored["batch"], 1);
    let (status, ours) = w.app.call("GET", "/flows", None).await;
    assert_eq!(status, 200);
    let ours = ours["data"].as_array().unwrap().clone();
    assert_eq!(
        ours.len(),
        1,
        "only the flow of our own site's resource: {ours:?}"
    );
    assert_eq!(ours[0]["source"], "100.64.0.2:40001");
    assert_eq!(ours[0]["bytes_in"], 34000);
    let (_, theirs) = w
        .app
        .call_as(Some(&other_token), "GET", "/flows", None)
        .await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0, "{theirs}");

    let too_many: Vec<Value> = (0..postern_model::protocol::MAX_FLOWS_PER_BATCH as u16 + 1)
        .map(|n| flow(&w.resource, n))
        .collect();
    gateway
        .send(json!({"type": "flows", "batch": 2, "flows": too_many}))
        .await;
    let refused = gateway.next_of("error").await;
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("flows per message"),
        "{refused}"
    );
    let (_, after) = w.app.call("GET", "/flows", None).await;
    assert_eq!(after["data"].as_array().unwrap().len(), 1);
}
