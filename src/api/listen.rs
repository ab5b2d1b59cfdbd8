// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Where the HTTP servers listen: `--metrics ADDR` (a loopback TCP address or
//! `unix:PATH`) and `--api-socket PATH` (a unix socket), bound before the threads
//! start so that an address in use is a start-up error.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// An address the metrics or API server listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address on the loopback interface (127.0.0.0/8 or ::1).
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A `--metrics` address that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenAddrError {
    /// Neither `IP:PORT` nor `unix:PATH`.
    #[error("invalid --metrics {0:?}: expected 127.0.0.1:PORT, [::1]:PORT or unix:PATH")]
    Syntax(String),
    /// A TCP address off the loopback interface.
    #[error("invalid --metrics {0}: only loopback addresses (127.0.0.1, [::1]) are served; put a proxy in front for remote scrapes")]
    NotLoopback(SocketAddr),
    /// Port 0 (the kernel would pick one nobody knows).
    #[error("invalid --metrics {0}: give a port other than 0")]
    PortZero(SocketAddr),
    /// `unix:` with no path.
    #[error("invalid --metrics {0:?}: unix: needs a socket path")]
    EmptyPath(String),
}

impl ListenAddr {
    /// Parse a `--metrics` value.
    pub fn parse_metrics(s: &str) -> Result<ListenAddr, ListenAddrError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenAddrError::EmptyPath(s.to_string()));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let addr: SocketAddr = s
            .parse()
            .map_err(|_| ListenAddrError::Syntax(s.to_string()))?;
        if !addr.ip().is_loopback() {
            return Err(ListenAddrError::NotLoopback(addr));
        }
        if addr.port() == 0 {
            return Err(ListenAddrError::PortZero(addr));
        }
        Ok(ListenAddr::Tcp(addr))
    }
}

/// Binding a server's address failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process listens there.
    #[error("{what} {addr} is in use by another process")]
    InUse {
        /// `--metrics` or `--api-socket`.
        what: &'static str,
        /// The address.
        addr: ListenAddr,
    },
    /// The path names something that is not a socket (never removed).
    #[error("{what} {} exists and is not a socket; refusing to replace it", .path.display())]
    NotASocket {
        /// `--metrics` or `--api-socket`.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// Binding failed for another reason.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        /// `--metrics` or `--api-socket`.
        what: &'static str,
        /// The address.
        addr: ListenAddr,
        /// Cause.
        source: io::Error,
    },
}

/// A bound, non-blocking listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket; `path` is removed by [`Listener::remove_file`].
    Unix {
        /// The socket.
        listener: UnixListener,
        /// Its path.
        path: PathBuf,
    },
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix { listener, .. } => listener.as_fd(),
        }
    }
}

fn bind_unix(what: &'static str, path: &Path) -> Result<UnixListener, ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let addr = || ListenAddr::Unix(path.to_path_buf());
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse { what, addr: addr() });
            }
            // A stale socket file from an earlier run.
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => {
            return Err(ListenError::NotASocket {
                what,
                path: path.to_path_buf(),
            })
        }
        Err(_) => {}
    }
    UnixListener::bind(path).map_err(|source| ListenError::Bind {
        what,
        addr: addr(),
        source,
    })
}

impl Listener {
    /// Bind `addr` for `what` (the option, for errors) and make it non-blocking.
    pub fn bind(what: &'static str, addr: &ListenAddr) -> Result<Listener, ListenError> {
        let bind_error = |source: io::Error| {
            if source.kind() == io::ErrorKind::AddrInUse {
                ListenError::InUse {
                    what,
                    addr: addr.clone(),
                }
            } else {
                ListenError::Bind {
                    what,
                    addr: addr.clone(),
                    source,
                }
            }
        };
        let listener = match addr {
            ListenAddr::Tcp(a) => Listener::Tcp(TcpListener::bind(a).map_err(bind_error)?),
            ListenAddr::Unix(path) => Listener::Unix {
                listener: bind_unix(what, path)?,
                path: path.clone(),
            },
        };
        match &listener {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix { listener, .. } => listener.set_nonblocking(true),
        }
        .map_err(bind_error)?;
        Ok(listener)
    }

    /// Remove the socket file of a unix listener (at exit).
    pub fn remove_file(&self) {
        if let Listener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addresses_are_loopback_or_unix() {
        assert_eq!(
            ListenAddr::parse_metrics("127.0.0.1:9464"),
            Ok(ListenAddr::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        assert!(matches!(
            ListenAddr::parse_metrics("[::1]:9464"),
            Ok(ListenAddr::Tcp(_))
        ));
        assert_eq!(
            ListenAddr::parse_metrics("unix:/run/m.sock"),
            Ok(ListenAddr::Unix("/run/m.sock".into()))
        );
        assert!(matches!(
            ListenAddr::parse_metrics("0.0.0.0:9464"),
            Err(ListenAddrError::NotLoopback(_))
        ));
        assert!(matches!(
            ListenAddr::parse_metrics("192.168.1.1:9464"),
            Err(ListenAddrError::NotLoopback(_))
        ));
        assert!(matches!(
            ListenAddr::parse_metrics("127.0.0.1:0"),
            Err(ListenAddrError::PortZero(_))
        ));
        for bad in ["localhost:9464", "9464", "", "127.0.0.1"] {
            assert!(
                matches!(
                    ListenAddr::parse_metrics(bad),
                    Err(ListenAddrError::Syntax(_))
                ),
                "{bad}"
            );
        }
        assert!(ListenAddr::parse_metrics("unix:").is_err());
        let e = ListenAddr::parse_metrics("10.0.0.1:1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only loopback"), "{e}");
    }

    #[test]
    fn an_address_in_use_is_named() {
        let first = Listener::bind(
            "--metrics",
            &ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        )
        .unwrap();
        let Listener::Tcp(l) = &first else {
            unreachable!()
        };
        let taken = ListenAddr::Tcp(l.local_addr().unwrap());
        let e = Listener::bind("--metrics", &taken).unwrap_err();
        assert!(matches!(e, ListenError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("in use"), "{e}");

        let dir = std::env::temp_dir().join(format!("vnm-listen-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("api.sock");
        let a = Listener::bind("--api-socket", &ListenAddr::Unix(path.clone())).unwrap();
        let e = Listener::bind("--api-socket", &ListenAddr::Unix(path.clone())).unwrap_err();
        assert!(matches!(e, ListenError::InUse { .. }), "{e}");
        a.remove_file();
        drop(a);
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        let e = Listener::bind("--api-socket", &ListenAddr::Unix(file.clone())).unwrap_err();
        assert!(matches!(e, ListenError::NotASocket { .. }), "{e}");
        assert!(file.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
