// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Sparse memory images: a list of patches `(offset: u32, len: u16, bytes)`, so that an
//! input carries only the bytes that matter (descriptors, ring entries, headers), not
//! the zeros between them.

use crate::input::{Cursor, Writer};

/// Call `write(offset, bytes)` for each patch of `data`, in order.
pub fn apply(data: &[u8], mut write: impl FnMut(u64, &[u8])) {
    let mut c = Cursor::new(data);
    while !c.is_empty() {
        let offset = u64::from(c.u32());
        let len = usize::from(c.u16());
        write(offset, c.bytes(len));
    }
}

/// The patches that rebuild `image` over zeroed memory (runs of non-zero bytes, joined
/// across short gaps).
pub fn encode(image: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    let mut i = 0;
    while i < image.len() {
        if image[i] == 0 {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        while i < image.len() && i - end <= 8 && i - start < usize::from(u16::MAX) {
            if image[i] != 0 {
                end = i + 1;
            }
            i += 1;
        }
        w.u32(u32::try_from(start).expect("image under 4 GiB"))
            .u16(u16::try_from(end - start).expect("run under 64 KiB"))
            .bytes(&image[start..end]);
        i = end;
    }
    w.0
}
