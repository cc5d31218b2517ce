//! The declaration file: YAML read into the JSON the portal takes, with the
//! line of every value (so the portal's answer `resources[2].site` becomes
//! `FILE:14`), and JSON written back as YAML.

use std::collections::HashMap;

use marked_yaml::{LoaderOptions, Node};
use serde_json::{Map, Value};

/// The file as JSON, and the line each path (`resources[0].address`, as the
/// portal names fields) starts on.
pub struct Parsed {
    pub value: Value,
    lines: HashMap<String, usize>,
}

impl Parsed {
    /// The line of `path`, or of the nearest enclosing value the file has
    /// (a missing field is reported on its object).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path.to_string();
        loop {
            if let Some(line) = self.lines.get(&path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path.truncate(cut);
        }
    }
}

/// Reads a declaration. Scalars are strings, except `null` (or `~` or
/// nothing), `true` and `false` unquoted: no field of a declaration is a
/// number, so `ports: 443` and `name: 2024` mean the text.
pub fn parse(text: &str) -> Result<Parsed, String> {
    // `prevent_coercion`: a quoted "true" stays text (only plain scalars may
    // be null or a boolean).
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    let root = marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| e.to_string())?;
    let mut lines = HashMap::new();
    let value = convert(&root, String::new(), &mut lines);
    Ok(Parsed { value, lines })
}

fn convert(node: &Node, path: String, lines: &mut HashMap<String, usize>) -> Value {
    if let Some(start) = node.span().start() {
        lines.insert(path.clone(), start.line());
    }
    match node {
        Node::Scalar(scalar) => {
            if scalar.may_coerce() && matches!(scalar.as_str(), "" | "~" | "null" | "Null" | "NULL")
            {
                Value::Null
            } else if let Some(flag) = scalar.as_bool() {
                Value::Bool(flag)
            } else {
                Value::String(scalar.as_str().to_string())
            }
        }
        Node::Sequence(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| convert(item, format!("{path}[{index}]"), lines))
                .collect(),
        ),
        Node::Mapping(mapping) => {
            let mut object = Map::new();
            for (key, item) in mapping.iter() {
                let key = key.as_str().to_string();
                let inner = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                object.insert(key, convert(item, inner, lines));
            }
            Value::Object(object)
        }
    }
}

/// Writes a declaration as YAML: lists of objects in block style, each
/// value as JSON (YAML is a superset of JSON, so no YAML quoting rule can
/// bite: a name like `yes`, `1.0` or `#web` stays a string). Written by
/// hand: the maintained YAML crates read, and the one that writes is
/// deprecated; this shape needs twenty lines.
pub fn emit(sections: &[(&str, &Value)]) -> String {
    let mut out = String::new();
    for (key, items) in sections {
        match items {
            Value::Array(list) if !list.is_empty() => {
                out.push_str(&format!("{key}:\n"));
                for item in list {
                    match item {
                        Value::Object(fields) => {
                            let mut first = true;
                            for (field, inner) in fields {
                                let lead = if first { "  - " } else { "    " };
                                first = false;
                                out.push_str(&format!("{lead}{field}: {}\n", flow(inner)));
                            }
                            if first {
                                out.push_str("  - {}\n");
                            }
                        }
                        other => out.push_str(&format!("  - {}\n", flow(other))),
                    }
                }
            }
            other => out.push_str(&format!("{key}: {}\n", flow(other))),
        }
    }
    out
}

/// One value in YAML flow style, which for JSON values is JSON with spaces.
fn flow(value: &Value) -> String {
    match value {
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(flow).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), flow(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::String(text) => yaml_string(text),
        scalar => scalar.to_string(),
    }
}

/// A string as JSON, with the characters YAML may not hold raw escaped too
/// (JSON escapes only those below U+0020; YAML forbids DEL, the C1 controls
/// but NEL, and U+FFFE/U+FFFF, which serde_json writes as they are).
fn yaml_string(text: &str) -> String {
    let printable = |c: char| {
        matches!(c, '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
            || (' '..='~').contains(&c)
    };
    Value::String(text.to_string())
        .to_string()
        .chars()
        .map(|c| {
            if printable(c) || matches!(c, '\t' | '\n' | '\r') {
                c.to_string()
            } else {
                format!("\\u{:04x}", c as u32)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FILE: &str = "\
sites:
  - name: office
resources:
  - name: web
    type: cidr
    address: 10.0.1.0/24
    site: office
    filters: [{protocol: tcp, ports: 443}]
policies:
  - group: engineering
    resource: web
    disabled: false
    description: ~
";

    #[test]
    fn reads_json_with_lines() {
        let parsed = parse(FILE).unwrap();
        assert_eq!(
            parsed.value["resources"][0]["filters"][0],
            json!({"protocol": "tcp", "ports": "443"})
        );
        assert_eq!(parsed.value["policies"][0]["disabled"], json!(false));
        assert_eq!(parsed.value["policies"][0]["description"], Value::Null);
        assert_eq!(parsed.line_of("resources[0].site"), Some(7));
        assert_eq!(parsed.line_of("policies[0].group"), Some(10));
        // A field the file lacks: its object's line.
        assert_eq!(parsed.line_of("policies[0].conditions[0]"), Some(10));
        assert!(
            parse("sites:\n  - name: a\nsites: []\n").is_err(),
            "duplicate keys"
        );
        assert!(parse("sites: [\n").is_err());
    }

    #[test]
    fn writes_what_it_reads() {
        let value = json!({
            "sites": [{"name": "yes"}, {"name": "#1: \"x\""}, {"name": "del\u{7f} nel\u{85} c1\u{9f} \u{fffe}"}],
            "resources": [{"name": "1.0", "type": "cidr", "filters": [{"protocol": "icmp"}],
                           "exclusions": []}],
            "groups": [],
            "policies": [{"group": "g", "resource": "1.0", "disabled": true,
                          "conditions": [{"property": "time", "values": ["MTWRF/08:00-18:00/UTC"]},
                                         {"property": "client_verified", "values": ["true"]}]}],
        });
        let sections: Vec<(&str, &Value)> = ["sites", "resources", "groups", "policies"]
            .iter()
            .map(|k| (*k, &value[*k]))
            .collect();
        let text = emit(&sections);
        assert!(text.starts_with("sites:"), "{text}");
        assert_eq!(parse(&text).unwrap().value, value, "{text}");
    }
}
