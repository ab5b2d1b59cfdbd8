// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! systemd socket activation (`sd_listen_fds(3)`): the service manager passes the
//! sockets it listens on as fds 3, 4, ... and says so in `LISTEN_FDS` (how many),
//! `LISTEN_PID` (the process they are meant for) and `LISTEN_FDNAMES` (their
//! `FileDescriptorName=`, colon-separated). The variables are read once at start-up
//! and removed, so that nothing the backend might start inherits them.

use std::os::fd::RawFd;

/// The first fd the service manager passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The `FileDescriptorName=` the backend looks for when more than one socket is passed.
pub const SOCKET_NAME: &str = "vhost-user";

/// Errors of socket activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_PID` names another process.
    #[error("socket activation: LISTEN_PID={listen_pid} is not this process (pid {pid}); the sockets were meant for another process")]
    OtherPid {
        /// The variable's value.
        listen_pid: String,
        /// Our pid.
        pid: u32,
    },
    /// `LISTEN_FDS` without `LISTEN_PID`.
    #[error("socket activation: LISTEN_FDS is set but LISTEN_PID is not")]
    NoPid,
    /// `LISTEN_FDS` is not a positive count.
    #[error("socket activation: LISTEN_FDS={0:?} is not a count of sockets from 1")]
    BadCount(String),
    /// Several sockets, none of them named for the backend.
    #[error("socket activation: {count} sockets passed (names {names:?}) and none named {SOCKET_NAME:?}; pass one, or name it with FileDescriptorName={SOCKET_NAME}")]
    Ambiguous {
        /// `LISTEN_FDS`.
        count: usize,
        /// `LISTEN_FDNAMES`.
        names: Vec<String>,
    },
}

/// The socket systemd passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivatedSocket {
    /// Its fd.
    pub fd: RawFd,
    /// Its `FileDescriptorName=` (systemd's default is the socket unit's name).
    pub name: Option<String>,
}

/// The variables as read (`None`: unset).
#[derive(Debug, Default, Clone)]
pub struct ListenEnv {
    /// `LISTEN_FDS`.
    pub fds: Option<String>,
    /// `LISTEN_PID`.
    pub pid: Option<String>,
    /// `LISTEN_FDNAMES`.
    pub names: Option<String>,
}

impl ListenEnv {
    /// Read the variables and remove them from the environment. Call it while the
    /// process has one thread (at the start of `main`): the environment is not
    /// thread-safe.
    pub fn take() -> ListenEnv {
        let get = |key: &str| {
            let v = std::env::var_os(key).map(|v| v.to_string_lossy().into_owned());
            std::env::remove_var(key);
            v
        };
        ListenEnv {
            fds: get("LISTEN_FDS"),
            pid: get("LISTEN_PID"),
            names: get("LISTEN_FDNAMES"),
        }
    }

    /// The socket to serve, for process `pid`: None when no socket was passed.
    pub fn socket(&self, pid: u32) -> Result<Option<ActivatedSocket>, ActivationError> {
        let Some(fds) = &self.fds else {
            return Ok(None);
        };
        let listen_pid = self.pid.as_ref().ok_or(ActivationError::NoPid)?;
        if listen_pid.trim().parse::<u32>().ok() != Some(pid) {
            return Err(ActivationError::OtherPid {
                listen_pid: listen_pid.clone(),
                pid,
            });
        }
        let count = fds
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| ActivationError::BadCount(fds.clone()))?;
        let names: Vec<String> = self
            .names
            .as_deref()
            .map(|n| n.split(':').map(str::to_string).collect())
            .unwrap_or_default();
        let index = if count == 1 {
            0
        } else {
            names
                .iter()
                .take(count)
                .position(|n| n == SOCKET_NAME)
                .ok_or(ActivationError::Ambiguous {
                    count,
                    names: names.clone(),
                })?
        };
        let offset = RawFd::try_from(index).map_err(|_| ActivationError::BadCount(fds.clone()))?;
        Ok(Some(ActivatedSocket {
            fd: LISTEN_FDS_START + offset,
            name: names.get(index).filter(|n| !n.is_empty()).cloned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(fds: Option<&str>, pid: Option<&str>, names: Option<&str>) -> ListenEnv {
        ListenEnv {
            fds: fds.map(Into::into),
            pid: pid.map(Into::into),
            names: names.map(Into::into),
        }
    }

    #[test]
    fn take_reads_and_removes_the_variables() {
        std::env::set_var("LISTEN_FDS", "1");
        std::env::set_var("LISTEN_PID", "4242");
        std::env::set_var("LISTEN_FDNAMES", "vhost-user");
        let e = ListenEnv::take();
        assert_eq!(
            (e.fds.as_deref(), e.pid.as_deref(), e.names.as_deref()),
            (Some("1"), Some("4242"), Some("vhost-user"))
        );
        for key in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
            assert!(std::env::var_os(key).is_none(), "{key} left set");
        }
    }

    #[test]
    fn one_socket_for_us_is_fd_3() {
        let s = env(Some("1"), Some("42"), Some("vm1.socket"))
            .socket(42)
            .unwrap();
        assert_eq!(
            s,
            Some(ActivatedSocket {
                fd: 3,
                name: Some("vm1.socket".into())
            })
        );
        assert_eq!(env(None, None, None).socket(42).unwrap(), None);
    }

    #[test]
    fn several_sockets_pick_the_named_one() {
        let e = env(Some("2"), Some("7"), Some("stats:vhost-user"));
        assert_eq!(e.socket(7).unwrap().unwrap().fd, 4);
        let e = env(Some("2"), Some("7"), Some("a:b"))
            .socket(7)
            .unwrap_err();
        assert!(e.to_string().contains("FileDescriptorName"), "{e}");
    }

    #[test]
    fn another_pid_or_a_bad_count_is_refused() {
        let e = env(Some("1"), Some("41"), None).socket(42).unwrap_err();
        assert!(
            e.to_string().contains("LISTEN_PID=41 is not this process"),
            "{e}"
        );
        assert!(matches!(
            env(Some("1"), None, None).socket(42),
            Err(ActivationError::NoPid)
        ));
        assert!(matches!(
            env(Some("0"), Some("42"), None).socket(42),
            Err(ActivationError::BadCount(_))
        ));
    }
}
