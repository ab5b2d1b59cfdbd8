// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Where a packed ring stands, read back from its descriptors' flags when the
//! frontend's base cannot be where the ring is.
//!
//! A backend that was killed never answered GET_VRING_BASE. QEMU then starts its
//! successor from the base it last sent (the one of the previous start): for a split
//! ring the successor reads the used index from guest memory instead, but a packed
//! ring has no index in memory, so the base stays stale and the new device would wait
//! at a descriptor the old one used long ago, with the guest's ring stuck for good.
//!
//! The flags say where the ring is. Both sides write positions in ring order, each
//! write setting AVAIL to the wrap counter of its lap (an available descriptor has USED
//! the inverse, a used one both equal). So the AVAIL bits around the ring are two runs,
//! and the driver's next position `D` is where they change. Of the last `size`
//! positions before `D`, the device has used those before its next used position `U`
//! and the driver has made the rest available: `U` follows the last used descriptor in
//! that window. The chains between `U` and where the old device had read to were in
//! its hands and never returned: the successor takes them again (as QEMU's split ring
//! restarts from the used index: TX chains in flight are sent again, RX buffers are
//! filled again).
//!
//! This is exact when every chain takes one ring slot, which is what a Linux guest
//! does with RING_INDIRECT_DESC (every chain of more than one buffer goes in an
//! indirect table) and what DPDK's virtio_user does for single-segment packets. A
//! used descriptor covers its whole chain but is written in the chain's first slot
//! only; the others keep the driver's available flags, so after a chain of several
//! slots returned last the window shows its tail as available and `U` comes out too
//! early. So a base is kept when it is where the flags say the device stands, and
//! also when it lies past that by one chain's tail (NEXT on every slot but the last):
//! a device that stopped right after returning a chain of several slots. Positions
//! are known modulo two laps only, so a stale base that happens to fall there (one
//! chain into the window, an even number of laps behind) is kept too, and the ring
//! then waits; any other base a used descriptor of its own lap or a driver more than
//! a ring ahead shows to be stale is replaced. A migrated or reconnected ring whose
//! frontend learned the positions by GET_VRING_BASE is never touched.

use std::sync::atomic::Ordering;

use super::event::RingPosition;
use super::{PackedIndices, DESC_F_AVAIL, DESC_F_NEXT, DESC_F_USED, DESC_SIZE, FLAGS_OFFSET};
use crate::netmem::GuestPageMap;

/// What the ring in guest memory says of a frontend's base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The base can be where the ring stands: start there.
    Base,
    /// The base is stale: start at these positions (avail at the used position).
    Recovered(PackedIndices),
    /// The base is stale, but the flags do not show where the ring is (not two runs
    /// of AVAIL bits: a ring being set up, or a hostile one); the base is kept and the
    /// ring's own checks take it from there.
    Unknown,
}

/// Check `base` against the descriptor ring at `desc` of `size` slots.
pub fn check_base(map: &GuestPageMap, desc: u64, size: u16, base: PackedIndices) -> Resume {
    let Some(flags) = ring_flags(map, desc, size) else {
        return Resume::Base;
    };
    let Some(&at_used) = flags.get(usize::from(base.used.index)) else {
        return Resume::Base;
    };
    // A device that stopped at the base's used position has not written there in its
    // lap.
    let used_there = used_in_lap(at_used, base.used.wrap);
    let Some(driver) = driver_position(&flags) else {
        return if used_there {
            Resume::Unknown
        } else {
            Resume::Base
        };
    };
    let used = used_position(&flags, driver, size);
    if used == base.used {
        return Resume::Base;
    }
    // The base's used position inside the window the driver has made available, past
    // nothing but one chain's tail, is a device that stopped after a chain of several
    // slots (its tail keeps available flags); anything else is stale.
    let (Some(window), Some(gap)) = (
        distance(used, driver, size),
        distance(used, base.used, size),
    ) else {
        return Resume::Base;
    };
    if !used_there && gap <= window && is_tail(&flags, used, gap, size) {
        return Resume::Base;
    }
    Resume::Recovered(PackedIndices { avail: used, used })
}

/// Whether the `n` slots from `from` are the tail of one chain: NEXT on each but the
/// last.
fn is_tail(flags: &[u16], from: RingPosition, n: u32, size: u16) -> bool {
    let Ok(n) = u16::try_from(n) else {
        return false;
    };
    (0..n).all(|k| {
        let next = flags
            .get(usize::from(from.advance(k, size).index))
            .is_some_and(|&f| f & DESC_F_NEXT != 0);
        next == (k + 1 < n)
    })
}

/// Every slot's flags, or None when a slot is unreadable.
fn ring_flags(map: &GuestPageMap, desc: u64, size: u16) -> Option<Vec<u16>> {
    (0..u64::from(size))
        .map(|i| {
            let at = desc.checked_add(i * DESC_SIZE + FLAGS_OFFSET)?;
            map.load_u16(at, Ordering::Acquire)
        })
        .collect()
}

fn avail_bit(flags: u16) -> bool {
    flags & DESC_F_AVAIL != 0
}

/// A used descriptor written in the lap of wrap counter `wrap`.
fn used_in_lap(flags: u16, wrap: bool) -> bool {
    avail_bit(flags) == wrap && (flags & DESC_F_USED != 0) == wrap
}

/// Positions from `from` forward to `to`, modulo two laps.
fn distance(from: RingPosition, to: RingPosition, size: u16) -> Option<u32> {
    let laps = 2 * u32::from(size);
    Some((to.lap_offset(size)? + laps - from.lap_offset(size)?) % laps)
}

/// The driver's next position: the slot where the AVAIL bits change, with the
/// counter of the run before it (slot 0 with the next lap's counter when they do not
/// change). None unless the bits are two runs.
fn driver_position(flags: &[u16]) -> Option<RingPosition> {
    let first = avail_bit(*flags.first()?);
    let Some(k) = flags.iter().position(|&f| avail_bit(f) != first) else {
        return Some(RingPosition {
            index: 0,
            wrap: !first,
        });
    };
    if flags[k..].iter().any(|&f| avail_bit(f) == first) {
        return None;
    }
    Some(RingPosition {
        index: u16::try_from(k).ok()?,
        wrap: first,
    })
}

/// The device's next used position: after the last used descriptor in the ring's
/// worth of positions before `driver` (that many back when there is none).
fn used_position(flags: &[u16], driver: RingPosition, size: u16) -> RingPosition {
    (1..=size)
        .map(|n| driver.back(n, size))
        .find(|p| {
            flags
                .get(usize::from(p.index))
                .is_some_and(|&f| used_in_lap(f, p.wrap))
        })
        .map_or(driver.back(size, size), |p| p.advance(1, size))
}
