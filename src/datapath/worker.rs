//! The queue pair worker thread: one epoll over the pair's kick eventfds, the uplink
//! queue fd and an exit eventfd.
//!
//! Event ids are the variants of `Event`, private to each worker's own epoll
//! instance, so they cannot collide with each other or with the exit event whatever
//! the number of queue pairs. A ring starts working as soon as the worker starts (the
//! guest may have posted RX buffers long ago and will not kick again).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::holdoff::TxHoldoff;
use super::ring::{Ring, RingSetup};
use super::rx::{RxOutcome, RxPath};
use super::tx::{TxOutcome, TxPath};
use crate::metrics::QueueMetrics;
use crate::netmem::SharedPageMap;
use crate::uplink::UplinkQueue;
use crate::virtio::Features;

/// Epoll timeout while TX packets are in flight (their completion raises no event).
const IN_FLIGHT_POLL_MS: i32 = 1;

/// Epoll event ids of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Event {
    Exit = 1,
    RxKick = 2,
    TxKick = 3,
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

/// Work rounds between two looks at the event fds while the rings stay busy.
const WORK_ROUNDS: u32 = 64;

/// While the uplink refuses TX, retry this often even without EPOLLOUT (ms).
const TX_BLOCKED_RETRY_MS: i32 = 10;

/// Everything a worker needs.
pub struct WorkerSpec {
    /// Queue pair index.
    pub pair: usize,
    /// RX ring (virtqueue 2 * pair), if active.
    pub rx: Option<RingSetup>,
    /// TX ring (virtqueue 2 * pair + 1), if active.
    pub tx: Option<RingSetup>,
    /// Acked features.
    pub features: Features,
    /// MTU (bounds RX frames without GSO).
    pub mtu: u16,
    /// Largest ring size we accept.
    pub max_queue_size: u16,
    /// Guest memory.
    pub memory: Arc<SharedPageMap>,
    /// This pair's counters.
    pub metrics: Arc<QueueMetrics>,
    /// This pair's uplink queue.
    pub uplink: Box<dyn UplinkQueue>,
    /// Busy-poll budget after the last packet (None: sleep at once).
    pub busy_poll: Option<std::time::Duration>,
    /// How long guest TX kicks stay off after a TX batch (None: re-enabled at once).
    pub tx_holdoff: Option<std::time::Duration>,
}

/// What a stopped worker hands back.
pub struct WorkerState {
    /// RX ring (next_avail, next_used), if it ran.
    pub rx: Option<(u16, u16)>,
    /// TX ring (next_avail, next_used), if it ran.
    pub tx: Option<(u16, u16)>,
    /// The uplink queue.
    pub uplink: Box<dyn UplinkQueue>,
}

/// A running worker.
pub struct PairWorker {
    exit: EventFd,
    thread: JoinHandle<WorkerState>,
}

impl PairWorker {
    /// Start a worker thread.
    pub fn spawn(spec: WorkerSpec) -> io::Result<Self> {
        let exit = EventFd::new(EFD_NONBLOCK)?;
        let exit2 = exit.try_clone()?;
        let pair = spec.pair;
        let thread = std::thread::Builder::new()
            .name(format!("vnm-q{pair}"))
            .spawn(move || run(spec, exit2))?;
        Ok(PairWorker { exit, thread })
    }

    /// Stop the worker and take back its state.
    ///
    /// # Panics
    /// If the worker thread panicked (a bug: guest input never panics a worker).
    pub fn stop(self) -> WorkerState {
        let _ = self.exit.write(1);
        match self.thread.join() {
            Ok(s) => s,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

struct Poller {
    epfd: RawFd,
    uplink_fd: Option<RawFd>,
    uplink_interest: Option<epoll::Events>,
    /// The uplink's TX fd when it is not `uplink_fd`, and whether it is registered.
    uplink_tx_fd: Option<RawFd>,
    tx_registered: bool,
}

impl Poller {
    fn add(&self, fd: RawFd, ev: Event, events: epoll::Events) -> io::Result<()> {
        epoll::ctl(
            self.epfd,
            epoll::ControlOptions::EPOLL_CTL_ADD,
            fd,
            epoll::Event::new(events, ev as u64),
        )
    }

    /// Poll the uplink for readability only while RX can take packets, and for
    /// writability only while TX is blocked. A separate TX fd is in the epoll set only
    /// while TX is blocked.
    fn set_uplink(&mut self, want_in: bool, want_out: bool) -> io::Result<()> {
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
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: `epfd` came from epoll_create1 and is closed exactly once, here.
        unsafe { libc::close(self.epfd) };
    }
}

fn make_ring(setup: Option<RingSetup>, max: u16, pair: usize, what: &str) -> Option<Ring> {
    let setup = setup?;
    match Ring::new(setup, max) {
        Ok(r) => Some(r),
        Err(e) => {
            log::error!("queue pair {pair}: {what} ring unusable: {e}");
            None
        }
    }
}

fn run(spec: WorkerSpec, exit: EventFd) -> WorkerState {
    let WorkerSpec {
        pair,
        rx,
        tx,
        features,
        mtu,
        max_queue_size,
        memory,
        metrics,
        mut uplink,
        busy_poll,
        tx_holdoff,
    } = spec;
    let mut rx_ring = make_ring(rx, max_queue_size, pair, "RX");
    let mut tx_ring = make_ring(tx, max_queue_size, pair, "TX");
    let mut rx_path = RxPath::default();
    let mut tx_path = TxPath::default();
    let m = &*metrics;

    let result = (|| -> io::Result<()> {
        let mut poller = Poller {
            epfd: epoll::create(true)?,
            uplink_fd: uplink.fd(),
            uplink_interest: None,
            uplink_tx_fd: uplink.tx_fd().filter(|&t| Some(t) != uplink.fd()),
            tx_registered: false,
        };
        poller.add(exit.as_raw_fd(), Event::Exit, epoll::Events::EPOLLIN)?;
        if let Some(r) = &rx_ring {
            poller.add(r.kick.as_raw_fd(), Event::RxKick, epoll::Events::EPOLLIN)?;
        }
        if let Some(r) = &tx_ring {
            poller.add(r.kick.as_raw_fd(), Event::TxKick, epoll::Events::EPOLLIN)?;
        }
        let mut holdoff = match tx_holdoff.filter(|_| tx_ring.is_some()) {
            Some(d) => {
                let h = TxHoldoff::new(d)?;
                poller.add(h.fd(), Event::TxHoldoff, epoll::Events::EPOLLIN)?;
                Some(h)
            }
            None => None,
        };
        let mut rx_armed = rx_ring.is_some();
        let mut tx_blocked = false;
        let mut need_rx = rx_ring.is_some();
        let mut need_tx = tx_ring.is_some();
        let mut events = vec![epoll::Event::new(epoll::Events::empty(), 0); 8];
        let moved = |m: &QueueMetrics| m.tx_packets.get() + m.rx_packets.get();
        let mut last_work = std::time::Instant::now();
        // The snapshot generation the uplink was last given (u64::MAX: none yet).
        let mut attached = u64::MAX;
        loop {
            let before = moved(m);
            // Work until nothing is left, then sleep; after WORK_ROUNDS rounds look at
            // the event fds (a stop request) without sleeping, then go on.
            let mut rounds = 0;
            while ((need_tx && !tx_blocked) || (need_rx && rx_armed)) && rounds < WORK_ROUNDS {
                rounds += 1;
                let map = memory.load();
                if map.generation() != attached {
                    attached = map.generation();
                    uplink.attach_memory(&map);
                }
                if need_tx && !tx_blocked {
                    if let Some(ring) = tx_ring.as_mut() {
                        ring.disable_notification(map.mem());
                        let batches = m.tx_batches.get();
                        match tx_path.process(ring, &map, uplink.as_mut(), features, m) {
                            TxOutcome::Blocked => {
                                tx_blocked = true;
                                // The uplink's writability brings TX back, not the timer.
                                if let Some(h) = holdoff.as_mut() {
                                    h.end();
                                }
                            }
                            TxOutcome::Budget => {}
                            // A broken ring is not looked at again until it is set up
                            // again (its avail index may say there is always work).
                            TxOutcome::Drained if ring.fault.is_some() => {
                                need_tx = false;
                                // A broken ring gets no timer looks either.
                                if let Some(h) = holdoff.as_mut() {
                                    h.end();
                                }
                            }
                            TxOutcome::Drained => {
                                let worked = m.tx_batches.get() != batches;
                                if holdoff.as_mut().is_some_and(|h| h.keep(worked)) {
                                    need_tx = false;
                                } else {
                                    need_tx = ring.enable_notification(map.mem());
                                }
                            }
                        }
                    } else {
                        need_tx = false;
                    }
                }
                if need_rx && rx_armed {
                    if let Some(ring) = rx_ring.as_mut() {
                        match rx_path.process(ring, &map, uplink.as_mut(), features, mtu, m) {
                            RxOutcome::NoBuffers => {
                                rx_armed = false;
                                need_rx = false;
                            }
                            RxOutcome::Drained => need_rx = false,
                            RxOutcome::Budget => {}
                        }
                    } else {
                        need_rx = false;
                    }
                }
            }
            poller.set_uplink(rx_armed && rx_ring.is_some(), tx_blocked)?;
            if let Some(h) = holdoff.as_mut() {
                h.arm()?;
            }
            // Busy-poll: keep looking at the rings without sleeping for a while after
            // the last packet moved.
            let now = std::time::Instant::now();
            if moved(m) != before {
                last_work = now;
            }
            let still_busy = (need_tx && !tx_blocked) || (need_rx && rx_armed);
            let mut timeout = match busy_poll {
                _ if still_busy => 0,
                Some(budget) if now.duration_since(last_work) < budget => {
                    need_tx = tx_ring.as_ref().is_some_and(|r| r.fault.is_none());
                    need_rx = rx_ring.as_ref().is_some_and(|r| r.fault.is_none()) && rx_armed;
                    0
                }
                // A blocked uplink normally reports EPOLLOUT; some only drain when
                // kicked (an AF_XDP TX ring while its link was down), so retry anyway.
                _ if tx_blocked => TX_BLOCKED_RETRY_MS,
                _ => -1,
            };
            // Packets in flight complete without an event on our fds: look again soon.
            let in_flight = tx_path.in_flight() > 0;
            if in_flight && timeout != 0 {
                timeout = IN_FLIGHT_POLL_MS;
            }
            let n = match epoll::wait(poller.epfd, timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if in_flight {
                if let Some(ring) = tx_ring.as_mut() {
                    let map = memory.load();
                    tx_path.poll_in_flight(ring, &map, uplink.as_mut(), m);
                }
            }
            // A timeout while blocked (the retry, or the in-flight poll): try again.
            if n == 0 && tx_blocked && timeout > 0 {
                tx_blocked = false;
                need_tx = true;
            }
            for ev in &events[..n] {
                let flags = epoll::Events::from_bits_truncate(ev.events);
                match Event::from_u64(ev.data) {
                    Some(Event::Exit) => return Ok(()),
                    Some(Event::RxKick) => {
                        if let Some(r) = &rx_ring {
                            let _ = r.kick.read();
                        }
                        rx_armed = true;
                        need_rx = true;
                    }
                    Some(Event::TxKick) => {
                        if let Some(r) = &tx_ring {
                            let _ = r.kick.read();
                        }
                        need_tx = true;
                    }
                    Some(Event::TxHoldoff) => {
                        if let Some(h) = holdoff.as_mut() {
                            need_tx |= h.expired();
                        }
                    }
                    Some(Event::Uplink) => {
                        if flags.intersects(epoll::Events::EPOLLOUT | epoll::Events::EPOLLERR) {
                            tx_blocked = false;
                            need_tx = true;
                        }
                        if flags.intersects(epoll::Events::EPOLLIN | epoll::Events::EPOLLHUP) {
                            need_rx = true;
                        }
                    }
                    None => {}
                }
            }
        }
    })();
    if let Err(e) = result {
        log::error!("queue pair {pair}: worker stopped: {e}");
    }
    if let Some(ring) = rx_ring.as_mut() {
        let map = memory.load();
        rx_path.release(ring, &map);
    }
    if let Some(ring) = tx_ring.as_mut() {
        let map = memory.load();
        tx_path.finish(ring, &map, uplink.as_mut(), m);
    }
    WorkerState {
        rx: rx_ring.map(|r| r.indices()),
        tx: tx_ring.map(|r| r.indices()),
        uplink,
    }
}
