//! A SCIM resource as it is kept: the JSON a directory sent, read against the
//! schema (attribute names in their canonical case, booleans that arrive as
//! `"False"` made booleans, read-only and unknown attributes dropped), and
//! shown back with the `attributes` / `excludedAttributes` it was asked for.
//! Keeping what was sent, not only the fields Postern uses, is what makes a
//! directory's read-back equal its write (SCIM clients compare them).

use serde_json::{Map, Value};

use super::error::ScimError;
use super::filter::AttrPath;
use super::schema::{self, Attribute, Kind, Mutability, Type};

/// Reads a resource's attributes from a request body (POST, PUT) or a
/// patched document: the object to keep.
pub fn normalize(kind: Kind, input: &Value) -> Result<Map<String, Value>, ScimError> {
    let Value::Object(input) = input else {
        return Err(ScimError::bad(
            "invalidSyntax",
            "the resource must be a JSON object",
        ));
    };
    let mut out = Map::new();
    for (key, value) in input {
        if key.eq_ignore_ascii_case("schemas") {
            continue;
        }
        if let Some(extension) = kind.extension(key) {
            let Value::Object(_) = value else {
                if value.is_null() {
                    continue;
                }
                return Err(ScimError::bad(
                    "invalidValue",
                    format!("{key} must be an object"),
                ));
            };
            let fields = normalize_object(&extension.attributes, value, key)?;
            if !fields.is_empty() {
                out.insert(extension.id.to_string(), Value::Object(fields));
            }
            continue;
        }
        if key.eq_ignore_ascii_case(kind.core().id) {
            // The core schema's attributes nested under its own URN.
            if value.is_object() {
                for (k, v) in normalize_object(&kind.core().attributes, value, key)? {
                    out.insert(k, v);
                }
            }
            continue;
        }
        let Some(attribute) = schema::find(&kind.core().attributes, key)
            .or_else(|| schema::find(schema::common(), key))
        else {
            // Unknown attributes are ignored, as RFC 7644 section 3.3 allows:
            // a directory mapped to attributes Postern does not keep still
            // provisions.
            continue;
        };
        if attribute.mutability == Mutability::ReadOnly {
            continue;
        }
        if let Some(value) = normalize_value(attribute, value, key)? {
            out.insert(attribute.name.to_string(), value);
        }
    }
    let required: Vec<&Attribute> = kind
        .core()
        .attributes
        .iter()
        .filter(|a| a.required)
        .collect();
    for attribute in required {
        match out.get(attribute.name) {
            Some(Value::String(text)) if !text.trim().is_empty() => {}
            _ => {
                return Err(ScimError::bad(
                    "invalidValue",
                    format!("{} is required", attribute.name),
                ));
            }
        }
    }
    Ok(out)
}

fn normalize_object(
    attributes: &[Attribute],
    value: &Value,
    at: &str,
) -> Result<Map<String, Value>, ScimError> {
    let Value::Object(input) = value else {
        return Err(ScimError::bad(
            "invalidValue",
            format!("{at} must be an object"),
        ));
    };
    let mut out = Map::new();
    for (key, value) in input {
        let Some(attribute) = schema::find(attributes, key) else {
            continue;
        };
        if attribute.mutability == Mutability::ReadOnly {
            continue;
        }
        if let Some(value) = normalize_value(attribute, value, &format!("{at}.{key}"))? {
            out.insert(attribute.name.to_string(), value);
        }
    }
    Ok(out)
}

/// One attribute's value in its schema's shape, or `None` when it is empty
/// (null, `[]`, `{}`: RFC 7643 section 2.5 counts them as unassigned).
pub fn normalize_value(
    attribute: &Attribute,
    value: &Value,
    at: &str,
) -> Result<Option<Value>, ScimError> {
    if value.is_null() {
        return Ok(None);
    }
    if attribute.multi {
        let items: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some(v) = normalize_single(attribute, item, at)? {
                out.push(v);
            }
        }
        return Ok((!out.is_empty()).then_some(Value::Array(out)));
    }
    if let Value::Array(_) = value {
        return Err(ScimError::bad(
            "invalidValue",
            format!("{at} takes one value, not a list"),
        ));
    }
    normalize_single(attribute, value, at)
}

fn normalize_single(
    attribute: &Attribute,
    value: &Value,
    at: &str,
) -> Result<Option<Value>, ScimError> {
    let wrong = |what: &str| {
        Err(ScimError::bad(
            "invalidValue",
            format!("{at} must be {what}"),
        ))
    };
    match (attribute.kind, value) {
        (_, Value::Null) => Ok(None),
        (Type::Complex, Value::Object(_)) => {
            let fields = normalize_object(&attribute.sub, value, at)?;
            Ok((!fields.is_empty()).then_some(Value::Object(fields)))
        }
        (Type::Complex, _) => wrong("an object"),
        (Type::Boolean, Value::Bool(b)) => Ok(Some(Value::Bool(*b))),
        // Microsoft Entra sends booleans as "True" and "False".
        (Type::Boolean, Value::String(text)) if text.eq_ignore_ascii_case("true") => {
            Ok(Some(Value::Bool(true)))
        }
        (Type::Boolean, Value::String(text)) if text.eq_ignore_ascii_case("false") => {
            Ok(Some(Value::Bool(false)))
        }
        (Type::Boolean, _) => wrong("true or false"),
        (_, Value::String(text)) => {
            if text.len() > MAX_STRING {
                return wrong(&format!("at most {MAX_STRING} bytes"));
            }
            Ok(Some(Value::String(text.clone())))
        }
        // A number where a string belongs (an employee number): its text.
        (_, Value::Number(n)) => Ok(Some(Value::String(n.to_string()))),
        _ => wrong("a string"),
    }
}

/// Longest string value kept: names, addresses, references.
const MAX_STRING: usize = 2048;

/// Which attributes a response shows (RFC 7644 section 3.4.2.5).
#[derive(Debug, Default, Clone)]
pub struct Projection {
    pub attributes: Vec<AttrPath>,
    pub excluded: Vec<AttrPath>,
}

impl Projection {
    /// From the comma-separated query parameters.
    pub fn parse(
        attributes: Option<&str>,
        excluded: Option<&str>,
    ) -> Result<Projection, ScimError> {
        let list = |text: Option<&str>| -> Result<Vec<AttrPath>, ScimError> {
            text.map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| AttrPath::parse(p).map_err(|e| ScimError::bad("invalidPath", e.0)))
                    .collect()
            })
            .unwrap_or_else(|| Ok(Vec::new()))
        };
        Ok(Projection {
            attributes: list(attributes)?,
            excluded: list(excluded)?,
        })
    }

    /// `resource` (a whole document with `schemas`, `id` and `meta`) with
    /// only what was asked for; `id` and `schemas` always.
    pub fn apply(&self, kind: Kind, resource: Value) -> Value {
        let Value::Object(mut full) = resource else {
            return resource;
        };
        if !self.attributes.is_empty() {
            let mut out = Map::new();
            for always in ["schemas", "id"] {
                if let Some(v) = full.get(always) {
                    out.insert(always.to_string(), v.clone());
                }
            }
            for path in &self.attributes {
                copy_path(kind, &full, &mut out, path);
            }
            full = out;
        }
        for path in &self.excluded {
            if path.sub.is_none()
                && (path.name.eq_ignore_ascii_case("id")
                    || path.name.eq_ignore_ascii_case("schemas"))
            {
                continue;
            }
            remove_path(kind, &mut full, path);
        }
        Value::Object(full)
    }
}

/// The key of `path`'s container in a document: the resource itself, or
/// an extension's object (named by its URN).
fn container_key(kind: Kind, path: &AttrPath) -> Option<&'static str> {
    if let Some(urn) = &path.urn {
        return kind.extension(urn).map(|s| s.id);
    }
    if schema::find(&kind.core().attributes, &path.name).is_some()
        || schema::find(schema::common(), &path.name).is_some()
    {
        return None;
    }
    kind.extensions()
        .iter()
        .find(|s| schema::find(&s.attributes, &path.name).is_some())
        .map(|s| s.id)
}

fn copy_path(kind: Kind, from: &Map<String, Value>, to: &mut Map<String, Value>, path: &AttrPath) {
    // A bare extension URN asks for the whole extension.
    if path.sub.is_none()
        && let Some(extension) = kind.extension(&format!(
            "{}{}",
            path.urn
                .as_deref()
                .map(|u| format!("{u}:"))
                .unwrap_or_default(),
            path.name
        ))
    {
        if let Some(v) = from.get(extension.id) {
            to.insert(extension.id.to_string(), v.clone());
        }
        return;
    }
    let (source, target) = match container_key(kind, path) {
        Some(key) => {
            let Some(source) = from.get(key) else {
                return;
            };
            let target = to
                .entry(key.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            (source, target)
        }
        None => {
            let Some((key, value)) = entry(from, &path.name) else {
                return;
            };
            match &path.sub {
                None => {
                    to.insert(key.clone(), value.clone());
                }
                Some(sub) => {
                    if let Some(v) = pick_sub(value, sub) {
                        merge_into(to, key, v);
                    }
                }
            }
            return;
        }
    };
    let (Value::Object(source), Value::Object(target)) = (source, target) else {
        return;
    };
    if let Some((key, value)) = entry(source, &path.name) {
        match &path.sub {
            None => {
                target.insert(key.clone(), value.clone());
            }
            Some(sub) => {
                if let Some(v) = pick_sub(value, sub) {
                    merge_into(target, key, v);
                }
            }
        }
    }
}

/// The key and value of `name` in `map`, in any case.
fn entry<'a>(map: &'a Map<String, Value>, name: &str) -> Option<(&'a String, &'a Value)> {
    map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))
}

/// `value` with only its sub-attribute `sub` (each element of a list).
fn pick_sub(value: &Value, sub: &str) -> Option<Value> {
    match value {
        Value::Object(_) => {
            let (k, v) = entry(value.as_object()?, sub)?;
            let mut one = Map::new();
            one.insert(k.clone(), v.clone());
            Some(Value::Object(one))
        }
        Value::Array(items) => {
            let picked: Vec<Value> = items.iter().filter_map(|i| pick_sub(i, sub)).collect();
            (!picked.is_empty()).then_some(Value::Array(picked))
        }
        _ => None,
    }
}

/// Adds `value` under `key`, merging with sub-attributes already copied.
fn merge_into(map: &mut Map<String, Value>, key: &str, value: Value) {
    match (map.get_mut(key), value) {
        (Some(Value::Object(existing)), Value::Object(new)) => existing.extend(new),
        (Some(Value::Array(existing)), Value::Array(new)) => {
            for (slot, item) in existing.iter_mut().zip(new) {
                if let (Value::Object(slot), Value::Object(item)) = (slot, item) {
                    slot.extend(item);
                }
            }
        }
        (_, value) => {
            map.insert(key.to_string(), value);
        }
    }
}

fn remove_path(kind: Kind, map: &mut Map<String, Value>, path: &AttrPath) {
    let bare = format!(
        "{}{}",
        path.urn
            .as_deref()
            .map(|u| format!("{u}:"))
            .unwrap_or_default(),
        path.name
    );
    if path.sub.is_none()
        && let Some(extension) = kind.extension(&bare)
    {
        map.remove(extension.id);
        return;
    }
    let target = match container_key(kind, path) {
        Some(key) => match map.get_mut(key) {
            Some(Value::Object(inner)) => inner,
            _ => return,
        },
        None => map,
    };
    let Some(key) = target
        .keys()
        .find(|k| k.eq_ignore_ascii_case(&path.name))
        .cloned()
    else {
        return;
    };
    match &path.sub {
        None => {
            target.remove(&key);
        }
        Some(sub) => {
            if let Some(value) = target.get_mut(&key) {
                remove_sub(value, sub);
            }
        }
    }
}

fn remove_sub(value: &mut Value, sub: &str) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !k.eq_ignore_ascii_case(sub));
        }
        Value::Array(items) => items.iter_mut().for_each(|i| remove_sub(i, sub)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_is_read_in_the_schema_s_shape() {
        let kept = normalize(
            Kind::User,
            &json!({
                "schemas": [schema::USER],
                "id": "mine",
                "UserName": "bjensen",
                "ACTIVE": "False",
                "groups": [{"value": "x"}],
                "unknown": 1,
                "emails": {"value": "b@example.com", "Primary": "true"},
                "name": {"givenName": "Barbara", "other": "x"},
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": 701984},
            }),
        )
        .unwrap();
        assert_eq!(
            Value::Object(kept),
            json!({
                "userName": "bjensen",
                "active": false,
                "emails": [{"value": "b@example.com", "primary": true}],
                "name": {"givenName": "Barbara"},
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "701984"},
            })
        );
    }

    #[test]
    fn wrong_types_and_missing_required_attributes_are_refused() {
        for body in [
            json!({"displayName": "no user name"}),
            json!({"userName": "  "}),
            json!({"userName": "a", "active": "maybe"}),
            json!({"userName": "a", "name": "not an object"}),
            json!({"userName": "a", "displayName": ["two", "values"]}),
            json!({"userName": ["a"]}),
            json!({"userName": "a", "emails": [{"value": {"nested": 1}}]}),
            json!(["not", "an", "object"]),
        ] {
            assert!(normalize(Kind::User, &body).is_err(), "{body}");
        }
    }

    #[test]
    fn projections_keep_what_was_asked_and_always_the_id() {
        let resource = json!({
            "schemas": [schema::USER],
            "id": "1",
            "userName": "b",
            "name": {"givenName": "B", "familyName": "J"},
            "emails": [{"value": "b@x", "type": "work"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "D", "costCenter": "C"},
            "meta": {"resourceType": "User"},
        });
        let only = Projection::parse(Some("name.givenName,emails.value,department"), None).unwrap();
        assert_eq!(
            only.apply(Kind::User, resource.clone()),
            json!({
                "schemas": [schema::USER],
                "id": "1",
                "name": {"givenName": "B"},
                "emails": [{"value": "b@x"}],
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "D"},
            })
        );
        let without = Projection::parse(
            None,
            Some("name,id,meta,urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"),
        )
        .unwrap();
        assert_eq!(
            without.apply(Kind::User, resource),
            json!({
                "schemas": [schema::USER],
                "id": "1",
                "userName": "b",
                "emails": [{"value": "b@x", "type": "work"}],
            })
        );
    }
}
