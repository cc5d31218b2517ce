//! Resources: every type (a prefix, an address, a DNS pattern, the
//! internet), their filters and address description, the policies that
//! reach each one, and deletion that names those policies first.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde_json::{Value, json};

use super::paging::Listing;
use super::{
    Console, Posted, Refusal, Section, data, deleted, error_box, input, object, refused_status,
    submit, text,
};
use crate::api::{self, body::Json};
use crate::web::{WebResult, see_other};

/// `tcp/22, tcp/8000-8080, udp, icmp` as the API's filters; empty: all
/// traffic.
fn filters(text: &str) -> Result<Value, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (protocol, ports) = match part.split_once('/') {
            Some((protocol, ports)) => (protocol.trim(), Some(ports.trim())),
            None => (part, None),
        };
        let protocol = protocol.to_ascii_lowercase();
        if !matches!(protocol.as_str(), "tcp" | "udp" | "icmp") {
            return Err(format!(
                "filters: {part:?}: write tcp/PORTS, udp/PORTS or icmp, separated by commas"
            ));
        }
        out.push(json!({"protocol": protocol, "ports": ports}));
    }
    Ok(Value::Array(out))
}

fn filters_text(resource: &Value) -> String {
    let list: Vec<String> = resource["filters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| match f["ports"].as_str() {
            Some(ports) => format!("{}/{ports}", text(f, "protocol")),
            None => text(f, "protocol").to_string(),
        })
        .collect();
    if list.is_empty() {
        "all traffic".into()
    } else {
        list.join(", ")
    }
}

/// What the form held, to show it again after a refusal.
#[derive(Default)]
struct Draft {
    name: String,
    kind: String,
    address: String,
    site_id: String,
    filters: String,
    description: String,
}

async fn page(
    c: &Console,
    refusal: Option<&Refusal>,
    draft: &Draft,
    listing: &Listing,
) -> WebResult<Response> {
    let error = refusal.map(|r| r.message.as_str());
    let state = || State(c.state.clone());
    let all = data(api::resources::list(state(), c.admin).await).await?;
    let found: Vec<&Value> = all
        .iter()
        .filter(|r| {
            listing.matches([
                text(r, "name"),
                text(r, "address"),
                text(r, "address_description"),
            ])
        })
        .collect();
    let resources = listing.slice(&found);
    let (search, pager) = listing.controls(c, "/resources", found.len());
    let sites = data(api::sites::list(state(), c.admin).await).await?;
    let policies = data(api::policies::list(state(), c.admin).await).await?;
    let groups = data(api::groups::list(state(), c.admin).await).await?;
    let sites_by_id = super::names(&sites);
    let groups_by_id = super::names(&groups);
    let mut reaching: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for policy in &policies {
        reaching
            .entry(text(policy, "resource_id"))
            .or_default()
            .push(
                groups_by_id
                    .get(text(policy, "group_id"))
                    .copied()
                    .unwrap_or_default(),
            );
    }
    let body = html! {
        @if all.is_empty() {
            p.muted { "No resources yet." }
        } @else {
            (search)
            table {
                thead { tr { th { "Name" } th { "Type" } th { "Address" } th { "Site" } th { "Traffic" } th { "Reached by" } th {} } }
                tbody {
                    @for r in resources {
                        @let id = text(r, "id");
                        @let reaching = reaching.get(id).cloned().unwrap_or_default();
                        tr {
                            td { (text(r, "name")) @if let Some(d) = r["address_description"].as_str() { br; span.muted { (d) } } }
                            td { (text(r, "type")) }
                            td { code { (r["address"].as_str().unwrap_or("everything")) } }
                            td { (sites_by_id.get(text(r, "site_id")).copied().unwrap_or_default()) }
                            td { (filters_text(r)) }
                            td { @if reaching.is_empty() { span.muted { "no policy" } } @else { (reaching.join(", ")) } }
                            td {
                                a href=(c.href(&format!("/access?resource={id}"))) aria-label=(format!("Who can reach {}?", text(r, "name"))) { "Who can reach it?" }
                                " "
                                a href=(c.href(&format!("/resources/{id}/delete"))) aria-label=(format!("Delete {}", text(r, "name"))) { "Delete…" }
                            }
                        }
                    }
                }
            }
            (pager)
        }
        h2 { "Add a resource" }
        @if sites.is_empty() {
            p { "Add a " a href=(c.href("/sites")) { "site" } " first: a resource is reached through a site's gateways." }
        } @else {
            (error_box(error))
            form method="post" action=(c.href("/resources")) {
                (c.csrf_field())
                label for="r-name" { "Name" }
                input #r-name type="text" name="name" value=(draft.name) required maxlength="255";
                label for="r-type" { "Type" }
                select #r-type name="type" {
                    @for (value, label) in [("cidr", "A network (CIDR)"), ("ip", "One address"), ("dns", "A DNS name or pattern"), ("internet", "The internet (full tunnel)")] {
                        option value=(value) selected[draft.kind == value] { (label) }
                    }
                }
                label for="r-address" { "Address" }
                input #r-address type="text" name="address" value=(draft.address) placeholder="10.0.1.0/24, 10.0.1.80 or *.corp.example";
                label for="r-site" { "Site" }
                select #r-site name="site_id" {
                    @for site in &sites {
                        option value=(text(site, "id")) selected[draft.site_id == text(site, "id")] { (text(site, "name")) }
                    }
                }
                label for="r-filters" { "Traffic allowed (empty: all)" }
                input #r-filters type="text" name="filters" value=(draft.filters) placeholder="tcp/443, tcp/8000-8080, icmp";
                label for="r-description" { "Address description shown to users" }
                input #r-description type="text" name="address_description" value=(draft.description);
                div { button type="submit" { "Add the resource" } }
            }
        }
    };
    Ok(c.page(
        refused_status(refusal),
        "Resources",
        Section::Resources,
        body,
    ))
}

/// `GET /{account}/resources`.
pub async fn list(c: Console, RawQuery(query): RawQuery) -> WebResult<Response> {
    page(
        &c,
        None,
        &Draft::default(),
        &Listing::from_query(query.as_deref()),
    )
    .await
}

/// `POST /{account}/resources`.
pub async fn create(Posted { c, form }: Posted) -> WebResult<Response> {
    let draft = Draft {
        name: form.get("name").into(),
        kind: form.get("type").into(),
        address: form.get("address").into(),
        site_id: form.get("site_id").into(),
        filters: form.get("filters").into(),
        description: form.get("address_description").into(),
    };
    let fields = filters(&draft.filters).map(|filters| {
        let mut fields = json!({
            "name": draft.name, "type": draft.kind, "site_id": draft.site_id, "filters": filters,
        });
        if draft.kind != "internet" {
            fields["address"] = json!(draft.address);
        }
        if !draft.description.trim().is_empty() {
            fields["address_description"] = json!(draft.description);
        }
        fields
    });
    let created = submit(
        fields.and_then(input::<api::resources::ResourceInput>),
        async |resource| {
            api::resources::create(State(c.state.clone()), c.admin, Json(resource)).await
        },
    )
    .await;
    match created {
        Ok(_) => Ok(see_other(&c.href("/resources"))),
        Err(refusal) => page(&c, Some(&refusal), &draft, &Listing::from_query(None)).await,
    }
}

/// `GET /{account}/resources/{id}/delete`: what goes with it.
pub async fn confirm_delete(
    c: Console,
    Path((_, id)): Path<(String, String)>,
) -> WebResult<Response> {
    let resource = object(
        api::resources::get(State(c.state.clone()), c.admin, Path(id.clone())).await,
        "resource",
    )
    .await?;
    // The id as the API spells it (the path may hold another spelling).
    let id = text(&resource, "id").to_string();
    let policies = data(api::policies::list(State(c.state.clone()), c.admin).await).await?;
    let reaching = policies
        .iter()
        .filter(|p| text(p, "resource_id") == id)
        .count();
    let body = html! {
        p { "Deleting " b { (text(&resource, "name")) } " also deletes the " (reaching) " policy(ies) that grant it; clients using it lose access at once." }
        form method="post" action=(c.href(&format!("/resources/{id}/delete"))) {
            (c.csrf_field())
            button.danger type="submit" { "Delete the resource" }
        }
        p { a href=(c.href("/resources")) { "Keep it" } }
    };
    Ok(c.page(
        StatusCode::OK,
        "Delete a resource",
        Section::Resources,
        body,
    ))
}

/// `POST /{account}/resources/{id}/delete`.
pub async fn delete(
    Path((_, id)): Path<(String, String)>,
    Posted { c, .. }: Posted,
) -> WebResult<Response> {
    deleted(api::resources::remove(State(c.state.clone()), c.admin, Path(id)).await).await?;
    Ok(see_other(&c.href("/resources")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_read_as_people_write_them() {
        assert_eq!(filters("").unwrap(), json!([]));
        assert_eq!(
            filters(" TCP/443, udp/53 ,icmp, tcp").unwrap(),
            json!([
                {"protocol": "tcp", "ports": "443"},
                {"protocol": "udp", "ports": "53"},
                {"protocol": "icmp", "ports": null},
                {"protocol": "tcp", "ports": null},
            ])
        );
        assert!(filters("ftp/21").is_err());
    }
}
