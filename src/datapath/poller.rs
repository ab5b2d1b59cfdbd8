// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A worker's epoll instance: its event ids and the uplink interest that follows the
//! TX and RX states.
//!
//! Event ids are the variants of [`Event`], private to each worker's own epoll
//! instance, so they cannot collide with each other or with the exit event whatever
//! the number of queue pairs.

use std::io;
use std::os::fd::RawFd;

/// Epoll event ids of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Event {
    /// Stop the worker.
    Exit = 1,
    /// The guest kicked the RX ring.
    RxKick = 2,
    /// The guest kicked the TX ring.
    TxKick = 3,
    /// The uplink is readable, writable or in error.
    Uplink = 4,
    /// The TX holdoff ran out: look at the TX ring again.
    TxHoldoff = 5,
}

impl Event {
    fn from_u64(v: u64) -> Option<Self> {
        [
            Event::Exit,
            Event::RxKick,
            Event::TxKick,
            Event::Uplink,
            Event::TxHoldoff,
        ]
        .into_iter()
        .find(|e| *e as u64 == v)
    }
}

/// One readiness report: which event, with which epoll flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// The event id.
    pub event: Event,
    /// `EPOLLIN`, `EPOLLOUT`, `EPOLLERR`, `EPOLLHUP`...
    pub flags: epoll::Events,
}

/// The epoll instance of one worker.
pub struct Poller {
    epfd: RawFd,
    uplink_fd: Option<RawFd>,
    uplink_interest: Option<epoll::Events>,
    /// The uplink's TX fd when it is not `uplink_fd`, and whether it is registered.
    uplink_tx_fd: Option<RawFd>,
    tx_registered: bool,
    events: Vec<epoll::Event>,
}

impl Poller {
    /// A new epoll instance for an uplink queue polled on `uplink_fd` (readable for
    /// RX; writable for TX unless `uplink_tx_fd` names another fd).
    pub fn new(uplink_fd: Option<RawFd>, uplink_tx_fd: Option<RawFd>) -> io::Result<Self> {
        Ok(Poller {
            epfd: epoll::create(true)?,
            uplink_fd,
            uplink_interest: None,
            uplink_tx_fd: uplink_tx_fd.filter(|&t| Some(t) != uplink_fd),
            tx_registered: false,
            events: vec![epoll::Event::new(epoll::Events::empty(), 0); 8],
        })
    }

    /// Watch `fd` for readability as `event`.
    pub fn add_readable(&self, fd: RawFd, event: Event) -> io::Result<()> {
        epoll::ctl(
            self.epfd,
            epoll::ControlOptions::EPOLL_CTL_ADD,
            fd,
            epoll::Event::new(epoll::Events::EPOLLIN, event as u64),
        )
    }

    /// Poll the uplink for readability only while RX can take packets, and for
    /// writability only while TX is blocked. A separate TX fd is in the epoll set only
    /// while TX is blocked.
    pub fn set_uplink(&mut self, want_in: bool, want_out: bool) -> io::Result<()> {
        let Some(fd) = self.uplink_fd else {
            return Ok(());
        };
        let mut ev = epoll::Events::empty();
        if want_in {
            ev |= epoll::Events::EPOLLIN;
        }
        if let Some(tx_fd) = self.uplink_tx_fd {
            if want_out != self.tx_registered {
                let (op, events) = if want_out {
                    (
                        epoll::ControlOptions::EPOLL_CTL_ADD,
                        epoll::Events::EPOLLOUT,
                    )
                } else {
                    (epoll::ControlOptions::EPOLL_CTL_DEL, epoll::Events::empty())
                };
                epoll::ctl(
                    self.epfd,
                    op,
                    tx_fd,
                    epoll::Event::new(events, Event::Uplink as u64),
                )?;
                self.tx_registered = want_out;
            }
        } else if want_out {
            ev |= epoll::Events::EPOLLOUT;
        }
        if self.uplink_interest == Some(ev) {
            return Ok(());
        }
        let op = if self.uplink_interest.is_none() {
            epoll::ControlOptions::EPOLL_CTL_ADD
        } else {
            epoll::ControlOptions::EPOLL_CTL_MOD
        };
        epoll::ctl(
            self.epfd,
            op,
            fd,
            epoll::Event::new(ev, Event::Uplink as u64),
        )?;
        self.uplink_interest = Some(ev);
        Ok(())
    }

    /// Stop polling the uplink (it is gone; its fds stay open until it is reopened).
    pub fn drop_uplink(&mut self) {
        let del = |fd: RawFd| {
            // Errors mean it was not registered: nothing to undo.
            let _ = epoll::ctl(
                self.epfd,
                epoll::ControlOptions::EPOLL_CTL_DEL,
                fd,
                epoll::Event::new(epoll::Events::empty(), 0),
            );
        };
        if let (Some(fd), Some(_)) = (self.uplink_fd, self.uplink_interest) {
            del(fd);
        }
        if let (Some(fd), true) = (self.uplink_tx_fd, self.tx_registered) {
            del(fd);
        }
        self.uplink_fd = None;
        self.uplink_tx_fd = None;
        self.uplink_interest = None;
        self.tx_registered = false;
    }

    /// Poll a reopened uplink's fds (after [`Self::drop_uplink`]); the next
    /// [`Self::set_uplink`] registers them.
    pub fn set_uplink_fds(&mut self, uplink_fd: Option<RawFd>, uplink_tx_fd: Option<RawFd>) {
        self.drop_uplink();
        self.uplink_fd = uplink_fd;
        self.uplink_tx_fd = uplink_tx_fd.filter(|&t| Some(t) != uplink_fd);
    }

    /// Wait up to `timeout_ms` (-1: forever, 0: not at all) and return what is ready
    /// (nothing on a timeout or an interrupted wait).
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<impl Iterator<Item = Ready> + '_> {
        let n = match epoll::wait(self.epfd, timeout_ms, &mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        Ok(self.events[..n].iter().filter_map(|ev| {
            Some(Ready {
                event: Event::from_u64(ev.data)?,
                flags: epoll::Events::from_bits_truncate(ev.events),
            })
        }))
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: `epfd` came from epoll_create1 and is closed exactly once, here.
        unsafe { libc::close(self.epfd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn ready(p: &mut Poller) -> Vec<Ready> {
        p.wait(0).unwrap().collect()
    }

    #[test]
    fn reports_each_fd_under_its_own_event() {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let exit = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut p = Poller::new(None, None).unwrap();
        p.add_readable(kick.as_raw_fd(), Event::TxKick).unwrap();
        p.add_readable(exit.as_raw_fd(), Event::Exit).unwrap();
        assert!(ready(&mut p).is_empty());
        kick.write(1).unwrap();
        let r = ready(&mut p);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].event, Event::TxKick);
        assert!(r[0].flags.contains(epoll::Events::EPOLLIN));
        exit.write(1).unwrap();
        let mut got: Vec<Event> = ready(&mut p).into_iter().map(|r| r.event).collect();
        got.sort_by_key(|e| *e as u64);
        assert_eq!(got, vec![Event::Exit, Event::TxKick]);
    }

    #[test]
    fn the_uplink_interest_follows_the_states() {
        // A socket pair stands in for the uplink: always writable, readable once the
        // peer writes.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut p = Poller::new(Some(a.as_raw_fd()), None).unwrap();
        p.set_uplink(false, false).unwrap();
        assert!(ready(&mut p).is_empty(), "no interest, no event");
        p.set_uplink(false, true).unwrap();
        let r = ready(&mut p);
        assert_eq!(r.len(), 1);
        assert!(r[0].flags.contains(epoll::Events::EPOLLOUT));
        std::io::Write::write_all(&mut &b, b"x").unwrap();
        p.set_uplink(true, false).unwrap();
        let r = ready(&mut p);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].event, Event::Uplink);
        assert!(r[0].flags.contains(epoll::Events::EPOLLIN));
        assert!(!r[0].flags.contains(epoll::Events::EPOLLOUT));
    }

    #[test]
    fn a_separate_tx_fd_is_polled_only_while_blocked() {
        let (rx, _rx_peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, _tx_peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut p = Poller::new(Some(rx.as_raw_fd()), Some(tx.as_raw_fd())).unwrap();
        p.set_uplink(true, false).unwrap();
        assert!(ready(&mut p).is_empty(), "TX fd polled while not blocked");
        p.set_uplink(true, true).unwrap();
        let r = ready(&mut p);
        assert_eq!(r.len(), 1);
        assert!(r[0].flags.contains(epoll::Events::EPOLLOUT));
        p.set_uplink(true, false).unwrap();
        assert!(
            ready(&mut p).is_empty(),
            "TX fd still polled after unblocking"
        );
    }
}
