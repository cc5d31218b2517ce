//! The page of a signed-in user who is not an admin.
