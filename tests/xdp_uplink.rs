// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! AF_XDP uplink against a real veth pair.
//!
//! Each test creates its own network namespace and veth pair (names carry the pid and
//! a per-test tag), keeps the XDP end in the root namespace, moves the peer into the
//! namespace, and captures or injects frames on the peer with an AF_PACKET socket
//! opened inside the namespace. The frames use the IEEE local experimental ethertype
//! and never leave the pair. A guard deletes the pair and the namespace even when the
//! test fails.
//!
//! The last tests run the whole daemon with `--xdp` on a veth pair inside a namespace:
//! the page pool and socket counters in its stats file, and zero-copy TX from guest
//! memory (`--xdp-zerocopy-tx`, the veth with two queues).
//!
//! Needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN for setns); without it each test
//! prints why it skips.

mod common;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_netmem::netmem::{
    parked_pools, Frag, FragList, GuestPageMap, NetmemRef, RegionSpec, SharedPageMap,
};
use vhost_netmem::uplink::xdp::{AttachMode, BindMode, Xdp, XdpError, XdpOptions, XdpQueueStats};
use vhost_netmem::uplink::{SendStatus, Uplink, UplinkQueue};
use vhost_netmem::virtio::header::VIRTIO_NET_HDR_F_NEEDS_CSUM;
use vhost_netmem::virtio::{VirtioNetHdr, VNET_HDR_LEN};
use vm_memory::{Bytes, GuestAddress};

/// IEEE 802 local experimental ethertype 1.
const ETHERTYPE_TEST: u16 = 0x88b5;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root for network namespaces, veth, bpf(2) and AF_XDP");
            return;
        }
    };
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair `host` (root namespace) <-> `peer` (in namespace `ns`), deleted on drop.
struct VethNs {
    ns: String,
    host: String,
    peer: String,
}

impl VethNs {
    fn new(tag: char, queues: u32) -> Self {
        let pid = std::process::id();
        let v = VethNs {
            ns: format!("vnm-xdp-{pid}-{tag}"),
            host: format!("vnx{pid}{tag}h"),
            peer: format!("vnx{pid}{tag}p"),
        };
        // From here on, Drop cleans up whatever got created.
        let q = queues.to_string();
        run(&["ip", "netns", "add", &v.ns]);
        run(&[
            "ip",
            "link",
            "add",
            &v.host,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &v.peer,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ]);
        run(&["ip", "link", "set", &v.peer, "netns", &v.ns]);
        // No IPv6 autoconfiguration chatter on the pair.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", v.host),
            "1",
        );
        run(&[
            "ip",
            "netns",
            "exec",
            &v.ns,
            "sh",
            "-c",
            &format!(
                "test ! -e /proc/sys/net/ipv6/conf/{0}/disable_ipv6 || echo 1 > /proc/sys/net/ipv6/conf/{0}/disable_ipv6",
                v.peer
            ),
        ]);
        run(&["ip", "link", "set", &v.host, "up"]);
        run(&["ip", "-n", &v.ns, "link", "set", &v.peer, "up"]);
        v
    }

    /// `ip -d link show` of the XDP end.
    fn host_link(&self) -> String {
        let out = Command::new("ip")
            .args(["-d", "link", "show", "dev", &self.host])
            .output()
            .expect("ip link show");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether an XDP program is attached to the XDP end, polling up to a second for
    /// the state to settle.
    fn xdp_attached(&self, want: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let attached = self.host_link().contains("prog/xdp");
            if attached == want || Instant::now() > deadline {
                return attached;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An AF_PACKET socket bound to the peer, opened inside the namespace.
    fn peer_socket(&self) -> OwnedFd {
        let ns = format!("/run/netns/{}", self.ns);
        let peer = self.peer.clone();
        std::thread::spawn(move || packet_socket_in(&ns, &peer))
            .join()
            .expect("namespace thread panicked")
    }
}

impl Drop for VethNs {
    fn drop(&mut self) {
        // Deleting one end deletes the pair (also if the peer is in the namespace).
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Runs on a throwaway thread: enter the namespace at `ns_path`, open an AF_PACKET
/// socket bound to `ifname` there (the socket stays in that namespace).
fn packet_socket_in(ns_path: &str, ifname: &str) -> OwnedFd {
    let ns = std::fs::File::open(ns_path).expect("open netns");
    // SAFETY: setns on a namespace fd we hold; it only changes this thread's network
    // namespace, and this thread exits right after.
    let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(ret, 0, "setns: {}", errno());
    let proto = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(fd >= 0, "AF_PACKET socket: {}", errno());
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = CString::new(ifname).unwrap();
    // SAFETY: NUL-terminated name, live across the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no {ifname} in the namespace: {}", errno());
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
    sll.sll_protocol = proto;
    sll.sll_ifindex = i32::try_from(ifindex).unwrap();
    // SAFETY: binds our socket to a correctly sized, live sockaddr_ll.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&sll).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
        )
    };
    assert_eq!(ret, 0, "bind AF_PACKET: {}", errno());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: SO_RCVTIMEO reads one live timeval of the given size.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            u32::try_from(std::mem::size_of::<libc::timeval>()).unwrap(),
        )
    };
    assert_eq!(ret, 0, "SO_RCVTIMEO: {}", errno());
    fd
}

/// Wait up to five seconds for `want` to arrive on the AF_PACKET socket `fd`,
/// skipping any other frame.
fn capture(fd: RawFd, want: &[u8]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        // SAFETY: receives into a live buffer of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            continue; // timeout: look at the clock again
        }
        let got = &buf[..usize::try_from(n).unwrap()];
        if got == want {
            return Ok(());
        }
        seen.push(got.len());
    }
    Err(format!(
        "frame never arrived; saw frames of lengths {seen:?}"
    ))
}

fn inject(fd: RawFd, frame: &[u8]) {
    // SAFETY: sends from a live buffer of the given length on a bound socket.
    let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        usize::try_from(n).ok(),
        Some(frame.len()),
        "AF_PACKET send: {}",
        errno()
    );
}

/// A test frame: broadcast, local-admin source MAC, test ethertype, payload pattern.
fn test_frame(seed: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0x00, 0x5e, 0x10, 0x00, seed]);
    f.extend_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    let mut x = seed;
    while f.len() < len {
        x = x.wrapping_mul(29).wrapping_add(7);
        f.push(x);
    }
    f
}

/// A FragList over `bufs`, one frag per buffer (as guest buffers would be).
fn frag_list(bufs: &mut [Vec<u8>]) -> FragList<'_> {
    let mut l = FragList::new();
    for (i, b) in bufs.iter_mut().enumerate() {
        let frag = Frag {
            netmem: NetmemRef::page(0, u64::try_from(i).unwrap()),
            offset: 0,
            len: u32::try_from(b.len()).unwrap(),
        };
        // SAFETY: each buffer is mutably borrowed for the list's lifetime and is
        // exactly `frag.len` bytes long.
        unsafe { l.push_unchecked(frag, b.as_mut_ptr()) };
    }
    l
}

/// Split `frame` into pieces of the given sizes (the last takes the rest).
fn split(frame: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    for &s in sizes {
        let end = (at + s).min(frame.len());
        out.push(frame[at..end].to_vec());
        at = end;
    }
    out.push(frame[at..].to_vec());
    out
}

fn send_one(q: &mut dyn UplinkQueue, hdr: &VirtioNetHdr, frame: &[u8]) -> SendStatus {
    let mut pieces = split(frame, &[5, 20, 100]);
    let pkt = frag_list(&mut pieces);
    let st = q.send(hdr, &pkt).expect("send");
    q.flush().expect("flush");
    st
}

fn wait_readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one live pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0 && p.revents & libc::POLLIN != 0
}

#[test]
fn tx_frame_arrives_byte_exact_at_the_peer() {
    require_root!();
    let net = VethNs::new('t', 1);
    let peer = net.peer_socket();
    let xdp = Xdp::open(&net.host, 1).expect("open xdp");
    println!("{}", xdp.describe());
    assert_eq!(
        xdp.bind_mode(),
        BindMode::Copy,
        "veth cannot do zero-copy AF_XDP"
    );
    let mut q = xdp.take_queue(0).expect("queue 0");

    let frame = test_frame(1, 300);
    assert_eq!(
        send_one(q.as_mut(), &VirtioNetHdr::default(), &frame),
        SendStatus::Sent
    );
    capture(peer.as_raw_fd(), &frame).expect("plain frame");

    // A partial checksum is completed in software: seed the UDP checksum with a
    // pseudo-header sum and expect a frame whose checksum verifies.
    let mut udp = test_frame(2, 14);
    udp[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let payload = b"checksum me, please";
    let udp_len = 8 + payload.len();
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&u16::try_from(20 + udp_len).unwrap().to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[192, 0, 2, 1]);
    ip[16..20].copy_from_slice(&[192, 0, 2, 2]);
    udp.extend_from_slice(&ip);
    let pseudo: u32 = [0xc000u32, 0x0201, 0xc000, 0x0202, 17].iter().sum::<u32>()
        + u32::try_from(udp_len).unwrap();
    let seed = u16::try_from((pseudo & 0xffff) + (pseudo >> 16)).unwrap();
    udp.extend_from_slice(&1234u16.to_be_bytes());
    udp.extend_from_slice(&5678u16.to_be_bytes());
    udp.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
    udp.extend_from_slice(&seed.to_be_bytes());
    udp.extend_from_slice(payload);
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..Default::default()
    };
    let mut expected = udp.clone();
    let sum = |b: &[u8]| -> u32 {
        b.chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum()
    };
    expected[40..42].copy_from_slice(&[0, 0]);
    let mut s = sum(&expected[34..]) + pseudo;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    let csum = !u16::try_from(s).unwrap();
    expected[40..42].copy_from_slice(&csum.to_be_bytes());
    assert_eq!(send_one(q.as_mut(), &hdr, &udp), SendStatus::Sent);
    capture(peer.as_raw_fd(), &expected).expect("checksummed frame");

    // A TCP GSO request on a UDP packet cannot be segmented: counted drop.
    let gso = VirtioNetHdr {
        gso_type: vhost_netmem::virtio::header::VIRTIO_NET_HDR_GSO_TCPV4,
        gso_size: 1000,
        ..hdr
    };
    assert_eq!(send_one(q.as_mut(), &gso, &udp), SendStatus::Dropped);
    // Larger than a UMEM frame: counted drop.
    assert_eq!(
        send_one(q.as_mut(), &VirtioNetHdr::default(), &test_frame(3, 5000)),
        SendStatus::Dropped
    );

    let stats = xdp.stats(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while stats.tx_completed.get() < 2 && Instant::now() < deadline {
        q.flush().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("queue 0 stats: {:?}", stats.fields());
    assert_eq!(stats.tx_packets.get(), 2);
    assert_eq!(stats.tx_completed.get(), 2);
    assert_eq!(stats.tx_csum_sw.get(), 1);
    assert_eq!(stats.tx_gso_drop_header.get(), 1);
    assert_eq!(stats.tx_drop_length.get(), 1);
    assert!(stats.tx_kicks.get() >= 2, "copy mode always needs a kick");
    xdp.return_queue(0, q);
}

#[test]
fn peer_frame_arrives_byte_exact_through_recv() {
    require_root!();
    let net = VethNs::new('r', 1);
    let peer = net.peer_socket();
    let xdp = Xdp::open(&net.host, 1).expect("open xdp");
    println!("{}", xdp.describe());
    let mut q = xdp.take_queue(0).expect("queue 0");
    let fd = q.fd().expect("xdp queue has an fd");

    // Nothing pending yet (IPv6 is off on the pair, and the peer has not sent).
    let mut guest = vec![vec![0xaa; 7], vec![0xaa; 100], vec![0xaa; 2000]];
    assert_eq!(q.recv(&frag_list(&mut guest)).unwrap(), None);

    let frame = test_frame(9, 777);
    inject(peer.as_raw_fd(), &frame);

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut other = Vec::new();
    let got = loop {
        assert!(
            Instant::now() < deadline,
            "frame never arrived; saw {other:?}"
        );
        if !wait_readable(fd, 100) {
            continue;
        }
        for b in guest.iter_mut() {
            b.fill(0xaa);
        }
        let Some(n) = q.recv(&frag_list(&mut guest)).unwrap() else {
            continue;
        };
        let flat: Vec<u8> = guest.concat();
        if flat[VNET_HDR_LEN..n] == frame[..] {
            break (n, flat);
        }
        other.push(n);
    };
    let (n, flat) = got;
    assert_eq!(n, VNET_HDR_LEN + frame.len());
    assert_eq!(&flat[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN], "zeroed header");
    assert_eq!(&flat[VNET_HDR_LEN..n], &frame[..]);
    assert!(
        flat[n..].iter().all(|&b| b == 0xaa),
        "wrote past the packet"
    );

    // Guest buffers smaller than the packet: truncated, counted.
    inject(peer.as_raw_fd(), &test_frame(10, 500));
    let mut small = vec![vec![0u8; 100]];
    let deadline = Instant::now() + Duration::from_secs(5);
    let n = loop {
        assert!(Instant::now() < deadline, "second frame never arrived");
        wait_readable(fd, 100);
        if let Some(n) = q.recv(&frag_list(&mut small)).unwrap() {
            break n;
        }
    };
    // The full length is reported (12-byte header + 500-byte frame) so the worker can
    // drop the packet instead of delivering a cut one.
    assert_eq!(n, 512);
    assert_eq!(small[0][..12], [0u8; 12]);
    let stats = xdp.stats(0).unwrap();
    println!("queue 0 stats: {:?}", stats.fields());
    assert!(stats.rx_packets.get() >= 2);
    assert!(stats.rx_truncated.get() >= 1);
    xdp.return_queue(0, q);
}

#[test]
fn drop_detaches_the_program_even_with_a_queue_still_held() {
    require_root!();
    let net = VethNs::new('d', 1);
    assert!(!net.xdp_attached(false), "program attached before open");
    let xdp = Xdp::open(&net.host, 1).expect("open xdp");
    assert!(
        net.xdp_attached(true),
        "no program while open:\n{}",
        net.host_link()
    );
    println!(
        "attached in {} mode:\n{}",
        xdp.attach_mode(),
        net.host_link()
    );
    // A worker still holding its queue does not keep the program alive.
    let q = xdp.take_queue(0).unwrap();
    drop(xdp);
    assert!(
        !net.xdp_attached(false),
        "program still attached after drop:\n{}",
        net.host_link()
    );
    drop(q);
    // The frames the kernel held (the whole fill ring) came back with the socket
    // gone, so the queue's page pool released its memory instead of parking.
    assert!(
        parked_pools().is_empty(),
        "page pools parked with frames in flight: {:?}",
        parked_pools()
    );
}

#[test]
fn two_queue_pairs_in_generic_mode() {
    require_root!();
    let net = VethNs::new('g', 2);
    let peer = net.peer_socket();
    let xdp = Xdp::open_with(
        &net.host,
        2,
        &XdpOptions {
            attach: Some(AttachMode::Generic),
            bind: Some(BindMode::Copy),
            ..XdpOptions::default()
        },
    )
    .expect("open xdp with two queues");
    assert_eq!(xdp.attach_mode(), AttachMode::Generic);
    assert!(
        net.host_link().contains("xdpgeneric"),
        "{}",
        net.host_link()
    );
    let mut q1 = xdp.take_queue(1).expect("queue 1");
    assert!(matches!(
        xdp.take_queue(1),
        Err(vhost_netmem::uplink::UplinkError::QueueBusy(1))
    ));
    let frame = test_frame(42, 64);
    assert_eq!(
        send_one(q1.as_mut(), &VirtioNetHdr::default(), &frame),
        SendStatus::Sent
    );
    capture(peer.as_raw_fd(), &frame).expect("frame from queue 1");
    xdp.return_queue(1, q1);
    drop(xdp);
    assert!(!net.xdp_attached(false), "{}", net.host_link());
}

#[test]
fn setup_error_leaves_nothing_attached() {
    require_root!();
    let net = VethNs::new('e', 1);
    // Queue 1 does not exist on a single-queue veth: binding it fails after queue 0
    // was set up.
    match Xdp::open(&net.host, 2) {
        Err(e @ XdpError::Bind { queue: 1, .. }) => println!("expected error: {e}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a second queue on a single-queue veth bound"),
    }
    assert!(!net.xdp_attached(false), "{}", net.host_link());
    // And the interface is usable again right away.
    drop(Xdp::open(&net.host, 1).expect("open after a failed open"));
}

fn wait_writable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: polls one live pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0 && p.revents & libc::POLLOUT != 0
}

/// More packets each way than the UMEM has frames: frames must come back from the
/// completion ring and go back to the fill ring, and a full TX side must be
/// `WouldBlock` that clears once the fd is writable, never a hang.
#[test]
fn frames_recycle_under_sustained_traffic() {
    require_root!();
    const TX: u64 = 10_000;
    const RX: u64 = 6_000;
    let net = VethNs::new('s', 1);
    let peer = net.peer_socket();
    let xdp = Xdp::open(&net.host, 1).expect("open xdp");
    let mut q = xdp.take_queue(0).expect("queue 0");
    let (fd, tx_fd) = (q.fd().unwrap(), q.tx_fd().unwrap());
    let stats = xdp.stats(0).unwrap();

    let frame = test_frame(5, 1000);
    let mut pieces = split(&frame, &[14, 500]);
    let pkt = frag_list(&mut pieces);
    let hdr = VirtioNetHdr::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    let mut would_block = 0;
    while sent < TX {
        assert!(Instant::now() < deadline, "tx stuck after {sent} packets");
        // Worker-sized batches, then a flush; first batches larger than the TX
        // ring, so that send itself has to make room.
        let batch = if sent < TX / 2 { 4096 } else { 256 };
        for _ in 0..batch {
            match q.send(&hdr, &pkt).unwrap() {
                SendStatus::Sent => sent += 1,
                SendStatus::WouldBlock => {
                    would_block += 1;
                    q.flush().unwrap();
                    assert!(
                        wait_writable(tx_fd, 1000),
                        "WouldBlock but fd never writable"
                    );
                    break;
                }
                SendStatus::Dropped => panic!("plain frame dropped"),
                SendStatus::Down => panic!("xdp queue reported down"),
                SendStatus::InFlight => panic!("zero-copy tx is off"),
            }
            if sent == TX {
                break;
            }
        }
        q.flush().unwrap();
    }
    while stats.tx_completed.get() < TX && Instant::now() < deadline {
        q.flush().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(stats.tx_packets.get(), TX);
    assert_eq!(stats.tx_completed.get(), TX, "tx frames not all returned");
    println!(
        "tx: {TX} sent, {would_block} WouldBlock, {} kicks",
        stats.tx_kicks.get()
    );

    let mut guest = vec![vec![0u8; 2048]];
    let mut injected = 0;
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received < RX {
        assert!(
            Instant::now() < deadline,
            "rx stuck: {received} of {injected} received"
        );
        // Keep well below the RX ring size so the kernel never has to drop.
        if injected - received < 512 {
            for i in 0..128 {
                inject(peer.as_raw_fd(), &test_frame(u8::try_from(i).unwrap(), 200));
                injected += 1;
            }
        }
        wait_readable(fd, 100);
        while let Some(n) = q.recv(&frag_list(&mut guest)).unwrap() {
            assert_eq!(n, VNET_HDR_LEN + 200);
            received += 1;
        }
    }
    assert!(received >= RX);
    assert_eq!(stats.rx_packets.get(), received);
    assert_eq!(stats.invalid_descs.get(), 0);
    println!("rx: {received} received of {injected} injected");

    // Every frame came from the page pool and went back to it: far more handouts
    // than the UMEM has frames, almost all from the owner's alloc cache.
    let pool = xdp.pool_stats(0).unwrap().read();
    println!("page pool: {pool:?}");
    let handouts = pool.alloc_fast + pool.alloc_slow + pool.alloc_refill;
    assert!(handouts >= TX + RX, "{pool:?}");
    assert!(pool.alloc_fast > handouts / 2, "{pool:?}");
    // Returns went to the cache, or past a full cache to the ring, or past a full
    // ring back to the provider; at most the UMEM's frames are still out (the fill
    // ring's).
    let returns = pool.recycle_cached + pool.recycle_ring + pool.recycle_ring_full;
    assert!(handouts - returns <= 4096, "{pool:?}");
    assert!(returns >= TX + RX - 4096, "{pool:?}");
    assert_eq!(pool.recycle_released_ref, 0, "{pool:?}");
    xdp.return_queue(0, q);
    drop(xdp);
    assert!(parked_pools().is_empty(), "{:?}", parked_pools());
}

/// With the interface down nothing drains the TX ring: sends must turn into
/// `WouldBlock` (not a hang, not a drop), and once the link is back the fd must
/// become writable and the queued frames must all complete.
#[test]
fn full_tx_ring_is_would_block_until_writable() {
    require_root!();
    let net = VethNs::new('w', 1);
    let xdp = Xdp::open(&net.host, 1).expect("open xdp");
    let mut q = xdp.take_queue(0).expect("queue 0");
    let fd = q.tx_fd().unwrap();
    let stats = xdp.stats(0).unwrap();
    let frame = test_frame(6, 100);
    let mut pieces = split(&frame, &[]);
    let pkt = frag_list(&mut pieces);
    let hdr = VirtioNetHdr::default();

    run(&["ip", "link", "set", &net.host, "down"]);
    let mut sent = 0u64;
    let status = loop {
        match q.send(&hdr, &pkt).unwrap() {
            SendStatus::Sent => sent += 1,
            other => break other,
        }
        assert!(sent <= 4096, "sends never blocked with the link down");
    };
    assert_eq!(status, SendStatus::WouldBlock);
    assert!(stats.tx_kick_errors.get() > 0, "ENETDOWN not counted");
    println!("link down: {sent} sends queued, then WouldBlock");

    run(&["ip", "link", "set", &net.host, "up"]);
    assert!(
        wait_writable(fd, 5000),
        "fd never became writable after the link came back"
    );
    assert_eq!(q.send(&hdr, &pkt).unwrap(), SendStatus::Sent);
    sent += 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.tx_completed.get() < sent && Instant::now() < deadline {
        q.flush().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(stats.tx_completed.get(), sent);
    assert!(stats.tx_would_block.get() >= 1);
    xdp.return_queue(0, q);
}

/// The page pool's counters, by the kernel's names: each must be in the stats file.
const PAGE_POOL_COUNTERS: [&str; 11] = [
    "alloc_fast",
    "alloc_slow",
    "alloc_slow_high_order",
    "alloc_empty",
    "alloc_refill",
    "alloc_waive",
    "recycle_cached",
    "recycle_cache_full",
    "recycle_ring",
    "recycle_ring_full",
    "recycle_released_ref",
];

/// The whole daemon with `--xdp` on a veth in a namespace: guest frames reach the
/// peer and peer frames reach the guest byte-exact, and the stats file shows, inside
/// the queue pair's entry and summed in `total`, every page pool counter (kernel
/// names) and the socket's counters, next to the queue counters that keep their
/// top-level names.
#[test]
fn daemon_stats_show_page_pool_and_xdp_counters() {
    use common::guest::GuestConfig;
    use common::packet::{
        assert_bytes, guest_frames, test_frame as eth_frame, ETH_P_TEST, GUEST_MAC, PEER_MAC,
    };
    use common::rig::Rig;
    use common::{STATS_TIMEOUT, TIMEOUT};

    let Some(mut r) = Rig::on_veth(
        "daemon_stats_show_page_pool_and_xdp_counters",
        GuestConfig::default(),
        ("vnmx0", "vnmx1"),
        None,
        &[],
    ) else {
        return;
    };

    let tx = guest_frames(300, 32, 60, 1514);
    r.send_to_peer(0, &tx);

    r.g.post_rx(0, 64, 2048);
    let rx: Vec<Vec<u8>> = (0..16u32)
        .map(|i| {
            eth_frame(
                GUEST_MAC,
                PEER_MAC,
                500 + i,
                60 + 90 * usize::try_from(i).unwrap(),
            )
        })
        .collect();
    r.inject(&rx, ETH_P_TEST);
    for (i, (p, f)) in r.g.recv(0, rx.len(), TIMEOUT).iter().zip(&rx).enumerate() {
        assert_bytes(&p.frame, f, &format!("peer frame {i} in guest buffers"));
    }

    let s =
        r.d.wait_stats("xdp tx completions and rx packets", STATS_TIMEOUT, |s| {
            s.group_counter(Some(0), "xdp", "tx_completed") == 32
                && s.group_counter(Some(0), "xdp", "rx_packets") == 16
        });
    println!("{s}");
    // The queue counters keep their names, top-level in the entry and the total.
    assert_eq!(s.queue(0, "tx_packets"), 32, "{s}");
    assert_eq!(s.queue(0, "rx_packets"), 16, "{s}");
    assert_eq!(s.total("tx_packets"), 32, "{s}");
    for entry in [Some(0), None] {
        let pool = s.group(entry, "page_pool");
        let names: Vec<&str> = pool.iter().map(|(k, _)| k.as_str()).collect();
        for want in PAGE_POOL_COUNTERS {
            assert!(
                names.contains(&want),
                "page pool counter {want} missing from {entry:?}: {s}"
            );
        }
        assert_eq!(names.len(), PAGE_POOL_COUNTERS.len(), "{s}");
        // The fill ring's first fill came from the provider, everything after from
        // the alloc cache the TX completions and RX frames were recycled into.
        assert!(
            s.group_counter(entry, "page_pool", "alloc_slow") >= 1,
            "{s}"
        );
        assert!(
            s.group_counter(entry, "page_pool", "alloc_fast") >= 32,
            "{s}"
        );
        let returns: u64 = ["recycle_cached", "recycle_ring", "recycle_ring_full"]
            .iter()
            .map(|n| s.group_counter(entry, "page_pool", n))
            .sum();
        assert!(returns >= 48, "{s}");
        let xdp = s.group(entry, "xdp");
        assert!(xdp.iter().any(|(k, _)| k == "tx_kicks"), "{s}");
        assert_eq!(s.group_counter(entry, "xdp", "tx_packets"), 32, "{s}");
        assert_eq!(s.group_counter(entry, "xdp", "invalid_descs"), 0, "{s}");
    }
    // Nothing from the groups leaks into the drop list of the queue counters.
    assert!(s.drops(0).iter().all(|(_, v)| *v == 0), "{s}");
}

/// A memfd of `len` bytes (guest memory, as a frontend would send it).
fn memfd(len: u64) -> std::fs::File {
    // SAFETY: memfd_create with a NUL-terminated name and valid flags; checked below.
    let fd = unsafe { libc::memfd_create(c"vnm-zc-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", errno());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(len).expect("size the memfd");
    f
}

/// A zero-copy TX setup: a veth with two queues (the guest UMEM's socket takes the
/// second), one queue pair opened with `zerocopy_tx`, guest memory attached.
struct ZeroCopyRig {
    net: VethNs,
    peer: OwnedFd,
    xdp: Xdp,
    q: Box<dyn UplinkQueue>,
    stats: Arc<XdpQueueStats>,
    memory: SharedPageMap,
    map: Arc<GuestPageMap>,
}

fn zero_copy_rig(tag: char) -> ZeroCopyRig {
    let net = VethNs::new(tag, 2);
    let peer = net.peer_socket();
    let zc = XdpOptions {
        zerocopy_tx: true,
        ..XdpOptions::default()
    };
    let xdp = Xdp::open_with(&net.host, 1, &zc).expect("open xdp with zero-copy tx");
    let mut q = xdp.take_queue(0).expect("queue 0");
    let stats = xdp.stats(0).unwrap();
    let memory = SharedPageMap::new();
    let map = guest_memory(&memory);
    q.attach_memory(&map);
    ZeroCopyRig {
        net,
        peer,
        xdp,
        q,
        stats,
        memory,
        map,
    }
}

/// Two regions of one memfd at different file offsets, as QEMU sends guest memory.
fn guest_memory(memory: &SharedPageMap) -> Arc<GuestPageMap> {
    const MIB: u64 = 1 << 20;
    let file = memfd(4 * MIB);
    memory
        .set_table(vec![
            RegionSpec {
                gpa: 0,
                size: MIB,
                file: file.try_clone().unwrap(),
                offset: 0,
                user_addr: 0x7f00_0000_0000,
            },
            RegionSpec {
                gpa: 0x1_0000_0000,
                size: 2 * MIB,
                file,
                offset: 2 * MIB,
                user_addr: 0x7f00_1000_0000,
            },
        ])
        .expect("set the memory table");
    memory.load()
}

/// Flush and reap until `n` packets in flight completed.
fn wait_in_flight(q: &mut dyn UplinkQueue, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut done = 0;
    while done < n {
        assert!(
            Instant::now() < deadline,
            "{done} of {n} zero-copy packets completed"
        );
        q.flush().unwrap();
        done += q.reap_in_flight();
    }
    assert_eq!(done, n, "more packets completed than were in flight");
}

/// Zero-copy TX: guest memory registered as a second UMEM on interface queue 1; a
/// frame crossing a page boundary and a frame split over both regions (multi-buffer)
/// go out of guest memory byte-exact, their pages are held exactly until the
/// completion ring returns them; packets with a checksum to complete or outside guest
/// memory take the copy path; a memory update registers the new snapshot, and the old
/// regions are not kept.
#[test]
fn zero_copy_tx_sends_from_guest_memory_and_unpins_on_completion() {
    require_root!();
    let ZeroCopyRig {
        net: _net,
        peer,
        xdp,
        mut q,
        stats,
        memory,
        map,
    } = zero_copy_rig('z');
    assert_eq!(stats.tx_zc_umems.get(), 1, "{:?}", stats.fields());
    let hdr = VirtioNetHdr::default();
    let (low, high) = (
        Arc::clone(map.regions()[0].pages()),
        Arc::clone(map.regions()[1].pages()),
    );

    // One frag crossing the boundary of guest pages 2 and 3.
    let f1 = test_frame(21, 1400);
    let gpa1 = 3 * 4096 - 700;
    map.mem().write_slice(&f1, GuestAddress(gpa1)).unwrap();
    let mut pkt = FragList::new();
    map.push_frags(gpa1, u32::try_from(f1.len()).unwrap(), &mut pkt)
        .unwrap();
    assert_eq!(q.send(&hdr, &pkt).unwrap(), SendStatus::InFlight);
    drop(pkt);
    assert_eq!(q.in_flight(), 1);
    assert_eq!(low.pinned_pages(), 2, "both pages held until completion");
    wait_in_flight(q.as_mut(), 1);
    assert_eq!(low.pinned_pages(), 0, "pages still held after completion");
    assert_eq!(q.in_flight(), 0);
    capture(peer.as_raw_fd(), &f1).expect("frame sent from guest memory");

    // Two frags, one in each region: two descriptors, XDP_PKT_CONTD.
    let f2 = test_frame(22, 900);
    let (gpa_a, gpa_b) = (0xf_ff00, 0x1_0000_0000 + 0x1_2345);
    map.mem()
        .write_slice(&f2[..100], GuestAddress(gpa_a))
        .unwrap();
    map.mem()
        .write_slice(&f2[100..], GuestAddress(gpa_b))
        .unwrap();
    let mut pkt = FragList::new();
    map.push_frags(gpa_a, 100, &mut pkt).unwrap();
    map.push_frags(gpa_b, 800, &mut pkt).unwrap();
    assert_eq!(q.send(&hdr, &pkt).unwrap(), SendStatus::InFlight);
    drop(pkt);
    assert_eq!((low.pinned_pages(), high.pinned_pages()), (1, 1));
    wait_in_flight(q.as_mut(), 1);
    assert_eq!((low.pinned_pages(), high.pinned_pages()), (0, 0));
    capture(peer.as_raw_fd(), &f2).expect("multi-buffer frame from guest memory");
    assert_eq!(stats.tx_zc_packets.get(), 2);
    assert_eq!(stats.tx_zc_completed.get(), 2);

    // A frame outside guest memory, and one asking for a checksum: copied.
    let f3 = test_frame(23, 200);
    assert_eq!(send_one(q.as_mut(), &hdr, &f3), SendStatus::Sent);
    capture(peer.as_raw_fd(), &f3).expect("copied frame");
    let mut pkt = FragList::new();
    map.push_frags(gpa1, u32::try_from(f1.len()).unwrap(), &mut pkt)
        .unwrap();
    let csum_hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 14,
        csum_offset: 6,
        ..hdr
    };
    assert_eq!(q.send(&csum_hdr, &pkt).unwrap(), SendStatus::Sent);
    drop(pkt);
    q.flush().unwrap();
    assert_eq!(stats.tx_zc_copied.get(), 2, "{:?}", stats.fields());
    assert_eq!(low.pinned_pages(), 0);

    // A memory update: the new snapshot is registered; the old regions leave the map
    // at once (the UMEM holds no reference that would make their removal wait).
    drop((low, high));
    drop(map);
    let map = guest_memory(&memory);
    assert_eq!(memory.retired_regions(), 0);
    q.attach_memory(&map);
    assert_eq!(stats.tx_zc_umems.get(), 2);
    let f4 = test_frame(24, 60);
    map.mem()
        .write_slice(&f4, GuestAddress(0x1_0000_0000))
        .unwrap();
    let mut pkt = FragList::new();
    map.push_frags(0x1_0000_0000, 60, &mut pkt).unwrap();
    assert_eq!(q.send(&hdr, &pkt).unwrap(), SendStatus::InFlight);
    drop(pkt);
    wait_in_flight(q.as_mut(), 1);
    capture(peer.as_raw_fd(), &f4).expect("frame from the new memory");
    assert_eq!(stats.tx_zc_out_of_order.get(), 0);
    assert_eq!(stats.tx_zc_umem_errors.get(), 0);
    q.detach_memory();
    assert_eq!(q.in_flight(), 0);
    xdp.return_queue(0, q);
}

/// With the link down nothing completes: the packet stays in flight with its page
/// held (not reported, however long it waits) until the link comes back and the
/// completion ring returns it. A caller that gives up (a stopping worker) gets the
/// guest UMEM closed, so the held pages are released and the descriptors never sent;
/// the next memory attach registers again.
#[test]
fn zero_copy_tx_holds_pages_until_completion_or_given_up() {
    require_root!();
    let ZeroCopyRig {
        net,
        peer,
        xdp,
        mut q,
        stats,
        memory: _memory,
        map,
    } = zero_copy_rig('h');
    let pages = Arc::clone(map.regions()[0].pages());
    let hdr = VirtioNetHdr::default();
    let frame = test_frame(31, 300);
    map.mem().write_slice(&frame, GuestAddress(0x2000)).unwrap();
    let send = |q: &mut dyn UplinkQueue| {
        let mut pkt = FragList::new();
        map.push_frags(0x2000, 300, &mut pkt).unwrap();
        assert_eq!(q.send(&hdr, &pkt).unwrap(), SendStatus::InFlight);
    };

    run(&["ip", "link", "set", &net.host, "down"]);
    send(q.as_mut());
    for _ in 0..20 {
        q.flush().unwrap();
        assert_eq!(q.reap_in_flight(), 0, "completed with the link down");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(q.in_flight(), 1);
    assert_eq!(pages.pinned_pages(), 1, "page not held while in flight");
    run(&["ip", "link", "set", &net.host, "up"]);
    wait_in_flight(q.as_mut(), 1);
    assert_eq!(pages.pinned_pages(), 0);
    capture(peer.as_raw_fd(), &frame).expect("frame sent once the link came back");

    run(&["ip", "link", "set", &net.host, "down"]);
    send(q.as_mut());
    q.flush().unwrap();
    assert_eq!(pages.pinned_pages(), 1);
    q.forget_in_flight();
    assert_eq!(q.in_flight(), 0);
    assert_eq!(
        pages.pinned_pages(),
        0,
        "given-up packet still holds its page"
    );
    run(&["ip", "link", "set", &net.host, "up"]);
    q.attach_memory(&map);
    assert_eq!(stats.tx_zc_umems.get(), 2, "not registered again");
    send(q.as_mut());
    wait_in_flight(q.as_mut(), 1);
    assert_eq!(pages.pinned_pages(), 0);
    xdp.return_queue(0, q);
}

/// Zero-copy TX needs a second interface queue per pair; a single-queue veth is
/// refused with a clear error.
#[test]
fn zero_copy_tx_needs_two_queues_per_pair() {
    require_root!();
    let net = VethNs::new('q', 1);
    let zc = XdpOptions {
        zerocopy_tx: true,
        ..XdpOptions::default()
    };
    match Xdp::open_with(&net.host, 1, &zc) {
        Err(
            e @ XdpError::ZeroCopyTxQueues {
                need: 2, have: 1, ..
            },
        ) => {
            println!("expected error: {e}")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("zero-copy tx opened on a single-queue veth"),
    }
    assert!(!net.xdp_attached(false), "{}", net.host_link());
}

/// The whole daemon with `--xdp-zerocopy-tx`: the guest's frames (single, split and
/// indirect chains) leave from guest memory byte-exact, and every chain comes back to
/// the guest once its packet completed.
#[test]
fn daemon_zero_copy_tx_returns_chains_after_completion() {
    use common::guest::GuestConfig;
    use common::packet::guest_frames;
    use common::rig::Rig;
    use common::STATS_TIMEOUT;

    let xdp_end = "vnmz0";
    let Some(mut r) = Rig::on_veth(
        "daemon_zero_copy_tx_returns_chains_after_completion",
        GuestConfig::default(),
        (xdp_end, "vnmz1"),
        Some(2),
        &["--xdp-zerocopy-tx"],
    ) else {
        return;
    };

    let frames = guest_frames(700, 48, 60, 1514);
    r.send_to_peer(0, &frames);
    let s = r.d.wait_stats("zero-copy completions", STATS_TIMEOUT, |s| {
        s.group_counter(Some(0), "xdp", "tx_zc_completed") == 48
    });
    println!("{s}");
    assert_eq!(s.queue(0, "tx_packets"), 48, "{s}");
    assert_eq!(s.group_counter(Some(0), "xdp", "tx_zc_packets"), 48, "{s}");
    assert_eq!(s.group_counter(Some(0), "xdp", "tx_zc_copied"), 0, "{s}");
    assert_eq!(s.group_counter(Some(0), "xdp", "tx_zc_umems"), 1, "{s}");
    assert_eq!(s.group_counter(Some(0), "xdp", "tx_packets"), 48, "{s}");

    // With the link down the packets cannot complete: their chains must stay with
    // the device (the guest would otherwise reuse buffers the kernel still reads).
    r.ns().ip(&["link", "set", xdp_end, "down"]);
    let used_before = r.g.pairs[0].tx.ring.used_idx(&r.g.mem);
    let held = guest_frames(800, 8, 60, 1000);
    r.g.send(0, &held);
    r.d.wait_stats("8 more zero-copy packets in flight", STATS_TIMEOUT, |s| {
        s.group_counter(Some(0), "xdp", "tx_zc_packets") == 56
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        r.g.pairs[0].tx.ring.used_idx(&r.g.mem),
        used_before,
        "chains returned before their packets completed"
    );
    r.ns().link_up(xdp_end);
    r.g.wait_tx(0, held.len());
    r.expect_at_peer(&held, "held frame");
    let s =
        r.d.wait_stats("all zero-copy packets completed", STATS_TIMEOUT, |s| {
            s.group_counter(Some(0), "xdp", "tx_zc_completed") == 56
        });
    assert_eq!(
        s.group_counter(Some(0), "xdp", "tx_zc_out_of_order"),
        0,
        "{s}"
    );
}
