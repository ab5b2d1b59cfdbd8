// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `--user` / `--group`: once the uplink is set up (the TAP opened, the AF_XDP
//! sockets bound), the backend becomes that user and group and keeps only the
//! capabilities its uplink still needs: none for a TAP, `CAP_NET_RAW` and
//! `CAP_IPC_LOCK` for AF_XDP (see [`Retained`]).
//!
//! The order is the one that cannot be undone halfway: the bounding set is cut while
//! `CAP_SETPCAP` is still held, then `setgroups`, `setgid`, `setuid` (each checked,
//! glibc applies them to every thread), then `capset` leaves exactly the retained set,
//! the ambient set is cleared and `no_new_privs` is set. The result is read back.

use std::ffi::CString;
use std::io;

/// `CAP_SETPCAP`.
const CAP_SETPCAP: u32 = 8;
/// `CAP_NET_RAW`.
pub const CAP_NET_RAW: u32 = 13;
/// `CAP_IPC_LOCK`.
pub const CAP_IPC_LOCK: u32 = 14;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Errors of the privilege drop.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// No such user.
    #[error("unknown --user {0:?}: no such user name or uid")]
    UnknownUser(String),
    /// No such group.
    #[error("unknown --group {0:?}: no such group name or gid")]
    UnknownGroup(String),
    /// The user database could not be read.
    #[error("cannot look up {what} {name:?}: {source}")]
    Lookup {
        /// `--user` or `--group`.
        what: &'static str,
        /// The name.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A step of the drop failed; the backend must not go on.
    #[error("cannot drop privileges to {identity}: {call}: {source}")]
    Drop {
        /// `user:group` (uid:gid).
        identity: String,
        /// The call that failed.
        call: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The drop did not stick.
    #[error("privileges not dropped to {identity}: {what}")]
    Check {
        /// `user:group` (uid:gid).
        identity: String,
        /// What was found.
        what: String,
    },
}

/// The identity to become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name (or the uid as given).
    pub user: String,
    /// uid.
    pub uid: libc::uid_t,
    /// Group name (or the gid as given).
    pub group: String,
    /// gid.
    pub gid: libc::gid_t,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} ({}:{})",
            self.user, self.group, self.uid, self.gid
        )
    }
}

/// Capabilities kept after the drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retained(u64);

impl Retained {
    /// None at all (TAP, test uplinks: every fd is open).
    pub const NONE: Retained = Retained(0);

    /// What AF_XDP needs after its sockets are bound: `CAP_NET_RAW` to open the
    /// sockets it makes later (the zero-copy TX socket over each new guest memory
    /// table, the AF_PACKET socket of a RARP announcement) and `CAP_IPC_LOCK` to pin
    /// UMEM beyond `RLIMIT_MEMLOCK`.
    pub const XDP: Retained = Retained(1 << CAP_NET_RAW | 1 << CAP_IPC_LOCK);

    /// Whether capability `cap` is kept.
    pub fn has(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    /// The kept set as a 64-bit mask.
    pub fn mask(self) -> u64 {
        self.0
    }
}

fn buffer_size(key: libc::c_int) -> usize {
    // SAFETY: sysconf has no memory arguments.
    let n = unsafe { libc::sysconf(key) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(16384)
}

/// uid and primary gid of user `name` (a name, or a number).
fn lookup_user(name: &str) -> Result<Option<(libc::uid_t, libc::gid_t, String)>, PrivilegeError> {
    let lookup = |source| PrivilegeError::Lookup {
        what: "--user",
        name: name.to_string(),
        source,
    };
    let c = CString::new(name).map_err(|_| PrivilegeError::UnknownUser(name.to_string()))?;
    let mut buf = vec![0u8; buffer_size(libc::_SC_GETPW_R_SIZE_MAX)];
    // SAFETY: an all-zero passwd is valid storage for getpwnam_r to fill.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let numeric = name.parse::<libc::uid_t>().ok();
    // SAFETY: getpw*_r write into `pw` and `buf` (whose length is passed), both live
    // locals, and set `found` to `&pw` or null; the name is NUL-terminated.
    let rc = unsafe {
        match numeric {
            Some(uid) => {
                libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found)
            }
            None => libc::getpwnam_r(
                c.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            ),
        }
    };
    if rc != 0 && rc != libc::ENOENT && rc != libc::ESRCH {
        return Err(lookup(io::Error::from_raw_os_error(rc)));
    }
    if found.is_null() {
        // A numeric uid need not be in the database (DynamicUser, containers).
        return Ok(numeric.map(|uid| (uid, uid, name.to_string())));
    }
    Ok(Some((pw.pw_uid, pw.pw_gid, name.to_string())))
}

/// gid of group `name` (a name, or a number).
fn lookup_group(name: &str) -> Result<Option<libc::gid_t>, PrivilegeError> {
    if let Ok(gid) = name.parse::<libc::gid_t>() {
        return Ok(Some(gid));
    }
    let c = CString::new(name).map_err(|_| PrivilegeError::UnknownGroup(name.to_string()))?;
    let mut buf = vec![0u8; buffer_size(libc::_SC_GETGR_R_SIZE_MAX)];
    // SAFETY: an all-zero group is valid storage for getgrnam_r to fill.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `gr` and `buf` (length passed), both live locals,
    // and sets `found` to `&gr` or null; the name is NUL-terminated.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut gr,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 && rc != libc::ENOENT && rc != libc::ESRCH {
        return Err(PrivilegeError::Lookup {
            what: "--group",
            name: name.to_string(),
            source: io::Error::from_raw_os_error(rc),
        });
    }
    Ok((!found.is_null()).then_some(gr.gr_gid))
}

/// Resolve `--user` (and `--group`, else the user's primary group).
pub fn resolve(user: &str, group: Option<&str>) -> Result<Identity, PrivilegeError> {
    let (uid, primary, user) =
        lookup_user(user)?.ok_or_else(|| PrivilegeError::UnknownUser(user.to_string()))?;
    let (gid, group) = match group {
        Some(g) => (
            lookup_group(g)?.ok_or_else(|| PrivilegeError::UnknownGroup(g.to_string()))?,
            g.to_string(),
        ),
        None => (primary, primary.to_string()),
    };
    Ok(Identity {
        user,
        uid,
        group,
        gid,
    })
}

fn check(r: impl Into<i64>) -> io::Result<()> {
    if r.into() < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    let zero: libc::c_ulong = 0;
    // SAFETY: the prctl options used here (PR_SET_KEEPCAPS, PR_CAPBSET_DROP,
    // PR_CAP_AMBIENT, PR_SET_NO_NEW_PRIVS) take integers only, no pointers.
    check(unsafe { libc::prctl(option, arg, zero, zero, zero) })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// This thread's effective and permitted sets.
fn capget() -> io::Result<(u64, u64)> {
    let mut hdr = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with version 3 reads the header and writes two CapData entries;
    // both point at live locals of the kernel's layout.
    check(unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) })?;
    let join = |lo: u32, hi: u32| u64::from(hi) << 32 | u64::from(lo);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// Make `mask` this thread's effective and permitted sets, inheritable empty.
fn capset(mask: u64) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let lo = u32::try_from(mask & 0xffff_ffff).unwrap_or(0);
    let hi = u32::try_from(mask >> 32).unwrap_or(0);
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: capset with version 3 reads the header and two CapData entries from
    // live locals of the kernel's layout.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) })
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Become `id`, keeping only `keep`. Call it while the process has one thread (the
/// capability calls are per thread; threads started afterwards inherit the result).
pub fn drop_to(id: &Identity, keep: Retained) -> Result<(), PrivilegeError> {
    let fail = |call, source| PrivilegeError::Drop {
        identity: id.to_string(),
        call,
        source,
    };
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count);
    if threads != 1 {
        return Err(PrivilegeError::Check {
            identity: id.to_string(),
            what: format!("{threads} threads run already: capabilities are per thread"),
        });
    }
    let (_, permitted) = capget().map_err(|e| fail("capget", e))?;
    if permitted & (1 << CAP_SETPCAP) != 0 {
        for cap in (0..=last_cap()).filter(|c| !keep.has(*c)) {
            match prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap)) {
                Ok(()) => {}
                // A capability this kernel does not know.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(fail("PR_CAPBSET_DROP", e)),
            }
        }
    }
    if keep != Retained::NONE {
        prctl(libc::PR_SET_KEEPCAPS, 1).map_err(|e| fail("PR_SET_KEEPCAPS", e))?;
    }
    let groups = [id.gid];
    // SAFETY: setgroups reads one gid from a live local array; the count matches.
    check(unsafe { libc::setgroups(1, groups.as_ptr()) }).map_err(|e| fail("setgroups", e))?;
    // SAFETY: setgid/setuid take integers only.
    check(unsafe { libc::setgid(id.gid) }).map_err(|e| fail("setgid", e))?;
    // SAFETY: as above.
    check(unsafe { libc::setuid(id.uid) }).map_err(|e| fail("setuid", e))?;
    capset(keep.mask() & permitted).map_err(|e| fail("capset", e))?;
    prctl(libc::PR_SET_KEEPCAPS, 0).map_err(|e| fail("PR_SET_KEEPCAPS", e))?;
    match prctl(
        libc::PR_CAP_AMBIENT,
        libc::c_ulong::try_from(libc::PR_CAP_AMBIENT_CLEAR_ALL).unwrap_or(4),
    ) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {} // no ambient set
        Err(e) => return Err(fail("PR_CAP_AMBIENT_CLEAR_ALL", e)),
    }
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(|e| fail("PR_SET_NO_NEW_PRIVS", e))?;
    verify(id, keep.mask() & permitted)
}

fn verify(id: &Identity, want_caps: u64) -> Result<(), PrivilegeError> {
    let bad = |what: String| PrivilegeError::Check {
        identity: id.to_string(),
        what,
    };
    // SAFETY: these getters take no arguments and cannot fail.
    let ids = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if ids != (id.uid, id.uid, id.gid, id.gid) {
        return Err(bad(format!("uid/euid/gid/egid are {ids:?}")));
    }
    // SAFETY: setuid takes an integer; once a non-root uid holds no CAP_SETUID it must
    // fail, which is what is checked.
    if id.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(bad("setuid(0) still succeeds".into()));
    }
    let (effective, permitted) = capget().map_err(|e| bad(format!("capget: {e}")))?;
    if effective != want_caps || permitted != want_caps {
        return Err(bad(format!(
            "capabilities effective {effective:#x} permitted {permitted:#x}, want {want_caps:#x}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_numbers_resolve_and_strangers_do_not() {
        let root = resolve("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let n = resolve("65534", Some("65534")).unwrap();
        assert_eq!((n.uid, n.gid), (65534, 65534));
        assert!(matches!(
            resolve("vnm-no-such-user", None),
            Err(PrivilegeError::UnknownUser(_))
        ));
        assert!(matches!(
            resolve("root", Some("vnm-no-such-group")),
            Err(PrivilegeError::UnknownGroup(_))
        ));
    }

    #[test]
    fn xdp_keeps_raw_sockets_and_memory_locking_only() {
        assert!(Retained::XDP.has(CAP_NET_RAW) && Retained::XDP.has(CAP_IPC_LOCK));
        assert!(!Retained::XDP.has(12) && !Retained::NONE.has(CAP_NET_RAW));
    }
}
