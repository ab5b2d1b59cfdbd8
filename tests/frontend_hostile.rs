// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A broken or hostile frontend (issue 10), through the real socket against the real
//! daemon on the loopback uplink: for every case the daemon survives, refuses what it
//! must with an error reply (or ends only that connection), counts it, and then serves
//! a well-formed frontend.

mod common;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::guest::{Guest, GuestConfig};
use common::packet::{guest_frames, GUEST_MAC_STR};
use common::raw::{self, mem_table_body, memfd, message, req, RawFrontend, NEED_REPLY, VERSION};
use common::{STATS_TIMEOUT, TIMEOUT};

fn daemon() -> Daemon {
    Daemon::spawn(&["--uplink", "loopback", "--mac", GUEST_MAC_STR], None)
}

/// A well-formed frontend still gets its packets looped back.
fn serves_a_good_frontend(d: &mut Daemon, seed: u32) {
    d.assert_running("before the well-formed frontend");
    let mut g = Guest::new(GuestConfig::default());
    let _c = g.attach(d);
    g.loopback_roundtrip(0, &guest_frames(seed, 4, 60, 1514));
    d.assert_running("after the well-formed frontend");
}

/// Issue 10, case 1: the message of the report, byte for byte (a 16 TiB region over a
/// 1 MiB memfd), now with NEED_REPLY: an error reply, not an abort.
#[test]
fn a_16_tib_region_over_a_small_memfd_gets_an_error_reply() {
    let mut d = daemon();
    let mut f = RawFrontend::connect(&mut d);
    f.setup();
    let fd = memfd(1 << 20);
    let body = mem_table_body(0x10_0000, 1 << 44, 0x7f00_0000_0000, 0);
    let ack = f.request_u64(
        req::SET_MEM_TABLE,
        VERSION | NEED_REPLY,
        &body,
        &[fd.as_raw_fd()],
    );
    assert_ne!(ack, 0, "SET_MEM_TABLE of 16 TiB over 1 MiB was accepted");
    // The same region through ADD_MEM_REG (body: padding u64, then the region).
    let mut add = 0u64.to_le_bytes().to_vec();
    add.extend_from_slice(&body[8..]);
    let ack = f.request_u64(
        req::ADD_MEM_REG,
        VERSION | NEED_REPLY,
        &add,
        &[fd.as_raw_fd()],
    );
    assert_ne!(ack, 0, "ADD_MEM_REG of 16 TiB over 1 MiB was accepted");
    // The connection goes on.
    assert_ne!(f.request_u64(req::GET_FEATURES, VERSION, &[], &[]), 0);
    d.wait_stats("two refused memory tables", STATS_TIMEOUT, |s| {
        s.refused("set_mem_table", "invalid_param") == 1
            && s.refused("add_mem_reg", "invalid_param") == 1
    });
    drop(f);
    serves_a_good_frontend(&mut d, 100);
}

/// Issue 10, case 2: a 4 MiB region over a 64 KiB memfd, the TX ring at +2 MiB, a kick.
#[test]
fn a_region_larger_than_its_file_is_refused() {
    let mut d = daemon();
    let mut f = RawFrontend::connect(&mut d);
    f.setup();
    let fd = memfd(64 << 10);
    let ua = 0x7f00_0000_0000u64;
    let ack = f.request_u64(
        req::SET_MEM_TABLE,
        VERSION | NEED_REPLY,
        &mem_table_body(0, 4 << 20, ua, 0),
        &[fd.as_raw_fd()],
    );
    assert_ne!(ack, 0, "a region beyond its file was accepted");
    // An offset equal to the file size.
    let ack = f.request_u64(
        req::SET_MEM_TABLE,
        VERSION | NEED_REPLY,
        &mem_table_body(0, 4096, ua, 64 << 10),
        &[fd.as_raw_fd()],
    );
    assert_ne!(ack, 0, "a region at the end of its file was accepted");
    let mut num = 1u32.to_le_bytes().to_vec();
    num.extend_from_slice(&256u32.to_le_bytes());
    assert_eq!(
        f.request_u64(req::SET_VRING_NUM, VERSION | NEED_REPLY, &num, &[]),
        0
    );
    let ring = ua + (2 << 20);
    let mut addr = Vec::new();
    addr.extend_from_slice(&1u32.to_le_bytes());
    addr.extend_from_slice(&0u32.to_le_bytes());
    for v in [ring, ring + 0x2000, ring + 0x1000, 0] {
        addr.extend_from_slice(&v.to_le_bytes());
    }
    let ack = f.request_u64(req::SET_VRING_ADDR, VERSION | NEED_REPLY, &addr, &[]);
    assert_ne!(ack, 0, "ring addresses outside any region were accepted");
    let kick = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    assert!(f.send(
        req::SET_VRING_KICK,
        VERSION,
        &1u64.to_le_bytes(),
        &[kick.as_raw_fd()]
    ));
    kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    d.assert_running("after a kick on a ring past the end of its file");
    drop(f);
    serves_a_good_frontend(&mut d, 200);
}

/// Issue 10, case 2 (later): a frontend shrinks its memfd while the rings run. The
/// fault is absorbed, only that connection ends, the next frontend is served.
#[test]
fn a_frontend_shrinking_its_memfd_loses_only_its_connection() {
    let mut d = daemon();
    let mut g = Guest::new(GuestConfig::default());
    let c = g.attach(&mut d);
    g.loopback_roundtrip(0, &guest_frames(300, 4, 60, 1514));
    let mark = d.stderr().len();
    g.mem.file().set_len(0).unwrap();
    // The worker reads the TX ring (now past the end of the file) on this kick; the
    // kick is the bare eventfd: this process must not touch the shrunk memory either.
    g.pairs[0].tx.kick.write(1).unwrap();
    let mut c = c;
    assert!(
        c.wait_closed(TIMEOUT),
        "the connection of a frontend whose memory faulted stayed open{}",
        d.log().context()
    );
    d.assert_running("after its guest memory shrank under the mapping");
    d.wait_stats("one memory fault counted", STATS_TIMEOUT, |s| {
        s.control("memory_faults") >= 1
    });
    assert!(
        d.stderr()[mark..].contains("guest memory faulted"),
        "no clear log line{}",
        d.log().context()
    );
    // This guest's memory is gone: never touch it again from this process either.
    std::mem::forget(g);
    drop(c);
    serves_a_good_frontend(&mut d, 310);
}

/// Issue 10, case 3: header and body in separate writes 50 ms apart (the body itself in
/// two pieces, the fd on the first piece), and a first header split in two: both are
/// served, neither is taken for a disconnect or a probe.
#[test]
fn messages_split_across_writes_are_reassembled() {
    let mut d = daemon();
    let mut f = RawFrontend::connect(&mut d);
    // The very first header in two pieces.
    let get = message(req::GET_FEATURES, VERSION, &[]);
    assert!(f.write(&get[..5], &[]));
    std::thread::sleep(Duration::from_millis(50));
    assert!(f.write(&get[5..], &[]));
    let (code, _, body) = f.reply().expect("no reply to a split first GET_FEATURES");
    assert_eq!((code, body.len()), (req::GET_FEATURES, 8));
    f.setup();
    let mem = memfd(2 << 20);
    let msg = message(
        req::SET_MEM_TABLE,
        VERSION | NEED_REPLY,
        &mem_table_body(0, 2 << 20, 0x7f00_0000_0000, 0),
    );
    assert!(f.write(&msg[..12], &[mem.as_raw_fd()]));
    std::thread::sleep(Duration::from_millis(50));
    assert!(f.write(&msg[12..20], &[]));
    std::thread::sleep(Duration::from_millis(50));
    assert!(f.write(&msg[20..], &[]));
    let (code, _, body) = f.reply().expect("no ack for a split SET_MEM_TABLE");
    assert_eq!(code, req::SET_MEM_TABLE);
    assert_eq!(body, 0u64.to_le_bytes(), "split SET_MEM_TABLE refused");
    assert!(
        !d.stderr().contains("frontend disconnected"),
        "{}",
        d.log().context()
    );
    drop(f);
    serves_a_good_frontend(&mut d, 400);
}

/// Issue 10, case 3: a frontend that stops in the middle of a message is disconnected
/// after a bounded wait, with a clear error; the daemon serves the next one.
#[test]
fn a_frontend_stalling_mid_message_is_disconnected_in_bounded_time() {
    let mut d = daemon();
    let mut f = RawFrontend::connect(&mut d);
    f.setup();
    let msg = message(req::SET_FEATURES, VERSION, &1u64.to_le_bytes());
    let t0 = Instant::now();
    assert!(f.write(&msg[..14], &[]));
    assert!(
        f.closed_within(Duration::from_secs(6)),
        "a stalled frontend was kept waiting{}",
        d.log().context()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
    let deadline = Instant::now() + TIMEOUT;
    while !d.stderr().contains("stalled mid-message") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        d.stderr().contains("stalled mid-message"),
        "no clear error{}",
        d.log().context()
    );
    serves_a_good_frontend(&mut d, 500);
}

/// Issue 10, case 5: 20,000 bad SET_VRING_NUM requests are counted by request and
/// reason, and logged only a few times a second.
#[test]
fn refused_requests_are_counted_and_rate_limited_in_the_log() {
    const N: u64 = 20_000;
    let mut d = daemon();
    let mut f = RawFrontend::connect(&mut d);
    f.setup();
    let mark = d.stderr().lines().count();
    let mut bad = 99u32.to_le_bytes().to_vec();
    bad.extend_from_slice(&256u32.to_le_bytes());
    let one = message(req::SET_VRING_NUM, VERSION, &bad);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    for _ in 0..N / 1000 {
        assert!(f.write(&batch, &[]));
    }
    // A reply after them: every one was read.
    f.sock
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let t0 = Instant::now();
    assert_ne!(f.request_u64(req::GET_FEATURES, VERSION, &[], &[]), 0);
    eprintln!("{N} refusals handled in {:?}", t0.elapsed());
    let s = d.wait_stats("20,000 refusals counted", STATS_TIMEOUT, |s| {
        s.refused("set_vring_num", "invalid_param") == N
    });
    assert!(s.control("requests") >= N);
    let logged = d.stderr().lines().count() - mark;
    assert!(
        logged < 200,
        "{logged} log lines for {N} refused requests{}",
        d.log().context()
    );
    drop(f);
    serves_a_good_frontend(&mut d, 600);
}

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One random or malformed message.
fn random_message(rng: &mut Rng) -> Vec<u8> {
    let request = match rng.below(4) {
        0 => u32::try_from(rng.below(u64::from(u32::MAX))).unwrap(),
        _ => u32::try_from(rng.below(45)).unwrap(),
    };
    let flags = match rng.below(4) {
        0 => u32::try_from(rng.below(256)).unwrap(),
        _ => VERSION | if rng.below(2) == 0 { NEED_REPLY } else { 0 },
    };
    let len = match rng.below(8) {
        0 => 0,
        1 => 8,
        2 => 40,
        3 => usize::try_from(rng.below(4096)).unwrap(),
        _ => usize::try_from(rng.below(64)).unwrap(),
    };
    let mut body: Vec<u8> = (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
    if request == req::SET_MEM_TABLE && len >= 40 && rng.below(2) == 0 {
        // A plausible table with hostile numbers.
        let size =
            [1u64 << 44, 4 << 20, 0, u64::MAX, 1 << 20][usize::try_from(rng.below(5)).unwrap()];
        body[..40].copy_from_slice(&mem_table_body(0, size, 0x7f00_0000_0000, 0));
    }
    let mut m = message(request, flags, &body);
    if rng.below(16) == 0 {
        // A size field that lies.
        let lie = u32::try_from(rng.below(u64::from(u32::MAX))).unwrap();
        m[8..12].copy_from_slice(&lie.to_le_bytes());
    }
    m
}

/// The integration test the issue asks for: random and malformed protocol messages
/// through the real socket; the daemon stays alive, its fd count and RSS come back to
/// their baseline, and it then serves a well-formed connection.
#[test]
fn random_and_malformed_messages_leave_the_daemon_as_it_was() {
    let mut d = daemon();
    // Baseline after one complete well-formed connection (threads, pools warmed up).
    serves_a_good_frontend(&mut d, 700);
    std::thread::sleep(Duration::from_millis(300));
    let pid = d.pid();
    let (fds0, rss0) = (raw::fd_count(pid), raw::rss_kib(pid));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mem = memfd(1 << 20);
    for round in 0..200 {
        let mut f = RawFrontend::connect(&mut d);
        if rng.below(2) == 0 {
            f.setup();
        }
        for _ in 0..rng.below(12) + 1 {
            let m = random_message(&mut rng);
            // Memory tables get the one fd they name, other requests 0 to 2.
            let nfds = if m[..4] == req::SET_MEM_TABLE.to_le_bytes() {
                1
            } else {
                rng.below(3)
            };
            let fds: Vec<i32> = (0..nfds).map(|_| mem.as_raw_fd()).collect();
            let ok = if rng.below(4) == 0 && m.len() > 1 {
                let cut = usize::try_from(rng.below(u64::try_from(m.len()).unwrap())).unwrap();
                f.write(&m[..cut], &fds) && f.write(&m[cut..], &[])
            } else {
                f.write(&m, &fds)
            };
            if !ok {
                break;
            }
        }
        if rng.below(8) == 0 {
            // End in the middle of a message.
            let m = random_message(&mut rng);
            let _ = f.write(&m[..m.len().min(7)], &[]);
        }
        drop(f);
        if !d.is_running() {
            d.fail(&format!("daemon died in round {round}"));
        }
    }
    // The last connection ends once the daemon read it to the end.
    let deadline = Instant::now() + TIMEOUT;
    let (mut fds, mut rss) = (raw::fd_count(pid), raw::rss_kib(pid));
    while fds != fds0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        (fds, rss) = (raw::fd_count(pid), raw::rss_kib(pid));
    }
    d.assert_running("after 200 connections of random messages");
    assert_eq!(fds, fds0, "fd count {fds0} -> {fds}{}", d.log().context());
    assert!(
        rss <= rss0 + 16 * 1024,
        "RSS {rss0} KiB -> {rss} KiB{}",
        d.log().context()
    );
    serves_a_good_frontend(&mut d, 710);
}
