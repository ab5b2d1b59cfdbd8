// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! (c) The virtio-net header: `VirtioNetHdr::from_bytes` / `to_bytes` and
//! `validate_tx` against random feature sets and packet lengths.
//!
//! Input: 12 header bytes, 8 bytes of feature bits, 4 bytes of packet length.
//! Checks: the wire format round-trips (and matches the `ByteValued` view); a header
//! is accepted exactly when the model below (the spec's rules, with the crate's
//! documented choices) accepts it; acceptance survives more features and a longer
//! packet; errors name the offending field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_netmem::virtio::features::{
    self as f, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
};
use vhost_netmem::virtio::header::{
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use vhost_netmem::virtio::{Features, HeaderError, VirtioNetHdr};
use vm_memory::ByteValued;
use vnm_fuzz::input::Cursor;

/// The spec's rules for a transmit header, written out independently.
fn model_accepts(h: &VirtioNetHdr, features: Features, len: usize) -> bool {
    let needs_csum = h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    let known_flags = h.flags & !(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID) == 0;
    let csum_ok = !needs_csum
        || (features.has(VIRTIO_NET_F_CSUM)
            && usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 <= len);
    let ecn = h.gso_type & VIRTIO_NET_HDR_GSO_ECN != 0;
    let gso = h.gso_type & !VIRTIO_NET_HDR_GSO_ECN;
    let tso = |bit| {
        features.has(bit)
            && (!ecn || features.has(VIRTIO_NET_F_HOST_ECN))
            && h.gso_size != 0
            && needs_csum
    };
    let gso_ok = match gso {
        VIRTIO_NET_HDR_GSO_NONE => !ecn,
        VIRTIO_NET_HDR_GSO_TCPV4 => tso(VIRTIO_NET_F_HOST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => tso(VIRTIO_NET_F_HOST_TSO6),
        _ => false,
    };
    known_flags && csum_ok && gso_ok && usize::from(h.hdr_len) <= len
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let wire: [u8; 12] = c.array();
    let raw_features = c.u64();
    let len = usize::try_from(c.u32()).unwrap_or(usize::MAX);

    let h = VirtioNetHdr::from_bytes(&wire);
    assert_eq!(h.to_bytes(), wire, "wire format does not round-trip");
    assert_eq!(
        h.as_slice(),
        &wire[..],
        "ByteValued view differs from the wire format"
    );

    for features in [
        Features::from_bits(raw_features),
        Features::from_bits(raw_features & f::SUPPORTED),
        Features::from_bits(f::SUPPORTED),
    ] {
        let got = h.validate_tx(features, len);
        let _ = got.map_err(|e| e.to_string());
        assert_eq!(
            got.is_ok(),
            model_accepts(&h, features, len),
            "validate_tx({h:?}, {features:?}, {len}) = {got:?} disagrees with the model"
        );
        match got {
            Err(HeaderError::Flags(x)) => assert_eq!(x, h.flags),
            Err(HeaderError::GsoType(x)) => assert_eq!(x, h.gso_type),
            Err(HeaderError::HdrLen { hdr_len, len: l }) => {
                assert_eq!((hdr_len, l), (h.hdr_len, len));
                assert!(usize::from(hdr_len) > l);
            }
            Err(HeaderError::Csum {
                start,
                offset,
                len: l,
            }) => {
                assert_eq!((start, offset, l), (h.csum_start, h.csum_offset, len));
            }
            Err(HeaderError::GsoSize) => assert_eq!(h.gso_size, 0),
            Ok(()) => {
                // More features and a longer packet never turn an accepted header down.
                let all = Features::from_bits(features.bits() | f::SUPPORTED | u64::MAX);
                assert_eq!(h.validate_tx(all, len), Ok(()));
                assert_eq!(h.validate_tx(features, len.saturating_add(1)), Ok(()));
            }
        }
    }
});
