//! Postern's shared vocabulary, free of I/O: the address plan, resource
//! addresses and their validation, DNS name patterns, and traffic filters.
//! The portal validates with it, the client and gateway match with it.

pub mod condition;
pub mod dns;
pub mod filter;
pub mod ids;
pub mod keys;
pub mod plan;
pub mod protocol;
pub mod resource;

pub use condition::{Condition, ConditionOperator, ConditionProperty};
pub use dns::{DnsPattern, PatternError, Specificity, best_match};
pub use filter::{Filter, FilterError, PortRange, Protocol, filters_allow};
pub use ids::{ClientId, GatewayId, RelayId, ResourceId, SiteId};
pub use keys::{PresharedKey, PublicKey};
pub use resource::{AddressError, ResourceAddress, ResourceType};
