// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! File descriptors handed over by the caller: checked before they are used, then
//! owned by the backend (close-on-exec set: they go no further).
//!
//! The vhost-user socket may come listening (the backend accepts one frontend after
//! another, as on a path it bound itself) or already connected to the frontend (it is
//! served once); `SO_ACCEPTCONN` tells which.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

/// Errors of passed file descriptors.
#[derive(Debug, thiserror::Error)]
pub enum PassedFdError {
    /// Not a descriptor number.
    #[error("{what}: {fd} is not a file descriptor number")]
    Negative {
        /// Where the fd came from (`--fd 3`, `LISTEN_FDS`).
        what: String,
        /// The number given.
        fd: RawFd,
    },
    /// No such open descriptor.
    #[error("{what}: file descriptor {fd} is not open (was it inherited? clear FD_CLOEXEC in the caller): {source}")]
    NotOpen {
        /// Where the fd came from.
        what: String,
        /// The number given.
        fd: RawFd,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The descriptor is not a socket.
    #[error("{what}: file descriptor {fd} is not a socket")]
    NotASocket {
        /// Where the fd came from.
        what: String,
        /// The number given.
        fd: RawFd,
    },
    /// A socket, but not a UNIX stream socket.
    #[error(
        "{what}: file descriptor {fd} is not a UNIX stream socket (family {family}, type {kind})"
    )]
    NotUnixStream {
        /// Where the fd came from.
        what: String,
        /// The number given.
        fd: RawFd,
        /// `SO_DOMAIN`.
        family: i32,
        /// `SO_TYPE`.
        kind: i32,
    },
    /// A socket option or flag could not be read or set.
    #[error("{what}: file descriptor {fd}: {call}: {source}")]
    Sys {
        /// Where the fd came from.
        what: String,
        /// The number given.
        fd: RawFd,
        /// The call that failed.
        call: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A vhost-user socket handed over by the caller.
#[derive(Debug)]
pub enum PassedSocket {
    /// Listening: accept one frontend after another.
    Listener(UnixListener),
    /// Connected to the frontend: serve it, then exit.
    Stream(UnixStream),
}

fn fd_flags(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFD only reads the descriptor table entry of `fd`; an fd that is not
    // open gives EBADF, which is the answer sought.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

fn set_cloexec(fd: RawFd, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETFD sets the descriptor flags of an open fd; no memory is involved.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn is_socket(fd: RawFd) -> io::Result<bool> {
    // SAFETY: an all-zero stat is valid storage for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one struct stat into `st`, a live local.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

fn sockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: getsockopt writes at most `len` bytes (one c_int) into `v`, a live local,
    // and updates `len`, also a live local.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            std::ptr::from_mut(&mut v).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Check that `fd` is open and take it over (close-on-exec from now on). The caller
/// must make sure no other part of the process owns `fd` (each number is claimed once:
/// the command line refuses duplicates).
pub fn claim(fd: RawFd, what: &str) -> Result<OwnedFd, PassedFdError> {
    if fd < 0 {
        return Err(PassedFdError::Negative {
            what: what.to_string(),
            fd,
        });
    }
    let flags = fd_flags(fd).map_err(|source| PassedFdError::NotOpen {
        what: what.to_string(),
        fd,
        source,
    })?;
    set_cloexec(fd, flags).map_err(|source| PassedFdError::Sys {
        what: what.to_string(),
        fd,
        call: "F_SETFD",
        source,
    })?;
    // SAFETY: `fd` is open (F_GETFD succeeded), was inherited from the caller for us,
    // and the caller of `claim` guarantees nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Take `fd` as the vhost-user socket: it must be an open UNIX stream socket, either
/// listening or connected.
pub fn socket(fd: RawFd, what: &str) -> Result<PassedSocket, PassedFdError> {
    let sys = |call, source| PassedFdError::Sys {
        what: what.to_string(),
        fd,
        call,
        source,
    };
    let owned = claim(fd, what)?;
    if !is_socket(fd).map_err(|e| sys("fstat", e))? {
        return Err(PassedFdError::NotASocket {
            what: what.to_string(),
            fd,
        });
    }
    let family = sockopt_int(fd, libc::SO_DOMAIN).map_err(|e| sys("SO_DOMAIN", e))?;
    let kind = sockopt_int(fd, libc::SO_TYPE).map_err(|e| sys("SO_TYPE", e))?;
    if family != libc::AF_UNIX || kind != libc::SOCK_STREAM {
        return Err(PassedFdError::NotUnixStream {
            what: what.to_string(),
            fd,
            family,
            kind,
        });
    }
    let listening = sockopt_int(fd, libc::SO_ACCEPTCONN).map_err(|e| sys("SO_ACCEPTCONN", e))? != 0;
    Ok(if listening {
        PassedSocket::Listener(UnixListener::from(owned))
    } else {
        let stream = UnixStream::from(owned);
        // The request loop reads the connection blocking, whatever the caller set.
        stream
            .set_nonblocking(false)
            .map_err(|e| sys("O_NONBLOCK", e))?;
        PassedSocket::Stream(stream)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn a_listening_socket_is_told_from_a_connected_one() {
        let dir = std::env::temp_dir().join(format!("vnm-fds-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let l = UnixListener::bind(&dir).unwrap();
        let c = UnixStream::connect(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert!(matches!(
            socket(l.into_raw_fd(), "test").unwrap(),
            PassedSocket::Listener(_)
        ));
        assert!(matches!(
            socket(c.into_raw_fd(), "test").unwrap(),
            PassedSocket::Stream(_)
        ));
    }

    #[test]
    fn bad_fds_are_refused_by_kind() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let raw = file.as_raw_fd();
        std::mem::forget(file);
        let e = socket(raw, "--fd").unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let e = socket(a.into_raw_fd(), "--fd").unwrap_err().to_string();
        assert!(e.contains("not a UNIX stream socket"), "{e}");
        let e = socket(-1, "--fd").unwrap_err().to_string();
        assert!(e.contains("not a file descriptor number"), "{e}");
    }
}
