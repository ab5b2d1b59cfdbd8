// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Glue shared by the fuzz targets of vhost-netmem (`fuzz_targets/`), kept out of the
//! main crate so that its build is not affected.
//!
//! Module map:
//! - [`input`]: a cursor that reads integers from fuzz input, zero once exhausted.
//! - [`memory`]: memfd-backed guest memory in three layouts, as `GuestPageMap`s.
//! - [`model`]: a reference model of a split ring (the spec's rules for chains), and
//!   the ranges of guest memory each side reads and writes.
//! - [`patch`]: sparse memory images (offset, length, bytes), as inputs carry them.
//! - [`rig`]: the input format of the TX and RX targets and the `Ring` it builds.
//! - [`uplink`]: scripted `UplinkQueue`s for the TX and RX paths, recording every call.
//! - [`vhost`]: the vhost-user message stream format of the `vhost_user` target and
//!   the frontend thread that writes it into the handler's socket.
//! - [`seeds`]: the builders of the seed corpus (`examples/seeds.rs` writes it).

pub mod input;
pub mod memory;
pub mod model;
pub mod patch;
pub mod rig;
pub mod seeds;
pub mod uplink;
pub mod vhost;

/// Whether `VNM_FUZZ_DEBUG` is set: the targets then print what the model expected and
/// what the code did (for reproducing a crash by hand).
pub fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("VNM_FUZZ_DEBUG").is_some())
}
