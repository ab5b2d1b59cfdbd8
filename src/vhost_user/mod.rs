// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The vhost-user control plane: our request handler ([`NetBackend`]) and the loop
//! that feeds it ([`connection`]), on top of the `vhost` crate's protocol layer.
//!
//! `vhost-user-backend`'s `VhostUserDaemon` is not used: QEMU 7.2 sends
//! SET_VRING_ENABLE before SET_FEATURES, which the protocol layer refuses and the
//! daemon treats as fatal, and it does not handle SET_STATUS/GET_STATUS. Our loop reads
//! each message whole first ([`framing`]) and handles those cases itself.

pub mod connection;
pub mod framing;
pub mod handler;
pub mod vring;

use std::sync::{LazyLock, Mutex, MutexGuard};

pub use connection::{request_name, serve_connection, ConnectionEnd};
pub use handler::NetBackend;

use crate::log_limit::LogLimiter;

/// Lines a second the control plane logs about refused requests (a frontend must not
/// be able to flood the log; every refusal is counted in the stats file anyway).
const CONTROL_LOG_BURST: u32 = 10;

static CONTROL_LOG: LazyLock<Mutex<LogLimiter>> =
    LazyLock::new(|| Mutex::new(LogLimiter::new(CONTROL_LOG_BURST)));

/// The rate limiter of every log line a frontend's requests can trigger.
pub(crate) fn control_log() -> MutexGuard<'static, LogLimiter> {
    CONTROL_LOG.lock().unwrap_or_else(|e| e.into_inner())
}
