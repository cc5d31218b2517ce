//! The OpenAPI 3 document: generated from the handlers' annotations and the
//! types they take (`fields`, `schemas`), then completed by rules that hold
//! for every operation (which error answers it can give, with the problem
//! schema; unique operation ids; links from a create to what uses its id).
//! `crates/portal/tests/schemathesis` checks the server against it.

use std::sync::LazyLock;

use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{
    account, actors, clients, config, directories, groups, identity_providers, logs, policies,
    resources, sites, tokens,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Postern REST API", description = "Admin API of the Postern portal. \
        Errors are RFC 7807 problems (`application/problem+json`) naming the field at fault: \
        400 malformed JSON, 401 no valid token, 403 the token may not do this, 404 no such \
        object (or another account's), 409 a valid request that conflicts with the account's \
        current state (a name taken, a reference to an object that does not exist, a time \
        already past), 413 body too large, 415 not JSON, 422 a request that is invalid by \
        itself (what the schemas below say), 429 rate limited (see Retry-After), 503 the \
        database is unavailable."),
    servers((url = "/api/v1")),
    security(("bearer" = [])),
    modifiers(&BearerAuth),
    paths(
        account::get, account::update,
        sites::list, sites::create, sites::get, sites::update, sites::remove,
        sites::create_gateway_token, sites::gateways,
        resources::list, resources::create, resources::get, resources::update, resources::remove,
        groups::list, groups::create, groups::get, groups::update, groups::remove,
        groups::members, groups::set_members,
        actors::list, actors::create, actors::get, actors::update, actors::remove,
        tokens::create, tokens::revoke,
        identity_providers::list, identity_providers::create, identity_providers::get,
        identity_providers::update, identity_providers::remove,
        directories::list, directories::create, directories::get, directories::update,
        directories::remove, directories::rotate_token, directories::sync,
        policies::list, policies::create, policies::get, policies::update, policies::remove,
        clients::list, clients::update, clients::remove,
        logs::audit_log, logs::sessions, logs::flows,
        config::export, config::apply,
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

/// The error answers, each a problem document.
fn error_responses() -> Value {
    let problem = |description: &str| {
        json!({
            "description": description,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        })
    };
    let mut limited = problem("Too many requests with this token: wait Retry-After seconds.");
    limited["headers"] = json!({"Retry-After": {
        "description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}});
    json!({
        "BadRequest": problem("The body is not well-formed JSON."),
        "Unauthorized": problem("No valid admin API token (missing, invalid, expired or revoked)."),
        "Forbidden": problem("The token may not make changes (read scope), or a limit is reached."),
        "NotFound": problem("No such object in the account (a malformed id names nothing)."),
        "Conflict": problem("The request is valid but conflicts with the account's current state."),
        "PayloadTooLarge": problem("The body is larger than 256 KiB."),
        "UnsupportedMediaType": problem("The body is not sent as application/json."),
        "Unprocessable": problem("The request is invalid by itself; `field` names the culprit."),
        "TooManyRequests": limited,
        "Unavailable": problem("The database is unavailable; retry later."),
    })
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "An RFC 7807 problem.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "The request field at fault (`filters[0].ports`)."},
        },
    })
}

/// Which error answers an operation can give, from its shape.
fn errors_of(method: &str, path: &str, operation: &Value) -> Vec<(&'static str, &'static str)> {
    let mut errors = vec![
        ("401", "Unauthorized"),
        ("429", "TooManyRequests"),
        ("503", "Unavailable"),
    ];
    if path.contains("{id}") {
        errors.push(("404", "NotFound"));
    }
    if method != "get" {
        errors.push(("403", "Forbidden"));
        errors.push(("409", "Conflict"));
    }
    if operation.get("requestBody").is_some() {
        errors.extend([
            ("400", "BadRequest"),
            ("413", "PayloadTooLarge"),
            ("415", "UnsupportedMediaType"),
            ("422", "Unprocessable"),
        ]);
    }
    let has_query = operation["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
    if has_query {
        errors.push(("422", "Unprocessable"));
    }
    errors
}

/// `get /sites/{id}/gateways` -> `get_sites_gateways`: unique, stable.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_string();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.push_str(if segment.starts_with('{') {
            "by_id"
        } else {
            segment
        });
    }
    id
}

/// Links from each create to the operations that take the new object's id,
/// so a tester (or a reader) can follow them.
fn link_creates(paths: &mut Map<String, Value>) {
    let ids: Vec<(String, String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS.iter().filter_map(move |method| {
                item.get(*method).map(|op| {
                    let id = op["operationId"].as_str().unwrap_or_default().to_string();
                    (path.clone(), method.to_string(), id)
                })
            })
        })
        .collect();
    // What a create's id feeds: the object's own paths, and for a token its
    // revocation.
    let fed_by = |created: &str| -> Vec<&(String, String, String)> {
        let base = match created {
            "/actors/{id}/tokens" => "/tokens".to_string(),
            other => other.to_string(),
        };
        ids.iter()
            .filter(|(path, _, _)| path.starts_with(&format!("{base}/{{id}}")))
            .collect()
    };
    for (path, item) in paths.iter_mut() {
        let Some(created) = item
            .get_mut("post")
            .and_then(|op| op["responses"].get_mut("201"))
        else {
            continue;
        };
        let mut links = Map::new();
        for (_, _, target) in fed_by(path) {
            links.insert(
                target.clone(),
                json!({"operationId": target, "parameters": {"id": "$response.body#/id"}}),
            );
        }
        if !links.is_empty() {
            created["links"] = Value::Object(links);
        }
    }
}

/// Users and admins sign in by email: they need one. The derive cannot say
/// "required when", so the input becomes a union on `role`.
fn actor_needs_email(schemas: &mut Map<String, Value>) {
    let Some(input) = schemas.get("ActorInput").cloned() else {
        return;
    };
    let mut people = input.clone();
    people["title"] = json!("user or admin");
    people["properties"]["role"] = json!({"type": "string", "enum": ["user", "admin"]});
    people["required"] = json!(["name", "role", "email"]);
    let email = input["properties"]["email"]["oneOf"][0].clone();
    people["properties"]["email"] = email;
    let mut service = input;
    service["title"] = json!("service account");
    service["properties"]["role"] = json!({"type": "string", "enum": ["service_account"]});
    schemas.insert("ActorInput".into(), json!({"oneOf": [people, service]}));
}

/// Puts each hand-written schema in place of its stand-in (`fields::json_schema`).
fn unwrap_hand_written(value: &mut Value) {
    let hand_written = value["description"]
        .as_str()
        .and_then(|d| d.strip_prefix(super::fields::HAND_WRITTEN))
        .map(|json| serde_json::from_str::<Value>(json).expect("stand-ins carry JSON"));
    if let Some(schema) = hand_written {
        *value = schema;
    }
    match value {
        Value::Object(fields) => fields.values_mut().for_each(unwrap_hand_written),
        Value::Array(items) => items.iter_mut().for_each(unwrap_hand_written),
        _ => {}
    }
}

fn complete(mut document: Value) -> Value {
    unwrap_hand_written(&mut document);
    let paths = document["paths"].as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut() {
        for method in METHODS {
            let Some(operation) = item.get_mut(method) else {
                continue;
            };
            operation["operationId"] = json!(operation_id(method, path));
            for (status, name) in errors_of(method, path, operation) {
                operation["responses"][status] =
                    json!({"$ref": format!("#/components/responses/{name}")});
            }
        }
    }
    link_creates(paths);
    let components = document["components"].as_object_mut().expect("components");
    components.insert("responses".into(), error_responses());
    let schemas = components["schemas"].as_object_mut().expect("schemas");
    schemas.insert("Problem".into(), problem_schema());
    actor_needs_email(schemas);
    document
}

/// The document, built once.
pub static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    complete(serde_json::to_value(ApiDoc::openapi()).expect("the document serializes"))
});

pub async fn document() -> impl IntoResponse {
    axum::Json(&*DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document builds (a schema utoipa cannot hold would panic at the
    /// first request) and every operation has its error answers.
    #[test]
    fn the_document_is_complete() {
        let document = &*DOCUMENT;
        let mut operations = 0;
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                operations += 1;
                let responses = operation["responses"].as_object().unwrap();
                for status in ["401", "429", "503"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
                assert!(operation["operationId"].is_string());
            }
        }
        assert!(operations >= 46, "{operations}");
        assert!(
            !document
                .to_string()
                .contains(crate::api::fields::HAND_WRITTEN),
            "a stand-in was left"
        );
        let input = &document["components"]["schemas"]["ResourceInput"];
        assert_eq!(input["oneOf"].as_array().unwrap().len(), 4, "{input}");
    }
}
