// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The generator benchmark uplink (`--uplink generator`): every guest RX buffer gets the
//! same UDP/IPv4 frame of `--generator-size` bytes, TX is discarded; a size out of range
//! is refused at start-up.

mod common;

use common::daemon::Daemon;
use common::guest::GuestConfig;
use common::packet::guest_frames;
use common::rig::Rig;
use common::{STATS_TIMEOUT, TIMEOUT};

/// The one's-complement sum of `b` folded to 16 bits.
fn ones_sum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap()
}

#[test]
fn every_rx_buffer_gets_a_udp_frame_of_the_asked_size() {
    for size in [60usize, 64, 1514] {
        let s = size.to_string();
        let d = Rig::spawn_daemon(
            &GuestConfig::default(),
            &["--uplink", "generator", "--generator-size", &s],
            &[],
            None,
        );
        let mut r = Rig::attach(d, GuestConfig::default());
        r.g.post_rx(0, 64, 2048);
        let got = r.g.recv(0, 64, TIMEOUT);
        assert_eq!(got.len(), 64, "every posted buffer filled");
        for (i, p) in got.iter().enumerate() {
            let f = &p.frame;
            assert_eq!(f.len(), size, "frame {i} of --generator-size {size}");
            assert_eq!(&f[..6], &[0xff; 6], "frame {i}: broadcast");
            assert_eq!(&f[12..14], &[0x08, 0x00], "frame {i}: IPv4");
            assert_eq!(f[23], 17, "frame {i}: UDP");
            assert_eq!(
                ones_sum(&f[14..34]),
                0xffff,
                "frame {i}: IPv4 header checksum"
            );
            assert_eq!(usize::from(u16::from_be_bytes([f[16], f[17]])), size - 14);
            assert_eq!(p.hdr.gso_type, 0, "no offload");
            assert_eq!(p.buffers, 1);
        }
        // TX is discarded, never reflected: the next buffers get generated frames only.
        r.g.send(0, &guest_frames(1, 4, 60, 200));
        r.g.wait_tx(0, 4);
        r.g.post_rx(0, 8, 2048);
        assert!(r
            .g
            .recv(0, 8, TIMEOUT)
            .iter()
            .all(|p| p.frame.len() == size));
        let stats = r.d.wait_stats("rx_packets counted", STATS_TIMEOUT, |s| {
            s.queue(0, "rx_packets") >= 72 && s.queue(0, "tx_packets") == 4
        });
        assert_eq!(stats.queue(0, "rx_drop_truncated"), 0);
    }
}

#[test]
fn a_generator_size_out_of_range_is_refused() {
    for bad in ["59", "1515"] {
        let mut d = Daemon::spawn(&["--uplink", "generator", "--generator-size", bad], None);
        let status = d
            .wait_exit(TIMEOUT)
            .unwrap_or_else(|| d.fail("still running with a bad --generator-size"));
        assert!(!status.success());
        let err = d.stderr();
        assert!(
            err.contains("--generator-size") && err.contains(bad),
            "{err}"
        );
    }
}

/// An uplink that always has a packet and a guest with no buffers: the worker waits for
/// the guest's kick instead of spinning on the uplink's readiness.
#[test]
fn an_always_ready_uplink_does_not_spin_a_guest_without_buffers() {
    let d = Rig::spawn_daemon(
        &GuestConfig::default(),
        &["--uplink", "generator"],
        &[],
        None,
    );
    let mut r = Rig::attach(d, GuestConfig::default());
    r.g.post_rx(0, 4, 2048);
    assert_eq!(r.g.recv(0, 4, TIMEOUT).len(), 4);
    let before = r.d.cpu_ticks();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let used = r.d.cpu_ticks() - before;
    // A spinning worker burns about 100 ticks a second; an idle one none.
    assert!(
        used < 30,
        "the daemon used {used} ticks in 1 s with no guest buffers"
    );
    // It still serves the next buffers.
    r.g.post_rx(0, 4, 2048);
    assert_eq!(r.g.recv(0, 4, TIMEOUT).len(), 4);
}
