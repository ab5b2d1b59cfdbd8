// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Network namespaces the tests create (and always delete), and AF_PACKET sockets opened
//! inside them.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use super::daemon::Daemon;
use super::unique;

/// A network namespace named `vnmt-{pid}-{n}`; deleted on drop, even when the test fails.
pub struct NetNs {
    name: String,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Create a namespace with IPv6 off (no router solicitations or DAD frames on the
    /// TAP to disturb byte-exact checks) and `lo` up.
    pub fn new() -> NetNs {
        let name = unique("vnmt");
        run(Command::new("ip").args(["netns", "add", &name]))
            .unwrap_or_else(|e| panic!("create network namespace: {e}"));
        let ns = NetNs { name };
        for key in ["all", "default"] {
            ns.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
            ]);
        }
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS args...`; panics on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ip netns exec NS args...`; panics on failure; returns stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Wait until interface `ifname` exists in the namespace (the daemon creates it).
    pub fn wait_link(&self, ifname: &str, daemon: &mut Daemon, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let r = run(Command::new("ip")
                .arg("-n")
                .arg(&self.name)
                .args(["link", "show", "dev", ifname]));
            if r.is_ok() {
                return;
            }
            daemon.assert_running(&format!("before creating TAP {ifname}"));
            if Instant::now() >= deadline {
                daemon.fail(&format!(
                    "TAP {ifname} did not appear in namespace {} within {timeout:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Bring `ifname` up.
    pub fn link_up(&self, ifname: &str) {
        self.ip(&["link", "set", "dev", ifname, "up"]);
    }

    /// Create a veth pair `a`–`b` in the namespace (`queues` TX and RX queues on each end
    /// when given, the kernel's default otherwise) and bring both ends up.
    pub fn veth(&self, a: &str, b: &str, queues: Option<u32>) {
        let queues = queues.map(|n| n.to_string());
        let mut args = vec!["link", "add", a];
        if let Some(n) = &queues {
            args.extend_from_slice(&["numtxqueues", n, "numrxqueues", n]);
        }
        args.extend_from_slice(&["type", "veth", "peer", "name", b]);
        self.ip(&args);
        self.link_up(a);
        self.link_up(b);
    }

    /// Run `f` on a thread that joined this namespace; the thread ends afterwards, so
    /// nothing else changes namespace.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("open /run/netns/{}: {e}", self.name));
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: `file` is an open network-namespace file that outlives the
                // call; setns(CLONE_NEWNET) changes only this thread's namespace, and
                // this thread ends when `f` returns. The result is checked.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    panic!("setns {}: {}", self.name, std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// An AF_PACKET socket on `ifname` in this namespace. `protocol` (host order) is the
    /// EtherType to capture (0: send only). With `vnet_hdr`, every frame sent or
    /// received carries a 10-byte `virtio_net_hdr` first (`PACKET_VNET_HDR`).
    pub fn packet_socket(&self, ifname: &str, protocol: u16, vnet_hdr: bool) -> PacketSocket {
        let ifname = ifname.to_string();
        self.run_inside(move || PacketSocket::open(&ifname, protocol, vnet_hdr))
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("warning: could not delete network namespace: {e}");
        }
    }
}

/// A raw AF_PACKET socket bound to one interface (non-blocking; waits use `poll`).
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    /// Make room for `bytes` of queued frames (a burst released at once would
    /// otherwise overflow the default receive buffer and look like loss).
    pub fn set_rcvbuf(&self, bytes: i32) {
        // SAFETY: setsockopt reads one c_int from a live local; the fd is ours.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                std::ptr::from_ref(&bytes).cast(),
                socklen::<i32>(),
            )
        };
        assert_eq!(r, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    }
}

fn sockaddr_ll(ifindex: i32, protocol: u16, dst: Option<[u8; 6]>) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is a plain C struct for which all-zero bytes are valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET fits u16");
    sa.sll_protocol = protocol.to_be();
    sa.sll_ifindex = ifindex;
    if let Some(mac) = dst {
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&mac);
    }
    sa
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).expect("small C struct")
}

impl PacketSocket {
    fn open(ifname: &str, protocol: u16, vnet_hdr: bool) -> PacketSocket {
        let cname = CString::new(ifname).expect("interface name has no NUL");
        // SAFETY: `cname` is a valid NUL-terminated string for the call's duration.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        let ifindex = i32::try_from(ifindex).expect("ifindex fits i32");
        assert!(
            ifindex > 0,
            "no interface {ifname} in this namespace: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: plain socket(2) call with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(protocol.to_be()),
            )
        };
        if fd < 0 {
            panic!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if vnet_hdr {
            let one: libc::c_int = 1;
            // SAFETY: `fd` is a valid socket; the option value points to a live c_int
            // whose size is passed; the result is checked.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_VNET_HDR,
                    std::ptr::from_ref(&one).cast(),
                    socklen::<libc::c_int>(),
                )
            };
            if rc != 0 {
                panic!("PACKET_VNET_HDR: {}", std::io::Error::last_os_error());
            }
        }
        if protocol != 0 {
            let sa = sockaddr_ll(ifindex, protocol, None);
            // SAFETY: `fd` is a valid socket; `sa` is a live sockaddr_ll whose size is
            // passed; the result is checked.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&sa).cast(),
                    socklen::<libc::sockaddr_ll>(),
                )
            };
            if rc != 0 {
                panic!(
                    "bind AF_PACKET to {ifname}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        PacketSocket { fd, ifindex }
    }

    /// Send `buf` (a frame, after a 10-byte virtio_net_hdr on a `vnet_hdr` socket) out
    /// of the interface, with `ethertype` as the packet's protocol.
    pub fn send(&self, buf: &[u8], ethertype: u16, dst: [u8; 6]) {
        let sa = sockaddr_ll(self.ifindex, ethertype, Some(dst));
        // SAFETY: `fd` is a valid socket; `buf` and `sa` are live for the call and their
        // lengths are passed; the result is checked.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                std::ptr::from_ref(&sa).cast(),
                socklen::<libc::sockaddr_ll>(),
            )
        };
        if n < 0 {
            panic!(
                "AF_PACKET send of {} bytes: {}",
                buf.len(),
                std::io::Error::last_os_error()
            );
        }
        assert_eq!(
            usize::try_from(n).ok(),
            Some(buf.len()),
            "short AF_PACKET send"
        );
    }

    fn wait_readable(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is one live pollfd and the count passed is 1; result checked.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        rc > 0
    }

    /// Receive one frame that was not sent from this host (`PACKET_OUTGOING` frames are
    /// skipped), waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            // SAFETY: an all-zero sockaddr_ll is valid.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut salen = socklen::<libc::sockaddr_ll>();
            // SAFETY: `buf` and `sa` are live and writable for the call, with their
            // sizes passed; the result is checked.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    std::ptr::from_mut(&mut sa).cast(),
                    &mut salen,
                )
            };
            if n >= 0 {
                if sa.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                let n = usize::try_from(n).expect("non-negative");
                return Some(buf[..n].to_vec());
            }
            let err = std::io::Error::last_os_error();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::WouldBlock,
                "AF_PACKET recv: {err}"
            );
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.wait_readable(deadline - now);
        }
    }
}
