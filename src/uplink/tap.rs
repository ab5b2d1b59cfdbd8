// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! TAP uplink: `/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`
//! (`IFF_MULTI_QUEUE` for more than one queue pair), a 12-byte vnet header, offloads
//! following the guest's acked features, one non-blocking fd per queue pair.
//!
//! TX is one `writev` of [virtio header, frags...]; RX is one `readv` straight into the
//! guest's buffers.
//!
//! A TAP deleted under a running backend (`ip link del`) leaves its fds detached: every
//! read and write fails with EBADFD and epoll reports EPOLLERR for ever. The queue then
//! says it is down ([`UplinkQueue::down`]), answers sends with [`SendStatus::Down`], and
//! [`UplinkQueue::reopen`] attaches to a TAP of the same name once one exists again,
//! with the vnet header size and the offloads the guest acked.
//!
//! A TAP may also come opened by the caller ([`Tap::from_fds`], `--tap-fd`, the way
//! QEMU's `-netdev tap,fd=` takes it from libvirt): each fd is checked with
//! `TUNGETIFF` (a tap, with `IFF_NO_PI` and `IFF_VNET_HDR`, all of one interface) and
//! the backend still sets the vnet header size and the offloads, which needs no
//! privilege on an attached fd. Such a TAP, once deleted, is reopened by name only if
//! the process may still attach to it (`CAP_NET_ADMIN`, or a TAP owned by its user);
//! the log says so when it cannot.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use super::{QueueSlots, SendStatus, Uplink, UplinkError, UplinkQueue};
use crate::netmem::{FragList, MAX_INLINE_FRAGS};
use crate::virtio::features::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
};
use crate::virtio::{Features, VirtioNetHdr, VNET_HDR_LEN};

mod ioctls {
    #![allow(missing_docs)]
    use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};
    const TUNTAP_TYPE: u32 = b'T' as u32;
    ioctl_iow_nr!(TUNSETIFF, TUNTAP_TYPE, 202, libc::c_int);
    ioctl_ior_nr!(TUNGETIFF, TUNTAP_TYPE, 210, libc::c_uint);
    ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP_TYPE, 208, libc::c_uint);
    ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP_TYPE, 216, libc::c_int);
    ioctl_iow_nr!(TUNSETCARRIER, TUNTAP_TYPE, 226, libc::c_int);
}
use ioctls::{TUNGETIFF, TUNSETCARRIER, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ};

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const IFF_MULTI_QUEUE: i16 = 0x0100;

/// `TUNSETOFFLOAD` bits.
pub const TUN_F_CSUM: u32 = 0x01;
/// TCPv4 segmentation offload.
pub const TUN_F_TSO4: u32 = 0x02;
/// TCPv6 segmentation offload.
pub const TUN_F_TSO6: u32 = 0x04;
/// TSO with ECN bits.
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// Errors of the TAP uplink.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Opening `/dev/net/tun` failed.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// The interface name is not usable.
    #[error("invalid tap name {0:?}: 1 to 15 characters, no '/' or whitespace")]
    InvalidName(String),
    /// `TUNSETIFF` failed.
    #[error("cannot attach to tap {name:?}: {source}{hint}")]
    SetIff {
        /// Interface name.
        name: String,
        /// Extra explanation for common causes.
        hint: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Setting the vnet header size failed.
    #[error("cannot set vnet header size on tap {0:?}: {1}")]
    VnetHdrSize(String, #[source] io::Error),
    /// A `--tap-fd` is not usable.
    #[error("{source}")]
    PassedFd {
        /// The fd number.
        fd: RawFd,
        /// Cause.
        #[source]
        source: crate::launch::fds::PassedFdError,
    },
    /// A `--tap-fd` is not a tun/tap fd.
    #[error("--tap-fd {fd} is not an attached tun/tap fd (TUNGETIFF: {source})")]
    NotTun {
        /// The fd number.
        fd: RawFd,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A `--tap-fd` is a tun/tap fd opened in a way the backend cannot use.
    #[error("--tap-fd {fd} ({name}) {problem}")]
    PassedFlags {
        /// The fd number.
        fd: RawFd,
        /// Its interface.
        name: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The `--tap-fd`s name different interfaces.
    #[error("--tap-fd {fd} belongs to {name}, the first --tap-fd to {first}: all must be queues of one tap")]
    PassedMixed {
        /// The fd number.
        fd: RawFd,
        /// Its interface.
        name: String,
        /// The first fd's interface.
        first: String,
    },
    /// Setting a passed fd non-blocking failed.
    #[error("--tap-fd {0}: cannot make it non-blocking: {1}")]
    PassedNonBlocking(RawFd, #[source] io::Error),
    /// A TAP passed as fds was deleted and cannot be opened again by this process.
    #[error("tap {name} was passed as file descriptors and is gone; this process cannot open it again by name ({source}: that needs CAP_NET_ADMIN, or a tap with no owner or owned by this process's user or group): give the backend new fds by restarting it")]
    PassedGone {
        /// Interface name.
        name: String,
        /// Why attaching failed.
        #[source]
        source: io::Error,
    },
    /// Setting offloads failed.
    #[error("cannot set offloads {flags:#x} on tap {name:?}: {source}")]
    Offload {
        /// Interface name.
        name: String,
        /// Requested TUN_F_* bits.
        flags: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: i16) -> IfReq {
    let mut r = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    r
}

fn name_from(r: &IfReq) -> String {
    let end = r.name.iter().position(|&b| b == 0).unwrap_or(r.name.len());
    String::from_utf8_lossy(&r.name[..end]).into_owned()
}

/// Whether `name` is a legal interface name or `%d` pattern.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains('/')
        && !name.chars().any(char::is_whitespace)
}

/// Translate acked guest features into `TUNSETOFFLOAD` bits.
pub fn offload_flags(features: Features) -> u32 {
    let mut f = 0;
    if features.has(VIRTIO_NET_F_GUEST_CSUM) {
        f |= TUN_F_CSUM;
        if features.has(VIRTIO_NET_F_GUEST_TSO4) {
            f |= TUN_F_TSO4;
        }
        if features.has(VIRTIO_NET_F_GUEST_TSO6) {
            f |= TUN_F_TSO6;
        }
        if f & (TUN_F_TSO4 | TUN_F_TSO6) != 0 && features.has(VIRTIO_NET_F_GUEST_ECN) {
            f |= TUN_F_TSO_ECN;
        }
    }
    f
}

fn open_queue(name: &str, multi_queue: bool) -> Result<(File, String), TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if multi_queue {
        flags |= IFF_MULTI_QUEUE;
    }
    let mut req = ifreq(name, flags);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a repr(C) value of
    // the kernel's 40-byte layout that lives across the call; the fd is ours.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF(), &mut req) };
    if ret < 0 {
        let source = io::Error::last_os_error();
        let hint = match source.raw_os_error() {
            Some(libc::EPERM) => " (creating or attaching a tap needs CAP_NET_ADMIN)",
            Some(libc::EINVAL) if multi_queue => {
                " (is it an existing tap without multi_queue, or not a tap at all?)"
            }
            Some(libc::EINVAL) => {
                " (does it exist as a multi_queue tap, or as another kind of interface?)"
            }
            Some(libc::EBUSY) => " (another process holds it)",
            _ => "",
        };
        return Err(TapError::SetIff {
            name: name.to_string(),
            hint,
            source,
        });
    }
    let actual = name_from(&req);
    set_vnet_hdr_size(&file, &actual)?;
    Ok((file, actual))
}

fn set_vnet_hdr_size(file: &File, name: &str) -> Result<(), TapError> {
    let hdr_len = libc::c_int::try_from(VNET_HDR_LEN).unwrap_or(12);
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at a live
    // local; the fd is a tun fd we own.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ(), &hdr_len) };
    if ret < 0 {
        return Err(TapError::VnetHdrSize(
            name.to_string(),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The interface name and `IFF_*` flags of an attached tun/tap fd (`TUNGETIFF`).
fn tun_iff(fd: &OwnedFd) -> io::Result<(String, i16)> {
    let mut req = ifreq("", 0);
    // SAFETY: TUNGETIFF writes one `struct ifreq` into `req`, a live repr(C) value of
    // the kernel's 40-byte layout. On an fd that is not a tun fd the ioctl fails
    // (ENOTTY, EINVAL, EBADFD when not attached) without touching it.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF(), &mut req) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((name_from(&req), req.flags))
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL read and set the file status flags of an open fd; no
    // memory is involved.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_link_up(name: &str) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` is a fresh fd that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    let mut req = ifreq(name, 0);
    // SAFETY: SIOCGIFFLAGS fills the flags of a live, correctly laid out ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    req.flags |= i16::try_from(libc::IFF_UP).unwrap_or(1);
    // SAFETY: SIOCSIFFLAGS reads the same live ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the queues of one TAP share: its name, its queue mode, the offloads the guest
/// acked, and the fd offloads are set through (queue 0's, renewed when it reopens).
struct TapShared {
    name: String,
    multi_queue: bool,
    /// Opened by the caller (`--tap-fd`): this process may lack the right to reopen it.
    passed: bool,
    offloads: AtomicU32,
    control: Mutex<File>,
}

impl TapShared {
    fn set_offload_on(&self, file: &File, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value; the fd is a tun fd we own.
        let ret = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                TUNSETOFFLOAD(),
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// A TAP device with one queue per queue pair.
pub struct Tap {
    shared: Arc<TapShared>,
    queues: QueueSlots,
}

/// Whether an interface called `name` exists in this network namespace.
fn link_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads the NUL-terminated string, which lives across the
    // call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

impl Tap {
    /// Open (or create) the TAP `name` (a `%d` pattern lets the kernel pick) with
    /// `queue_pairs` queues.
    pub fn open(name: &str, queue_pairs: usize) -> Result<Self, TapError> {
        if !valid_ifname(name) {
            return Err(TapError::InvalidName(name.to_string()));
        }
        let existed = !name.contains('%') && link_exists(name);
        let multi_queue = queue_pairs > 1;
        let (first, actual) = open_queue(name, multi_queue)?;
        let mut files = vec![first];
        for _ in 1..queue_pairs {
            files.push(open_queue(&actual, multi_queue)?.0);
        }
        if existed {
            log::info!("attached to existing tap {actual} ({queue_pairs} queue(s))");
        } else {
            log::info!("created tap {actual} ({queue_pairs} queue(s))");
            if let Err(e) = set_link_up(&actual) {
                log::warn!("cannot bring tap {actual} up: {e}");
            }
        }
        Self::with_files(actual, multi_queue, false, files)
    }

    /// A TAP opened by the caller: `fds` are its queues, one per queue pair, in order.
    /// Each must be an open tun/tap fd attached to a tap with `IFF_NO_PI` and
    /// `IFF_VNET_HDR` (and `IFF_MULTI_QUEUE` when there are several), all to the same
    /// interface. The vnet header size is set here, the offloads later from the
    /// guest's features; the link is left as the caller set it.
    pub fn from_fds(fds: &[RawFd]) -> Result<Self, TapError> {
        let mut files = Vec::with_capacity(fds.len());
        let mut first: Option<(String, i16)> = None;
        for &fd in fds {
            let owned = crate::launch::fds::claim(fd, "--tap-fd")
                .map_err(|source| TapError::PassedFd { fd, source })?;
            let (name, flags) =
                tun_iff(&owned).map_err(|source| TapError::NotTun { fd, source })?;
            let problem = if flags & IFF_TAP == 0 {
                Some("is a tun (layer 3) device, not a tap")
            } else if flags & IFF_NO_PI == 0 {
                Some("was opened without IFF_NO_PI (its frames carry a packet information header)")
            } else if flags & IFF_VNET_HDR == 0 {
                Some("was opened without IFF_VNET_HDR (QEMU: vnet_hdr=on); the backend needs the virtio-net header")
            } else if fds.len() > 1 && flags & IFF_MULTI_QUEUE == 0 {
                Some("is not a multi_queue tap, and several --tap-fd were given")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(TapError::PassedFlags { fd, name, problem });
            }
            match &first {
                Some((f, _)) if *f != name => {
                    return Err(TapError::PassedMixed {
                        fd,
                        name,
                        first: f.clone(),
                    })
                }
                Some(_) => {}
                None => first = Some((name.clone(), flags)),
            }
            set_nonblocking(&owned).map_err(|e| TapError::PassedNonBlocking(fd, e))?;
            let file = File::from(owned);
            set_vnet_hdr_size(&file, &name)?;
            files.push(file);
        }
        let Some((name, flags)) = first else {
            return Err(TapError::InvalidName(String::new()));
        };
        log::info!(
            "using tap {name} passed as fd(s) {fds:?} ({} queue(s))",
            files.len()
        );
        Self::with_files(name, flags & IFF_MULTI_QUEUE != 0, true, files)
    }

    fn with_files(
        name: String,
        multi_queue: bool,
        passed: bool,
        files: Vec<File>,
    ) -> Result<Self, TapError> {
        let control = files
            .first()
            .ok_or_else(|| TapError::InvalidName(name.clone()))?
            .try_clone()
            .map_err(TapError::OpenTun)?;
        let shared = Arc::new(TapShared {
            name,
            multi_queue,
            passed,
            offloads: AtomicU32::new(0),
            control: Mutex::new(control),
        });
        let queues = files
            .into_iter()
            .enumerate()
            .map(|(pair, file)| {
                Box::new(TapQueue {
                    file,
                    first: pair == 0,
                    shared: Arc::clone(&shared),
                    down: None,
                }) as Box<dyn UplinkQueue>
            })
            .collect();
        Ok(Tap {
            shared,
            queues: QueueSlots::new(queues),
        })
    }

    /// The interface name the kernel gave.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Set `TUNSETOFFLOAD` bits (remembered for a queue that reopens later).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        self.shared.offloads.store(flags, Ordering::Relaxed);
        let control = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.shared.set_offload_on(&control, flags)
    }
}

impl Uplink for Tap {
    fn describe(&self) -> String {
        format!("tap {}", self.shared.name)
    }

    fn take_queue(&self, pair: usize) -> Result<Box<dyn UplinkQueue>, UplinkError> {
        self.queues.take(pair)
    }

    fn return_queue(&self, pair: usize, queue: Box<dyn UplinkQueue>) {
        self.queues.put(pair, queue)
    }

    fn announce(&self, frame: &[u8]) -> Result<(), UplinkError> {
        // Into the TAP as the guest's own frames go: behind an empty vnet header.
        let hdr = VirtioNetHdr::default().to_bytes();
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        let control = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // SAFETY: both iovecs point at live buffers (a local and the caller's frame)
        // that writev only reads; the fd is a tun fd we own.
        let n = unsafe { libc::writev(control.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(UplinkError::Io(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn set_carrier(&self, up: bool) -> Result<(), UplinkError> {
        let on = libc::c_int::from(up);
        let control = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // SAFETY: TUNSETCARRIER reads one int from the pointer, which points at a live
        // local; the fd is a tun fd we own.
        let ret = unsafe { libc::ioctl(control.as_raw_fd(), TUNSETCARRIER(), &on) };
        if ret < 0 {
            return Err(UplinkError::Io(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn apply_features(&self, features: Features) -> Result<(), UplinkError> {
        let flags = offload_flags(features);
        self.set_offload(flags)?;
        log::info!("tap {}: offloads {flags:#x}", self.shared.name);
        Ok(())
    }
}

/// One queue of a TAP: a non-blocking tun fd.
pub struct TapQueue {
    file: File,
    /// Queue 0 renews the shared control fd when it reopens.
    first: bool,
    shared: Arc<TapShared>,
    /// Why the queue is gone (its TAP was deleted), None while it works.
    down: Option<String>,
}

impl TapQueue {
    /// Whether `e` says the TAP behind the fd is gone: a detached tun fd fails every
    /// read and write with EBADFD. Records it.
    fn gone(&mut self, e: &io::Error) -> bool {
        if e.raw_os_error() != Some(libc::EBADFD) {
            return false;
        }
        let passed = if self.shared.passed {
            " (it was passed as file descriptors: it comes back only if this process may attach to it by name)"
        } else {
            ""
        };
        self.down = Some(format!("tap {} is gone: {e}{passed}", self.shared.name));
        true
    }
}

type IoVecs = SmallVec<[libc::iovec; MAX_INLINE_FRAGS + 1]>;

fn would_block(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
}

impl UplinkQueue for TapQueue {
    fn fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn send(&mut self, hdr: &VirtioNetHdr, pkt: &FragList<'_>) -> Result<SendStatus, UplinkError> {
        if self.down.is_some() {
            return Ok(SendStatus::Down);
        }
        let hdr_bytes = hdr.to_bytes();
        let mut iov = IoVecs::new();
        iov.push(libc::iovec {
            iov_base: hdr_bytes.as_ptr() as *mut libc::c_void,
            iov_len: hdr_bytes.len(),
        });
        iov.extend_from_slice(pkt.iovecs());
        let cnt = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: every iovec points at readable memory that lives across the call:
        // the header copy on our stack and the frags' guest memory, which `pkt` borrows
        // from a live snapshot. writev only reads it.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), cnt) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if would_block(&e) {
                return Ok(SendStatus::WouldBlock);
            }
            if self.gone(&e) {
                return Ok(SendStatus::Down);
            }
            // EINVAL/EFAULT/EIO: the kernel refused this packet; the worker counts and
            // reports it, and the next packets keep flowing.
            return Err(UplinkError::Io(e));
        }
        Ok(SendStatus::Sent)
    }

    fn recv(&mut self, bufs: &FragList<'_>) -> Result<Option<usize>, UplinkError> {
        if self.down.is_some() {
            return Ok(None);
        }
        let iov = bufs.iovecs();
        let cnt = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the iovecs point at guest buffers of a live snapshot that `bufs`
        // borrows; they were bounds-checked by vm-memory when the list was built, and
        // the guest handed them to us as device-writable.
        let n = unsafe { libc::readv(self.file.as_raw_fd(), iov.as_ptr(), cnt) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if would_block(&e) || self.gone(&e) {
                return Ok(None);
            }
            return Err(UplinkError::Io(e));
        }
        Ok(Some(usize::try_from(n).unwrap_or(0)))
    }

    fn down(&self) -> Option<&str> {
        self.down.as_deref()
    }

    fn probe(&mut self) {
        if self.down.is_some() {
            return;
        }
        // A zero-length read costs nothing on a live tun fd (it returns 0 or EAGAIN)
        // and fails with EBADFD on a detached one.
        let mut byte = 0u8;
        // SAFETY: reads at most 0 bytes into a live local.
        let n = unsafe {
            libc::read(
                self.file.as_raw_fd(),
                std::ptr::addr_of_mut!(byte).cast(),
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.gone(&e);
        }
    }

    fn reopen(&mut self) -> Result<bool, UplinkError> {
        if self.down.is_none() {
            return Ok(true);
        }
        if !link_exists(&self.shared.name) {
            return Ok(false);
        }
        let (file, _) = match open_queue(&self.shared.name, self.shared.multi_queue) {
            Ok(f) => f,
            Err(TapError::SetIff { source, .. })
                if self.shared.passed && source.raw_os_error() == Some(libc::EPERM) =>
            {
                return Err(TapError::PassedGone {
                    name: self.shared.name.clone(),
                    source,
                }
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        self.shared
            .set_offload_on(&file, self.shared.offloads.load(Ordering::Relaxed))?;
        if self.first {
            let clone = file.try_clone().map_err(TapError::OpenTun)?;
            *self
                .shared
                .control
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = clone;
        }
        self.file = file;
        self.down = None;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::features::SUPPORTED;

    #[test]
    fn offloads_follow_guest_features() {
        assert_eq!(
            offload_flags(Features::from_bits(SUPPORTED)),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        );
        assert_eq!(offload_flags(Features::default()), 0);
        let no_csum = SUPPORTED & !(1 << VIRTIO_NET_F_GUEST_CSUM);
        assert_eq!(offload_flags(Features::from_bits(no_csum)), 0);
    }

    #[test]
    fn a_passed_fd_that_is_not_a_tun_fd_is_refused() {
        use std::os::fd::IntoRawFd;
        let null = File::open("/dev/null").unwrap().into_raw_fd();
        let e = Tap::from_fds(&[null]).err().expect("refused").to_string();
        assert!(
            e.contains(&format!("--tap-fd {null} is not an attached tun/tap fd")),
            "{e}"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_ifname("vnm%d"));
        assert!(valid_ifname("tap0"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("sixteen-chars-xx"));
    }
}
