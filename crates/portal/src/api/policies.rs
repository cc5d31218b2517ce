//! `/policies`: group -> resource with conditions (SPEC F14).

use axum::extract::Path;
use axum::response::IntoResponse;
use jiff::Timestamp;
use postern_model::Condition;
use postern_policy::CompiledCondition;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::audited::{self, Outcome};
use super::body::Json;
use super::fields::{MAX_CONDITIONS, PolicyDescription};
use super::problem::{ApiResult, Problem};
use super::{Admin, List, Shared, now_ms, read_all, read_one};
use crate::domain::PolicyRecord;
use crate::state::Change;
use crate::store::{Conn, groups, policies, resources};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    pub group_id: Uuid,
    pub resource_id: Uuid,
    #[serde(default)]
    #[schema(schema_with = super::schemas::conditions)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub description: Option<PolicyDescription>,
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    pub group_id: Option<Uuid>,
    pub resource_id: Option<Uuid>,
    #[schema(schema_with = super::schemas::conditions_or_null)]
    pub conditions: Option<Vec<Condition>>,
    pub description: Option<PolicyDescription>,
    pub disabled: Option<bool>,
}

/// The conditions alone (422 when they are not valid).
pub(super) fn check_conditions(conditions: &[Condition]) -> ApiResult<()> {
    if conditions.len() > MAX_CONDITIONS {
        return Err(Problem::invalid(
            "conditions",
            format!("at most {MAX_CONDITIONS} conditions"),
        ));
    }
    for (index, condition) in conditions.iter().enumerate() {
        CompiledCondition::compile(condition)
            .map_err(|e| Problem::invalid(format!("conditions[{index}]"), e))?;
    }
    Ok(())
}

/// The group and the resource must be the account's (409: the request is
/// valid, the account has no such object).
async fn validate(tx: &mut Conn, admin: &Admin, policy: &PolicyRecord) -> ApiResult<()> {
    if groups::get(tx, admin.account_id, policy.group_id)
        .await?
        .is_none()
    {
        return Err(Problem::conflict_at("group_id", "no such group"));
    }
    if resources::get(tx, admin.account_id, policy.resource_id)
        .await?
        .is_none()
    {
        return Err(Problem::conflict_at("resource_id", "no such resource"));
    }
    Ok(())
}

#[utoipa::path(get, path = "/policies", tag = "policies", responses((status = 200, body = List<PolicyRecord>)))]
pub async fn list(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    Ok(List::of(read_all::<PolicyRecord>(&state, &admin).await?))
}

#[utoipa::path(post, path = "/policies", tag = "policies", request_body = PolicyInput,
    responses((status = 201, body = PolicyRecord), (status = 422)))]
pub async fn create(
    state: Shared,
    admin: Admin,
    Json(input): Json<PolicyInput>,
) -> ApiResult<impl IntoResponse> {
    check_conditions(&input.conditions)?;
    let policy = PolicyRecord {
        id: Uuid::new_v4(),
        group_id: input.group_id,
        resource_id: input.resource_id,
        conditions: input.conditions,
        description: input.description.map(|d| d.0).unwrap_or_default(),
        disabled: input.disabled,
        created_at: Timestamp::now(),
    };
    audited::write(&state, &admin, async |tx| {
        validate(tx, &admin, &policy).await?;
        policies::insert(tx, admin.account_id, &policy).await?;
        let change = Change::Groups(vec![policy.group_id]);
        Ok(Outcome::created("policy.create", policy.id, policy, change))
    })
    .await
}

#[utoipa::path(get, path = "/policies/{id}", tag = "policies", params(("id" = String, Path, description = "The object's id (a UUID)")), responses((status = 200, body = PolicyRecord), (status = 404)))]
pub async fn get(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(
        read_one::<PolicyRecord>(&state, &admin, &id).await?,
    ))
}

#[utoipa::path(patch, path = "/policies/{id}", tag = "policies", params(("id" = String, Path, description = "The object's id (a UUID)")), request_body = PolicyPatch,
    responses((status = 200, body = PolicyRecord), (status = 404), (status = 422)))]
pub async fn update(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(patch): Json<PolicyPatch>,
) -> ApiResult<impl IntoResponse> {
    if let Some(conditions) = &patch.conditions {
        check_conditions(conditions)?;
    }
    audited::write_scoped(&state, &admin, &id, async |tx, before: PolicyRecord| {
        let mut after = before.clone();
        if let Some(group_id) = patch.group_id {
            after.group_id = group_id;
        }
        if let Some(resource_id) = patch.resource_id {
            after.resource_id = resource_id;
        }
        if let Some(conditions) = patch.conditions {
            after.conditions = conditions;
        }
        if let Some(description) = patch.description {
            after.description = description.0;
        }
        if let Some(disabled) = patch.disabled {
            after.disabled = disabled;
        }
        validate(tx, &admin, &after).await?;
        policies::update(tx, admin.account_id, &after, now_ms()).await?;
        let change = Change::Groups(vec![before.group_id, after.group_id]);
        Ok(Outcome::updated(
            "policy.update",
            before.id,
            &before,
            after,
            change,
        ))
    })
    .await
}

#[utoipa::path(delete, path = "/policies/{id}", tag = "policies", params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "Access it granted is revoked at once.",
    responses((status = 204), (status = 404)))]
pub async fn remove(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(&state, &admin, &id, async |tx, policy: PolicyRecord| {
        policies::delete(tx, admin.account_id, policy.id).await?;
        Ok(Outcome::deleted(
            "policy.delete",
            policy.id,
            &policy,
            Change::Groups(vec![policy.group_id]),
        ))
    })
    .await
}
