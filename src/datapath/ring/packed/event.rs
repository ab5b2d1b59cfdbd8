// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Positions in a packed ring and the event suppression structures.
//!
//! A position is a descriptor index and the wrap counter it is read or written with
//! (virtio 1.2, 2.8.1: both counters start at 1 and flip each time the index passes
//! the end of the ring). The event suppression structure (`pvirtq_event_suppress`,
//! 4 bytes) is a `desc` word (event offset in bits 0-14, its wrap counter in bit 15)
//! and a `flags` word (ENABLE, DISABLE, or DESC: only for the descriptor at `desc`,
//! valid with EVENT_IDX). The driver's structure tells the device when to interrupt;
//! the device's tells the driver when to kick.

/// Bit 15 of an event offset or of a vhost-user ring base: the wrap counter.
pub const WRAP_BIT: u16 = 1 << 15;

/// `flags` of an event suppression structure: notify at every change.
pub const EVENT_FLAGS_ENABLE: u16 = 0;
/// `flags`: do not notify.
pub const EVENT_FLAGS_DISABLE: u16 = 1;
/// `flags`: notify when the descriptor at the event offset and wrap is reached.
pub const EVENT_FLAGS_DESC: u16 = 2;
/// The bits of `flags` that carry the mode (the others are reserved).
const EVENT_FLAGS_MASK: u16 = 3;

/// A descriptor index with its wrap counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPosition {
    /// Index in the descriptor ring (below the ring size).
    pub index: u16,
    /// The wrap counter at this index.
    pub wrap: bool,
}

impl RingPosition {
    /// Where both sides start: index 0, wrap counter 1.
    pub const START: RingPosition = RingPosition {
        index: 0,
        wrap: true,
    };

    /// From the vhost-user / event-offset form: index in bits 0-14, wrap counter in
    /// bit 15.
    pub fn from_word(word: u16) -> Self {
        RingPosition {
            index: word & !WRAP_BIT,
            wrap: word & WRAP_BIT != 0,
        }
    }

    /// The vhost-user / event-offset form.
    pub fn word(self) -> u16 {
        self.index | if self.wrap { WRAP_BIT } else { 0 }
    }

    /// `n` descriptors further in a ring of `size` (`n <= size`), the wrap counter
    /// flipped when the end is passed.
    pub fn advance(self, n: u16, size: u16) -> Self {
        let to = u32::from(self.index) + u32::from(n);
        let size32 = u32::from(size);
        if to >= size32 {
            RingPosition {
                // Below `size` because n <= size and index < size.
                index: u16::try_from(to - size32).unwrap_or(0),
                wrap: !self.wrap,
            }
        } else {
            RingPosition {
                index: u16::try_from(to).unwrap_or(0),
                wrap: self.wrap,
            }
        }
    }

    /// `n` descriptors back (`n <= size`), the inverse of [`Self::advance`].
    pub fn back(self, n: u16, size: u16) -> Self {
        if n > self.index {
            RingPosition {
                index: self.index + size - n,
                wrap: !self.wrap,
            }
        } else {
            RingPosition {
                index: self.index - n,
                wrap: self.wrap,
            }
        }
    }

    /// The position as a count modulo two laps (0 .. 2 * size): wrap counter 1 is the
    /// first lap. None for an index beyond the ring (a value the driver wrote).
    pub fn lap_offset(self, size: u16) -> Option<u32> {
        if self.index >= size {
            return None;
        }
        let lap = if self.wrap { 0 } else { u32::from(size) };
        Some(lap + u32::from(self.index))
    }
}

/// The notification mode an event suppression structure asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventMode {
    /// Notify at every change (also a reserved mode, and DESC without EVENT_IDX: a
    /// lost notification would hang the other side, a spare one costs little).
    Enable,
    /// Do not notify.
    Disable,
    /// Notify when this position is reached (EVENT_IDX).
    Desc(RingPosition),
}

impl EventMode {
    /// The mode a structure's 4 bytes ask for (`desc` then `flags`, little-endian).
    pub fn decode(raw: [u8; 4], event_idx: bool) -> Self {
        let desc = u16::from_le_bytes([raw[0], raw[1]]);
        let flags = u16::from_le_bytes([raw[2], raw[3]]);
        match flags & EVENT_FLAGS_MASK {
            EVENT_FLAGS_DISABLE => EventMode::Disable,
            EVENT_FLAGS_DESC if event_idx => EventMode::Desc(RingPosition::from_word(desc)),
            _ => EventMode::Enable,
        }
    }
}

/// Whether the device's writes from position `old` over `span` descriptors reached
/// `event` (the descriptor ring's EVENT_IDX test: `event` in `[old, old + span)`,
/// counted over two laps so that the wrap counter tells laps apart). A span of two
/// laps or more reaches every position; an event beyond the ring (a driver's lie)
/// notifies rather than risking a guest that waits forever.
pub fn reached(event: RingPosition, old: RingPosition, span: u32, size: u16) -> bool {
    let laps = 2 * u32::from(size);
    if span >= laps {
        return true;
    }
    let (Some(e), Some(o)) = (event.lap_offset(size), old.lap_offset(size)) else {
        return true;
    };
    (e + laps - o) % laps < span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_advance_and_go_back_across_the_wrap() {
        for size in [1u16, 2, 3, 4, 7, 256, 32768] {
            let mut p = RingPosition::START;
            for step in 0..3 * u32::from(size) {
                let n = u16::try_from(step % u32::from(size) + 1).unwrap().min(size);
                let q = p.advance(n, size);
                assert!(q.index < size, "size {size}");
                assert_eq!(q.back(n, size), p, "size {size}, step {step}");
                let lap = 2 * u32::from(size);
                assert_eq!(
                    q.lap_offset(size).unwrap(),
                    (p.lap_offset(size).unwrap() + u32::from(n)) % lap,
                    "size {size}: advancing is counting modulo two laps"
                );
                p = q;
            }
        }
        // A whole ring flips the counter and keeps the index.
        let p = RingPosition {
            index: 2,
            wrap: true,
        };
        assert_eq!(
            p.advance(5, 5),
            RingPosition {
                index: 2,
                wrap: false
            }
        );
    }

    #[test]
    fn the_word_form_carries_the_wrap_counter_in_bit_15() {
        let p = RingPosition {
            index: 0x1234,
            wrap: true,
        };
        assert_eq!(p.word(), 0x9234);
        assert_eq!(RingPosition::from_word(0x9234), p);
        assert!(!RingPosition::from_word(0x1234).wrap);
        assert_eq!(RingPosition::START.word(), WRAP_BIT);
    }

    #[test]
    fn modes_decode_from_the_flags_word() {
        let raw = |desc: u16, flags: u16| {
            let mut b = [0u8; 4];
            b[..2].copy_from_slice(&desc.to_le_bytes());
            b[2..].copy_from_slice(&flags.to_le_bytes());
            b
        };
        assert_eq!(EventMode::decode(raw(5, 0), true), EventMode::Enable);
        assert_eq!(EventMode::decode(raw(5, 1), true), EventMode::Disable);
        assert_eq!(
            EventMode::decode(raw(0x8005, 2), true),
            EventMode::Desc(RingPosition {
                index: 5,
                wrap: true
            })
        );
        assert_eq!(EventMode::decode(raw(5, 2), false), EventMode::Enable);
        assert_eq!(EventMode::decode(raw(5, 3), true), EventMode::Enable);
        // Reserved bits do not change the mode.
        assert_eq!(EventMode::decode(raw(5, 0xfff1), true), EventMode::Disable);
    }

    #[test]
    fn reached_is_membership_in_the_written_range() {
        let size = 4u16;
        let at = |index, wrap| RingPosition { index, wrap };
        // Brute force over every event, start and span below two laps.
        for e in 0..2 * size {
            for o in 0..2 * size {
                for span in 0..2 * u32::from(size) {
                    let event = at(e % size, e < size);
                    let old = at(o % size, o < size);
                    let mut pos = old;
                    let mut hit = false;
                    for _ in 0..span {
                        hit |= pos == event;
                        pos = pos.advance(1, size);
                    }
                    assert_eq!(reached(event, old, span, size), hit, "{e} {o} {span}");
                }
            }
        }
        assert!(
            reached(at(1, true), at(2, true), 8, size),
            "two laps reach all"
        );
        assert!(reached(at(9, true), at(0, true), 1, size), "a lie notifies");
    }
}
