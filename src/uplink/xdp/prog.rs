// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The XDP side of the AF_XDP uplink: an `XSKMAP` and the classic redirect program,
//! loaded and attached with the `bpf(2)` syscall directly (no libbpf, no C toolchain).
//!
//! The program is the five-instruction XSKMAP redirect every AF_XDP user runs:
//!
//! ```text
//! r2 = *(u32 *)(r1 + offsetof(struct xdp_md, rx_queue_index))
//! r1 = map_fd ll                ; ld_imm64 with BPF_PSEUDO_MAP_FD
//! r3 = XDP_PASS                 ; action when the queue has no socket
//! call bpf_redirect_map
//! exit
//! ```
//!
//! Every kernel object is owned by a file descriptor: closing the `XdpLink` detaches
//! the program from the interface (it is a `BPF_LINK_CREATE` link, not a netlink
//! attachment that outlives the process), and the program and map are freed when their
//! last fd closes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::XdpError;

// `enum bpf_cmd`.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `enum bpf_map_type`: `BPF_MAP_TYPE_XSKMAP`.
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
/// `enum bpf_prog_type`: `BPF_PROG_TYPE_XDP`.
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`: `BPF_XDP`.
const BPF_XDP: u32 = 37;
/// `BPF_MAP_UPDATE_ELEM` flag: create or replace.
const BPF_ANY: u64 = 0;

/// `XDP_FLAGS_SKB_MODE`: generic XDP, run from the network stack after skb allocation.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP, run by the driver.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// XDP action returned when the queue has no socket in the map.
const XDP_PASS: i32 = 2;
/// `BPF_FUNC_redirect_map`.
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
/// `offsetof(struct xdp_md, rx_queue_index)`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// Size of the buffer the verifier log is read into when a load fails.
const VERIFIER_LOG_SIZE: usize = 64 * 1024;

/// Where the XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native XDP in the driver (`XDP_FLAGS_DRV_MODE`).
    Driver,
    /// Generic XDP in the stack (`XDP_FLAGS_SKB_MODE`), for drivers without XDP support.
    Generic,
}

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            AttachMode::Driver => XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Driver => "driver",
            AttachMode::Generic => "generic",
        })
    }
}

/// One eBPF instruction (`struct bpf_insn`): `dst_reg` in the low nibble of `regs`,
/// `src_reg` in the high one (little-endian bitfields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const _: () = assert!(std::mem::size_of::<BpfInsn>() == 8);

impl BpfInsn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        BpfInsn {
            code,
            regs: (dst & 0x0f) | (src << 4),
            off,
            imm,
        }
    }
}

// Opcode pieces (include/uapi/linux/bpf_common.h, bpf.h).
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_DW: u8 = 0x18;
const BPF_IMM: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_MOV: u8 = 0xb0;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
/// `src_reg` of a `ld_imm64` whose immediate is a map fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// The redirect program for the XSKMAP `map_fd` (six slots: `ld_imm64` takes two).
pub(crate) fn redirect_program(map_fd: RawFd) -> [BpfInsn; 6] {
    [
        // r2 = ctx->rx_queue_index
        BpfInsn::new(BPF_LDX | BPF_MEM | BPF_W, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        // r1 = &xsks (the verifier turns the fd into the map pointer)
        BpfInsn::new(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        BpfInsn::new(0, 0, 0, 0, 0),
        // r3 = XDP_PASS: the action when no socket sits at that queue index
        BpfInsn::new(BPF_ALU64 | BPF_MOV | BPF_K, 3, 0, 0, XDP_PASS),
        // r0 = bpf_redirect_map(r1, r2, r3)
        BpfInsn::new(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        BpfInsn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    ]
}

/// `bpf_attr` for `BPF_MAP_CREATE` (the prefix we use; the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `bpf_attr` for `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
#[derive(Default)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `bpf_attr` for `BPF_PROG_LOAD` (up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `bpf_attr` for `BPF_LINK_CREATE` (the XDP part).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

const _: () = assert!(std::mem::size_of::<MapUpdateAttr>() == 32);
const _: () = assert!(std::mem::size_of::<ProgLoadAttr>() == 72);
const _: () = assert!(std::mem::size_of::<LinkCreateAttr>() == 16);

/// An object name for `map_name`/`prog_name` (at most 15 bytes and a NUL).
fn obj_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// A raw fd as the `u32` the `bpf_attr` fields take (fds are never negative).
fn attr_fd(fd: RawFd) -> u32 {
    u32::try_from(fd).unwrap_or(u32::MAX)
}

/// Issue one `bpf(2)` command whose result is a new fd.
///
/// # Safety
/// `attr` must be the `bpf_attr` layout `cmd` expects, and every address stored in it
/// must point at memory that is valid (and writable where the kernel writes) for the
/// duration of the call.
unsafe fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: forwarded from this function's contract.
    let ret = unsafe { bpf_raw(cmd, attr) }?;
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: on success these commands return a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Issue one `bpf(2)` command; returns its non-negative result.
///
/// # Safety
/// As for [`bpf_fd`].
unsafe fn bpf_raw<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let size = libc::c_uint::try_from(std::mem::size_of::<T>()).unwrap_or(libc::c_uint::MAX);
    let ptr: *mut T = attr;
    // SAFETY: the caller guarantees that `attr` has the layout `cmd` expects and that
    // the addresses inside it are valid; `size` is its exact size, so the kernel reads
    // (and for some commands writes) only inside `*attr`.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, ptr, size) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// An `XSKMAP`: queue index -> XDP socket.
#[derive(Debug)]
pub(crate) struct XskMap {
    fd: OwnedFd,
}

impl XskMap {
    /// Create a map with `max_entries` slots (one per queue pair).
    pub(crate) fn create(max_entries: u32) -> Result<Self, XdpError> {
        let mut attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_XSKMAP,
            key_size: 4,
            value_size: 4,
            max_entries,
            map_name: obj_name("vnm_xsks"),
            ..Default::default()
        };
        // SAFETY: `attr` is the BPF_MAP_CREATE layout and holds no addresses.
        let fd = unsafe { bpf_fd(BPF_MAP_CREATE, &mut attr) }.map_err(XdpError::MapCreate)?;
        Ok(XskMap { fd })
    }

    /// Put the XDP socket `xsk_fd` at `queue`.
    pub(crate) fn insert(&self, queue: u32, xsk_fd: RawFd) -> Result<(), XdpError> {
        let key = queue;
        let value = attr_fd(xsk_fd);
        let mut attr = MapUpdateAttr {
            map_fd: attr_fd(self.fd.as_raw_fd()),
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_ref(&value) as u64,
            flags: BPF_ANY,
            ..Default::default()
        };
        // SAFETY: `attr` is the BPF_MAP_UPDATE_ELEM layout; `key` and `value` are live
        // u32 locals (the map's key and value size) that the kernel only reads.
        unsafe { bpf_raw(BPF_MAP_UPDATE_ELEM, &mut attr) }
            .map_err(|source| XdpError::MapUpdate { queue, source })?;
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A loaded XDP program.
#[derive(Debug)]
pub(crate) struct XdpProg {
    fd: OwnedFd,
}

impl XdpProg {
    /// Load the XSKMAP redirect program for `map`.
    pub(crate) fn load_redirect(map: &XskMap) -> Result<Self, XdpError> {
        Self::load(&redirect_program(map.raw_fd()), "vnm_xsk_redir")
    }

    /// Load `insns` as an XDP program. On failure the load is repeated with the
    /// verifier log enabled, and the log is returned in the error.
    pub(crate) fn load(insns: &[BpfInsn], name: &str) -> Result<Self, XdpError> {
        match Self::load_with_log(insns, name, None) {
            Ok(fd) => Ok(XdpProg { fd }),
            Err(first) => {
                let mut log = vec![0u8; VERIFIER_LOG_SIZE];
                match Self::load_with_log(insns, name, Some(&mut log)) {
                    // A retry that succeeds is as good as a first success.
                    Ok(fd) => Ok(XdpProg { fd }),
                    Err(source) => {
                        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                        let log = String::from_utf8_lossy(&log[..end]).trim_end().to_string();
                        log::debug!("xdp program load failed ({first}), verifier log:\n{log}");
                        Err(XdpError::ProgLoad { source, log })
                    }
                }
            }
        }
    }

    fn load_with_log(insns: &[BpfInsn], name: &str, log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
        const LICENSE: &[u8] = b"Dual BSD/GPL\0";
        let insn_cnt =
            u32::try_from(insns.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            prog_name: obj_name(name),
            expected_attach_type: BPF_XDP,
            ..Default::default()
        };
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        // SAFETY: `attr` is the BPF_PROG_LOAD layout; `insns` (insn_cnt entries of the
        // kernel's `struct bpf_insn` layout) and the NUL-terminated license are only
        // read; the log buffer, when given, is a live mutable slice of `log_size`
        // bytes the kernel writes into. All outlive the call.
        unsafe { bpf_fd(BPF_PROG_LOAD, &mut attr) }
    }

    /// Attach to the interface `ifindex` with a BPF link: driver mode first unless
    /// `mode` says otherwise, generic mode where the driver refuses.
    pub(crate) fn attach(
        &self,
        iface: &str,
        ifindex: u32,
        mode: Option<AttachMode>,
    ) -> Result<XdpLink, XdpError> {
        let attempt = |mode: AttachMode| self.link_create(ifindex, mode);
        match mode {
            Some(mode) => attempt(mode)
                .map(|fd| XdpLink { _fd: fd, mode })
                .map_err(|source| XdpError::Attach {
                    iface: iface.to_string(),
                    mode,
                    source,
                }),
            None => match attempt(AttachMode::Driver) {
                Ok(fd) => Ok(XdpLink {
                    _fd: fd,
                    mode: AttachMode::Driver,
                }),
                Err(driver) => {
                    log::info!("xdp {iface}: driver mode refused ({driver}), trying generic mode");
                    attempt(AttachMode::Generic)
                        .map(|fd| XdpLink {
                            _fd: fd,
                            mode: AttachMode::Generic,
                        })
                        .map_err(|source| XdpError::AttachAny {
                            iface: iface.to_string(),
                            driver,
                            source,
                        })
                }
            },
        }
    }

    fn link_create(&self, ifindex: u32, mode: AttachMode) -> io::Result<OwnedFd> {
        let mut attr = LinkCreateAttr {
            prog_fd: attr_fd(self.fd.as_raw_fd()),
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: mode.flags(),
        };
        // SAFETY: `attr` is the XDP part of the BPF_LINK_CREATE layout and holds no
        // addresses.
        unsafe { bpf_fd(BPF_LINK_CREATE, &mut attr) }
    }
}

/// The program attached to an interface; closing it detaches the program.
#[derive(Debug)]
pub(crate) struct XdpLink {
    /// Held for its Drop: closing the last link fd detaches the program.
    _fd: OwnedFd,
    mode: AttachMode,
}

impl XdpLink {
    /// Where the program runs.
    pub(crate) fn mode(&self) -> AttachMode {
        self.mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn redirect_program_encoding() {
        let p = redirect_program(7);
        // ldxw r2, [r1 + 16]
        assert_eq!(
            p[0],
            BpfInsn {
                code: 0x61,
                regs: 0x12,
                off: 16,
                imm: 0
            }
        );
        // lddw r1, map_fd 7 (pseudo map fd), second half zero
        assert_eq!(
            p[1],
            BpfInsn {
                code: 0x18,
                regs: 0x11,
                off: 0,
                imm: 7
            }
        );
        assert_eq!(p[2], BpfInsn::new(0, 0, 0, 0, 0));
        // mov64 r3, 2
        assert_eq!(
            p[3],
            BpfInsn {
                code: 0xb7,
                regs: 0x03,
                off: 0,
                imm: 2
            }
        );
        // call 51; exit
        assert_eq!((p[4].code, p[4].imm), (0x85, 51));
        assert_eq!(p[5].code, 0x95);
    }

    #[test]
    fn names_are_truncated_and_terminated() {
        let n = obj_name("a_very_long_program_name");
        assert_eq!(&n[..15], b"a_very_long_pro");
        assert_eq!(n[15], 0);
    }

    #[test]
    fn map_and_program_load() {
        if !is_root() {
            eprintln!("skipped: loading BPF programs needs root (CAP_BPF, CAP_NET_ADMIN)");
            return;
        }
        let map = XskMap::create(4).expect("create xskmap");
        XdpProg::load_redirect(&map).expect("load redirect program");
    }

    #[test]
    fn verifier_log_is_returned() {
        if !is_root() {
            eprintln!("skipped: loading BPF programs needs root (CAP_BPF, CAP_NET_ADMIN)");
            return;
        }
        // Returns r0 without ever setting it: the verifier refuses.
        let bad = [BpfInsn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)];
        match XdpProg::load(&bad, "vnm_bad") {
            Err(XdpError::ProgLoad { log, .. }) => {
                assert!(log.contains("R0"), "unexpected verifier log: {log:?}")
            }
            other => panic!("expected a verifier error, got {other:?}"),
        }
    }
}
