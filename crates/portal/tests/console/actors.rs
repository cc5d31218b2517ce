//! The console's users and clients pages.
