// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! virtio-net wire formats: the packet header, feature bits, config space and the
//! split-ring descriptor chain walker.

pub mod chain;
pub mod config_space;
pub mod features;
pub mod header;

pub use chain::{ChainError, ChainWalker, DescMemory, Segment};
pub use config_space::NetConfigSpace;
pub use features::Features;
pub use header::{HeaderError, VirtioNetHdr, VNET_HDR_LEN};
