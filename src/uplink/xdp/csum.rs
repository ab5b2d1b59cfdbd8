// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Software completion of a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
//!
//! A guest that negotiated `VIRTIO_NET_F_CSUM` may hand over a packet whose L4
//! checksum field holds only the pseudo-header sum; the device is to add the ones'
//! complement sum of everything from `csum_start` to the end and store the folded
//! complement at `csum_start + csum_offset` (what the kernel's `skb_checksum_help`
//! does). AF_XDP has no TX checksum offload in copy mode, so the uplink does it here,
//! on the frame already copied into the UMEM.

/// Ones' complement sum of `data` as big-endian 16-bit words (an odd last byte is
/// padded with zero), not yet folded. Adds 32-bit words (the folded result is the
/// same), so a 64 KiB run cannot overflow.
pub(super) fn sum_words(data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    let mut sum: u64 = words
        .by_ref()
        .map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum();
    let mut rest = words.remainder().chunks_exact(2);
    sum += rest
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u64>();
    if let [last] = rest.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Fold a wide sum into 16 bits with end-around carry.
pub(super) fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 significant bits.
    u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Complete the checksum of `frame` in place: sum `frame[start..]` (the field at
/// `start + offset` holds the pseudo-header seed) and store the result there.
/// Returns false, leaving `frame` untouched, if the field is not inside `frame`.
pub(crate) fn complete_partial(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(field) = start.checked_add(offset) else {
        return false;
    };
    match field.checked_add(2) {
        Some(end) if end <= frame.len() => {}
        _ => return false,
    }
    let csum = !fold(sum_words(&frame[start..]));
    // 0 and 0xffff are the same in ones' complement; 0 means "no checksum" for UDP,
    // so send the other one (as the kernel does with CSUM_MANGLED_0).
    let csum = if csum == 0 { 0xffff } else { csum };
    frame[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An IPv4/UDP frame with the UDP checksum seeded with the pseudo-header sum, as a
    /// guest with CHECKSUM_PARTIAL sends it; returns (frame, csum_start, csum_offset).
    fn udp_frame(payload: &[u8]) -> (Vec<u8>, usize, usize) {
        let src = [10, 0, 0, 1];
        let dst = [10, 0, 0, 2];
        let udp_len = 8 + payload.len();
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&u16::try_from(20 + udp_len).unwrap().to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f.extend_from_slice(&ip);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
        let seed = fold(sum_words(&pseudo));
        f.extend_from_slice(&4000u16.to_be_bytes());
        f.extend_from_slice(&5000u16.to_be_bytes());
        f.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
        f.extend_from_slice(&seed.to_be_bytes());
        f.extend_from_slice(payload);
        (f, 34, 6)
    }

    /// The receiver's check: pseudo header + segment sums to 0xffff.
    fn verifies(f: &[u8]) -> bool {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&u16::try_from(f.len() - 34).unwrap().to_be_bytes());
        fold(sum_words(&pseudo) + sum_words(&f[34..])) == 0xffff
    }

    #[test]
    fn refuses_a_field_outside_the_frame() {
        let mut f = vec![0u8; 40];
        assert!(!complete_partial(&mut f, 34, 5));
        assert!(!complete_partial(&mut f, usize::MAX, 2));
        assert_eq!(f, vec![0u8; 40]);
    }

    #[test]
    fn known_udp_checksum() {
        let (mut f, start, off) = udp_frame(b"hello");
        assert!(complete_partial(&mut f, start, off));
        assert!(verifies(&f));
    }

    proptest! {
        #[test]
        fn word_sums_fold_like_16_bit_sums(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut reference: u64 = 0;
            for w in data.chunks(2) {
                reference += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            }
            prop_assert_eq!(fold(sum_words(&data)), fold(reference));
        }

        #[test]
        fn completed_checksums_verify(payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let (mut f, start, off) = udp_frame(&payload);
            prop_assert!(complete_partial(&mut f, start, off));
            prop_assert!(verifies(&f));
            prop_assert_ne!(u16::from_be_bytes([f[40], f[41]]), 0);
        }
    }
}
