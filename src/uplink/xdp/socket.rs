// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One AF_XDP socket (XSK) with its own UMEM, set up with `xdpilone`: UMEM
//! registration, fill/completion rings, RX/TX rings, bind to `(ifindex, queue)`.
//! Zero-copy is asked for first; where the driver refuses, the whole socket is set
//! up again in copy mode (a socket's rings cannot be configured twice).

use std::ffi::CStr;
use std::io;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use xdpilone::{
    DeviceQueue, Errno, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User,
};

use super::umem::Umem as QueueUmem;
use super::XdpError;

/// How the socket moves packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// `XDP_ZEROCOPY`: the driver DMAs straight into and out of the UMEM.
    ZeroCopy,
    /// `XDP_COPY`: the kernel copies between its buffers and the UMEM.
    Copy,
}

impl BindMode {
    fn flags(self) -> u16 {
        SocketConfig::XDP_BIND_NEED_WAKEUP
            | match self {
                BindMode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
                BindMode::Copy => SocketConfig::XDP_BIND_COPY,
            }
    }
}

impl std::fmt::Display for BindMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BindMode::ZeroCopy => "zero-copy",
            BindMode::Copy => "copy",
        })
    }
}

/// Ring sizes of one socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingSizes {
    pub fill: u32,
    pub completion: u32,
    pub rx: u32,
    pub tx: u32,
}

/// A bound XDP queue: two sockets on one interface queue sharing one UMEM.
///
/// The first socket owns the fill and completion rings and the RX ring; it is the one
/// in the XSKMAP and the one a worker polls. The second has only the TX ring
/// (`XDP_SHARED_UMEM`: its completions arrive on the first socket's completion ring).
/// In copy mode every transmitted frame is an skb charged to the sending socket, and
/// freeing it wakes that socket's waiters: with RX and TX on one socket, each sent
/// frame ran the worker's epoll callback (about 8 % of the CPU per packet in a
/// profile of the TX path). Nobody waits on the TX socket.
/// The UMEM area both use is owned by the caller and must outlive them.
pub(crate) struct Xsk {
    /// RX ring, on the socket that is polled and in the XSKMAP.
    pub rx: RingRx,
    /// TX ring, on its own socket.
    pub tx: RingTx,
    /// Fill and completion rings (and the socket fd, shared by all four).
    pub fq_cq: DeviceQueue,
    pub mode: BindMode,
}

/// How long a bind keeps retrying while the queue is still registered to a socket
/// that was closed a moment ago.
const BIND_BUSY_WAIT: Duration = Duration::from_secs(2);

/// Bind, retrying on `EBUSY`: the kernel releases a closed socket's hold on its queue
/// from a workqueue, so re-opening an interface right after closing it (or after a
/// failed open) can briefly find the queue busy. Another process really holding the
/// queue still fails, after [`BIND_BUSY_WAIT`].
pub(crate) fn bind_retrying(umem: &Umem, user: &User) -> io::Result<()> {
    let deadline = Instant::now() + BIND_BUSY_WAIT;
    loop {
        match umem.bind(user).map_err(errno) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// `xdpilone` reports errno values, sometimes negated; make them an `io::Error`.
/// An XDP socket on `iface` queue `queue` sharing `umem`, with its fill and completion
/// rings (the step both the frame UMEM and the guest-memory UMEM take).
pub(crate) fn queue_socket(
    iface: &CStr,
    queue: u32,
    umem: &Umem,
) -> Result<(Socket, DeviceQueue), XdpError> {
    let info = queue_info(iface, queue)?;
    let sock_err = |e| XdpError::Socket {
        queue,
        source: errno(e),
    };
    // The UMEM's own fd: UMEM, fill/completion and the rings set up on it share it.
    let sock = Socket::with_shared(&info, umem).map_err(sock_err)?;
    let fq_cq = umem.fq_cq(&sock).map_err(sock_err)?;
    Ok((sock, fq_cq))
}

/// `iface`'s index with `queue` set.
fn queue_info(iface: &CStr, queue: u32) -> Result<IfInfo, XdpError> {
    let mut info = IfInfo::invalid();
    info.from_name(iface)
        .map_err(|e| XdpError::NoSuchInterface {
            iface: iface.to_string_lossy().into_owned(),
            source: errno(e),
        })?;
    info.set_queue(queue);
    Ok(info)
}

pub(crate) fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.get_raw().checked_abs().unwrap_or(libc::EINVAL))
}

impl Xsk {
    /// Set up a socket over `area` bound to `iface`'s `queue`: zero-copy first unless
    /// `mode` says otherwise, copy mode where the driver refuses zero-copy.
    pub(crate) fn open(
        area: &QueueUmem,
        iface: &CStr,
        queue: u32,
        sizes: RingSizes,
        mode: Option<BindMode>,
    ) -> Result<Xsk, XdpError> {
        let name = iface.to_string_lossy();
        match mode {
            Some(mode) => Self::open_mode(area, iface, queue, sizes, mode),
            None => {
                match Self::open_mode(area, iface, queue, sizes, BindMode::ZeroCopy) {
                    Ok(xsk) => Ok(xsk),
                    Err(XdpError::Bind { source, .. }) => {
                        log::info!("xdp {name} queue {queue}: zero-copy refused ({source}), using copy mode");
                        Self::open_mode(area, iface, queue, sizes, BindMode::Copy)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn open_mode(
        area: &QueueUmem,
        iface: &CStr,
        queue: u32,
        sizes: RingSizes,
        mode: BindMode,
    ) -> Result<Xsk, XdpError> {
        let name = iface.to_string_lossy().into_owned();
        let sock_err = |source| XdpError::Socket { queue, source };
        let config = UmemConfig {
            fill_size: sizes.fill,
            complete_size: sizes.completion,
            frame_size: area.frame_size(),
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `area.as_raw()` is a page-aligned mapping (the net_iov area's mmap)
        // of exactly the length in the slice pointer, holding whole frames of
        // `frame_size`. It stays mapped while `area` lives (which holds the area by
        // `Arc`, as does its page pool until destroyed), and the owning queue declares
        // `area` after the rings, so it outlives every ring and socket created here.
        let umem = unsafe { Umem::new(config, area.as_raw()) }.map_err(|e| XdpError::Umem {
            queue,
            source: errno(e),
        })?;
        let (sock, fq_cq) = queue_socket(iface, queue, &umem)?;
        let bind_err = |source| XdpError::Bind {
            iface: name.clone(),
            queue,
            mode,
            source,
        };
        let rx_user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(sizes.rx),
                    tx_size: None,
                    bind_flags: mode.flags(),
                },
            )
            .map_err(|e| sock_err(errno(e)))?;
        let rx = rx_user.map_rx().map_err(|e| sock_err(errno(e)))?;
        bind_retrying(&umem, &rx_user).map_err(bind_err)?;
        // The TX socket joins the bound one: a shared-UMEM bind takes no mode flags
        // (it inherits the first socket's) and no fill/completion rings of its own.
        let tx_sock = Socket::new(&queue_info(iface, queue)?).map_err(|e| sock_err(errno(e)))?;
        let tx_user = umem
            .rx_tx(
                &tx_sock,
                &SocketConfig {
                    rx_size: None,
                    tx_size: NonZeroU32::new(sizes.tx),
                    bind_flags: 0,
                },
            )
            .map_err(|e| sock_err(errno(e)))?;
        let tx = tx_user.map_tx().map_err(|e| sock_err(errno(e)))?;
        bind_retrying(&umem, &tx_user).map_err(bind_err)?;
        // `umem` and the users only hold further references to the socket fds; the
        // rings keep them open.
        Ok(Xsk {
            rx,
            tx,
            fq_cq,
            mode,
        })
    }
}
