// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Scripted uplink queues: each answer comes from the fuzz input, each call is
//! recorded so that a target can check the data path's counters and ring writes
//! against what the uplink saw.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use vhost_netmem::netmem::FragList;
use vhost_netmem::uplink::{SendStatus, UplinkError, UplinkQueue};
use vhost_netmem::virtio::{VirtioNetHdr, VNET_HDR_LEN};

/// What a TX send was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxAnswer {
    /// `Ok(status)`.
    Status(SendStatus),
    /// `Err(..)`.
    Error,
}

/// One recorded send.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The header handed over.
    pub hdr: VirtioNetHdr,
    /// The packet bytes (the frags, copied).
    pub pkt: Vec<u8>,
    /// The answer given.
    pub answer: TxAnswer,
}

/// A TX uplink whose answers come from a script.
pub struct TxUplink {
    script: VecDeque<u8>,
    /// Every send, in order.
    pub sent: Vec<Sent>,
    in_flight: usize,
    /// Report every packet in flight complete (the worker is stopping: no 200 ms wait).
    pub finishing: bool,
}

impl TxUplink {
    /// An uplink answering from `script` (then `Sent` once it runs out).
    pub fn new(script: &[u8]) -> Self {
        TxUplink {
            script: script.iter().copied().collect(),
            sent: Vec::new(),
            in_flight: 0,
            finishing: false,
        }
    }
}

impl UplinkQueue for TxUplink {
    fn fd(&self) -> Option<RawFd> {
        None
    }

    fn send(&mut self, hdr: &VirtioNetHdr, pkt: &FragList<'_>) -> Result<SendStatus, UplinkError> {
        let mut bytes = vec![0u8; pkt.len()];
        assert_eq!(
            pkt.copy_to(&mut bytes),
            pkt.len(),
            "frag list shorter than its length"
        );
        let iov_sum: usize = pkt.iovecs().iter().map(|v| v.iov_len).sum();
        assert_eq!(
            iov_sum,
            pkt.len(),
            "iovecs do not add up to the frag list length"
        );
        let answer = match self.script.pop_front().unwrap_or(0) % 8 {
            0..=2 => TxAnswer::Status(SendStatus::Sent),
            3 => TxAnswer::Status(SendStatus::InFlight),
            4 => TxAnswer::Status(SendStatus::WouldBlock),
            5 => TxAnswer::Status(SendStatus::Dropped),
            6 => TxAnswer::Status(SendStatus::Down),
            _ => TxAnswer::Error,
        };
        if answer == TxAnswer::Status(SendStatus::InFlight) {
            self.in_flight += 1;
        }
        self.sent.push(Sent {
            hdr: *hdr,
            pkt: bytes,
            answer,
        });
        match answer {
            TxAnswer::Status(s) => Ok(s),
            TxAnswer::Error => Err(UplinkError::Io(std::io::Error::from_raw_os_error(
                libc::EIO,
            ))),
        }
    }

    fn recv(&mut self, _bufs: &FragList<'_>) -> Result<Option<usize>, UplinkError> {
        Ok(None)
    }

    fn reap_in_flight(&mut self) -> usize {
        let n = if self.finishing {
            self.in_flight
        } else {
            usize::from(self.script.pop_front().unwrap_or(0) % 4).min(self.in_flight)
        };
        self.in_flight -= n;
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn forget_in_flight(&mut self) {
        self.in_flight = 0;
    }
}

/// One recorded receive that delivered a packet.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Bytes of guest buffers offered (`bufs.len()`).
    pub offered: usize,
    /// The packet's full length (virtio header included).
    pub len: usize,
}

/// An RX uplink whose packets come from a script.
pub struct RxUplink {
    script: VecDeque<u8>,
    /// Every receive that returned a packet, in order.
    pub received: Vec<Received>,
    /// Receives answered with an error.
    pub errors: u64,
}

impl RxUplink {
    /// An uplink receiving what `script` says (then nothing once it runs out).
    pub fn new(script: &[u8]) -> Self {
        RxUplink {
            script: script.iter().copied().collect(),
            received: Vec::new(),
            errors: 0,
        }
    }

    fn next_u16(&mut self) -> u16 {
        let lo = self.script.pop_front().unwrap_or(0);
        let hi = self.script.pop_front().unwrap_or(0);
        u16::from_le_bytes([lo, hi])
    }
}

impl UplinkQueue for RxUplink {
    fn fd(&self) -> Option<RawFd> {
        None
    }

    fn send(
        &mut self,
        _hdr: &VirtioNetHdr,
        _pkt: &FragList<'_>,
    ) -> Result<SendStatus, UplinkError> {
        Ok(SendStatus::Dropped)
    }

    fn recv(&mut self, bufs: &FragList<'_>) -> Result<Option<usize>, UplinkError> {
        let Some(kind) = self.script.pop_front() else {
            return Ok(None);
        };
        let len = match kind % 8 {
            0 => return Ok(None),
            1 => {
                self.errors += 1;
                return Err(UplinkError::Io(std::io::Error::from_raw_os_error(
                    libc::EIO,
                )));
            }
            // A packet larger than 64 KiB (a GSO frame).
            2 => 0x1_0000 + usize::from(self.next_u16()),
            _ => usize::from(self.next_u16()),
        };
        // Like a TAP read: a zeroed virtio-net header, then the frame; only the prefix
        // that fits is written, the full length is reported.
        let written = len.min(bufs.len());
        let mut pkt: Vec<u8> = (0..written)
            .map(|i| u8::try_from(i % 251).unwrap_or(0))
            .collect();
        for b in pkt.iter_mut().take(VNET_HDR_LEN) {
            *b = 0;
        }
        assert_eq!(
            bufs.copy_from(&pkt),
            written,
            "frag list shorter than its length"
        );
        self.received.push(Received {
            offered: bufs.len(),
            len,
        });
        Ok(Some(len))
    }
}
