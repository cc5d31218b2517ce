//! SCIM filters (RFC 7644 section 3.4.2.2) and attribute paths: parsed from
//! the untrusted query into a tree, then evaluated against stored documents.
//! Written here because no maintained Rust crate parses this grammar (the
//! crates.io `scim_filter` family is unmaintained and has no value paths);
//! it is small, bounded (length and depth) and fuzzed by its tests.

use serde_json::Value;

use super::schema::{self, Attribute, Kind, Type};

/// Longest filter read, and deepest nesting: a filter is one request's
/// worth of untrusted text.
const MAX_LEN: usize = 4096;
const MAX_DEPTH: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

fn error(text: impl Into<String>) -> FilterError {
    FilterError(text.into())
}

/// `[urn:...:]name[.sub]`: which attribute a filter or a PATCH names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrPath {
    /// The schema URN it was prefixed with, if any.
    pub urn: Option<String>,
    pub name: String,
    pub sub: Option<String>,
}

impl AttrPath {
    /// Reads `text` as an attribute path: a name, optionally a schema URN
    /// before it and a sub-attribute after it.
    pub fn parse(text: &str) -> Result<AttrPath, FilterError> {
        let (urn, rest) = if text
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
        {
            let at = text
                .rfind(':')
                .ok_or_else(|| error(format!("no attribute in {text:?}")))?;
            (Some(text[..at].to_string()), &text[at + 1..])
        } else {
            (None, text)
        };
        let (name, sub) = match rest.split_once('.') {
            Some((name, sub)) => (name, Some(sub)),
            None => (rest, None),
        };
        let valid = |part: &str| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '$')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
        };
        if !valid(name) || sub.is_some_and(|s| !valid(s)) {
            return Err(error(format!("{text:?} is not an attribute path")));
        }
        Ok(AttrPath {
            urn,
            name: name.to_string(),
            sub: sub.map(str::to_string),
        })
    }

    /// The attribute this path names in `kind`'s schemas, if known.
    pub fn attribute(&self, kind: Kind) -> Option<&'static Attribute> {
        let attributes: &'static [Attribute] = match &self.urn {
            Some(urn) if urn.eq_ignore_ascii_case(kind.core().id) => &kind.core().attributes,
            Some(urn) => &kind.extension(urn)?.attributes,
            None => {
                return schema::find(&kind.core().attributes, &self.name)
                    .or_else(|| schema::find(schema::common(), &self.name))
                    .or_else(|| {
                        // An enterprise attribute named without its URN.
                        kind.extensions()
                            .iter()
                            .find_map(|s| schema::find(&s.attributes, &self.name))
                    })
                    .and_then(|a| self.descend(a));
            }
        };
        schema::find(attributes, &self.name).and_then(|a| self.descend(a))
    }

    fn descend(&self, attribute: &'static Attribute) -> Option<&'static Attribute> {
        match &self.sub {
            Some(sub) => attribute.child(sub),
            None => Some(attribute),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Present(AttrPath),
    Compare(AttrPath, Op, Value),
    /// `attr[filter]`: an element of the multi-valued `attr` matches `filter`.
    Elements(AttrPath, Box<Filter>),
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_LEN {
            return Err(error(format!("a filter is at most {MAX_LEN} characters")));
        }
        let mut parser = Parser {
            tokens: tokenize(text)?,
            at: 0,
            depth: 0,
        };
        let filter = parser.or()?;
        if let Some(token) = parser.tokens.get(parser.at) {
            return Err(error(format!("unexpected {token:?} in the filter")));
        }
        Ok(filter)
    }

    /// Whether the resource `document` (of `kind`) matches.
    pub fn matches(&self, kind: Kind, document: &Value) -> bool {
        self.eval(&Scope::Resource(kind), document)
    }

    fn eval(&self, scope: &Scope, object: &Value) -> bool {
        match self {
            Filter::And(a, b) => a.eval(scope, object) && b.eval(scope, object),
            Filter::Or(a, b) => a.eval(scope, object) || b.eval(scope, object),
            Filter::Not(a) => !a.eval(scope, object),
            Filter::Present(path) => values(scope, object, path).iter().any(|v| match v {
                Value::Null => false,
                Value::String(s) => !s.is_empty(),
                Value::Array(items) => !items.is_empty(),
                _ => true,
            }),
            Filter::Compare(path, op, expected) => {
                let exact = scope.case_exact(path);
                let found = values(scope, object, path);
                if *op == Op::Ne {
                    return !found.iter().any(|v| compare(v, Op::Eq, expected, exact));
                }
                if expected.is_null() && *op == Op::Eq {
                    return found.iter().all(|v| v.is_null());
                }
                found.iter().any(|v| compare(v, *op, expected, exact))
            }
            Filter::Elements(path, inner) => {
                let attribute = scope.attribute(path);
                let element_scope = match attribute {
                    Some(a) => Scope::Element(a),
                    None => Scope::Unknown,
                };
                values_whole(scope, object, path)
                    .iter()
                    .any(|element| inner.eval(&element_scope, element))
            }
        }
    }
}

/// What the names in a filter are relative to: a resource, or an element
/// of a multi-valued attribute inside a value path.
enum Scope {
    Resource(Kind),
    Element(&'static Attribute),
    Unknown,
}

impl Scope {
    fn attribute(&self, path: &AttrPath) -> Option<&'static Attribute> {
        match self {
            Scope::Resource(kind) => path.attribute(*kind),
            Scope::Element(parent) => parent.child(&path.name),
            Scope::Unknown => None,
        }
    }

    fn case_exact(&self, path: &AttrPath) -> bool {
        let attribute = self.attribute(path);
        // A complex attribute compared as a whole compares its `value`.
        let attribute = match attribute {
            Some(a) if a.kind == Type::Complex => a.child("value"),
            other => other,
        };
        attribute.is_some_and(|a| a.case_exact)
    }
}

/// The member of `object` named `name`, in any case.
pub fn member<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    let map = object.as_object()?;
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The object `path` is read in: the resource, or its extension's object.
fn container<'a>(scope: &Scope, object: &'a Value, path: &AttrPath) -> Option<&'a Value> {
    match (&path.urn, scope) {
        (Some(urn), Scope::Resource(kind)) if urn.eq_ignore_ascii_case(kind.core().id) => {
            Some(object)
        }
        (Some(urn), _) => member(object, urn),
        (None, Scope::Resource(kind)) => {
            // An extension attribute may be named without its URN.
            if member(object, &path.name).is_some() {
                return Some(object);
            }
            kind.extensions()
                .iter()
                .filter(|s| schema::find(&s.attributes, &path.name).is_some())
                .find_map(|s| member(object, s.id))
                .or(Some(object))
        }
        (None, _) => Some(object),
    }
}

/// The values `path` names in `object`, multi-valued attributes flattened;
/// a complex value named without a sub-attribute stands for its `value`.
fn values<'a>(scope: &Scope, object: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for value in values_whole(scope, object, path) {
        match (&path.sub, value) {
            (Some(sub), _) => {
                if let Some(v) = member(value, sub) {
                    flatten(v, &mut out);
                }
            }
            (None, Value::Object(_)) => {
                if let Some(v) = member(value, "value") {
                    out.push(v);
                }
            }
            (None, v) => out.push(v),
        }
    }
    out
}

/// The attribute's values themselves (elements of a multi-valued one).
fn values_whole<'a>(scope: &Scope, object: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let mut out = Vec::new();
    if let Some(v) = container(scope, object, path).and_then(|c| member(c, &path.name)) {
        flatten(v, &mut out);
    }
    out
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => out.extend(items.iter()),
        other => out.push(other),
    }
}

fn compare(found: &Value, op: Op, expected: &Value, exact: bool) -> bool {
    match (found, expected) {
        (Value::String(a), Value::String(b)) => {
            let (a, b) = if exact {
                (a.clone(), b.clone())
            } else {
                (a.to_lowercase(), b.to_lowercase())
            };
            match op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::Co => a.contains(&b),
                Op::Sw => a.starts_with(&b),
                Op::Ew => a.ends_with(&b),
                Op::Gt => a > b,
                Op::Ge => a >= b,
                Op::Lt => a < b,
                Op::Le => a <= b,
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            let (Some(a), Some(b)) = (a.as_f64(), b.as_f64()) else {
                return false;
            };
            match op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::Gt => a > b,
                Op::Ge => a >= b,
                Op::Lt => a < b,
                Op::Le => a <= b,
                Op::Co | Op::Sw | Op::Ew => false,
            }
        }
        (Value::Bool(a), Value::Bool(b)) => match op {
            Op::Eq => a == b,
            Op::Ne => a != b,
            _ => false,
        },
        // Identity providers send booleans as strings ("False") too.
        (Value::Bool(a), Value::String(b)) => match op {
            Op::Eq => b.eq_ignore_ascii_case(if *a { "true" } else { "false" }),
            _ => false,
        },
        _ => false,
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    /// A word: an attribute path, an operator or a keyword.
    Word(String),
    /// A JSON literal: a string or a number.
    Literal(Value),
}

fn tokenize(text: &str) -> Result<Vec<Token>, FilterError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | '[' | ']' => {
                chars.next();
                tokens.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    '[' => Token::OpenBracket,
                    _ => Token::CloseBracket,
                });
            }
            '"' => {
                // A JSON string: find its closing quote, skipping escapes.
                chars.next();
                let mut end = None;
                let mut escaped = false;
                for (i, c) in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        end = Some(i);
                        break;
                    }
                }
                let end = end.ok_or_else(|| error("a string in the filter is not closed"))?;
                let value: Value = serde_json::from_str(&text[at..=end])
                    .map_err(|_| error("a string in the filter is not valid JSON"))?;
                tokens.push(Token::Literal(value));
            }
            _ => {
                let mut end = text.len();
                while let Some(&(i, c)) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '"') {
                        end = i;
                        break;
                    }
                    chars.next();
                }
                let word = &text[at..end];
                if word.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                    let number: Value = serde_json::from_str(word)
                        .map_err(|_| error(format!("{word:?} is not a number")))?;
                    tokens.push(Token::Literal(number));
                } else {
                    tokens.push(Token::Word(word.to_string()));
                }
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    /// Parentheses, `not` and value paths nest; `and` and `or` chains do
    /// not (their length is bounded by the filter's).
    fn nest(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(error(format!("a filter nests at most {MAX_DEPTH} deep")));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.at += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, FilterError> {
        self.nest()?;
        let filter = match self.next() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("not") => {
                if self.next() != Some(Token::Open) {
                    return Err(error("\"not\" takes a filter in parentheses"));
                }
                let inner = self.or()?;
                self.close(Token::Close, ")")?;
                Filter::Not(Box::new(inner))
            }
            Some(Token::Open) => {
                let inner = self.or()?;
                self.close(Token::Close, ")")?;
                inner
            }
            Some(Token::Word(path)) => self.attribute_expression(&path)?,
            Some(token) => return Err(error(format!("unexpected {token:?} in the filter"))),
            None => return Err(error("the filter ends too early")),
        };
        self.depth -= 1;
        Ok(filter)
    }

    fn close(&mut self, token: Token, text: &str) -> Result<(), FilterError> {
        if self.next() != Some(token) {
            return Err(error(format!("a {text:?} is missing in the filter")));
        }
        Ok(())
    }

    fn attribute_expression(&mut self, path: &str) -> Result<Filter, FilterError> {
        let path = AttrPath::parse(path)?;
        if self.tokens.get(self.at) == Some(&Token::OpenBracket) {
            self.at += 1;
            let inner = self.or()?;
            self.close(Token::CloseBracket, "]")?;
            return Ok(Filter::Elements(path, Box::new(inner)));
        }
        let op = match self.next() {
            Some(Token::Word(op)) => op.to_ascii_lowercase(),
            _ => return Err(error("an operator is missing in the filter")),
        };
        let op = match op.as_str() {
            "pr" => return Ok(Filter::Present(path)),
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "co" => Op::Co,
            "sw" => Op::Sw,
            "ew" => Op::Ew,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            other => return Err(error(format!("{other:?} is not a filter operator"))),
        };
        let value = match self.next() {
            Some(Token::Literal(value)) => value,
            Some(Token::Word(w)) if w == "true" => Value::Bool(true),
            Some(Token::Word(w)) if w == "false" => Value::Bool(false),
            Some(Token::Word(w)) if w == "null" => Value::Null,
            _ => return Err(error("a value is missing in the filter")),
        };
        Ok(Filter::Compare(path, op, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "id": "2819c223-7f76-453a-919d-413861904646",
            "externalId": "00u1AbC",
            "userName": "Bjensen@Example.com",
            "displayName": "Babs Jensen",
            "active": true,
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Tour"},
        })
    }

    fn matches(filter: &str) -> bool {
        Filter::parse(filter)
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .matches(Kind::User, &user())
    }

    #[test]
    fn the_rfc_examples_match_as_they_should() {
        for (filter, expected) in [
            (r#"userName eq "bjensen@example.com""#, true),
            (r#"USERNAME Eq "BJENSEN@EXAMPLE.COM""#, true),
            (r#"userName eq "other@example.com""#, false),
            (r#"name.familyName co "ens""#, true),
            (r#"userName sw "bj""#, true),
            (r#"userName ew ".org""#, false),
            ("title pr", false),
            ("displayName pr", true),
            (r#"emails co "jensen.org""#, true),
            (r#"emails.value eq "babs@jensen.org""#, true),
            (
                r#"emails[type eq "work" and value co "@example.com"]"#,
                true,
            ),
            (
                r#"emails[type eq "home" and value co "@example.com"]"#,
                false,
            ),
            (
                r#"userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")"#,
                false,
            ),
            (r#"not (userName eq "x") and active eq true"#, true),
            (r#"active eq false or displayName eq "babs jensen""#, true),
            (
                r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "B""#,
                true,
            ),
            (
                r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "tour""#,
                true,
            ),
            (r#"department eq "Tour""#, true),
            // externalId and id are case-exact.
            (r#"externalId eq "00u1abc""#, false),
            (r#"externalId eq "00u1AbC""#, true),
            (r#"userName ne "x""#, true),
            (r#"title eq null"#, true),
        ] {
            assert_eq!(matches(filter), expected, "{filter}");
        }
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        // a or b and c == a or (b and c)
        assert!(matches(r#"active eq true or userName eq "x" and title pr"#));
        assert!(!matches(
            r#"(active eq true or userName eq "x") and title pr"#
        ));
    }

    #[test]
    fn malformed_filters_are_errors_not_panics() {
        for bad in [
            "",
            "userName",
            "userName eq",
            r#"userName eq "open"#,
            r#"userName xx "a""#,
            r#"(userName eq "a""#,
            r#"emails[type eq "work""#,
            r#"not userName eq "a""#,
            "123 eq 4",
            r#"userName eq "a" and"#,
            r#"userName eq "a" extra"#,
            "a..b pr",
            "]",
            "\u{0}",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:?}");
        }
        let deep = format!("{}userName pr{}", "(".repeat(100), ")".repeat(100));
        assert!(Filter::parse(&deep).is_err());
        // A long flat chain is not deep.
        let chain = vec![r#"userName eq "x""#; 60].join(" or ");
        assert!(Filter::parse(&chain).is_ok());
        for text in ["aéé pr", "ééé", "urné pr", "u€ eq 1", "emails[é eq 1]"] {
            let _ = Filter::parse(text);
            let _ = AttrPath::parse(text);
        }
        let long = format!(r#"userName eq "{}""#, "a".repeat(5000));
        assert!(Filter::parse(&long).is_err());
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let alphabet = [
            "(", ")", "[", "]", "\"", "\\", " ", "eq", "pr", "not", "and", "a.b", "1", "-", "é",
            "urn:", "€",
        ];
        // Every sequence of up to four of these: the parser answers, no panic.
        let mut stack = vec![(String::new(), 0)];
        while let Some((text, pieces)) = stack.pop() {
            let _ = Filter::parse(&text).map(|f| f.matches(Kind::User, &user()));
            if pieces < 4 {
                for piece in alphabet {
                    stack.push((format!("{text}{piece}"), pieces + 1));
                }
            }
        }
    }
}
