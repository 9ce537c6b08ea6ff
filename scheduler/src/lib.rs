//! Ladle's scheduler: an I/O-free core ([`core`]), the gRPC shell around it ([`server`]), and the
//! management CLI ([`cli`]) that talks to a running scheduler.

pub mod cli;
pub mod core;
pub mod server;
pub mod settings;
