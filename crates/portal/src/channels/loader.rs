//! The store reads the hub asks for (`Output::Load`), run in their own
//! tasks so that a slow database never holds up the hub's event task: the
//! answer comes back as `Input::Loaded`.

use std::collections::HashMap;

use postern_model::ClientId;

use super::graph::{AccountGraph, AccountRows};
use super::hub::{LoadRequest, Loaded};
use crate::domain::DeviceKind;
use uuid::Uuid;

use crate::store::{
    Conn, Store, StoreError, accounts, actors, devices, grants, groups, policies, resources,
};

/// An account's graph with its stored authorizations, and the
/// verification of the client devices asked for, each read in one
/// transaction. The caller waits for the ledger writes first (`writer`).
pub(super) async fn load(store: &Store, request: &LoadRequest) -> Result<Loaded, StoreError> {
    let account = request.account;
    let mut tx = store.read().await?;
    let rows = rows(&mut tx, account).await?;
    let stored = grants::list(&mut tx, account).await?;
    tx.commit().await?;
    let mut verified = HashMap::new();
    for device in &request.clients {
        // A device that cannot be read keeps the verification it had.
        let read = async {
            let mut tx = store.read().await?;
            let row = devices::get(&mut tx, account, DeviceKind::Client, device.0).await;
            let _ = tx.commit().await;
            row
        };
        match read.await {
            Ok(Some(row)) => {
                verified.insert(ClientId(row.id), row.verified);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%account, %device, %error, "cannot read the client device again");
            }
        }
    }
    Ok(Loaded {
        graph: AccountGraph::build(rows),
        verified,
        grants: stored,
    })
}

/// An account's rows for its graph.
async fn rows(tx: &mut Conn, account: Uuid) -> Result<AccountRows, StoreError> {
    Ok(AccountRows {
        actors: actors::list(tx, account).await?,
        groups: groups::list(tx, account).await?,
        memberships: groups::all_memberships(tx, account).await?,
        resources: resources::list(tx, account).await?,
        policies: policies::list(tx, account).await?,
        search_domain: accounts::search_domain(tx, account).await?,
    })
}
