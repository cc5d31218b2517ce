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

/// The form fields that show `conditions` in the editor, holding only what
/// the editor's inputs can hold (a box for each known day, system and
/// provider; text for the rest).
pub fn fields_of(conditions: &[Condition], providers: &[Value]) -> Form {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut put = |name: &str, value: &str| fields.push((name.to_string(), value.to_string()));
    for condition in conditions {
        let op = if condition.operator == ConditionOperator::NotIn {
            "not_in"
        } else {
            "in"
        };
        let values = &condition.values;
        match condition.property {
            ConditionProperty::RemoteIp => {
                put("ip_op", op);
                put("ip_values", &values.join(", "));
            }
            ConditionProperty::Country => {
                put("country_op", op);
                put("country_values", &values.join(", "));
            }
            ConditionProperty::Time => {
                put("time_op", op);
                let mut more = values.as_slice();
                if let Some((first, rest)) = values.split_first()
                    && let Some(window) = Window::split(first)
                {
                    for (letter, _) in DAYS {
                        if window.days.contains(letter) {
                            put("time_day", &letter.to_string());
                        }
                    }
                    put("time_from", &window.from);
                    put("time_to", &window.to);
                    put("time_zone", &window.zone);
                    more = rest;
                }
                put("time_more", &more.join("\n"));
            }
            ConditionProperty::IdentityProvider => {
                put("idp_op", op);
                for value in values {
                    if providers.iter().any(|p| text(p, "id") == value) {
                        put("idp", value);
                    }
                }
            }
            ConditionProperty::ClientVerified => {
                if op == "in" && values.len() == 1 && values[0] == "true" {
                    put("verified", "true");
                }
            }
            ConditionProperty::ClientOs => {
                put("os_op", op);
                let mut other = Vec::new();
                for value in values {
                    if SYSTEMS.iter().any(|(known, _)| known == value) {
                        put("os", value);
                    } else {
                        other.push(value.as_str());
                    }
                }
                put("os_other", &other.join(", "));
            }
        }
    }
    Form(fields)
}

/// Whether the editor can show `conditions` and give them back unchanged
/// (in any order). Conditions it cannot hold (a property twice, a
/// verification rule other than "verified only", a provider that is gone,
/// spellings it would change) are kept read-only: saving the form must
/// never loosen a policy by what it could not show.
pub fn editable(conditions: &[Condition], providers: &[Value]) -> bool {
    let normal = |list: &[Condition]| {
        let mut list: Vec<(&str, bool, Vec<String>)> = list
            .iter()
            .map(|c| {
                let mut values = c.values.clone();
                values.sort();
                (
                    c.property.as_str(),
                    c.operator == ConditionOperator::NotIn,
                    values,
                )
            })
            .collect();
        list.sort();
        list
    };
    normal(&from_form(&fields_of(conditions, providers))) == normal(conditions)
}

/// The editor's fieldsets, filled from `form` (a policy's `fields_of`, or
/// what was typed before a refusal); `providers` are the account's identity
/// providers (API JSON).
pub fn editor(form: &Form, providers: &[Value]) -> Markup {
    let negated = |name: &str| form.get(name) == "not_in";
    let days = form.all("time_day");
    let chosen_providers = form.all("idp");
    let systems = form.all("os");
    html! {
        fieldset.conditions {
            legend { "Conditions (all must hold; leave a part empty to not check it)" }
            (operator("ip_op", "Client address", negated("ip_op")))
            label for="c-ip" { "Addresses or networks the client connects from (CIDR, comma-separated)" }
            input #c-ip type="text" name="ip_values" placeholder="203.0.113.0/24, 2001:db8::/32"
                value=(form.get("ip_values"));
            (operator("country_op", "Country", negated("country_op")))
            label for="c-country" { "Countries (ISO codes, comma-separated)" }
            input #c-country type="text" name="country_values" placeholder="DE, FR"
                value=(form.get("country_values"));
            (operator("time_op", "Time", negated("time_op")))
            div.days role="group" aria-label="Days" {
                @for (letter, name) in DAYS {
                    @let id = format!("c-day-{letter}");
                    input type="checkbox" id=(id) name="time_day" value=(letter) checked[days.contains(&letter.to_string().as_str())];
                    label.inline for=(id) { (name) }
                }
            }
            label for="c-from" { "From (local time)" }
            input #c-from type="time" name="time_from" value=(form.get("time_from"));
            label for="c-to" { "Until (24:00 is midnight)" }
            input #c-to type="time" name="time_to" value=(form.get("time_to"));
            label for="c-zone" { "Time zone (IANA)" }
            input #c-zone type="text" name="time_zone" list="zones" placeholder="Europe/Berlin" value=(form.get("time_zone"));
            datalist #zones {
                @for zone in zones() { option value=(zone) {} }
            }
            label for="c-more" { "More windows, one per line (e.g. SU/10:00-14:00/America/New_York)" }
            textarea #c-more name="time_more" rows="2" { (form.get("time_more")) }
            (operator("idp_op", "Identity provider", negated("idp_op")))
            @if providers.is_empty() {
                p.muted { "No identity providers: sign-in is by email code." }
            }
            @for provider in providers {
                @let id = text(provider, "id");
                @let box_id = format!("c-idp-{id}");
                div {
                    input type="checkbox" id=(box_id) name="idp" value=(id) checked[chosen_providers.contains(&id)];
                    label.inline for=(box_id) { (text(provider, "name")) }
                }
            }
            div {
                input #c-verified type="checkbox" name="verified" value="true" checked[form.get("verified") == "true"];
                label.inline for="c-verified" { "Only clients an admin verified" }
            }
            (operator("os_op", "Operating system", negated("os_op")))
            div role="group" aria-label="Operating systems" {
                @for (os, name) in SYSTEMS {
                    @let id = format!("c-os-{os}");
                    input type="checkbox" id=(id) name="os" value=(os) checked[systems.contains(&os)];
                    label.inline for=(id) { (name) }
                }
            }
            label for="c-os-other" { "Other systems (comma-separated)" }
            input #c-os-other type="text" name="os_other" value=(form.get("os_other"));
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
        let page = editor(&fields_of(&conditions, &[]), &[]).into_string();
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

    #[test]
    fn conditions_the_editor_cannot_hold_are_not_editable() {
        let okta =
            serde_json::json!({"id": "0000000a-0000-4000-8000-00000000000b", "name": "Okta"});
        let holds = |c: Vec<Condition>| editable(&c, std::slice::from_ref(&okta));
        assert!(holds(vec![]));
        assert!(holds(vec![
            condition("client_os", "in", &["macos", "linux", "FreeBSD"]),
            condition("remote_ip", "not_in", &["10.0.0.0/8"]),
            condition(
                "time",
                "in",
                &["MTWRF/09:00-17:00/Europe/Berlin", "S/10:00-12:00/UTC"]
            ),
            condition(
                "identity_provider",
                "in",
                &["0000000a-0000-4000-8000-00000000000b"]
            ),
            condition("client_verified", "in", &["true"]),
        ]));
        // What saving the form would change, and so loosen or tighten.
        for lossy in [
            vec![condition("client_verified", "not_in", &["false"])],
            vec![condition("client_verified", "in", &["true", "false"])],
            vec![
                condition("remote_ip", "in", &["10.0.0.0/8"]),
                condition("remote_ip", "not_in", &["10.9.0.0/16"]),
            ],
            vec![condition(
                "identity_provider",
                "in",
                &["0000000a-0000-4000-8000-00000000000c"],
            )],
            vec![condition(
                "identity_provider",
                "in",
                &["0000000a-0000-4000-8000-00000000000b"
                    .to_uppercase()
                    .as_str()],
            )],
            vec![condition("time", "in", &["mw/09:00-17:00/UTC"])],
            vec![condition("time", "in", &["WM/09:00-17:00/UTC"])],
            vec![condition("remote_ip", "in", &["10.0.0.0/8 "])],
        ] {
            assert!(!holds(lossy.clone()), "{lossy:?}");
        }
    }
}
