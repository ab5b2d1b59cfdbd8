// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vhost-netmem: a vhost-user-net backend whose data path speaks Linux's netmem
//! vocabulary.
//!
//! Module map:
//! - [`api`]: the HTTP servers (`--metrics`, `--api-socket`): Prometheus exposition,
//!   stats, configuration and rate limits; the `ctl` client.
//! - [`config`]: command line -> validated `NetConfig`.
//! - [`daemon`]: listen or connect, serve connections one after another, signals.
//! - [`launch`]: how an orchestrator starts the backend: passed fds, systemd socket
//!   activation, the privilege drop, QEMU's backend program conventions.
//! - [`vhost_user`]: the control plane: our request handler and its loop.
//! - [`virtio`]: virtio-net wire formats: header, features, config space, chain walker.
//! - [`netmem`]: `NetmemRef`, `NetmemDesc`, `GuestPageMap`, `NetIovArea`, `Frag`/`FragList`,
//!   `PagePool` and its memory providers.
//! - [`datapath`]: the queue pair worker: TX, RX, notifications.
//! - [`uplink`]: `trait Uplink`; TAP, AF_XDP, null and loopback.
//! - [`log_limit`]: rate-limited logging for guest- and frontend-triggered events.
//! - [`metrics`]: per-queue-pair counters and their JSON exposition.
//! - [`ratelimit`]: per-queue-pair token-bucket limits, shared by control and workers.
//! - [`sandbox`]: a seccomp filter per kind of thread (`--seccomp`).

pub mod api;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod launch;
pub mod log_limit;
pub mod metrics;
pub mod netmem;
pub mod ratelimit;
pub mod sandbox;
pub mod uplink;
pub mod vhost_user;
pub mod virtio;
