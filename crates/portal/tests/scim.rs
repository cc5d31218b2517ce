#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The SCIM 2.0 server (issue 18, SPEC 7.3) from its clients' side: the
//! compliance suite scim2-tester (PyPI) against a portal on loopback, and
//! the requests Okta and Microsoft Entra send, replayed as they send them.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};
use support::{TempDb, TestApp};

/// The scim2-tester release the server was checked with (its checks change).
const TESTER: &str = "0.5.2";

/// A portal on loopback whose external URL is its own address, with a
/// SCIM directory: (app, address, SCIM base URL, token).
async fn portal_with_directory(db: &TempDb) -> (TestApp, SocketAddr, String, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = TestApp::open_with(&db.url(), "acme", |state| {
        state.external_url = Some(format!("http://{addr}"));
    })
    .await;
    let state = app.state.clone();
    tokio::spawn(async move {
        postern_portal::serve::serve(listener, state, std::future::pending())
            .await
            .unwrap();
    });
    let (status, directory) = app
        .call(
            "POST",
            "/directories",
            Some(json!({"type": "scim", "name": "Okta"})),
        )
        .await;
    assert_eq!(status, 201, "{directory}");
    let base = directory["scim_base_url"].as_str().unwrap().to_string();
    assert_eq!(base, format!("http://{addr}/acme/scim/v2"));
    let token = directory["token"].as_str().unwrap().to_string();
    (app, addr, base, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim2_tester_finds_nothing_wrong_with_the_scim_server() {
    let version = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('scim2-tester'))",
        ])
        .output();
    let found = version
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_eq!(
        found, TESTER,
        "this test needs scim2-tester {TESTER}: pip install 'scim2-tester[httpx2]=={TESTER}' (the CI does)"
    );
    let db = TempDb::new("scim-tester");
    let (_app, _addr, base, token) = portal_with_directory(&db).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scim/check.py");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args([&base, &token])
            .stdin(Stdio::null())
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "scim2-tester found problems:\n{report}"
    );
    // Every kind of check ran: discovery, CRUD and PATCH on both types.
    for check in [
        "object_creation",
        "object_replacement",
        "object_deletion",
        "check_add_attribute",
        "check_remove_attribute",
        "check_replace_attribute",
        "query_all_schemas",
        "random_url",
    ] {
        assert!(report.contains(check), "{check} did not run:\n{report}");
    }
}

/// A SCIM client with the directory's token.
struct Directory {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Directory {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body, &self.token, &[]).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            // As identity providers send it.
            request = request
                .header("content-type", "application/scim+json; charset=utf-8")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status != 204 {
            assert_eq!(
                response.headers()["content-type"],
                "application/scim+json",
                "{path}"
            );
        }
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// What Okta sends to create a user (its SCIM 2.0 integration guide's
/// shape, password included: Postern ignores it).
fn okta_user(email: &str, given: &str, family: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": email,
        "name": {"givenName": given, "familyName": family},
        "emails": [{"primary": true, "value": email, "type": "work"}],
        "displayName": format!("{given} {family}"),
        "locale": "en-US",
        "externalId": "00ujl29u0le5T6Aj10h7",
        "groups": [],
        "password": "1mz050nq",
        "active": true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprovisioning_through_scim_disconnects_a_connected_client_within_a_second() {
    use std::time::{Duration, Instant};
    use support::channel::{Peer, key};

    let db = TempDb::new("scim-deprovision");
    let (app, addr, base, token) = portal_with_directory(&db).await;
    let seeded = support::seed(&app).await;
    let okta = Directory {
        http: reqwest::Client::new(),
        base,
        token,
    };

    // Okta looks the user up, then creates it, then its group and members.
    let (status, found) = okta
        .call(
            "GET",
            "/Users?filter=userName%20eq%20%22alice%40acme.test%22&startIndex=1&count=100",
            None,
        )
        .await;
    assert_eq!(
        (status, found["totalResults"].clone()),
        (200, json!(0)),
        "{found}"
    );
    let (status, alice) = okta
        .call(
            "POST",
            "/Users",
            Some(okta_user("alice@acme.test", "Alice", "Liddell")),
        )
        .await;
    assert_eq!(status, 201, "{alice}");
    let alice_id = alice["id"].as_str().unwrap().to_string();
    assert!(alice.get("password").is_none(), "{alice}");
    let (status, group) = okta
        .call(
            "POST",
            "/Groups",
            Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Engineering", "members": []})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let group_id = group["id"].as_str().unwrap().to_string();
    let add_alice = json!({"schemas": [PATCH_OP], "Operations": [
        {"op": "add", "path": "members", "value": [{"value": alice_id, "display": "alice@acme.test"}]}
    ]});
    let (status, _) = okta
        .call(
            "PATCH",
            &format!("/Groups/{group_id}"),
            Some(add_alice.clone()),
        )
        .await;
    assert_eq!(status, 200);

    // The portal's objects follow: a user named by the directory, its group.
    let actor = app
        .expect(
            axum::http::StatusCode::OK,
            "GET",
            &format!("/actors/{alice_id}"),
            None,
        )
        .await;
    assert_eq!(actor["name"], "Alice Liddell");
    assert_eq!(actor["email"], "alice@acme.test");
    assert_eq!(actor["role"], "user");
    let directory_id = actor["directory_id"].as_str().unwrap().to_string();
    let members = app
        .expect(
            axum::http::StatusCode::OK,
            "GET",
            &format!("/groups/{group_id}/members"),
            None,
        )
        .await;
    assert_eq!(members["actor_ids"], json!([alice_id]));

    // What the directory owns is read-only to the API, naming the directory.
    for (method, path, body) in [
        (
            "PATCH",
            format!("/actors/{alice_id}"),
            Some(json!({"name": "Mallory"})),
        ),
        (
            "PATCH",
            format!("/actors/{alice_id}"),
            Some(json!({"disabled": true})),
        ),
        ("DELETE", format!("/actors/{alice_id}"), None),
        (
            "PATCH",
            format!("/groups/{group_id}"),
            Some(json!({"name": "Renamed"})),
        ),
        (
            "PUT",
            format!("/groups/{group_id}/members"),
            Some(json!({"actor_ids": [seeded.robot]})),
        ),
        ("DELETE", format!("/groups/{group_id}"), None),
    ] {
        let (status, problem) = app.call(method, &path, body).await;
        assert_eq!(status, 409, "{method} {path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("\"Okta\""),
            "{problem}"
        );
    }
    // The role is Postern's, not the directory's.
    for role in ["admin", "user"] {
        let changed = app
            .expect(
                axum::http::StatusCode::OK,
                "PATCH",
                &format!("/actors/{alice_id}"),
                Some(json!({"role": role})),
            )
            .await;
        assert_eq!(changed["role"], role);
    }

    // Alice's laptop is connected and reaches the resource through the
    // directory's group.
    app.expect(
        axum::http::StatusCode::CREATED,
        "POST",
        "/policies",
        Some(json!({"group_id": group_id, "resource_id": seeded.resource})),
    )
    .await;
    let client_token = {
        let minted = postern_portal::auth::token::mint().unwrap();
        let mut tx = app.state.store.write().await.unwrap();
        postern_portal::testing::tokens::insert(
            &mut tx,
            &minted,
            &postern_portal::testing::tokens::NewToken {
                account_id: Some(app.account_id),
                kind: postern_portal::domain::TokenKind::Client,
                actor_id: Some(alice_id.parse().unwrap()),
                site_id: None,
                identity_provider_id: None,
                expires_at_ms: None,
                read_only: false,
            },
            0,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        minted.token
    };
    let mut gateway = Peer::connect(addr, "/v1/gateway", &seeded.gateway_token, "gw-1", &key(1))
        .await
        .unwrap();
    assert_eq!(gateway.next().await["type"], "init");
    let mut laptop = Peer::connect(addr, "/v1/client", &client_token, "laptop", &key(2))
        .await
        .unwrap();
    assert_eq!(laptop.next().await["type"], "init");
    let grant = async |laptop: &mut Peer, gateway: &mut Peer, reference: &str| {
        laptop
            .send(
                json!({"type": "request_access", "ref": reference, "resource_id": seeded.resource}),
            )
            .await;
        let authorize = gateway.next_of("authorize").await;
        gateway
            .send(json!({"type": "authorized", "ref": authorize["ref"]}))
            .await;
        // After the resource list's own updates (removed, upserted).
        let granted = laptop.next_of("access_granted").await;
        assert_eq!(granted["ref"], reference, "{granted}");
    };
    grant(&mut laptop, &mut gateway, "a").await;

    // Removed from the group (Okta's form): the gateway revokes at once.
    let started = Instant::now();
    let (status, _) = okta
        .call(
            "PATCH",
            &format!("/Groups/{group_id}"),
            Some(json!({"schemas": [PATCH_OP], "Operations": [
                {"op": "remove", "path": format!("members[value eq \"{alice_id}\"]")}
            ]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        gateway.next_of("revoke").await["resource_id"],
        json!(seeded.resource)
    );
    let membership = started.elapsed();
    assert!(membership < Duration::from_secs(1), "{membership:?}");
    let (status, _) = okta
        .call("PATCH", &format!("/Groups/{group_id}"), Some(add_alice))
        .await;
    assert_eq!(status, 200);
    grant(&mut laptop, &mut gateway, "b").await;

    // Deactivated (Entra's form): the channel closes with token_revoked.
    let started = Instant::now();
    let (status, patched) = okta
        .call(
            "PATCH",
            &format!("/Users/{alice_id}"),
            Some(json!({"schemas": [PATCH_OP], "Operations": [
                {"op": "Replace", "path": "active", "value": "False"}
            ]})),
        )
        .await;
    assert_eq!(
        (status, patched["active"].clone()),
        (200, json!(false)),
        "{patched}"
    );
    let disconnect = laptop.next_of("disconnect").await;
    let deprovisioned = started.elapsed();
    assert_eq!(disconnect["reason"], "token_revoked");
    assert!(deprovisioned < Duration::from_secs(1), "{deprovisioned:?}");
    println!(
        "SCIM group removal to gateway revoke: {membership:?}; deactivation to the client's \
         disconnect: {deprovisioned:?}"
    );
    assert_eq!(
        gateway.next_of("revoke").await["resource_id"],
        json!(seeded.resource)
    );
    // Its tokens are gone: reactivating does not bring the laptop back.
    let (status, _) = okta
        .call(
            "PATCH",
            &format!("/Users/{alice_id}"),
            Some(json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {"active": true}}]})),
        )
        .await;
    assert_eq!(status, 200);
    let refused = Peer::connect(addr, "/v1/client", &client_token, "laptop", &key(2))
        .await
        .err();
    assert_eq!(refused, Some(401));

    // The audit log names the directory as the author of its changes.
    let log = app
        .expect(
            axum::http::StatusCode::OK,
            "GET",
            "/audit_log?limit=20",
            None,
        )
        .await;
    let by_directory: Vec<&Value> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["directory_id"] == json!(directory_id))
        .collect();
    let actions: Vec<&str> = by_directory
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"actor.update"), "{actions:?}");
    assert!(actions.contains(&"group.members"), "{actions:?}");
    assert!(by_directory.iter().all(|e| e["actor_id"].is_null()));

    // Deleted: the user goes with its memberships.
    let (status, _) = okta
        .call("DELETE", &format!("/Users/{alice_id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.call("GET", &format!("/actors/{alice_id}"), None).await;
    assert_eq!(status, 404);
    let (status, group) = okta.call("GET", &format!("/Groups/{group_id}"), None).await;
    assert_eq!(status, 200);
    assert!(group.get("members").is_none(), "{group}");
    let members = app
        .expect(
            axum::http::StatusCode::OK,
            "GET",
            &format!("/groups/{group_id}/members"),
            None,
        )
        .await;
    assert_eq!(members["actor_ids"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_and_okta_requests_filters_paging_etags_and_errors() {
    let db = TempDb::new("scim-protocol");
    let (app, _addr, base, token) = portal_with_directory(&db).await;
    let entra = Directory {
        http: reqwest::Client::new(),
        base: base.clone(),
        token: token.clone(),
    };
    // Microsoft Entra's user create: the enterprise extension, a work
    // email, the user principal name as userName.
    let entra_user = |upn: &str, external: &str, department: &str| {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
            "externalId": external,
            "userName": upn,
            "active": true,
            "emails": [{"primary": true, "type": "work", "value": upn}],
            "meta": {"resourceType": "User"},
            "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
            "roles": [],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": department},
        })
    };
    let mut ids = Vec::new();
    for (n, department) in ["Tour", "Sales", "Tour"].iter().enumerate() {
        let (status, user) = entra
            .call(
                "POST",
                "/Users",
                Some(entra_user(
                    &format!("user{n}@contoso.test"),
                    &format!("ext-{n}"),
                    department,
                )),
            )
            .await;
        assert_eq!(status, 201, "{user}");
        assert_eq!(
            user["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"],
            *department
        );
        ids.push(user["id"].as_str().unwrap().to_string());
    }
    // A second create of the same userName (any case) is a uniqueness error.
    let (status, error) = entra
        .call(
            "POST",
            "/Users",
            Some(entra_user("USER0@contoso.test", "ext-x", "x")),
        )
        .await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["scimType"], "uniqueness");
    assert_eq!(
        error["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
    );

    // Filters, as Entra and Okta query.
    let count = async |filter: &str| {
        let query = format!("/Users?filter={}", url_encode(filter));
        let (status, list) = entra.call("GET", &query, None).await;
        assert_eq!(status, 200, "{filter}: {list}");
        list["totalResults"].as_u64().unwrap()
    };
    assert_eq!(count(r#"userName eq "user1@contoso.test""#).await, 1);
    assert_eq!(count(r#"externalId eq "ext-2""#).await, 1);
    assert_eq!(
        count(r#"externalId eq "EXT-2""#).await,
        0,
        "externalId is case-exact"
    );
    assert_eq!(
        count(r#"emails[type eq "work" and value co "contoso"]"#).await,
        3
    );
    assert_eq!(
        count(r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "tour""#)
            .await,
        2
    );
    assert_eq!(
        count(r#"userName sw "user" and not (userName ew "1@contoso.test")"#).await,
        2
    );
    assert_eq!(count(r#"active eq true"#).await, 3);
    let (status, error) = entra.call("GET", "/Users?filter=userName%20eq", None).await;
    assert_eq!(
        (status, error["scimType"].clone()),
        (400, json!("invalidFilter"))
    );
    // Paging: 1-based, a window of `count`.
    let (_, page) = entra.call("GET", "/Users?startIndex=2&count=1", None).await;
    assert_eq!(page["totalResults"], 3);
    assert_eq!(page["startIndex"], 2);
    assert_eq!(page["itemsPerPage"], 1);
    assert_eq!(page["Resources"][0]["id"], json!(ids[1]));
    // Attributes, and POST /.search.
    let (_, only) = entra
        .call(
            "GET",
            &format!("/Users/{}?attributes=userName", ids[0]),
            None,
        )
        .await;
    assert_eq!(only.as_object().unwrap().len(), 3, "{only}");
    let (status, found) = entra
        .call(
            "POST",
            "/Users/.search",
            Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                        "filter": "userName eq \"user2@contoso.test\"", "excludedAttributes": ["emails"]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(found["totalResults"], 1);
    assert!(found["Resources"][0].get("emails").is_none(), "{found}");

    // Entra's group: created empty, members added, one removed by value list.
    let (status, group) = entra
        .call(
            "POST",
            "/Groups",
            Some(json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
                "displayName": "Group1DisplayName",
                "meta": {"resourceType": "Group"},
            })),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let group_id = group["id"].as_str().unwrap().to_string();
    let etag = group["meta"]["version"].as_str().unwrap().to_string();
    let (status, _) = entra
        .call("PATCH", &format!("/Groups/{group_id}"), Some(json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "Add", "path": "members", "value": [{"value": ids[0]}, {"value": ids[1]}, {"value": ids[2]}]},
            {"op": "Replace", "path": "displayName", "value": "Engineering"},
        ]})))
        .await;
    assert_eq!(status, 200);
    let (status, _) = entra
        .call(
            "PATCH",
            &format!("/Groups/{group_id}"),
            Some(json!({"schemas": [PATCH_OP], "Operations": [
                {"op": "Remove", "path": "members", "value": [{"value": ids[2]}]},
            ]})),
        )
        .await;
    assert_eq!(status, 200);
    let members = app
        .expect(
            axum::http::StatusCode::OK,
            "GET",
            &format!("/groups/{group_id}/members"),
            None,
        )
        .await;
    let mut want = vec![ids[0].clone(), ids[1].clone()];
    want.sort();
    assert_eq!(members["actor_ids"], json!(want));
    let group_row = app
        .expect(
            axum::http::StatusCode::OK,
            "GET",
            &format!("/groups/{group_id}"),
            None,
        )
        .await;
    assert_eq!(group_row["name"], "Engineering");
    // A user's groups are shown on the user; a group filter finds members.
    let (_, user) = entra.call("GET", &format!("/Users/{}", ids[0]), None).await;
    assert_eq!(user["groups"][0]["value"], json!(group_id));
    assert_eq!(user["groups"][0]["display"], "Engineering");
    let (_, by_member) = entra
        .call(
            "GET",
            &format!(
                "/Groups?filter={}",
                url_encode(&format!("members eq \"{}\"", ids[1]))
            ),
            None,
        )
        .await;
    assert_eq!(by_member["totalResults"], 1);
    // A member the directory does not have is refused.
    let (status, error) = entra
        .call("PATCH", &format!("/Groups/{group_id}"), Some(json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "add", "path": "members", "value": [{"value": uuid::Uuid::new_v4().to_string()}]},
        ]})))
        .await;
    assert_eq!(
        (status, error["scimType"].clone()),
        (400, json!("invalidValue")),
        "{error}"
    );

    // Entity tags: a write to a version the client did not see is refused.
    let (status, _) = entra
        .call_with(
            "PUT",
            &format!("/Groups/{group_id}"),
            Some(json!({"displayName": "Stale"})),
            &token,
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(status, 412);
    let (_, current) = entra
        .call("GET", &format!("/Groups/{group_id}"), None)
        .await;
    let fresh = current["meta"]["version"].as_str().unwrap().to_string();
    assert_ne!(fresh, etag);
    let (status, _) = entra
        .call_with(
            "PATCH",
            &format!("/Groups/{group_id}"),
            Some(json!({"Operations": [{"op": "replace", "path": "externalId", "value": "x"}]})),
            &token,
            &[("if-match", &fresh)],
        )
        .await;
    assert_eq!(status, 200);

    // The token is the directory's alone: none, a wrong one, another
    // account's path, each 401; a rotated token retires the old one.
    for bad in ["", "x.y", "garbage.00000000000000000000000000000000"] {
        let (status, _) = entra.call_with("GET", "/Users", None, bad, &[]).await;
        assert_eq!(status, 401, "{bad:?}");
    }
    app.second_account("globex").await;
    let elsewhere = Directory {
        http: reqwest::Client::new(),
        base: base.replace("/acme/", "/globex/"),
        token: token.clone(),
    };
    let (status, _) = elsewhere.call("GET", "/Users", None).await;
    assert_eq!(status, 401);
    let directory_id = app
        .expect(axum::http::StatusCode::OK, "GET", "/directories", None)
        .await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rotated = app
        .expect(
            axum::http::StatusCode::CREATED,
            "POST",
            &format!("/directories/{directory_id}/token"),
            None,
        )
        .await;
    let (status, _) = entra.call("GET", "/Users", None).await;
    assert_eq!(status, 401, "the old token stops working");
    let (status, _) = entra
        .call_with(
            "GET",
            "/Users",
            None,
            rotated["token"].as_str().unwrap(),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    // Discovery needs the token too; unknown paths are SCIM 404s.
    for path in ["/ServiceProviderConfig", "/Schemas", "/ResourceTypes"] {
        let (status, _) = entra.call_with("GET", path, None, "", &[]).await;
        assert_eq!(status, 401, "{path}");
    }
    let (status, error) = entra
        .call_with(
            "GET",
            "/Nope",
            None,
            rotated["token"].as_str().unwrap(),
            &[],
        )
        .await;
    assert_eq!((status, error["status"].clone()), (404, json!("404")));
    // Deleting the directory leaves its users and groups to the admins.
    app.expect(
        axum::http::StatusCode::NO_CONTENT,
        "DELETE",
        &format!("/directories/{directory_id}"),
        None,
    )
    .await;
    let user = app
        .expect(
            axum::http::StatusCode::OK,
            "GET",
            &format!("/actors/{}", ids[0]),
            None,
        )
        .await;
    assert_eq!(user["directory_id"], Value::Null);
    app.expect(
        axum::http::StatusCode::OK,
        "PATCH",
        &format!("/groups/{group_id}"),
        Some(json!({"name": "Engineering (was Entra)"})),
    )
    .await;
}

/// Percent-encodes a query value.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A directory is trusted with its own users and groups, nothing else: not
/// another directory's, not the admins' users (an email they hold, an id),
/// not the admins' groups (a name they hold, which policies use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_reaches_only_what_it_provisioned() {
    let db = TempDb::new("scim-attacker");
    let (app, _addr, base, token) = portal_with_directory(&db).await;
    let seeded = support::seed(&app).await;
    let mine = Directory {
        http: reqwest::Client::new(),
        base: base.clone(),
        token,
    };
    let other = app
        .expect(
            axum::http::StatusCode::CREATED,
            "POST",
            "/directories",
            Some(json!({"type": "scim", "name": "Rogue"})),
        )
        .await;
    let rogue = Directory {
        http: reqwest::Client::new(),
        base,
        token: other["token"].as_str().unwrap().to_string(),
    };
    let (status, alice) = mine
        .call(
            "POST",
            "/Users",
            Some(okta_user("alice@acme.test", "Alice", "L")),
        )
        .await;
    assert_eq!(status, 201);
    let alice_id = alice["id"].as_str().unwrap().to_string();

    // Another directory sees none of it and cannot touch it.
    let (_, listed) = rogue.call("GET", "/Users", None).await;
    assert_eq!(listed["totalResults"], 0);
    for (method, body) in [
        ("GET", None),
        (
            "PUT",
            Some(json!({"userName": "alice@acme.test", "active": false})),
        ),
        (
            "PATCH",
            Some(json!({"Operations": [{"op": "replace", "path": "active", "value": false}]})),
        ),
        ("DELETE", None),
    ] {
        let (status, _) = rogue
            .call(method, &format!("/Users/{alice_id}"), body)
            .await;
        assert_eq!(status, 404, "{method}");
    }
    let (status, error) = rogue
        .call(
            "POST",
            "/Groups",
            Some(json!({"displayName": "Stolen", "members": [{"value": alice_id}]})),
        )
        .await;
    assert_eq!(
        (status, error["scimType"].clone()),
        (400, json!("invalidValue"))
    );

    // The admins' users: not by id, not by taking their email.
    let admin_id = app.admin_id.to_string();
    for (method, body) in [
        ("GET", None),
        (
            "PUT",
            Some(json!({"userName": "admin@example.test", "active": false})),
        ),
        (
            "PATCH",
            Some(json!({"Operations": [{"op": "replace", "path": "active", "value": false}]})),
        ),
        ("DELETE", None),
    ] {
        let (status, _) = mine.call(method, &format!("/Users/{admin_id}"), body).await;
        assert_eq!(status, 404, "{method}");
    }
    let (status, error) = mine
        .call(
            "POST",
            "/Users",
            Some(okta_user("admin@example.test", "Eve", "Admin")),
        )
        .await;
    assert_eq!(
        (status, error["scimType"].clone()),
        (409, json!("uniqueness")),
        "{error}"
    );
    let (status, error) = mine
        .call(
            "PATCH",
            &format!("/Users/{alice_id}"),
            Some(json!({"Operations": [{"op": "replace", "path": "emails", "value": [{"value": "ADMIN@example.test", "primary": true}]}]})),
        )
        .await;
    assert_eq!(
        (status, error["scimType"].clone()),
        (409, json!("uniqueness")),
        "{error}"
    );
    let admin = app
        .expect(
            axum::http::StatusCode::OK,
            "GET",
            &format!("/actors/{admin_id}"),
            None,
        )
        .await;
    assert_eq!(
        (
            admin["role"].clone(),
            admin["disabled"].clone(),
            admin["directory_id"].clone()
        ),
        (json!("admin"), json!(false), Value::Null)
    );

    // The admins' groups: a group of the same name would not be theirs.
    let (status, error) = mine
        .call(
            "POST",
            "/Groups",
            Some(json!({"displayName": "Robots", "members": [{"value": alice_id}]})),
        )
        .await;
    assert_eq!(
        (status, error["scimType"].clone()),
        (409, json!("uniqueness")),
        "{error}"
    );
    let robots = app
        .expect(
            axum::http::StatusCode::OK,
            "GET",
            &format!("/groups/{}/members", seeded.group),
            None,
        )
        .await;
    assert_eq!(robots["actor_ids"], json!([seeded.robot]));
    let (status, _) = mine
        .call("GET", &format!("/Groups/{}", seeded.group), None)
        .await;
    assert_eq!(status, 404);
    // Nothing was written on the way: alice is all there is.
    let actors = app
        .expect(axum::http::StatusCode::OK, "GET", "/actors", None)
        .await;
    assert_eq!(actors["data"].as_array().unwrap().len(), 3, "{actors}");
}

/// Identity providers send in parallel (Entra up to a few requests at once
/// per app): two changes to one group must both stand, neither overwriting
/// the other with what it read before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_to_one_group_all_stand() {
    let db = TempDb::new("scim-concurrent");
    let (app, _addr, base, token) = portal_with_directory(&db).await;
    let dir = std::sync::Arc::new(Directory {
        http: reqwest::Client::new(),
        base,
        token,
    });
    let mut users = Vec::new();
    for n in 0..12 {
        let (status, user) = dir
            .call(
                "POST",
                "/Users",
                Some(okta_user(&format!("u{n}@acme.test"), "U", &n.to_string())),
            )
            .await;
        assert_eq!(status, 201);
        users.push(user["id"].as_str().unwrap().to_string());
    }
    let (_, group) = dir
        .call("POST", "/Groups", Some(json!({"displayName": "All"})))
        .await;
    let group_id = group["id"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for user in users.clone() {
        let (dir, group_id) = (dir.clone(), group_id.clone());
        tasks.push(tokio::spawn(async move {
            dir.call(
                "PATCH",
                &format!("/Groups/{group_id}"),
                Some(json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [{"value": user}]}]})),
            )
            .await
            .0
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let (_, group) = dir.call("GET", &format!("/Groups/{group_id}"), None).await;
    assert_eq!(
        group["members"].as_array().unwrap().len(),
        users.len(),
        "{group}"
    );
    assert_eq!(
        group["meta"]["version"],
        json!(format!("W/\"{}\"", users.len() + 1))
    );
    let members = app
        .expect(
            axum::http::StatusCode::OK,
            "GET",
            &format!("/groups/{group_id}/members"),
            None,
        )
        .await;
    assert_eq!(members["actor_ids"].as_array().unwrap().len(), users.len());
}
