// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! How an orchestrator starts the backend: file descriptors it hands over (the
//! vhost-user socket, a TAP's queues), systemd socket activation, the privilege drop
//! after the uplink is set up, and QEMU's conventions for backend programs.
//!
//! Module map:
//! - [`fds`]: a socket passed as an fd (`--fd`, socket activation): checked, told
//!   apart as listening or connected (`SO_ACCEPTCONN`).
//! - [`activation`]: systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`,
//!   `LISTEN_FDNAMES`).
//! - [`privilege`]: `--user` / `--group`: the switch to that identity and the
//!   capabilities kept after it.
//! - [`conventions`]: QEMU's backend program conventions (`--print-capabilities`).

pub mod activation;
pub mod conventions;
pub mod fds;
pub mod privilege;
