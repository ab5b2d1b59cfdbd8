//! The vhost-user control plane: our request handler ([`NetBackend`]) and the loop
//! that feeds it ([`connection`]), on top of the `vhost` crate's protocol layer.
//!
//! `vhost-user-backend`'s `VhostUserDaemon` is not used: QEMU 7.2 sends
//! SET_VRING_ENABLE before SET_FEATURES, which the protocol layer refuses and the
//! daemon treats as fatal, and it does not handle SET_STATUS/GET_STATUS. Our loop peeks
//! at each message header first and handles those cases itself.

pub mod connection;
pub mod handler;
pub mod vring;

pub use connection::{serve_connection, ConnectionEnd};
pub use handler::NetBackend;
