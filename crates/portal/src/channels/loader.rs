//! The store reads the hub asks for (`Output::Load`), run in their own
//! tasks so that a slow database never holds up the hub's event task: the
//! answer comes back as `Input::Loaded`. A whole graph is read on an
//! account's first load (six queries over all its rows, and its stored
//! authorizations); a committed change reads only the rows it touched.

use std::collections::HashMap;

use postern_model::ClientId;

use super::graph::{AccountGraph, AccountRows, GraphPatch};
use super::hub::{GraphLoad, LoadRequest, Loaded};
use crate::change::Change;
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
    let (graph, stored) = match &request.rows {
        Some(changes) => (
            GraphLoad::Patch(patch(&mut tx, account, changes).await?),
            None,
        ),
        None => {
            let rows = rows(&mut tx, account).await?;
            let stored = grants::list(&mut tx, account).await?;
            (
                GraphLoad::Whole(Box::new(AccountGraph::build(rows))),
                Some(stored),
            )
        }
    };
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
        graph,
        verified,
        grants: stored,
    })
}

/// The rows `changes` touched, each read once.
async fn patch(tx: &mut Conn, account: Uuid, changes: &[Change]) -> Result<GraphPatch, StoreError> {
    let mut resources = Vec::new();
    let mut groups = Vec::new();
    let mut actors = Vec::new();
    for change in changes {
        match change {
            Change::Resource(id) => resources.push(*id),
            Change::Groups(ids) => groups.extend(ids),
            Change::Actors(ids) => actors.extend(ids),
            // Facts of devices and tokens, not of the graph (the caller
            // reads verification); `Everything` is a whole load.
            Change::Client(_)
            | Change::ClientDeleted(_)
            | Change::TokenRevoked(_)
            | Change::Everything => {}
        }
    }
    for ids in [&mut resources, &mut groups, &mut actors] {
        ids.sort_unstable();
        ids.dedup();
    }
    let mut patch = GraphPatch::default();
    for id in resources {
        patch
            .resources
            .push((id, resources::get(tx, account, id).await?));
        patch
            .policies_of_resources
            .push((id, policies::of_resource(tx, account, id).await?));
    }
    for id in groups {
        patch
            .policies_of_groups
            .push((id, policies::of_group(tx, account, id).await?));
    }
    for id in actors {
        let row = match actors::get(tx, account, id).await? {
            Some(actor) => {
                let (_, memberships) = groups::of_actor(tx, account, id).await?;
                Some((
                    actor,
                    memberships.into_iter().map(|(group, _)| group).collect(),
                ))
            }
            None => None,
        };
        patch.actors.push((id, row));
    }
    Ok(patch)
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
