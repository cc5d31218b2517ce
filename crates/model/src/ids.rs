//! Typed identifiers (DESIGN.md section 5): every id on the wire is a UUID,
//! but a client's id is not a gateway's, nor a resource's. Separate types
//! make a swapped pair (`(client, resource)` vs `(resource, client)`) a
//! compile error instead of a silent lookup miss. The wire form is the bare
//! UUID string (`#[serde(transparent)]`).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The id as a plain UUID (for the store and for logs).
            pub fn uuid(self) -> Uuid {
                self.0
            }

            /// An id for tests and simulations.
            pub const fn from_u128(value: u128) -> Self {
                $name(Uuid::from_u128(value))
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                $name(uuid)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

id!(
    /// A client device (stable per installation and account).
    ClientId
);
id!(
    /// A gateway device (stable per installation).
    GatewayId
);
id!(
    /// A resource: a host, a subnet, a DNS name pattern or the internet.
    ResourceId
);
id!(
    /// A site: the gateways that can reach a set of resources.
    SiteId
);
id!(
    /// A TURN relay registered with the portal.
    RelayId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_travel_as_bare_uuids() {
        let id = ResourceId::from_u128(7);
        let text = serde_json::to_string(&id).unwrap();
        assert_eq!(text, "\"00000000-0000-0000-0000-000000000007\"");
        assert_eq!(serde_json::from_str::<ResourceId>(&text).unwrap(), id);
        assert_eq!(id.to_string(), "00000000-0000-0000-0000-000000000007");
        assert!(format!("{id:?}").starts_with("ResourceId("));
    }
}
