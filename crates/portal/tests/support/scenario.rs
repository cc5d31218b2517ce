//! The store suite: every endpoint, good and bad input, account isolation and
//! cascades, run against each database engine.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{TestApp, id};

pub async fn crud_scenario(app: &TestApp) {
    // --- authentication
    let (status, body) = app.call_as(None, "GET", "/sites", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = app.call_as(Some("garbage"), "GET", "/sites", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Change the first character (to one it is not).
    let first = if app.token.starts_with('x') { 'y' } else { 'x' };
    let tampered = format!("{first}{}", &app.token[1..]);
    let (status, _) = app.call_as(Some(&tampered), "GET", "/sites", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    identity_providers(app).await;

    // --- the account and its search domain (F25)
    let account = app.expect(StatusCode::OK, "GET", "/account", None).await;
    assert_eq!(account["slug"], "acme");
    assert!(account["search_domain"].is_null(), "{account}");
    let account = app
        .expect(
            StatusCode::OK,
            "PATCH",
            "/account",
            Some(json!({"search_domain": " Corp.Example. "})),
        )
        .await;
    assert_eq!(account["search_domain"], "corp.example");
    for bad in ["*.corp.example", "bad..example", "-x.example", ""] {
        let problem = app
            .expect(
                StatusCode::UNPROCESSABLE_ENTITY,
                "PATCH",
                "/account",
                Some(json!({ "search_domain": bad })),
            )
            .await;
        assert_eq!(problem["field"], "search_domain", "{bad:?}");
    }
    // Absent leaves it, null clears it.
    let account = app
        .expect(StatusCode::OK, "PATCH", "/account", Some(json!({})))
        .await;
    assert_eq!(account["search_domain"], "corp.example");
    let account = app
        .expect(
            StatusCode::OK,
            "PATCH",
            "/account",
            Some(json!({"search_domain": null})),
        )
        .await;
    assert!(account["search_domain"].is_null(), "{account}");
    app.expect(
        StatusCode::OK,
        "PATCH",
        "/account",
        Some(json!({"search_domain": "corp.example"})),
    )
    .await;

    // --- sites
    let site = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/sites",
            Some(json!({"name": " Office "})),
        )
        .await;
    assert_eq!(site["name"], "Office");
    let site_id = id(&site);
    app.expect(
        StatusCode::CONFLICT,
        "POST",
        "/sites",
        Some(json!({"name": "Office"})),
    )
    .await;
    let problem = app
        .expect(
            StatusCode::UNPROCESSABLE_ENTITY,
            "POST",
            "/sites",
            Some(json!({"name": "  "})),
        )
        .await;
    assert_eq!(problem["field"], "name");
    let problem = app
        .expect(
            StatusCode::UNPROCESSABLE_ENTITY,
            "POST",
            "/sites",
            Some(json!({"name": 7})),
        )
        .await;
    assert_eq!(problem["field"], "name");
    app.expect(
        StatusCode::UNPROCESSABLE_ENTITY,
        "POST",
        "/sites",
        Some(json!({"name": "x", "color": "red"})),
    )
    .await;
    let renamed = app
        .expect(
            StatusCode::OK,
            "PATCH",
            &format!("/sites/{site_id}"),
            Some(json!({"name": "HQ"})),
        )
        .await;
    assert_eq!(renamed["name"], "HQ");
    let sites = app.expect(StatusCode::OK, "GET", "/sites", None).await;
    assert_eq!(sites["data"].as_array().unwrap().len(), 1);
    app.expect(
        StatusCode::NOT_FOUND,
        "GET",
        &format!("/sites/{}", uuid::Uuid::new_v4()),
        None,
    )
    .await;
    app.expect(StatusCode::NOT_FOUND, "GET", "/sites/not-a-uuid", None)
        .await;
    let gateway_token = app
        .expect(
            StatusCode::CREATED,
            "POST",
            &format!("/sites/{site_id}/gateway_tokens"),
            None,
        )
        .await;
    assert!(gateway_token["token"].as_str().unwrap().len() > 40);
    let gateways = app
        .expect(
            StatusCode::OK,
            "GET",
            &format!("/sites/{site_id}/gateways"),
            None,
        )
        .await;
    assert_eq!(gateways["data"], json!([]));

    // --- resources
    let cidr = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/resources",
            Some(json!({
                "name": "Office LAN", "type": "cidr", "address": "10.1.2.3/8", "site_id": site_id,
                "filters": [{"protocol": "tcp", "ports": "80"}, {"protocol": "icmp"}]
            })),
        )
        .await;
    assert_eq!(cidr["address"], "10.0.0.0/8", "stored in canonical form");
    assert_eq!(cidr["filters"][0]["ports"], "80");
    let cidr_id = id(&cidr);
    for (body, field, needle) in [
        (
            json!({"name": "r", "type": "cidr", "address": "10.0.0.0/33", "site_id": site_id}),
            "address",
            "CIDR",
        ),
        (
            json!({"name": "r", "type": "cidr", "address": "100.64.0.0/10", "site_id": site_id}),
            "address",
            "Postern",
        ),
        (
            json!({"name": "r", "type": "ip", "address": "127.0.0.1", "site_id": site_id}),
            "address",
            "loopback",
        ),
        (
            json!({"name": "r", "type": "dns", "address": "*.com", "site_id": site_id}),
            "address",
            "",
        ),
        (
            json!({"name": "r", "type": "dns", "address": format!("{}.test", "a".repeat(64)), "site_id": site_id}),
            "address",
            "",
        ),
        (
            json!({"name": "r", "type": "bogus", "address": "x", "site_id": site_id}),
            "type",
            "unknown variant",
        ),
        (
            json!({"name": "r", "type": "cidr", "address": "10.0.0.0/8", "site_id": site_id,
                "filters": [{"protocol": "tcp", "ports": "90-80"}]}),
            "filters[0]",
            "",
        ),
        (
            json!({"name": "r", "type": "cidr", "address": "10.0.0.0/8", "site_id": "nope"}),
            "site_id",
            "",
        ),
    ] {
        let problem = app
            .expect(
                StatusCode::UNPROCESSABLE_ENTITY,
                "POST",
                "/resources",
                Some(body.clone()),
            )
            .await;
        assert!(
            problem["field"].as_str().unwrap().starts_with(field),
            "{body}: {problem}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{body}: {problem}"
        );
    }
    // A valid request naming a site the account does not have: 409.
    let problem = app
        .expect(
            StatusCode::CONFLICT,
            "POST",
            "/resources",
            Some(json!({"name": "r", "type": "cidr", "address": "10.0.0.0/8",
                        "site_id": uuid::Uuid::new_v4()})),
        )
        .await;
    assert_eq!(problem["field"], "site_id", "{problem}");
    let dns = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/resources",
            Some(json!({
                "name": "Apps", "type": "dns", "address": "**.Apps.Corp.Test", "site_id": site_id,
                "address_description": "internal web apps"
            })),
        )
        .await;
    assert_eq!(dns["address"], "**.apps.corp.test");
    app.expect(
        StatusCode::CREATED,
        "POST",
        "/resources",
        Some(json!({"name": "Internet", "type": "internet", "site_id": site_id})),
    )
    .await;
    app.expect(
        StatusCode::CONFLICT,
        "POST",
        "/resources",
        Some(json!({"name": "Internet 2", "type": "internet", "site_id": site_id})),
    )
    .await;
    let patched = app
        .expect(
            StatusCode::OK,
            "PATCH",
            &format!("/resources/{cidr_id}"),
            Some(json!({"filters": [{"protocol": "udp", "ports": "53"}]})),
        )
        .await;
    assert_eq!(
        patched["filters"],
        json!([{"protocol": "udp", "ports": "53"}])
    );
    assert_eq!(patched["address"], "10.0.0.0/8");
    // No type's address: the request is invalid (422). A DNS name is an
    // address, but not of this CIDR resource: a conflict with it (409).
    app.expect(
        StatusCode::UNPROCESSABLE_ENTITY,
        "PATCH",
        &format!("/resources/{cidr_id}"),
        Some(json!({"address": "not an address"})),
    )
    .await;
    let problem = app
        .expect(
            StatusCode::CONFLICT,
            "PATCH",
            &format!("/resources/{cidr_id}"),
            Some(json!({"address": "nonsense.example"})),
        )
        .await;
    assert_eq!(problem["field"], "address", "{problem}");
    let unchanged = app
        .expect(
            StatusCode::OK,
            "GET",
            &format!("/resources/{cidr_id}"),
            None,
        )
        .await;
    assert_eq!(
        unchanged["address"], "10.0.0.0/8",
        "a refused PATCH writes nothing"
    );

    // --- actors
    let alice = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/actors",
            Some(json!({"name": "Alice", "email": "Alice@Example.Test", "role": "user"})),
        )
        .await;
    assert_eq!(alice["email"], "alice@example.test");
    let alice_id = id(&alice);
    app.expect(
        StatusCode::CONFLICT,
        "POST",
        "/actors",
        Some(json!({"name": "Alice 2", "email": "alice@example.test", "role": "user"})),
    )
    .await;
    let problem = app
        .expect(
            StatusCode::UNPROCESSABLE_ENTITY,
            "POST",
            "/actors",
            Some(json!({"name": "Bob", "role": "user"})),
        )
        .await;
    assert_eq!(problem["field"], "email");
    let problem = app
        .expect(
            StatusCode::UNPROCESSABLE_ENTITY,
            "POST",
            "/actors",
            Some(json!({"name": "Bob", "role": "root"})),
        )
        .await;
    assert_eq!(problem["field"], "role");
    let robot = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/actors",
            Some(json!({"name": "CI runner", "role": "service_account"})),
        )
        .await;
    let robot_id = id(&robot);
    let robot_token = app
        .expect(
            StatusCode::CREATED,
            "POST",
            &format!("/actors/{robot_id}/tokens"),
            None,
        )
        .await;
    assert!(robot_token["expires_at"].as_str().is_some());
    app.expect(
        StatusCode::CONFLICT,
        "POST",
        &format!("/actors/{alice_id}/tokens"),
        None,
    )
    .await;
    // A well-formed time already past conflicts with the clock (409); a
    // malformed one is an invalid request (422).
    let problem = app
        .expect(
            StatusCode::CONFLICT,
            "POST",
            &format!("/actors/{robot_id}/tokens"),
            Some(json!({"expires_at": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(problem["field"], "expires_at");
    let problem = app
        .expect(
            StatusCode::UNPROCESSABLE_ENTITY,
            "POST",
            &format!("/actors/{robot_id}/tokens"),
            Some(json!({"expires_at": "tomorrow"})),
        )
        .await;
    assert_eq!(problem["field"], "expires_at");
    // The account keeps an enabled admin.
    let admin_id = app.admin_id;
    app.expect(
        StatusCode::CONFLICT,
        "PATCH",
        &format!("/actors/{admin_id}"),
        Some(json!({"disabled": true})),
    )
    .await;
    app.expect(
        StatusCode::CONFLICT,
        "DELETE",
        &format!("/actors/{admin_id}"),
        None,
    )
    .await;

    // --- groups
    let groups = app.expect(StatusCode::OK, "GET", "/groups", None).await;
    let everyone = groups["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == "everyone")
        .cloned()
        .expect("Everyone exists");
    let everyone_id = id(&everyone);
    let members = app
        .expect(
            StatusCode::OK,
            "GET",
            &format!("/groups/{everyone_id}/members"),
            None,
        )
        .await;
    let members: Vec<&str> = members["actor_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        members.contains(&alice_id.as_str()) && members.contains(&admin_id.to_string().as_str())
    );
    assert!(
        !members.contains(&robot_id.as_str()),
        "service accounts are not in Everyone"
    );
    app.expect(
        StatusCode::CONFLICT,
        "PATCH",
        &format!("/groups/{everyone_id}"),
        Some(json!({"name": "All"})),
    )
    .await;
    app.expect(
        StatusCode::CONFLICT,
        "DELETE",
        &format!("/groups/{everyone_id}"),
        None,
    )
    .await;
    let engineering = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/groups",
            Some(json!({"name": "Engineering"})),
        )
        .await;
    let engineering_id = id(&engineering);
    let set = app
        .expect(
            StatusCode::OK,
            "PUT",
            &format!("/groups/{engineering_id}/members"),
            Some(json!({"actor_ids": [alice_id, robot_id, alice_id]})),
        )
        .await;
    assert_eq!(set["actor_ids"].as_array().unwrap().len(), 2);
    // A valid request naming an actor the account does not have: a conflict
    // with the account's state (409), naming the entry in the request's order.
    let problem = app
        .expect(
            StatusCode::CONFLICT,
            "PUT",
            &format!("/groups/{engineering_id}/members"),
            Some(json!({"actor_ids": [alice_id, uuid::Uuid::new_v4()]})),
        )
        .await;
    assert_eq!(problem["field"], "actor_ids[1]");
    let members = app
        .expect(
            StatusCode::OK,
            "GET",
            &format!("/groups/{engineering_id}/members"),
            None,
        )
        .await;
    assert_eq!(
        members["actor_ids"].as_array().unwrap().len(),
        2,
        "a refused PUT changes nothing"
    );

    // --- policies
    let policy = app
        .expect(StatusCode::CREATED, "POST", "/policies", Some(json!({
            "group_id": engineering_id, "resource_id": cidr_id, "description": "engineers reach the LAN",
            "conditions": [
                {"property": "time", "values": ["MTWRF/09:00-17:00/Europe/Berlin"]},
                {"property": "remote_ip", "operator": "not_in", "values": ["198.18.0.0/15"]}
            ]
        })))
        .await;
    let policy_id = id(&policy);
    assert_eq!(policy["conditions"][0]["operator"], "in");
    for (body, field) in [
        (
            json!({"group_id": engineering_id, "resource_id": cidr_id, "conditions": [{"property": "time", "values": ["MTWRF/09:00-17:00/Mars/Base"]}]}),
            "conditions[0]",
        ),
        (
            json!({"group_id": engineering_id, "resource_id": cidr_id, "conditions": [{"property": "country", "values": ["Germany"]}]}),
            "conditions[0]",
        ),
        (
            json!({"group_id": engineering_id, "resource_id": cidr_id, "conditions": [{"property": "astrology", "values": []}]}),
            "conditions[0].property",
        ),
    ] {
        let problem = app
            .expect(
                StatusCode::UNPROCESSABLE_ENTITY,
                "POST",
                "/policies",
                Some(body.clone()),
            )
            .await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    for (body, field) in [
        (
            json!({"group_id": uuid::Uuid::new_v4(), "resource_id": cidr_id}),
            "group_id",
        ),
        (
            json!({"group_id": engineering_id, "resource_id": uuid::Uuid::new_v4()}),
            "resource_id",
        ),
    ] {
        let problem = app
            .expect(
                StatusCode::CONFLICT,
                "POST",
                "/policies",
                Some(body.clone()),
            )
            .await;
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let disabled = app
        .expect(
            StatusCode::OK,
            "PATCH",
            &format!("/policies/{policy_id}"),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(disabled["disabled"], true);
    app.expect(
        StatusCode::CREATED,
        "POST",
        "/policies",
        Some(json!({"group_id": everyone_id, "resource_id": id(&dns)})),
    )
    .await;

    // --- malformed requests
    let (status, _) = app
        .send(
            axum::http::Request::builder()
                .method("POST")
                .uri("/api/v1/sites")
                .header("authorization", format!("Bearer {}", app.token))
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{\"name\": "))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .send(
            axum::http::Request::builder()
                .method("POST")
                .uri("/api/v1/sites")
                .header("authorization", format!("Bearer {}", app.token))
                .header("content-type", "text/plain")
                .body(axum::body::Body::from("{\"name\": \"x\"}"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    app.expect(StatusCode::NOT_FOUND, "GET", "/no/such/endpoint", None)
        .await;

    // --- isolation: another account sees none of this, and gets 404, not 403
    let other = app.second_account("othercorp").await;
    let other_call = |method: &'static str, path: String, body: Option<Value>| {
        let other = other.clone();
        async move { app.call_as(Some(&other), method, &path, body).await }
    };
    let (status, sites) = other_call("GET", "/sites".into(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sites["data"], json!([]));
    for (method, path, body) in [
        ("GET", format!("/sites/{site_id}"), None),
        (
            "PATCH",
            format!("/sites/{site_id}"),
            Some(json!({"name": "mine"})),
        ),
        ("DELETE", format!("/sites/{site_id}"), None),
        ("POST", format!("/sites/{site_id}/gateway_tokens"), None),
        ("GET", format!("/resources/{cidr_id}"), None),
        ("DELETE", format!("/policies/{policy_id}"), None),
        ("GET", format!("/groups/{engineering_id}/members"), None),
        (
            "PATCH",
            format!("/actors/{alice_id}"),
            Some(json!({"disabled": true})),
        ),
        ("POST", format!("/actors/{robot_id}/tokens"), None),
        (
            "DELETE",
            format!("/tokens/{}", robot_token["id"].as_str().unwrap()),
            None,
        ),
    ] {
        let (status, problem) = other_call(method, path.clone(), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {problem}");
    }
    let (status, problem) = other_call(
        "POST",
        "/resources".into(),
        Some(json!({"name": "r", "type": "cidr", "address": "10.0.0.0/8", "site_id": site_id})),
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::CONFLICT, Some("site_id"))
    );
    let (_, log) = other_call("GET", "/audit_log".into(), None).await;
    assert!(
        log["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] == "account.init"),
        "{log}"
    );

    // --- API token revocation
    let second = app
        .expect(
            StatusCode::CREATED,
            "POST",
            &format!("/actors/{admin_id}/tokens"),
            None,
        )
        .await;
    let second_token = second["token"].as_str().unwrap().to_string();
    let (status, _) = app
        .call_as(Some(&second_token), "GET", "/sites", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    app.expect(
        StatusCode::NO_CONTENT,
        "DELETE",
        &format!("/tokens/{}", id(&second)),
        None,
    )
    .await;
    let (status, _) = app
        .call_as(Some(&second_token), "GET", "/sites", None)
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a revoked token is refused at once"
    );
    app.expect(
        StatusCode::NOT_FOUND,
        "DELETE",
        &format!("/tokens/{}", id(&second)),
        None,
    )
    .await;

    // --- cascades: deleting the site takes its resources and their policies
    app.expect(
        StatusCode::NO_CONTENT,
        "DELETE",
        &format!("/sites/{site_id}"),
        None,
    )
    .await;
    app.expect(
        StatusCode::NOT_FOUND,
        "GET",
        &format!("/resources/{cidr_id}"),
        None,
    )
    .await;
    let policies = app.expect(StatusCode::OK, "GET", "/policies", None).await;
    assert_eq!(policies["data"], json!([]));
    app.expect(
        StatusCode::NO_CONTENT,
        "DELETE",
        &format!("/actors/{alice_id}"),
        None,
    )
    .await;
    let members = app
        .expect(
            StatusCode::OK,
            "GET",
            &format!("/groups/{engineering_id}/members"),
            None,
        )
        .await;
    assert_eq!(members["actor_ids"], json!([robot_id]));

    // --- flow log: nothing reported yet; every filter answers (on both
    // databases: unset filters are typed NULLs)
    for query in [
        "/flows".to_string(),
        format!(
            "/flows?resource_id={robot_id}&actor_id={robot_id}&since=2020-01-01T00:00:00Z&until=2030-01-01T00:00:00Z&limit=5"
        ),
        "/flows?since=2020-01-01T00:00:00Z".to_string(),
    ] {
        let flows = app.expect(StatusCode::OK, "GET", &query, None).await;
        assert_eq!(flows["data"], json!([]), "{query}");
    }

    // --- audit log: every change, newest first, with before and after
    let log = app
        .expect(StatusCode::OK, "GET", "/audit_log?limit=1000", None)
        .await;
    let entries = log["data"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "site.create",
        "site.update",
        "site.delete",
        "resource.create",
        "resource.update",
        "actor.create",
        "actor.delete",
        "group.members",
        "policy.create",
        "policy.update",
        "token.create",
        "token.revoke",
        "account.init",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    assert_eq!(actions.last(), Some(&"account.init"), "oldest last");
    let update = entries
        .iter()
        .find(|e| e["action"] == "site.update")
        .unwrap();
    assert_eq!(
        (
            update["before"]["name"].as_str(),
            update["after"]["name"].as_str()
        ),
        (Some("Office"), Some("HQ"))
    );
    assert_eq!(update["actor_id"], json!(admin_id));
    assert!(
        entries
            .iter()
            .all(|e| !e.to_string().contains(second_token.as_str())),
        "no secret in the audit log"
    );
    // Paging: two at a time walks the same entries.
    // (A fresh token: this scenario spent its own token's rate.)
    let pager = app.expect_as_fresh_admin_token().await;
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("/audit_log?limit=2&cursor={c}"),
            None => "/audit_log?limit=2".to_string(),
        };
        let (status, page) = app.call_as(Some(&pager), "GET", &path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        walked.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["cursor"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => {
                // Opaque: nothing a caller could take for a position.
                assert!(next.parse::<i64>().is_err(), "{next}");
                cursor = Some(next.to_string());
            }
            None => break,
        }
    }
    let all: Vec<i64> = entries
        .iter()
        .map(|e| e["cursor"].as_i64().unwrap())
        .collect();
    assert_eq!(walked, all);

    // --- OpenAPI document
    let (status, doc) = app.call_as(None, "GET", "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/sites",
        "/resources/{id}",
        "/groups/{id}/members",
        "/tokens/{id}",
        "/audit_log",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    // Page bounds are documented as the server enforces them.
    let limit = doc["paths"]["/flows"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()
        .clone();
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&json!(1), &json!(1000)),
        "{limit}"
    );
    // (A fresh token: this scenario spent its own token's rate.)
    let fresh = app.expect_as_fresh_admin_token().await;
    // Cursors the portal never handed out: positions in the clear, bad
    // base64, a right-looking one of the wrong length or tag.
    for query in [
        "/audit_log?cursor=0",
        "/sessions?cursor=-5",
        "/flows?cursor=0",
        "/audit_log?cursor=%%%",
        "/audit_log?cursor=cGMxAAAAAAAAAAA",
        "/audit_log?cursor=eHh4AAAAAAAAAAE",
        "/audit_log?limit=abc",
        "/audit_log?limit=0",
        "/flows?since=yesterday",
        "/flows?actor_id=12",
    ] {
        let (status, problem) = app.call_as(Some(&fresh), "GET", query, None).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {problem}"
        );
        let field = query.split(['?', '=']).nth(1).unwrap();
        assert_eq!(problem["field"], field, "{query}");
    }
    // Every `{name}` in a path is a declared path parameter of each of its
    // operations (generated clients cannot call them otherwise).
    let mut undeclared = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        let names: Vec<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split('}').next())
            .collect();
        for (method, operation) in operations.as_object().unwrap() {
            for name in &names {
                let declared = operation["parameters"].as_array().is_some_and(|params| {
                    params
                        .iter()
                        .any(|p| p["in"] == "path" && p["name"] == *name && p["required"] == true)
                });
                if !declared {
                    undeclared.push(format!("{method} {path}: {name}"));
                }
            }
        }
    }
    assert!(
        undeclared.is_empty(),
        "path parameters not declared: {undeclared:?}"
    );
}

/// `/identity_providers`: CRUD, validation, the secret never shown.
async fn identity_providers(app: &TestApp) {
    let secret = "very-secret-client-secret-42";
    let created = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/identity_providers",
            Some(
                json!({"type": "oidc", "name": "Okta", "issuer": "https://id.example.com/",
                        "client_id": "abc", "client_secret": secret, "groups_claim": "groups"}),
            ),
        )
        .await;
    assert_eq!(created["issuer"], "https://id.example.com");
    assert_eq!(created["type"], "oidc");
    assert!(created["admin_claim"].is_null());
    assert!(!created.to_string().contains(secret), "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/identity_providers/{id}");
    for (body, field) in [
        (
            json!({"type": "saml", "name": "x", "issuer": "https://a.example", "client_id": "c", "client_secret": "s"}),
            "type",
        ),
        (
            json!({"type": "oidc", "name": "x", "issuer": "http://a.example", "client_id": "c", "client_secret": "s"}),
            "issuer",
        ),
        (
            json!({"type": "oidc", "name": "x", "issuer": "https://a.example", "client_id": "", "client_secret": "s"}),
            "client_id",
        ),
        (
            json!({"type": "oidc", "name": "x", "issuer": "https://a.example", "client_id": "c", "client_secret": "s", "client_session_lifetime_secs": 40000000}),
            "client_session_lifetime_secs",
        ),
    ] {
        let problem = app
            .expect(
                StatusCode::UNPROCESSABLE_ENTITY,
                "POST",
                "/identity_providers",
                Some(body),
            )
            .await;
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{problem}"
        );
    }
    app.expect(
        StatusCode::CONFLICT,
        "POST",
        "/identity_providers",
        Some(
            json!({"type": "oidc", "name": "Okta", "issuer": "https://b.example",
                    "client_id": "c", "client_secret": "s"}),
        ),
    )
    .await;
    let patched = app
        .expect(
            StatusCode::OK,
            "PATCH",
            &path,
            Some(
                json!({"admin_claim": "is_admin", "groups_claim": "", "client_secret": "rotated",
                        "client_session_lifetime_secs": 86400}),
            ),
        )
        .await;
    assert_eq!(patched["admin_claim"], "is_admin");
    assert!(patched["groups_claim"].is_null());
    assert_eq!(patched["client_session_lifetime_secs"], 86400);
    let list = app
        .expect(StatusCode::OK, "GET", "/identity_providers", None)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains("rotated"));
    app.expect(StatusCode::NO_CONTENT, "DELETE", &path, None)
        .await;
    app.expect(StatusCode::NOT_FOUND, "GET", &path, None).await;
}
