//! The notice a committed write leaves for the channels (F15): what it
//! touched, so continuous evaluation re-evaluates only the clients it can
//! affect. A leaf: the REST API and the sign-in pages raise it, the shared
//! state carries it, the channel hub and the portal cluster consume it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a committed change touched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "ids", rename_all = "snake_case")]
pub enum Change {
    /// A resource was created, changed or deleted.
    Resource(Uuid),
    /// Policies of these groups changed (members of them are affected).
    Groups(Vec<Uuid>),
    /// These actors' memberships, role or enabled state changed (or they
    /// were deleted with their tokens).
    Actors(Vec<Uuid>),
    /// A client's verification changed.
    Client(Uuid),
    /// A client device was deleted.
    ClientDeleted(Uuid),
    /// A token was revoked.
    TokenRevoked(Uuid),
    /// Anything may have changed (a node missed cluster messages):
    /// re-evaluate every client of the account.
    Everything,
}
