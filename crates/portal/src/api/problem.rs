//! The API's errors are the portal's problem responses (`crate::problem`),
//! shared with the channel handshakes.

pub use crate::problem::Problem;

pub type ApiResult<T> = Result<T, Problem>;
