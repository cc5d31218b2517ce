//! The OpenAPI 3 document, generated from the handlers' annotations.

use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{
    account, actors, clients, groups, identity_providers, logs, policies, resources, sites, tokens,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Postern REST API", description = "Admin API of the Postern portal (SPEC section 4)."),
    servers((url = "/api/v1")),
    security(("bearer" = [])),
    modifiers(&BearerAuth),
    paths(
        account::get, account::update,
        sites::list, sites::create, sites::get, sites::update, sites::remove,
        sites::create_gateway_token, sites::gateways,
        resources::list, resources::create, resources::get, resources::update, resources::remove,
        groups::list, groups::create, groups::get, groups::update, groups::remove,
        groups::members, groups::set_members,
        actors::list, actors::create, actors::get, actors::update, actors::remove,
        tokens::create, tokens::revoke,
        identity_providers::list, identity_providers::create, identity_providers::get,
        identity_providers::update, identity_providers::remove,
        policies::list, policies::create, policies::get, policies::update, policies::remove,
        clients::list, clients::update, clients::remove,
        logs::audit_log, logs::sessions, logs::flows,
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn document() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}
