//! DNS resource name patterns (SPEC F10, F11).
//!
//! `*` matches exactly one label and `**` zero or more; a leading `*` also
//! matches the name without it (`*.x` matches `x`); `?` matches one character
//! inside a label. Matching ignores case and a trailing dot. When several
//! patterns match a name the most specific wins: exact > `?` > `*` > `**`,
//! then the one with more concrete labels.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest name in presentation form without the trailing dot (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Label {
    Exact(String),
    /// A label with `?` in it.
    Chars(String),
    /// `*`
    One,
    /// `**`
    Many,
}

/// How specific a pattern is; a greater value wins (derive order matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Specificity {
    DoubleStar,
    Star,
    Question,
    Exact,
}

/// A validated DNS name pattern, stored lowercase without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsPattern {
    text: String,
    labels: Vec<Label>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is {0} characters long; at most 253 are allowed")]
    TooLong(usize),
    #[error("the name has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("the label {0:?} is longer than 63 characters")]
    LabelTooLong(String),
    #[error("the label {0:?} has a character other than letters, digits, '-', '_' or a wildcard")]
    BadCharacter(String),
    #[error("'*' and '**' must be a whole label, not part of {0:?}")]
    PartialStar(String),
    #[error("the top-level domain cannot be a wildcard")]
    WildcardTld,
    #[error("the pattern would cover a whole top-level domain")]
    WholeTld,
}

impl FromStr for DnsPattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.strip_suffix('.').unwrap_or(text);
        if trimmed.is_empty() {
            return Err(PatternError::Empty);
        }
        if trimmed.len() > MAX_NAME_LEN {
            return Err(PatternError::TooLong(trimmed.len()));
        }
        let lower = trimmed.to_ascii_lowercase();
        let labels = lower
            .split('.')
            .map(parse_label)
            .collect::<Result<Vec<_>, _>>()?;
        if !matches!(labels.last(), Some(Label::Exact(_))) {
            return Err(PatternError::WildcardTld);
        }
        let has_wildcard = labels.iter().any(|l| !matches!(l, Label::Exact(_)));
        let after_leading_stars = labels
            .iter()
            .skip_while(|l| matches!(l, Label::One | Label::Many))
            .count();
        if has_wildcard && after_leading_stars < 2 {
            return Err(PatternError::WholeTld);
        }
        Ok(DnsPattern {
            text: lower,
            labels,
        })
    }
}

fn parse_label(label: &str) -> Result<Label, PatternError> {
    match label {
        "" => return Err(PatternError::EmptyLabel),
        "*" => return Ok(Label::One),
        "**" => return Ok(Label::Many),
        _ => {}
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(PatternError::LabelTooLong(label.to_string()));
    }
    if label.contains('*') {
        return Err(PatternError::PartialStar(label.to_string()));
    }
    let valid = label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'?'));
    if !valid {
        return Err(PatternError::BadCharacter(label.to_string()));
    }
    Ok(if label.contains('?') {
        Label::Chars(label.to_string())
    } else {
        Label::Exact(label.to_string())
    })
}

impl DnsPattern {
    /// The normalized pattern text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` (any case, trailing dot allowed) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return false;
        }
        let names: Vec<&str> = name.split('.').collect();
        // Host names only (letters, digits, hyphens, underscores): a name in
        // DNS presentation form with an escaped dot (`x\.internal.acme.com`)
        // would match here label by label but resolve as another name.
        if !names.iter().all(|label| is_host_label(label)) {
            return false;
        }
        // reachable[j]: the pattern labels from i on match names[j..]; filled
        // from the last pattern label backwards, O(pattern x name).
        let k = names.len();
        let mut next = vec![false; k + 1];
        next[k] = true;
        for (i, label) in self.labels.iter().enumerate().rev() {
            let mut current = vec![false; k + 1];
            for j in (0..=k).rev() {
                let one_more = j < k && next.get(j + 1).copied().unwrap_or(false);
                current[j] = match label {
                    Label::Many => next[j] || (j < k && current[j + 1]),
                    Label::One => one_more || (i == 0 && next[j]),
                    Label::Exact(text) => one_more && names[j].eq_ignore_ascii_case(text),
                    Label::Chars(text) => one_more && chars_match(text, names[j]),
                };
            }
            next = current;
        }
        next[0]
    }

    /// The weakest wildcard in the pattern decides its class.
    pub fn specificity(&self) -> Specificity {
        self.labels
            .iter()
            .map(|label| match label {
                Label::Exact(_) => Specificity::Exact,
                Label::Chars(_) => Specificity::Question,
                Label::One => Specificity::Star,
                Label::Many => Specificity::DoubleStar,
            })
            .min()
            .unwrap_or(Specificity::Exact)
    }

    fn concrete_labels(&self) -> usize {
        self.labels
            .iter()
            .filter(|l| matches!(l, Label::Exact(_) | Label::Chars(_)))
            .count()
    }
}

fn chars_match(pattern: &str, label: &str) -> bool {
    pattern.len() == label.len()
        && pattern
            .bytes()
            .zip(label.bytes())
            .all(|(p, c)| p == b'?' || p == c.to_ascii_lowercase())
}

/// Of the candidates whose pattern matches `name`, the most specific one (ties
/// broken by more concrete labels, then by pattern text, so the choice never
/// depends on the order of the candidates).
pub fn best_match<'a, T>(
    candidates: impl IntoIterator<Item = (&'a DnsPattern, T)>,
    name: &str,
) -> Option<T> {
    candidates
        .into_iter()
        .filter(|(pattern, _)| pattern.matches(name))
        .max_by(|(a, _), (b, _)| {
            (a.specificity(), a.concrete_labels())
                .cmp(&(b.specificity(), b.concrete_labels()))
                .then_with(|| b.text.cmp(&a.text))
        })
        .map(|(_, value)| value)
}

impl fmt::Display for DnsPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for DnsPattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for DnsPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A label of a host name: 1-63 letters, digits, hyphens or underscores.
fn is_host_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> DnsPattern {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn wildcards_follow_the_spec() {
        assert!(p("app.corp.test").matches("APP.corp.test."));
        assert!(!p("app.corp.test").matches("x.app.corp.test"));

        let star = p("*.corp.test");
        assert!(star.matches("web.corp.test"));
        assert!(star.matches("corp.test"), "*.x also matches x");
        assert!(!star.matches("a.web.corp.test"), "* is exactly one label");
        assert!(!star.matches("corp.example"));

        let many = p("**.corp.test");
        for name in ["corp.test", "web.corp.test", "a.b.c.corp.test"] {
            assert!(many.matches(name), "{name}");
        }
        assert!(!many.matches("corp.testing"));
        assert!(!many.matches("xcorp.test"));

        let question = p("web?.corp.test");
        assert!(question.matches("web1.corp.test"));
        assert!(question.matches("WEBX.corp.test"));
        assert!(!question.matches("web.corp.test"));
        assert!(!question.matches("web12.corp.test"));

        let middle = p("api.*.corp.test");
        assert!(middle.matches("api.eu.corp.test"));
        assert!(
            !middle.matches("api.corp.test"),
            "only a leading * may match nothing"
        );
    }

    #[test]
    fn only_host_names_match_never_escaped_dots_or_odd_bytes() {
        let star = p("*.internal.acme.com");
        assert!(star.matches("x.internal.acme.com"));
        // hickory presents a label holding a dot as `x\.internal`: that
        // name is `x.internal` under acme.com, outside the pattern.
        assert!(!star.matches("x\\.internal.acme.com"));
        for odd in [
            "x y.internal.acme.com",
            "x\\000.internal.acme.com",
            "..internal.acme.com",
        ] {
            assert!(!star.matches(odd), "{odd}");
        }
        assert!(p("**.acme.com").matches("_sip._tcp.acme.com"));
        assert!(p("**.acme.com").matches("xn--bcher-kva.acme.com"));
    }

    #[test]
    fn invalid_patterns_are_refused_with_a_reason() {
        let long_label = "a".repeat(64);
        let long_name = format!("{}.test", ["abcdefghi"; 25].join("."));
        let cases = [
            ("", PatternError::Empty),
            (".", PatternError::Empty),
            ("a..test", PatternError::EmptyLabel),
            (long_name.as_str(), PatternError::TooLong(long_name.len())),
            (
                &format!("{long_label}.test"),
                PatternError::LabelTooLong(long_label.clone()),
            ),
            ("web*.corp.test", PatternError::PartialStar("web*".into())),
            ("we b.test", PatternError::BadCharacter("we b".into())),
            ("corp.*", PatternError::WildcardTld),
            ("corp.t?st", PatternError::WildcardTld),
            ("**", PatternError::WildcardTld),
            ("*.com", PatternError::WholeTld),
            ("**.org", PatternError::WholeTld),
            ("*.**.net", PatternError::WholeTld),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<DnsPattern>(), Err(expected), "{text:?}");
        }
        assert!(
            "intranet".parse::<DnsPattern>().is_ok(),
            "an exact single label is fine"
        );
        assert!("*.corp.com".parse::<DnsPattern>().is_ok());
    }

    #[test]
    fn precedence_is_exact_then_question_then_star_then_double_star() {
        let patterns = [
            p("**.corp.test"),
            p("*.corp.test"),
            p("ap?.corp.test"),
            p("app.corp.test"),
        ];
        let pick = |name: &str| {
            best_match(
                patterns.iter().map(|pattern| (pattern, pattern.as_str())),
                name,
            )
        };
        assert_eq!(pick("app.corp.test"), Some("app.corp.test"));
        assert_eq!(pick("apx.corp.test"), Some("ap?.corp.test"));
        assert_eq!(pick("web.corp.test"), Some("*.corp.test"));
        assert_eq!(pick("a.web.corp.test"), Some("**.corp.test"));
        assert_eq!(
            pick("corp.test"),
            Some("*.corp.test"),
            "* beats ** at the apex too"
        );
        assert_eq!(pick("other.test"), None);
        // More concrete labels win within a class.
        let nested = [p("**.corp.test"), p("**.eu.corp.test")];
        let got = best_match(nested.iter().map(|x| (x, x.as_str())), "a.eu.corp.test");
        assert_eq!(got, Some("**.eu.corp.test"));
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9-]{0,8}"
    }

    fn labels(range: std::ops::Range<usize>) -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(label(), range)
    }

    proptest! {
        #[test]
        fn exact_patterns_match_their_name_in_any_case(name in labels(1..6)) {
            let name = name.join(".");
            let pattern = p(&name);
            prop_assert!(pattern.matches(&name.to_uppercase()));
            let dotted = format!("{name}.");
            let deeper = format!("x.{name}");
            prop_assert!(pattern.matches(&dotted));
            prop_assert!(!pattern.matches(&deeper));
        }

        #[test]
        fn star_matches_zero_or_one_label_and_double_star_any(
            suffix in labels(2..4),
            prefix in labels(0..4),
        ) {
            let suffix = suffix.join(".");
            let name = if prefix.is_empty() { suffix.clone() } else { format!("{}.{suffix}", prefix.join(".")) };
            let many = format!("**.{suffix}");
            let one = format!("*.{suffix}");
            prop_assert!(p(&many).matches(&name));
            prop_assert_eq!(p(&one).matches(&name), prefix.len() <= 1);
        }

        #[test]
        fn matches_agree_with_a_naive_model(
            pattern in proptest::collection::vec(prop_oneof![Just("*".to_string()), Just("**".to_string()), Just("a".to_string()), Just("b".to_string()), Just("?".to_string())], 0..5),
            name in proptest::collection::vec(prop_oneof![Just("a"), Just("b")], 1..6),
        ) {
            let mut full = pattern.clone();
            full.extend(["corp".to_string(), "test".to_string()]);
            let mut name_labels: Vec<&str> = name.clone();
            name_labels.extend(["corp", "test"]);
            let Ok(parsed) = full.join(".").parse::<DnsPattern>() else { return Ok(()); };
            let pattern_labels: Vec<&str> = full.iter().map(String::as_str).collect();
            prop_assert_eq!(parsed.matches(&name_labels.join(".")), naive(&pattern_labels, &name_labels, true));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,300}") {
            if let Ok(pattern) = text.parse::<DnsPattern>() {
                prop_assert!(pattern.as_str().len() <= MAX_NAME_LEN);
                let _ = pattern.matches(&text);
            }
        }
    }

    /// Straightforward recursive matcher, the reference for the DP above.
    fn naive(pattern: &[&str], name: &[&str], leading: bool) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((&"**", rest)) => {
                naive(rest, name, false) || (!name.is_empty() && naive(pattern, &name[1..], false))
            }
            Some((&"*", rest)) => {
                (!name.is_empty() && naive(rest, &name[1..], false))
                    || (leading && naive(rest, name, false))
            }
            Some((label, rest)) => {
                !name.is_empty()
                    && label.len() == name[0].len()
                    && label
                        .bytes()
                        .zip(name[0].bytes())
                        .all(|(p, c)| p == b'?' || p == c)
                    && naive(rest, &name[1..], false)
            }
        }
    }
}
