//! The console's identity providers, directories and settings pages.
