//! The conditions editor of a policy (SPEC F14): one fieldset per property,
//! plain form fields (no script), read back into the API's `Condition`s. The
//! API compiles them and says what is wrong, with the index of the value at
//! fault; the form comes back with what was typed, so nothing is lost.

use std::collections::HashMap;

use maud::{Markup, html};
use postern_model::{Condition, ConditionOperator, ConditionProperty};
use serde_json::Value;
use uuid::Uuid;

use super::{Form, text};

/// Days as the time window syntax writes them, Monday first.
const DAYS: [(char, &str); 7] = [
    ('M', "Mon"),
    ('T', "Tue"),
    ('W', "Wed"),
    ('R', "Thu"),
    ('F', "Fri"),
    ('S', "Sat"),
    ('U', "Sun"),
];

/// Operating systems clients report, offered as boxes; others can be typed.
const SYSTEMS: [(&str, &str); 5] = [
    ("linux", "Linux"),
    ("macos", "macOS"),
    ("windows", "Windows"),
    ("ios", "iOS"),
    ("android", "Android"),
];

/// The conditions a submitted form describes. Empty parts add nothing; the
/// values are passed on as typed for the API to judge.
pub fn from_form(form: &Form) -> Vec<Condition> {
    let mut conditions = Vec::new();
    let mut push = |property, operator: &str, values: Vec<String>| {
        if !values.is_empty() {
            conditions.push(Condition {
                property,
                operator: if operator == "not_in" {
                    ConditionOperator::NotIn
                } else {
                    ConditionOperator::In
                },
                values,
            });
        }
    };
    push(
        ConditionProperty::RemoteIp,
        form.get("ip_op"),
        list(form.get("ip_values")),
    );
    push(
        ConditionProperty::Country,
        form.get("country_op"),
        list(form.get("country_values")),
    );
    let mut windows = Vec::new();
    let days: String = form
        .all("time_day")
        .iter()
        .flat_map(|d| d.chars())
        .collect();
    let (from, to) = (form.get("time_from").trim(), form.get("time_to").trim());
    if !days.is_empty() || !from.is_empty() || !to.is_empty() {
        windows.push(format!(
            "{days}/{from}-{to}/{}",
            form.get("time_zone").trim()
        ));
    }
    windows.extend(
        form.get("time_more")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from),
    );
    push(ConditionProperty::Time, form.get("time_op"), windows);
    push(
        ConditionProperty::IdentityProvider,
        form.get("idp_op"),
        form.all("idp").iter().map(|s| s.to_string()).collect(),
    );
    if form.get("verified") == "true" {
        push(
            ConditionProperty::ClientVerified,
            "in",
            vec!["true".to_string()],
        );
    }
    let mut systems: Vec<String> = form.all("os").iter().map(|s| s.to_string()).collect();
    systems.extend(list(form.get("os_other")));
    push(ConditionProperty::ClientOs, form.get("os_op"), systems);
    conditions
}

/// Values typed in one field, separated by commas, spaces or lines.
fn list(field: &str) -> Vec<String> {
    field
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

/// A policy's conditions from its API JSON (none if it has none or they
/// cannot be read).
pub fn of_policy(policy: &Value) -> Vec<Condition> {
    serde_json::from_value(policy["conditions"].clone()).unwrap_or_default()
}

/// The editor's fieldsets, filled from `conditions`; `providers` are the
/// account's identity providers (API JSON).
pub fn editor(conditions: &[Condition], providers: &[Value]) -> Markup {
    let find = |property| conditions.iter().find(|c| c.property == property);
    let values = |property| find(property).map_or_else(Vec::new, |c| c.values.clone());
    let negated = |property| find(property).is_some_and(|c| c.operator == ConditionOperator::NotIn);
    let windows = values(ConditionProperty::Time);
    let (first, more) = match windows.split_first() {
        Some((first, rest)) => match Window::split(first) {
            Some(window) => (window, rest.to_vec()),
            None => (Window::default(), windows.clone()),
        },
        None => (Window::default(), Vec::new()),
    };
    let chosen_providers = values(ConditionProperty::IdentityProvider);
    let systems = values(ConditionProperty::ClientOs);
    let other_systems: Vec<&str> = systems
        .iter()
        .map(String::as_str)
        .filter(|s| {
            !SYSTEMS
                .iter()
                .any(|(known, _)| known.eq_ignore_ascii_case(s))
        })
        .collect();
    html! {
        fieldset.conditions {
            legend { "Conditions (all must hold; leave a part empty to not check it)" }
            (operator("ip_op", "Client address", negated(ConditionProperty::RemoteIp)))
            label for="c-ip" { "Addresses or networks the client connects from (CIDR, comma-separated)" }
            input #c-ip type="text" name="ip_values" placeholder="203.0.113.0/24, 2001:db8::/32"
                value=(values(ConditionProperty::RemoteIp).join(", "));
            (operator("country_op", "Country", negated(ConditionProperty::Country)))
            label for="c-country" { "Countries (ISO codes, comma-separated)" }
            input #c-country type="text" name="country_values" placeholder="DE, FR"
                value=(values(ConditionProperty::Country).join(", "));
            (operator("time_op", "Time", negated(ConditionProperty::Time)))
            div.days role="group" aria-label="Days" {
                @for (letter, name) in DAYS {
                    @let id = format!("c-day-{letter}");
                    input type="checkbox" id=(id) name="time_day" value=(letter) checked[first.days.contains(letter)];
                    label.inline for=(id) { (name) }
                }
            }
            label for="c-from" { "From (local time)" }
            input #c-from type="time" name="time_from" value=(first.from);
            label for="c-to" { "Until (24:00 is midnight)" }
            input #c-to type="time" name="time_to" value=(first.to);
            label for="c-zone" { "Time zone (IANA)" }
            input #c-zone type="text" name="time_zone" list="zones" placeholder="Europe/Berlin" value=(first.zone);
            datalist #zones {
                @for zone in zones() { option value=(zone) {} }
            }
            label for="c-more" { "More windows, one per line (e.g. SU/10:00-14:00/America/New_York)" }
            textarea #c-more name="time_more" rows="2" { (more.join("\n")) }
            (operator("idp_op", "Identity provider", negated(ConditionProperty::IdentityProvider)))
            @if providers.is_empty() {
                p.muted { "No identity providers: sign-in is by email code." }
            }
            @for provider in providers {
                @let id = text(provider, "id");
                @let box_id = format!("c-idp-{id}");
                div {
                    input type="checkbox" id=(box_id) name="idp" value=(id) checked[chosen_providers.iter().any(|p| p == id)];
                    label.inline for=(box_id) { (text(provider, "name")) }
                }
            }
            div {
                input #c-verified type="checkbox" name="verified" value="true"
                    checked[values(ConditionProperty::ClientVerified).iter().any(|v| v.eq_ignore_ascii_case("true"))];
                label.inline for="c-verified" { "Only clients an admin verified" }
            }
            (operator("os_op", "Operating system", negated(ConditionProperty::ClientOs)))
            div role="group" aria-label="Operating systems" {
                @for (os, name) in SYSTEMS {
                    @let id = format!("c-os-{os}");
                    input type="checkbox" id=(id) name="os" value=(os) checked[systems.iter().any(|s| s.eq_ignore_ascii_case(os))];
                    label.inline for=(id) { (name) }
                }
            }
            label for="c-os-other" { "Other systems (comma-separated)" }
            input #c-os-other type="text" name="os_other" value=(other_systems.join(", "));
        }
    }
}

/// "Must be" / "must not be" for one property.
fn operator(name: &str, title: &str, negated: bool) -> Markup {
    let id = format!("c-{name}");
    html! {
        h3 { (title) }
        label for=(id) { (title) " must be" }
        select id=(id) name=(name) {
            option value="in" selected[!negated] { "one of" }
            option value="not_in" selected[negated] { "none of" }
        }
    }
}

/// The structured parts of one `DAYS/HH:MM-HH:MM/Zone` window.
#[derive(Default)]
struct Window {
    days: String,
    from: String,
    to: String,
    zone: String,
}

impl Window {
    fn split(window: &str) -> Option<Window> {
        let (days, rest) = window.split_once('/')?;
        let (range, zone) = rest.split_once('/')?;
        let (from, to) = range.split_once('-')?;
        Some(Window {
            days: days.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            zone: zone.to_string(),
        })
    }
}

/// The IANA zones the portal knows, for the zone field's suggestions.
fn zones() -> Vec<String> {
    let mut zones: Vec<String> = jiff::tz::db()
        .available()
        .map(|name| name.to_string())
        .filter(|name| name.contains('/') || name == "UTC")
        .collect();
    zones.sort();
    zones
}

/// The account's identity providers' names by id (API JSON in).
pub fn provider_names(providers: &[Value]) -> HashMap<Uuid, String> {
    providers
        .iter()
        .filter_map(|p| Some((text(p, "id").parse().ok()?, text(p, "name").to_string())))
        .collect()
}

/// A policy's conditions in words: "always", or each condition joined by
/// "and" (all must hold).
pub fn describe_all<S: AsRef<str>>(
    conditions: &[Condition],
    providers: &HashMap<Uuid, S>,
) -> String {
    if conditions.is_empty() {
        return "always".into();
    }
    conditions
        .iter()
        .map(|c| describe(c, providers))
        .collect::<Vec<_>>()
        .join(", and ")
}

/// One condition in words, for tables and explanations.
pub fn describe<S: AsRef<str>>(condition: &Condition, providers: &HashMap<Uuid, S>) -> String {
    let not = condition.operator == ConditionOperator::NotIn;
    let values = |each: &dyn Fn(&str) -> String| {
        condition
            .values
            .iter()
            .map(|v| each(v.trim()))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let plain = |v: &str| v.to_string();
    let (yes, no) = match condition.property {
        ConditionProperty::RemoteIp => ("connecting from", "not connecting from"),
        ConditionProperty::Country => ("connecting from the country", "not connecting from"),
        ConditionProperty::Time => ("only", "except"),
        ConditionProperty::IdentityProvider => ("signed in with", "not signed in with"),
        ConditionProperty::ClientOs => ("on a device running", "not on a device running"),
        ConditionProperty::ClientVerified => {
            let verified = |v: &str| v.eq_ignore_ascii_case("true");
            let allows_verified = condition.values.iter().any(|v| verified(v.trim())) != not;
            let allows_unverified = condition.values.iter().any(|v| !verified(v.trim())) != not;
            return match (allows_verified, allows_unverified) {
                (true, true) => "on any device".into(),
                (true, false) => "on a device an admin has verified".into(),
                (false, true) => "on a device no admin has verified".into(),
                (false, false) => "never".into(),
            };
        }
    };
    let list = match condition.property {
        ConditionProperty::Time => values(&time_text),
        ConditionProperty::IdentityProvider => values(&|v: &str| {
            Uuid::try_parse(v)
                .ok()
                .and_then(|id| providers.get(&id))
                .map_or_else(
                    || "a removed provider".to_string(),
                    |n| n.as_ref().to_string(),
                )
        }),
        ConditionProperty::Country => values(&|v: &str| v.to_ascii_uppercase()),
        _ => values(&plain),
    };
    format!("{} {list}", if not { no } else { yes })
}

/// `MTWRF/09:00-17:00/Europe/Berlin` as "Mon, Tue, Wed, Thu, Fri
/// 09:00-17:00 (Europe/Berlin)"; anything else as it is.
fn time_text(window: &str) -> String {
    let mut parts = window.splitn(3, '/');
    let (Some(days), Some(times), Some(zone)) = (parts.next(), parts.next(), parts.next()) else {
        return window.to_string();
    };
    let names: Option<Vec<&str>> = days
        .chars()
        .map(|d| match d.to_ascii_uppercase() {
            'M' => Some("Mon"),
            'T' => Some("Tue"),
            'W' => Some("Wed"),
            'R' => Some("Thu"),
            'F' => Some("Fri"),
            'S' => Some("Sat"),
            'U' => Some("Sun"),
            _ => None,
        })
        .collect();
    match names {
        Some(names) => format!("{} {times} ({zone})", names.join(", ")),
        None => window.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        Form::parse(&axum::body::Bytes::from(body))
    }

    #[test]
    fn a_form_becomes_the_conditions_it_describes_and_back() {
        let submitted = form(&[
            ("ip_op", "not_in"),
            ("ip_values", "203.0.113.0/24,  2001:db8::/32"),
            ("time_op", "in"),
            ("time_day", "M"),
            ("time_day", "T"),
            ("time_from", "09:00"),
            ("time_to", "17:00"),
            ("time_zone", "Europe/Berlin"),
            ("time_more", "SU/10:00-14:00/UTC\n\n"),
            ("idp", "7f9c0000-0000-4000-8000-000000000001"),
            ("verified", "true"),
            ("os", "linux"),
            ("os_other", "freebsd"),
        ]);
        let conditions = from_form(&submitted);
        let json = serde_json::to_value(&conditions).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"property": "remote_ip", "operator": "not_in", "values": ["203.0.113.0/24", "2001:db8::/32"]},
                {"property": "time", "operator": "in", "values": ["MT/09:00-17:00/Europe/Berlin", "SU/10:00-14:00/UTC"]},
                {"property": "identity_provider", "operator": "in", "values": ["7f9c0000-0000-4000-8000-000000000001"]},
                {"property": "client_verified", "operator": "in", "values": ["true"]},
                {"property": "client_os", "operator": "in", "values": ["linux", "freebsd"]},
            ])
        );
        // Shown again, the editor holds every value it was given.
        let page = editor(&conditions, &[]).into_string();
        assert!(page.contains(r#"value="203.0.113.0/24, 2001:db8::/32""#));
        assert!(page.contains(r#"value="M" checked"#));
        assert!(page.contains(r#"value="F">"#), "Friday unchecked");
        assert!(page.contains(r#"value="Europe/Berlin""#));
        assert!(page.contains("SU/10:00-14:00/UTC</textarea>"));
        assert!(page.contains(r#"value="freebsd""#));
        assert!(page.contains(r#"<option value="not_in" selected>"#));
        // An empty form: no conditions.
        assert!(from_form(&form(&[("ip_op", "in"), ("time_zone", "UTC")])).is_empty());
    }

    fn condition(property: &str, operator: &str, values: &[&str]) -> Condition {
        serde_json::from_value(
            serde_json::json!({"property": property, "operator": operator, "values": values}),
        )
        .unwrap()
    }

    #[test]
    fn conditions_read_as_words() {
        let okta = Uuid::from_u128(7);
        let providers = HashMap::from([(okta, "Okta")]);
        let words = |c: &[Condition]| describe_all(c, &providers);
        assert_eq!(words(&[]), "always");
        assert_eq!(
            words(&[
                condition(
                    "identity_provider",
                    "in",
                    &[&okta.to_string().to_uppercase()]
                ),
                condition("remote_ip", "not_in", &["10.0.0.0/8", "192.0.2.1"]),
            ]),
            "signed in with Okta, and not connecting from 10.0.0.0/8 or 192.0.2.1"
        );
        assert_eq!(
            words(&[condition("time", "not_in", &["SU/00:00-24:00/UTC"])]),
            "except Sat, Sun 00:00-24:00 (UTC)"
        );
        for (operator, values, expected) in [
            ("in", &["true"][..], "on a device an admin has verified"),
            ("not_in", &["true"][..], "on a device no admin has verified"),
            ("in", &["true", "false"][..], "on any device"),
            ("not_in", &["true", "false"][..], "never"),
        ] {
            assert_eq!(
                words(&[condition("client_verified", operator, values)]),
                expected
            );
        }
        assert_eq!(
            words(&[condition("client_os", "in", &["Linux", "macOS"])]),
            "on a device running Linux or macOS"
        );
    }
}
