// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! AF_XDP uplink: one XDP queue per queue pair, bound to the interface queue of the
//! same index, each with its own UMEM (an RX socket, polled and in the XSKMAP, and a TX
//! socket sharing its UMEM), and the XSKMAP redirect program in front.
//!
//! - `device`: [`Xdp`], the [`Uplink`](super::Uplink): opening an interface, its
//!   [`XdpOptions`] and [`XDP_UNSUPPORTED_FEATURES`]; why one UMEM per queue.
//! - `queue`: [`XdpQueue`], one queue pair's RX and copy TX, and the frame budgets.
//! - `zerocopy`: zero-copy TX (`--xdp-zerocopy-tx`) of a queue, over `guest_umem`.
//! - `guest_umem`: guest memory registered as a second UMEM, guest pages held until
//!   their descriptors complete.
//! - `umem`: the UMEM as a `NetIovArea` whose frames are net_iovs handed out by the
//!   queue's `PagePool` (see its module docs for who owns a frame when).
//! - `socket`: one XDP queue's sockets (UMEM registration, two sockets, four rings,
//!   binds) with `xdpilone`.
//! - `prog`: the `bpf(2)` loader: XSKMAP, redirect program, BPF link.
//! - `csum`: software completion of partial checksums on TX.
//! - `gso`: software segmentation of TCP GSO packets on TX, straight into UMEM frames.
//! - `gro`: coalescing of received TCP segments into GSO packets for the guest.
//! - `stats`: [`XdpQueueStats`], the counters of one queue.
//! - `error`: [`XdpError`].

mod csum;
mod device;
mod error;
mod gro;
mod gso;
mod guest_umem;
mod prog;
mod queue;
mod socket;
mod stats;
mod umem;
mod zerocopy;

pub use self::device::{Xdp, XdpOptions, XDP_UNSUPPORTED_FEATURES};
pub use self::error::XdpError;
pub use self::prog::AttachMode;
pub use self::queue::{XdpQueue, RX_FRAMES, TX_FRAMES, UMEM_FRAMES, UMEM_FRAME_SIZE};
pub use self::socket::BindMode;
pub use self::stats::XdpQueueStats;
