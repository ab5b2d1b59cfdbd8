// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Integration-test harness shared by every test crate in `tests/`.
//!
//! Module map:
//! - [`memory`]: memfd-backed guest memory, several regions of ONE memfd at different
//!   file offsets (as QEMU sends them), with a bump allocator per region.
//! - [`ring`]: the driver side of a split virtqueue: descriptor table, avail and used
//!   rings in guest memory, direct / indirect / raw (hostile) chains, EVENT_IDX. It
//!   needs nothing of the harness (only a [`ring::RingMemory`]): the library's unit
//!   tests include the same file.
//! - [`packed_ring`]: the driver side of a packed virtqueue (VIRTIO_F_RING_PACKED):
//!   descriptor ring and event structures, direct / indirect / raw chains; the layout
//!   a guest with [`guest::GuestConfig::packed`] drives.
//! - [`connection`]: the VMM's vhost-user connection: the setup messages through
//!   `vhost::vhost_user::Frontend`, raw messages where the `Frontend` API refuses an
//!   order QEMU really sends (or for malformed ones), the request codes they use.
//! - [`cloud_hypervisor`]: cloud-hypervisor's vhost-user-net sequence (negotiation,
//!   set-up, reconnect, memory hotplug, reset) through the same `Frontend` it uses.
//! - [`queue`]: one virtqueue of the guest driver: its ring, kick and call eventfds,
//!   waits for used entries; an RX and a TX queue make a queue pair.
//! - [`guest`]: a virtio-net "guest" driver: memory, queue pairs, TX sending and RX
//!   receiving.
//! - [`rig`]: the daemon and a guest connected to it, on the loopback uplink, or on a
//!   TAP or an AF_XDP veth in a fresh namespace with AF_PACKET sockets on the peer's
//!   end; connect / disconnect, frames checked at the peer and injected from it.
//! - [`daemon`]: the real `vhost-netmem` binary as a child process (optionally inside a
//!   network namespace), killed by PID on drop, stderr captured for failure messages.
//! - [`stats`]: the daemon's `--stats-file` JSON.
//! - [`launch`]: the daemon started as an orchestrator starts it: fds handed down, a
//!   TAP opened by the test, an unprivileged identity; a guest on that TAP.
//! - [`netns`]: network namespaces created and deleted by the tests, AF_PACKET sockets
//!   opened inside them.
//! - [`raw`]: a raw vhost-user frontend (messages byte by byte, in any pieces, with any
//!   fds) for frontends that misbehave on purpose; the daemon's fd count and RSS.
//! - [`http`]: a minimal HTTP/1.1 client for the API socket, the metrics address and a
//!   Prometheus server's query API; a free loopback port; a sample of an exposition.
//! - [`prometheus`]: a real Prometheus server started by a test (killed by PID), and
//!   `promtool check metrics`.
//! - [`packet`]: Ethernet / IPv4 / IPv6 / TCP / UDP frame builders, checksum helpers
//!   (pseudo-header sums, NEEDS_CSUM completion, a parser that verifies) and payload
//!   patterns.
//!
//! Every wait in this harness has a deadline and fails with a message that says what
//! was expected, what was seen, and what the daemon printed.

// Each test crate compiles this module and uses a different subset of it.
#![allow(dead_code)]

pub mod cloud_hypervisor;
pub mod connection;
pub mod daemon;
pub mod guest;
pub mod http;
pub mod launch;
pub mod memory;
pub mod netns;
pub mod packed_ring;
pub mod packet;
pub mod prometheus;
pub mod queue;
pub mod raw;
pub mod rig;
pub mod ring;
pub mod stats;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Default deadline for anything the daemon should do "now".
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline for a counter in the stats file (rewritten every 0.5 s).
pub const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// A name unique to this test process and call: `{prefix}-{pid}-{n}`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether the tests run as root (network namespaces and TAP devices need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For a privileged test: returns `false` (after printing why) when the test cannot run
/// here. Set `VNM_REQUIRE_PRIVILEGED=1` (CI) to turn the skip into a failure.
pub fn privileged(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let reason = format!(
        "{test}: needs root (network namespaces, TAP devices, AF_PACKET); \
         run the suite as root to exercise it"
    );
    if std::env::var_os("VNM_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{reason} (VNM_REQUIRE_PRIVILEGED=1)");
    }
    eprintln!("SKIPPED {reason}");
    false
}
