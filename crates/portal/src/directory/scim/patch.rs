//! SCIM PATCH (RFC 7644 section 3.5.2) on a kept document, in the forms the
//! identity providers send: `add`, `replace` and `remove` in any case
//! (Entra's `Replace`), with or without a path, value paths with a filter
//! (`emails[type eq "work"].value`, `members[value eq "..."]`), extension
//! attributes by their URN, and Entra's removal of members by a value list.
//! The result is read against the schema again (`document::normalize`), so
//! a patch cannot store what a PUT could not.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::document::normalize;
use super::error::ScimError;
use super::filter::{AttrPath, Filter, Op};
use super::schema::{self, Attribute, Kind, Mutability};

/// Most operations one PATCH may carry.
const MAX_OPERATIONS: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Add,
    Replace,
    Remove,
}

/// Applies a PatchOp body to `document`, returning the new document.
pub fn apply(
    kind: Kind,
    document: &Map<String, Value>,
    body: &Value,
) -> Result<Map<String, Value>, ScimError> {
    let operations = body
        .as_object()
        .and_then(|b| {
            b.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("Operations"))
                .map(|(_, v)| v)
        })
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::bad("invalidSyntax", "a PatchOp needs an Operations list"))?;
    if operations.len() > MAX_OPERATIONS {
        return Err(ScimError::bad(
            "tooMany",
            format!("at most {MAX_OPERATIONS} operations per PATCH"),
        ));
    }
    let mut doc = Value::Object(document.clone());
    for operation in operations {
        let field = |name: &str| {
            operation.as_object().and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
        };
        let op = match field("op")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
        {
            Some(op) if op == "add" => OpKind::Add,
            Some(op) if op == "replace" => OpKind::Replace,
            Some(op) if op == "remove" => OpKind::Remove,
            _ => {
                return Err(ScimError::bad(
                    "invalidSyntax",
                    "each operation's op is add, replace or remove",
                ));
            }
        };
        let value = field("value").cloned();
        match field("path") {
            None | Some(Value::Null) => {
                if op == OpKind::Remove {
                    return Err(ScimError::bad("noTarget", "remove needs a path"));
                }
                let Some(Value::Object(values)) = value else {
                    return Err(ScimError::bad(
                        "invalidValue",
                        "an operation without a path takes an object of attributes",
                    ));
                };
                for (key, value) in values {
                    without_path(kind, &mut doc, op, &key, value)?;
                }
            }
            Some(Value::String(path)) => {
                let target = Target::parse(kind, path)?;
                target.apply(&mut doc, op, value)?;
            }
            Some(_) => return Err(ScimError::bad("invalidPath", "a path is a string")),
        }
    }
    normalize(kind, &doc)
}

/// One attribute of a path-less add/replace: keys may be attribute names,
/// extension URNs (whose object holds their attributes) or paths
/// (`name.givenName`, `urn:...:User:department`), which some clients send.
fn without_path(
    kind: Kind,
    doc: &mut Value,
    op: OpKind,
    key: &str,
    value: Value,
) -> Result<(), ScimError> {
    if key.eq_ignore_ascii_case("schemas") {
        return Ok(());
    }
    if let Some(extension) = kind.extension(key) {
        let Value::Object(values) = value else {
            return Err(ScimError::bad(
                "invalidValue",
                format!("{key} must be an object"),
            ));
        };
        for (name, value) in values {
            if name.eq_ignore_ascii_case("schemas") {
                continue;
            }
            let path = AttrPath {
                urn: Some(extension.id.to_string()),
                name,
                sub: None,
            };
            Target::plain(kind, path).apply(doc, op, Some(value))?;
        }
        return Ok(());
    }
    let target = Target::parse(kind, key)?;
    // Read-only attributes named in a value object are skipped (Okta sends
    // the id back in a group rename), not refused.
    if target.read_only() {
        return Ok(());
    }
    target.apply(doc, op, Some(value))
}

/// What a PATCH path points at.
struct Target {
    kind: Kind,
    /// The extension URN whose object holds the attribute, if any.
    extension: Option<&'static str>,
    /// The whole extension (a bare URN path).
    whole_extension: bool,
    path: AttrPath,
    filter: Option<Filter>,
    /// `.sub` after a value filter.
    sub_after_filter: Option<String>,
}

impl Target {
    fn plain(kind: Kind, path: AttrPath) -> Target {
        let extension = container(kind, &path);
        Target {
            kind,
            extension,
            whole_extension: false,
            path,
            filter: None,
            sub_after_filter: None,
        }
    }

    fn parse(kind: Kind, text: &str) -> Result<Target, ScimError> {
        let invalid = |e: String| ScimError::bad("invalidPath", e);
        if let Some(extension) = kind.extension(text) {
            return Ok(Target {
                kind,
                extension: Some(extension.id),
                whole_extension: true,
                path: AttrPath {
                    urn: Some(extension.id.to_string()),
                    name: String::new(),
                    sub: None,
                },
                filter: None,
                sub_after_filter: None,
            });
        }
        let (head, filter, after) = match text.find('[') {
            Some(open) => {
                let close = text
                    .rfind(']')
                    .filter(|c| *c > open)
                    .ok_or_else(|| invalid(format!("{text:?}: a \"]\" is missing")))?;
                let filter = Filter::parse(&text[open + 1..close]).map_err(|e| invalid(e.0))?;
                let after = &text[close + 1..];
                let sub = match after.strip_prefix('.') {
                    Some(sub) if !sub.is_empty() => Some(sub.to_string()),
                    None if after.is_empty() => None,
                    _ => return Err(invalid(format!("{text:?} is not a path"))),
                };
                (&text[..open], Some(filter), sub)
            }
            None => (text, None, None),
        };
        let path = AttrPath::parse(head).map_err(|e| invalid(e.0))?;
        if filter.is_some() && path.sub.is_some() {
            return Err(invalid(format!("{text:?}: a filter follows an attribute")));
        }
        let mut target = Target::plain(kind, path);
        target.filter = filter;
        target.sub_after_filter = after;
        if target.attribute().is_none() {
            return Err(invalid(format!(
                "{text:?} names no attribute of a {}",
                kind.name()
            )));
        }
        Ok(target)
    }

    /// The attribute the path names (the parent for a sub-attribute).
    fn attribute(&self) -> Option<&'static Attribute> {
        let name_only = AttrPath {
            sub: None,
            ..self.path.clone()
        };
        name_only.attribute(self.kind)
    }

    fn read_only(&self) -> bool {
        self.attribute()
            .is_some_and(|a| a.mutability == Mutability::ReadOnly)
    }

    /// The object the attribute lives in, created for add/replace.
    fn container<'a>(
        &self,
        doc: &'a mut Value,
        create: bool,
    ) -> Option<&'a mut Map<String, Value>> {
        let map = doc.as_object_mut()?;
        match self.extension {
            None => Some(map),
            Some(urn) => {
                let key = map.keys().find(|k| k.eq_ignore_ascii_case(urn)).cloned();
                let key = match key {
                    Some(key) => key,
                    None if create => {
                        map.insert(urn.to_string(), Value::Object(Map::new()));
                        urn.to_string()
                    }
                    None => return None,
                };
                map.get_mut(&key)?.as_object_mut()
            }
        }
    }

    fn apply(&self, doc: &mut Value, op: OpKind, value: Option<Value>) -> Result<(), ScimError> {
        if self.read_only() {
            return Err(ScimError::bad(
                "mutability",
                format!("{} is read-only", self.path.name),
            ));
        }
        if op != OpKind::Remove && value.is_none() {
            return Err(ScimError::bad(
                "invalidValue",
                "add and replace need a value",
            ));
        }
        if self.whole_extension {
            return self.apply_whole_extension(doc, op, value);
        }
        let attribute = self.attribute().ok_or_else(|| {
            ScimError::bad("invalidPath", format!("no attribute {}", self.path.name))
        })?;
        let Some(container) = self.container(doc, op != OpKind::Remove) else {
            return Ok(());
        };
        let key = container
            .keys()
            .find(|k| k.eq_ignore_ascii_case(attribute.name))
            .cloned()
            .unwrap_or_else(|| attribute.name.to_string());
        match &self.filter {
            Some(filter) => self.apply_filtered(container, &key, attribute, filter, op, value),
            None => {
                apply_plain(
                    container,
                    &key,
                    attribute,
                    self.path.sub.as_deref(),
                    op,
                    value,
                );
                Ok(())
            }
        }
    }

    fn apply_whole_extension(
        &self,
        doc: &mut Value,
        op: OpKind,
        value: Option<Value>,
    ) -> Result<(), ScimError> {
        let urn = self.extension.unwrap_or_default();
        match op {
            OpKind::Remove => {
                if let Some(map) = doc.as_object_mut() {
                    map.retain(|k, _| !k.eq_ignore_ascii_case(urn));
                }
                Ok(())
            }
            OpKind::Add | OpKind::Replace => {
                let Some(Value::Object(values)) = value else {
                    return Err(ScimError::bad(
                        "invalidValue",
                        format!("{urn} takes an object"),
                    ));
                };
                for (name, value) in values {
                    if name.eq_ignore_ascii_case("schemas") {
                        continue;
                    }
                    let path = AttrPath {
                        urn: Some(urn.to_string()),
                        name,
                        sub: None,
                    };
                    Target::plain(self.kind, path).apply(doc, op, Some(value))?;
                }
                Ok(())
            }
        }
    }

    fn apply_filtered(
        &self,
        container: &mut Map<String, Value>,
        key: &str,
        attribute: &'static Attribute,
        filter: &Filter,
        op: OpKind,
        value: Option<Value>,
    ) -> Result<(), ScimError> {
        if !attribute.multi {
            return Err(ScimError::bad(
                "invalidPath",
                format!("{} is not multi-valued: it takes no filter", attribute.name),
            ));
        }
        let element_matches = |element: &Value| element_filter_matches(attribute, filter, element);
        let items = match container.get_mut(key) {
            Some(Value::Array(items)) => items,
            _ => {
                container.insert(key.to_string(), Value::Array(Vec::new()));
                match container.get_mut(key) {
                    Some(Value::Array(items)) => items,
                    _ => return Ok(()),
                }
            }
        };
        let sub = self.sub_after_filter.as_deref();
        let matched = items.iter().filter(|e| element_matches(e)).count();
        match op {
            OpKind::Remove => match sub {
                None => items.retain(|e| !element_matches(e)),
                Some(sub) => {
                    for element in items.iter_mut().filter(|e| element_matches(e)) {
                        if let Value::Object(map) = element {
                            map.retain(|k, _| !k.eq_ignore_ascii_case(sub));
                        }
                    }
                }
            },
            OpKind::Add | OpKind::Replace => {
                let value = value.unwrap_or(Value::Null);
                if matched == 0 {
                    // Entra adds `emails[type eq "work"].value` to a user
                    // without a work email: the element the filter describes.
                    let Some(mut element) = element_of_equalities(filter) else {
                        return Err(ScimError::bad(
                            "noTarget",
                            format!("no {} matches the filter", attribute.name),
                        ));
                    };
                    match (sub, value) {
                        (Some(sub), value) => {
                            element.insert(sub.to_string(), value);
                        }
                        (None, Value::Object(fields)) => element.extend(fields),
                        (None, _) => {
                            return Err(ScimError::bad(
                                "invalidValue",
                                "a filtered path without a sub-attribute takes an object",
                            ));
                        }
                    }
                    items.push(Value::Object(element));
                    return Ok(());
                }
                for element in items.iter_mut().filter(|e| element_matches(e)) {
                    let Value::Object(map) = element else {
                        continue;
                    };
                    match (sub, &value) {
                        (Some(sub), value) => {
                            map.retain(|k, _| !k.eq_ignore_ascii_case(sub));
                            map.insert(sub.to_string(), value.clone());
                        }
                        (None, Value::Object(fields)) => {
                            if op == OpKind::Replace {
                                map.clear();
                            }
                            for (k, v) in fields {
                                map.retain(|existing, _| !existing.eq_ignore_ascii_case(k));
                                map.insert(k.clone(), v.clone());
                            }
                        }
                        (None, _) => {
                            return Err(ScimError::bad(
                                "invalidValue",
                                "a filtered path without a sub-attribute takes an object",
                            ));
                        }
                    }
                }
            }
        }
        if items.is_empty() {
            container.remove(key);
        }
        Ok(())
    }
}

/// Which extension object holds `path`'s attribute, if any.
fn container(kind: Kind, path: &AttrPath) -> Option<&'static str> {
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

/// Whether an element of the multi-valued `attribute` matches `filter`,
/// whose names are the element's sub-attributes.
fn element_filter_matches(attribute: &'static Attribute, filter: &Filter, element: &Value) -> bool {
    // Evaluate as a value path over a one-element resource: the filter's
    // own evaluation handles case and types.
    let path = AttrPath {
        urn: None,
        name: attribute.name.to_string(),
        sub: None,
    };
    let wrapped = Filter::Elements(path, Box::new(filter.clone()));
    let mut single = Map::new();
    single.insert(
        attribute.name.to_string(),
        Value::Array(vec![element.clone()]),
    );
    let kind = if schema::find(&Kind::User.core().attributes, attribute.name).is_some() {
        Kind::User
    } else {
        Kind::Group
    };
    wrapped.matches(kind, &Value::Object(single))
}

/// The element a filter of `eq` comparisons joined by `and` describes
/// (`type eq "work"` -> `{"type": "work"}`), if it is one.
fn element_of_equalities(filter: &Filter) -> Option<Map<String, Value>> {
    match filter {
        Filter::Compare(path, Op::Eq, value) if path.sub.is_none() && path.urn.is_none() => {
            let mut map = Map::new();
            map.insert(path.name.clone(), value.clone());
            Some(map)
        }
        Filter::And(a, b) => {
            let mut map = element_of_equalities(a)?;
            map.extend(element_of_equalities(b)?);
            Some(map)
        }
        _ => None,
    }
}

/// An element's `value` sub-attribute (a member's id, an email), if text.
fn value_of(element: &Value) -> Option<&str> {
    super::filter::member(element, "value").and_then(Value::as_str)
}

/// add/replace/remove on an attribute named without a filter.
fn apply_plain(
    container: &mut Map<String, Value>,
    key: &str,
    attribute: &'static Attribute,
    sub: Option<&str>,
    op: OpKind,
    value: Option<Value>,
) {
    match (op, sub) {
        (OpKind::Remove, None) => {
            // Entra removes members by listing them as the value.
            if let (true, Some(value)) = (attribute.multi, &value)
                && let Some(Value::Array(items)) = container.get_mut(key)
            {
                let gone: Vec<&Value> = match value {
                    Value::Array(list) => list.iter().collect(),
                    one => vec![one],
                };
                let gone_ids: HashSet<&str> = gone.iter().filter_map(|g| value_of(g)).collect();
                let gone_whole: HashSet<String> = gone.iter().map(|g| g.to_string()).collect();
                items.retain(|item| {
                    !value_of(item).is_some_and(|id| gone_ids.contains(id))
                        && !gone_whole.contains(&item.to_string())
                });
                if items.is_empty() {
                    container.remove(key);
                }
                return;
            }
            container.remove(key);
        }
        (OpKind::Remove, Some(sub)) => match container.get_mut(key) {
            Some(Value::Object(map)) => map.retain(|k, _| !k.eq_ignore_ascii_case(sub)),
            Some(Value::Array(items)) => {
                for item in items {
                    if let Value::Object(map) = item {
                        map.retain(|k, _| !k.eq_ignore_ascii_case(sub));
                    }
                }
            }
            _ => {}
        },
        (_, Some(sub)) => {
            let value = value.unwrap_or(Value::Null);
            let slot = container
                .entry(key.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            match slot {
                Value::Object(map) => {
                    map.retain(|k, _| !k.eq_ignore_ascii_case(sub));
                    map.insert(sub.to_string(), value);
                }
                Value::Array(items) => {
                    for item in items {
                        if let Value::Object(map) = item {
                            map.retain(|k, _| !k.eq_ignore_ascii_case(sub));
                            map.insert(sub.to_string(), value.clone());
                        }
                    }
                }
                other => {
                    let mut map = Map::new();
                    map.insert(sub.to_string(), value);
                    *other = Value::Object(map);
                }
            }
        }
        (op, None) => {
            let value = value.unwrap_or(Value::Null);
            if attribute.multi {
                let new: Vec<Value> = match value {
                    Value::Array(items) => items,
                    Value::Null => Vec::new(),
                    one => vec![one],
                };
                if op == OpKind::Replace {
                    container.insert(key.to_string(), Value::Array(new));
                    return;
                }
                let slot = container
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !slot.is_array() {
                    *slot = Value::Array(Vec::new());
                }
                if let Value::Array(items) = slot {
                    // Indexed, not searched: a group's members may be
                    // tens of thousands.
                    let mut by_id: HashMap<String, usize> = HashMap::new();
                    let mut whole: HashSet<String> = HashSet::new();
                    for (at, existing) in items.iter().enumerate() {
                        if let Some(id) = value_of(existing) {
                            by_id.insert(id.to_string(), at);
                        }
                        whole.insert(existing.to_string());
                    }
                    for item in new {
                        match value_of(&item).and_then(|id| by_id.get(id)).copied() {
                            Some(at) => items[at] = item,
                            None => {
                                if whole.insert(item.to_string()) {
                                    if let Some(id) = value_of(&item) {
                                        by_id.insert(id.to_string(), items.len());
                                    }
                                    items.push(item);
                                }
                            }
                        }
                    }
                }
                return;
            }
            match (container.get_mut(key), value) {
                // A complex attribute: the given sub-attributes replace or add
                // to the existing ones (RFC 7644 section 3.5.2.1 and .3).
                (Some(Value::Object(existing)), Value::Object(fields)) => {
                    for (k, v) in fields {
                        existing.retain(|e, _| !e.eq_ignore_ascii_case(&k));
                        existing.insert(k, v);
                    }
                }
                (_, value) => {
                    container.insert(key.to_string(), value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Map<String, Value> {
        normalize(
            Kind::User,
            &json!({
                "userName": "bjensen",
                "active": true,
                "name": {"givenName": "Barbara", "familyName": "Jensen"},
                "emails": [{"value": "b@example.com", "type": "work", "primary": true}],
            }),
        )
        .unwrap()
    }

    fn patch(doc: &Map<String, Value>, ops: Value) -> Result<Value, ScimError> {
        apply(
            Kind::User,
            doc,
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops}),
        )
        .map(Value::Object)
    }

    #[test]
    fn okta_deactivates_with_a_pathless_replace() {
        let out = patch(
            &user(),
            json!([{"op": "replace", "value": {"active": false, "id": "x"}}]),
        )
        .unwrap();
        assert_eq!(out["active"], json!(false));
        assert!(out.get("id").is_none());
    }

    #[test]
    fn entra_s_capitalized_ops_string_booleans_and_filtered_adds() {
        let out = patch(
            &user(),
            json!([
                {"op": "Replace", "path": "active", "value": "False"},
                {"op": "Add", "path": "emails[type eq \"home\"].value", "value": "b@home.example"},
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "new@example.com"},
                {"op": "Replace", "path": "name.givenName", "value": "Babs"},
                {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Tour"},
                {"op": "Add", "value": {"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager": {"value": "m1"}, "title": "CEO"}},
            ]),
        )
        .unwrap();
        assert_eq!(out["active"], json!(false));
        assert_eq!(
            out["emails"],
            json!([
                {"value": "new@example.com", "type": "work", "primary": true},
                {"type": "home", "value": "b@home.example"},
            ])
        );
        assert_eq!(
            out["name"],
            json!({"givenName": "Babs", "familyName": "Jensen"})
        );
        assert_eq!(out["title"], json!("CEO"));
        assert_eq!(
            out[schema::ENTERPRISE],
            json!({"department": "Tour", "manager": {"value": "m1"}})
        );
    }

    #[test]
    fn removes_by_path_filter_and_value_list() {
        let group = normalize(
            Kind::Group,
            &json!({"displayName": "g", "members": [{"value": "a"}, {"value": "b"}, {"value": "c"}]}),
        )
        .unwrap();
        let body = |ops: Value| json!({"Operations": ops});
        let okta = apply(
            Kind::Group,
            &group,
            &body(json!([{"op": "remove", "path": "members[value eq \"a\"]"}])),
        )
        .unwrap();
        assert_eq!(okta["members"], json!([{"value": "b"}, {"value": "c"}]));
        let entra = apply(
            Kind::Group,
            &group,
            &body(json!([{"op": "Remove", "path": "members", "value": [{"value": "b"}, {"value": "c"}]}])),
        )
        .unwrap();
        assert_eq!(entra["members"], json!([{"value": "a"}]));
        let all = apply(
            Kind::Group,
            &group,
            &body(json!([{"op": "remove", "path": "members"}])),
        )
        .unwrap();
        assert!(all.get("members").is_none());
        let added = apply(
            Kind::Group,
            &group,
            &body(json!([{"op": "add", "path": "members", "value": [{"value": "a"}, {"value": "d"}]}])),
        )
        .unwrap();
        assert_eq!(added["members"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn bad_patches_are_refused_with_their_scim_type() {
        for (ops, scim_type) in [
            (json!([{"op": "remove"}]), "noTarget"),
            (json!([{"op": "jump", "path": "title"}]), "invalidSyntax"),
            (
                json!([{"op": "add", "path": "nosuch", "value": 1}]),
                "invalidPath",
            ),
            (
                json!([{"op": "add", "path": "emails[type eq", "value": 1}]),
                "invalidPath",
            ),
            (
                json!([{"op": "replace", "path": "id", "value": "x"}]),
                "mutability",
            ),
            (
                json!([{"op": "replace", "path": "groups", "value": []}]),
                "mutability",
            ),
            (
                json!([{"op": "remove", "path": "userName"}]),
                "invalidValue",
            ),
            (
                json!([{"op": "replace", "path": "active", "value": "perhaps"}]),
                "invalidValue",
            ),
            (
                json!([{"op": "replace", "value": "not an object"}]),
                "invalidValue",
            ),
            (
                json!([{"op": "replace", "path": "emails[type ne \"x\" or primary eq true].value", "value": "a@b"}]),
                "none",
            ),
        ] {
            let got = patch(&user(), ops.clone());
            match scim_type {
                "none" => assert!(got.is_ok(), "{ops}: {got:?}"),
                _ => assert_eq!(
                    got.err().and_then(|e| e.scim_type),
                    Some(scim_type),
                    "{ops}"
                ),
            }
        }
        assert!(apply(Kind::User, &user(), &json!({"schemas": []})).is_err());
    }
}
