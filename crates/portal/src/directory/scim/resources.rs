//! `/Users` and `/Groups`: create, read, list and search with filters and
//! paging, replace, patch, delete (RFC 7644 section 3), with entity tags.
//! Every write is one audited transaction by the directory
//! (`api::audited::run_as`) whose notices reach continuous evaluation once
//! committed: a deactivated or deleted user's channels close at once.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::document::{Projection, normalize};
use super::error::ScimError;
use super::filter::{AttrPath, Filter, Op};
use super::schema::{self, Kind, MAX_RESULTS};
use super::{Scim, date_time, respond};
use crate::api::audited::{Commit, Outcome, run_as};
use crate::directory::{Effects, ProvisionError, Provisioner};
use crate::state::AppState;
use crate::store::audit::Author;
use crate::store::directories::{self, Entry, EntryKind};
use crate::store::{Conn, StoreError};

type Shared = State<Arc<AppState>>;
type Params = Query<HashMap<String, String>>;

impl From<ProvisionError> for ScimError {
    fn from(error: ProvisionError) -> Self {
        match error {
            ProvisionError::Conflict(what) => ScimError::uniqueness(what),
            ProvisionError::Invalid(what) => ScimError::bad("invalidValue", what),
            ProvisionError::Gone => {
                ScimError::new(StatusCode::UNAUTHORIZED, None, "the directory was deleted")
            }
            ProvisionError::Store(e) => e.into(),
        }
    }
}

fn entry_kind(kind: Kind) -> EntryKind {
    match kind {
        Kind::User => EntryKind::User,
        Kind::Group => EntryKind::Group,
    }
}

/// Resource ids are our UUIDs; anything else names nothing.
fn parse_id(kind: Kind, text: &str) -> Result<Uuid, ScimError> {
    Uuid::try_parse(text).map_err(|_| ScimError::not_found(format!("no such {}", kind.name())))
}

fn etag(entry: &Entry) -> String {
    format!("W/\"{}\"", entry.version)
}

/// The direct groups of each user of the directory, as `groups` shows them.
type UserGroups = HashMap<Uuid, Vec<(Uuid, String)>>;

fn user_groups(groups: &[Entry]) -> UserGroups {
    let mut out: UserGroups = HashMap::new();
    for group in groups {
        let name = group
            .document
            .get("displayName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for member in crate::directory::member_ids(&group.document)
            .into_iter()
            .flatten()
        {
            out.entry(member)
                .or_default()
                .push((group.id, name.clone()));
        }
    }
    out
}

/// The whole resource as SCIM shows it.
fn render(kind: Kind, entry: &Entry, base_url: &str, groups: Option<&UserGroups>) -> Value {
    let mut out = Map::new();
    let mut schemas = vec![json!(kind.core().id)];
    for extension in kind.extensions() {
        if entry.document.contains_key(extension.id) {
            schemas.push(json!(extension.id));
        }
    }
    out.insert("schemas".into(), Value::Array(schemas));
    out.insert("id".into(), json!(entry.id.to_string()));
    for (key, value) in &entry.document {
        out.insert(key.clone(), value.clone());
    }
    if let Some(list) = groups.and_then(|g| g.get(&entry.id))
        && !list.is_empty()
    {
        let shown: Vec<Value> = list
            .iter()
            .map(|(id, name)| {
                json!({
                    "value": id.to_string(),
                    "$ref": format!("{base_url}/Groups/{id}"),
                    "display": name,
                    "type": "direct",
                })
            })
            .collect();
        out.insert("groups".into(), Value::Array(shown));
    }
    out.insert(
        "meta".into(),
        json!({
            "resourceType": kind.name(),
            "created": date_time(entry.created_at),
            "lastModified": date_time(entry.updated_at),
            "location": format!("{base_url}/{}/{}", kind.endpoint(), entry.id),
            "version": etag(entry),
        }),
    );
    Value::Object(out)
}

fn with_etag(entry: &Entry) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&etag(entry)) {
        headers.insert(header::ETAG, value);
    }
    headers
}

fn body_json(body: &Bytes) -> Result<Value, ScimError> {
    serde_json::from_slice(body)
        .map_err(|e| ScimError::bad("invalidSyntax", format!("the body is not JSON: {e}")))
}

/// `If-Match` (RFC 7644 section 3.14): a write to a version the client did
/// not see is refused with 412.
fn check_if_match(wanted: Option<&str>, entry: &Entry) -> Result<(), ScimError> {
    let Some(wanted) = wanted else {
        return Ok(());
    };
    let current = etag(entry);
    let strong = current.trim_start_matches("W/");
    let ok = wanted
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag == current || tag.trim_start_matches("W/") == strong);
    if !ok {
        return Err(ScimError::new(
            StatusCode::PRECONDITION_FAILED,
            None,
            format!("the resource changed: its version is {current}"),
        ));
    }
    Ok(())
}

/// One request's paging, filter and projection.
struct ListRequest {
    filter: Option<Filter>,
    start_index: usize,
    count: usize,
    projection: Projection,
}

impl ListRequest {
    fn new(
        filter: Option<&str>,
        start_index: Option<i64>,
        count: Option<i64>,
        projection: Projection,
    ) -> Result<ListRequest, ScimError> {
        let filter = filter
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| Filter::parse(f).map_err(|e| ScimError::bad("invalidFilter", e.0)))
            .transpose()?;
        // RFC 7644 section 3.4.2.4: below 1 means 1; a negative count means 0.
        let start_index = usize::try_from(start_index.unwrap_or(1).max(1)).unwrap_or(1);
        let count = usize::try_from(count.unwrap_or(MAX_RESULTS as i64).max(0))
            .unwrap_or(0)
            .min(MAX_RESULTS);
        Ok(ListRequest {
            filter,
            start_index,
            count,
            projection,
        })
    }

    fn from_query(params: &HashMap<String, String>) -> Result<ListRequest, ScimError> {
        let number = |name: &str| -> Result<Option<i64>, ScimError> {
            params
                .get(name)
                .map(|v| {
                    v.trim().parse::<i64>().map_err(|_| {
                        ScimError::bad("invalidValue", format!("{name} must be an integer"))
                    })
                })
                .transpose()
        };
        let projection = Projection::parse(
            params.get("attributes").map(String::as_str),
            params.get("excludedAttributes").map(String::as_str),
        )?;
        ListRequest::new(
            params.get("filter").map(String::as_str),
            number("startIndex")?,
            number("count")?,
            projection,
        )
    }

    /// From a `/.search` body (RFC 7644 section 3.4.3).
    fn from_body(body: &Value) -> Result<ListRequest, ScimError> {
        let Value::Object(map) = body else {
            return Err(ScimError::bad(
                "invalidSyntax",
                "a SearchRequest is a JSON object",
            ));
        };
        let field = |name: &str| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        let joined = |name: &str| -> Result<Option<String>, ScimError> {
            match field(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => Ok(Some(
                    items
                        .iter()
                        .map(|i| {
                            i.as_str().map(str::to_string).ok_or_else(|| {
                                ScimError::bad("invalidValue", format!("{name} lists strings"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .join(","),
                )),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(_) => Err(ScimError::bad(
                    "invalidValue",
                    format!("{name} lists strings"),
                )),
            }
        };
        let number = |name: &str| -> Result<Option<i64>, ScimError> {
            match field(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                    ScimError::bad("invalidValue", format!("{name} must be an integer"))
                }),
            }
        };
        let filter = match field("filter") {
            None | Some(Value::Null) => None,
            Some(Value::String(f)) => Some(f.clone()),
            Some(_) => return Err(ScimError::bad("invalidFilter", "filter is a string")),
        };
        let projection = Projection::parse(
            joined("attributes")?.as_deref(),
            joined("excludedAttributes")?.as_deref(),
        )?;
        ListRequest::new(
            filter.as_deref(),
            number("startIndex")?,
            number("count")?,
            projection,
        )
    }
}

/// A filter that one name lookup answers: `userName eq "x"` for users,
/// `displayName eq "x"` for groups, what identity providers ask before each
/// create. Anything else is evaluated on every entry.
fn indexed_name(kind: Kind, filter: &Filter) -> Option<String> {
    let field = match kind {
        Kind::User => "userName",
        Kind::Group => "displayName",
    };
    match filter {
        Filter::Compare(
            AttrPath {
                urn: None,
                name,
                sub: None,
            },
            Op::Eq,
            Value::String(v),
        ) if name.eq_ignore_ascii_case(field) => Some(v.trim().to_lowercase()),
        _ => None,
    }
}

/// The matching resources of `kinds`, rendered, before paging.
async fn matching(
    conn: &mut Conn,
    scim: &Scim,
    kinds: &[Kind],
    filter: Option<&Filter>,
) -> Result<Vec<(Kind, Value)>, ScimError> {
    let directory = scim.directory.id;
    let mut out = Vec::new();
    for &kind in kinds {
        let entries = match filter.and_then(|f| indexed_name(kind, f)) {
            Some(key) => directories::entry_by_name(conn, directory, entry_kind(kind), &key)
                .await?
                .into_iter()
                .collect(),
            None => directories::entries(conn, directory, entry_kind(kind)).await?,
        };
        let groups = match kind {
            Kind::User if !entries.is_empty() => Some(user_groups(
                &directories::entries(conn, directory, EntryKind::Group).await?,
            )),
            _ => None,
        };
        for entry in &entries {
            let resource = render(kind, entry, &scim.base_url, groups.as_ref());
            if filter.is_none_or(|f| f.matches(kind, &resource)) {
                out.push((kind, resource));
            }
        }
    }
    Ok(out)
}

async fn list(
    state: &AppState,
    scim: &Scim,
    kinds: &[Kind],
    request: ListRequest,
) -> Result<Response, ScimError> {
    let mut tx = state.store.read().await?;
    let found = matching(&mut tx, scim, kinds, request.filter.as_ref()).await?;
    tx.commit().await.map_err(StoreError::from)?;
    let total = found.len();
    let page: Vec<Value> = found
        .into_iter()
        .skip(request.start_index - 1)
        .take(request.count)
        .map(|(kind, resource)| request.projection.apply(kind, resource))
        .collect();
    Ok(respond(
        StatusCode::OK,
        json!({
            "schemas": [schema::LIST_RESPONSE],
            "totalResults": total,
            "startIndex": request.start_index,
            "itemsPerPage": page.len(),
            "Resources": page,
        }),
        HeaderMap::new(),
    ))
}

async fn read_one(
    state: &AppState,
    scim: &Scim,
    kind: Kind,
    id: &str,
) -> Result<(Entry, Value), ScimError> {
    let id = parse_id(kind, id)?;
    let mut tx = state.store.read().await?;
    let entry = directories::entry(&mut tx, scim.directory.id, entry_kind(kind), id)
        .await?
        .ok_or_else(|| ScimError::not_found(format!("no such {}", kind.name())))?;
    let groups = match kind {
        Kind::User => Some(user_groups(
            &directories::entries(&mut tx, scim.directory.id, EntryKind::Group).await?,
        )),
        Kind::Group => None,
    };
    tx.commit().await.map_err(StoreError::from)?;
    let resource = render(kind, &entry, &scim.base_url, groups.as_ref());
    Ok((entry, resource))
}

async fn get_one(
    state: &AppState,
    scim: &Scim,
    kind: Kind,
    id: &str,
    params: &HashMap<String, String>,
) -> Result<Response, ScimError> {
    let projection = Projection::parse(
        params.get("attributes").map(String::as_str),
        params.get("excludedAttributes").map(String::as_str),
    )?;
    let (entry, resource) = read_one(state, scim, kind, id).await?;
    Ok(respond(
        StatusCode::OK,
        projection.apply(kind, resource),
        with_etag(&entry),
    ))
}

/// Runs a directory's write: one transaction holding the directory's lock,
/// audited with the directory as the author, memberships settled, notices
/// published after the commit. The body reads what it changes inside the
/// transaction, so concurrent requests never overwrite each other.
async fn write(
    state: &AppState,
    scim: &Scim,
    body: impl AsyncFnOnce(&mut Provisioner<'_>) -> Result<Option<Entry>, ScimError>,
) -> Result<Option<Entry>, ScimError> {
    let author = Author {
        actor_id: None,
        token_id: None,
        directory_id: Some(scim.directory.id),
    };
    run_as(state, scim.account_id, author, Commit::Yes, async |conn| {
        let mut provisioner = Provisioner::begin(conn, scim.account_id, scim.directory.id).await?;
        let entry = body(&mut provisioner).await?;
        let Effects { audit, changes } = provisioner.finish().await?;
        Ok::<_, ScimError>(Outcome::batch(entry, audit, changes))
    })
    .await
}

/// The stored document's `externalId`, kept in its own column too.
fn external_id(document: &Map<String, Value>) -> Option<String> {
    document
        .get("externalId")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Writes `document` as the resource `id` of `kind` (new when `existing` is
/// none).
async fn put(
    p: &mut Provisioner<'_>,
    kind: Kind,
    id: Uuid,
    document: Map<String, Value>,
    existing: Option<Entry>,
) -> Result<Entry, ScimError> {
    let now = Timestamp::now();
    let external = external_id(&document);
    Ok(match kind {
        Kind::User => p.put_user(id, document, external, existing, now).await?,
        Kind::Group => p.put_group(id, document, external, existing, now).await?,
    })
}

/// The entry `id` of `kind`, read under the lock, checked against
/// `If-Match`.
async fn locked_entry(
    p: &mut Provisioner<'_>,
    kind: Kind,
    id: Uuid,
    if_match: Option<&str>,
) -> Result<Entry, ScimError> {
    let entry = directories::entry(p.conn, p.directory, entry_kind(kind), id)
        .await
        .map_err(ScimError::from)?
        .ok_or_else(|| ScimError::not_found(format!("no such {}", kind.name())))?;
    check_if_match(if_match, &entry)?;
    Ok(entry)
}

/// Answers with the stored resource (201 with its location for a create).
async fn answer(
    state: &AppState,
    scim: &Scim,
    kind: Kind,
    written: Option<Entry>,
    status: StatusCode,
) -> Result<Response, ScimError> {
    let Some(entry) = written else {
        return Err(ScimError::internal());
    };
    let (entry, resource) = read_one(state, scim, kind, &entry.id.to_string()).await?;
    let mut headers = with_etag(&entry);
    if status == StatusCode::CREATED
        && let Some(location) = resource["meta"]["location"].as_str()
        && let Ok(value) = HeaderValue::from_str(location)
    {
        headers.insert(header::LOCATION, value);
    }
    Ok(respond(status, resource, headers))
}

async fn create(
    state: &AppState,
    scim: &Scim,
    kind: Kind,
    body: &Bytes,
) -> Result<Response, ScimError> {
    let document = normalize(kind, &body_json(body)?)?;
    let written = write(state, scim, async |p| {
        Ok(Some(put(p, kind, Uuid::new_v4(), document, None).await?))
    })
    .await?;
    answer(state, scim, kind, written, StatusCode::CREATED).await
}

/// The `If-Match` header's text, if any; one that is not text matches
/// nothing (412), never everything.
fn if_match(headers: &HeaderMap) -> Result<Option<String>, ScimError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(value) => value.to_str().map(|v| Some(v.to_string())).map_err(|_| {
            ScimError::new(
                StatusCode::PRECONDITION_FAILED,
                None,
                "If-Match is not readable",
            )
        }),
    }
}

async fn replace(
    state: &AppState,
    scim: &Scim,
    kind: Kind,
    id: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ScimError> {
    let id = parse_id(kind, id)?;
    let wanted = if_match(headers)?;
    let document = normalize(kind, &body_json(body)?)?;
    let written = write(state, scim, async |p| {
        let existing = locked_entry(p, kind, id, wanted.as_deref()).await?;
        Ok(Some(put(p, kind, id, document, Some(existing)).await?))
    })
    .await?;
    answer(state, scim, kind, written, StatusCode::OK).await
}

async fn patch(
    state: &AppState,
    scim: &Scim,
    kind: Kind,
    id: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ScimError> {
    let id = parse_id(kind, id)?;
    let wanted = if_match(headers)?;
    let operations = body_json(body)?;
    let written = write(state, scim, async |p| {
        let existing = locked_entry(p, kind, id, wanted.as_deref()).await?;
        let document = super::patch::apply(kind, &existing.document, &operations)?;
        if document == existing.document {
            return Ok(Some(existing));
        }
        Ok(Some(put(p, kind, id, document, Some(existing)).await?))
    })
    .await?;
    answer(state, scim, kind, written, StatusCode::OK).await
}

async fn delete(
    state: &AppState,
    scim: &Scim,
    kind: Kind,
    id: &str,
    headers: &HeaderMap,
) -> Result<Response, ScimError> {
    let id = parse_id(kind, id)?;
    let wanted = if_match(headers)?;
    let now = Timestamp::now();
    write(state, scim, async |p| {
        let existing = locked_entry(p, kind, id, wanted.as_deref()).await?;
        match kind {
            Kind::User => p.delete_user(&existing, now).await?,
            Kind::Group => p.delete_group(&existing, now).await?,
        }
        Ok(None)
    })
    .await?;
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

async fn search(
    state: &AppState,
    scim: &Scim,
    kinds: &[Kind],
    body: &Bytes,
) -> Result<Response, ScimError> {
    let request = ListRequest::from_body(&body_json(body)?)?;
    list(state, scim, kinds, request).await
}

// The routes: thin, one per method and resource type.

pub async fn list_users(
    State(state): Shared,
    scim: Scim,
    Query(params): Params,
) -> Result<Response, ScimError> {
    list(
        &state,
        &scim,
        &[Kind::User],
        ListRequest::from_query(&params)?,
    )
    .await
}

pub async fn list_groups(
    State(state): Shared,
    scim: Scim,
    Query(params): Params,
) -> Result<Response, ScimError> {
    list(
        &state,
        &scim,
        &[Kind::Group],
        ListRequest::from_query(&params)?,
    )
    .await
}

pub async fn search_users(
    State(state): Shared,
    scim: Scim,
    body: Bytes,
) -> Result<Response, ScimError> {
    search(&state, &scim, &[Kind::User], &body).await
}

pub async fn search_groups(
    State(state): Shared,
    scim: Scim,
    body: Bytes,
) -> Result<Response, ScimError> {
    search(&state, &scim, &[Kind::Group], &body).await
}

pub async fn search_all(
    State(state): Shared,
    scim: Scim,
    body: Bytes,
) -> Result<Response, ScimError> {
    search(&state, &scim, &[Kind::User, Kind::Group], &body).await
}

pub async fn create_user(
    State(state): Shared,
    scim: Scim,
    body: Bytes,
) -> Result<Response, ScimError> {
    create(&state, &scim, Kind::User, &body).await
}

pub async fn create_group(
    State(state): Shared,
    scim: Scim,
    body: Bytes,
) -> Result<Response, ScimError> {
    create(&state, &scim, Kind::Group, &body).await
}

type IdPath = Path<HashMap<String, String>>;

fn id_of(params: &HashMap<String, String>) -> &str {
    params.get("id").map(String::as_str).unwrap_or_default()
}

pub async fn get_user(
    State(state): Shared,
    scim: Scim,
    Path(path): IdPath,
    Query(params): Params,
) -> Result<Response, ScimError> {
    get_one(&state, &scim, Kind::User, id_of(&path), &params).await
}

pub async fn get_group(
    State(state): Shared,
    scim: Scim,
    Path(path): IdPath,
    Query(params): Params,
) -> Result<Response, ScimError> {
    get_one(&state, &scim, Kind::Group, id_of(&path), &params).await
}

pub async fn replace_user(
    State(state): Shared,
    scim: Scim,
    Path(path): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ScimError> {
    replace(&state, &scim, Kind::User, id_of(&path), &headers, &body).await
}

pub async fn replace_group(
    State(state): Shared,
    scim: Scim,
    Path(path): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ScimError> {
    replace(&state, &scim, Kind::Group, id_of(&path), &headers, &body).await
}

pub async fn patch_user(
    State(state): Shared,
    scim: Scim,
    Path(path): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ScimError> {
    patch(&state, &scim, Kind::User, id_of(&path), &headers, &body).await
}

pub async fn patch_group(
    State(state): Shared,
    scim: Scim,
    Path(path): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ScimError> {
    patch(&state, &scim, Kind::Group, id_of(&path), &headers, &body).await
}

pub async fn delete_user(
    State(state): Shared,
    scim: Scim,
    Path(path): IdPath,
    headers: HeaderMap,
) -> Result<Response, ScimError> {
    delete(&state, &scim, Kind::User, id_of(&path), &headers).await
}

pub async fn delete_group(
    State(state): Shared,
    scim: Scim,
    Path(path): IdPath,
    headers: HeaderMap,
) -> Result<Response, ScimError> {
    delete(&state, &scim, Kind::Group, id_of(&path), &headers).await
}
