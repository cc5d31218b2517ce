//! The console's audit, session and flow logs.
