// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The generator benchmark uplink (`--uplink generator`): every receive finds a
//! packet, built once from a template, and every transmitted packet is discarded.
//!
//! It measures the guest RX ring path alone, the way DPDK's testpmd `txonly` forwarding
//! mode does on a vhost port: a fixed UDP/IPv4 frame of `--generator-size` bytes
//! (198.18.0.1:9 -> 198.18.0.2:9, a benchmarking range, broadcast to the guest), written
//! into the guest's buffers behind a zeroed virtio-net header. Nothing is read from a
//! device, so what is left is the backend's cost per packet: popping chains, writing the
//! header and the frame, the used ring, the notifications.

use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{QueueSlots, SendStatus, Uplink, UplinkError, UplinkQueue};
use crate::netmem::FragList;
use crate::virtio::{Features, VirtioNetHdr, VNET_HDR_LEN};

/// Shortest frame: an Ethernet minimum without FCS.
pub const MIN_FRAME: usize = 60;

/// Ethernet (14) + IPv4 (20) + UDP (8).
const HEADERS: usize = 42;

/// The generated frames' source: a locally administered address of no one.
const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];

/// A generator uplink.
pub struct Generator {
    frame_len: usize,
    queues: QueueSlots,
}

impl Generator {
    /// `queue_pairs` queues, each generating frames of `frame_len` bytes (at least
    /// [`MIN_FRAME`]).
    pub fn new(queue_pairs: usize, frame_len: usize) -> Result<Self, UplinkError> {
        if frame_len < MIN_FRAME || frame_len > usize::from(u16::MAX) {
            return Err(UplinkError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("generator frames are {MIN_FRAME} to 65535 bytes, not {frame_len}"),
            )));
        }
        let packet = template(frame_len, SRC_MAC);
        let mut queues: Vec<Box<dyn UplinkQueue>> = Vec::new();
        for _ in 0..queue_pairs {
            let ready = EventFd::new(EFD_NONBLOCK)?;
            // Never read: the queue is readable for ever.
            ready.write(1)?;
            queues.push(Box::new(GeneratorQueue {
                packet: packet.clone(),
                ready,
            }));
        }
        Ok(Generator {
            frame_len,
            queues: QueueSlots::new(queues),
        })
    }
}

/// The virtio-net header (zero: no offload) and the frame.
fn template(frame_len: usize, src_mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0u8; VNET_HDR_LEN + frame_len];
    let f = &mut p[VNET_HDR_LEN..];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = u16::try_from(frame_len - 14).unwrap_or(u16::MAX);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
    ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
    let csum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let udp_len = ip_len - 20;
    let udp = &mut f[34..HEADERS];
    udp[0..2].copy_from_slice(&9u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    // UDP checksum 0: none (IPv4 allows it). The payload stays zero, as txonly's.
    p
}

/// The IPv4 header checksum of `hdr` (its checksum field zero).
fn ipv4_checksum(hdr: &[u8]) -> u16 {
    let mut sum: u32 = hdr
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

impl Uplink for Generator {
    fn describe(&self) -> String {
        format!("generator uplink ({}-byte frames)", self.frame_len)
    }

    fn take_queue(&self, pair: usize) -> Result<Box<dyn UplinkQueue>, UplinkError> {
        self.queues.take(pair)
    }

    fn return_queue(&self, pair: usize, queue: Box<dyn UplinkQueue>) {
        self.queues.put(pair, queue)
    }

    fn apply_features(&self, _features: Features) -> Result<(), UplinkError> {
        Ok(())
    }
}

struct GeneratorQueue {
    /// Header and frame, copied into every receive.
    packet: Vec<u8>,
    /// Always readable.
    ready: EventFd,
}

impl UplinkQueue for GeneratorQueue {
    fn fd(&self) -> Option<RawFd> {
        Some(self.ready.as_raw_fd())
    }

    fn send(
        &mut self,
        _hdr: &VirtioNetHdr,
        _pkt: &FragList<'_>,
    ) -> Result<SendStatus, UplinkError> {
        Ok(SendStatus::Sent)
    }

    fn recv(&mut self, bufs: &FragList<'_>) -> Result<Option<usize>, UplinkError> {
        bufs.copy_from(&self.packet);
        Ok(Some(self.packet.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_a_valid_udp_frame_of_the_asked_length() {
        for len in [MIN_FRAME, 64, 1500, 9014] {
            let p = template(len, [0x52, 0x54, 0, 0, 0, 1]);
            assert_eq!(p.len(), VNET_HDR_LEN + len);
            assert!(
                p[..VNET_HDR_LEN].iter().all(|b| *b == 0),
                "no offload asked"
            );
            let f = &p[VNET_HDR_LEN..];
            assert_eq!(&f[12..14], &[0x08, 0x00]);
            let ip = &f[14..34];
            assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), len - 14);
            assert_eq!(
                ipv4_checksum(ip),
                0,
                "a header with its checksum sums to zero"
            );
            assert_eq!(usize::from(u16::from_be_bytes([f[38], f[39]])), len - 34);
        }
    }

    #[test]
    fn sizes_outside_the_range_are_refused() {
        assert!(Generator::new(1, MIN_FRAME - 1).is_err());
        assert!(Generator::new(1, 65536).is_err());
        assert!(Generator::new(2, 64).is_ok());
    }
}
