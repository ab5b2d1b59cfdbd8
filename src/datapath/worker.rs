// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The queue pair worker thread: the loop that turns readiness on the pair's kick
//! eventfds, the uplink queue fd, the holdoff timer and an exit eventfd into events of
//! the pair's TX and RX states ([`super::state`]), looks at the rings the states ask
//! for, and carries out what their transitions say.
//!
//! A ring starts working as soon as the worker starts (the guest may have posted RX
//! buffers long ago and will not kick again).
//!
//! Rate limits: the worker holds one [`Limiter`] per limited direction, built from
//! [`RateLimits`]; each round it loads the pair's generation (one atomic load) and
//! rebuilds them when it moved. An unlimited direction has none, and its batches run
//! the paths with [`crate::ratelimit::Unlimited`].

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::holdoff::HoldoffTimer;
use super::poller::{Event, Poller};
use super::ring::packed::PackedIndices;
use super::ring::{AnyRing, PackedRing, PackedSetup, Ring, RingSetup, Virtqueue};
use super::rx::{RxOutcome, RxPath};
use super::state::{
    self, Moved, RxEvent, RxState, Sleep, TxAction, TxEvent, TxState, UplinkState, UPLINK_REOPEN_MS,
};
use super::tx::{TxOutcome, TxPath};
use crate::metrics::QueueMetrics;
use crate::netmem::{GuestPageMap, SharedPageMap};
use crate::ratelimit::{Limiter, RateLimits};
use crate::uplink::UplinkQueue;
use crate::virtio::features::VIRTIO_F_RING_PACKED;
use crate::virtio::Features;

/// Packets of at least this size make a look a stream's (TSO segments, bulk data).
const STREAM_PACKET_BYTES: u64 = 1024;

/// What a TX look that moved `chains` packets of `bytes` from a ring of `size` was
/// (`--tx-holdoff` holds kicks off for a stream only): half the ring or more is a flood
/// the guest's kicks serve better than a timer; two chains or more, or a large packet,
/// a stream; one small packet sparse or request/response traffic, whose next packet
/// must not wait for a timer.
fn classify(chains: u64, bytes: u64, size: u16) -> Moved {
    if chains.saturating_mul(2) >= u64::from(size) {
        Moved::Flood
    } else if chains >= 2 || bytes >= STREAM_PACKET_BYTES {
        Moved::Stream
    } else {
        Moved::Sparse
    }
}

/// Work rounds between two looks at the event fds while the rings stay busy.
const WORK_ROUNDS: u32 = 64;

/// Everything a worker needs.
pub struct WorkerSpec {
    /// Queue pair index.
    pub pair: usize,
    /// RX ring (virtqueue 2 * pair), if active.
    pub rx: Option<RingSetup>,
    /// TX ring (virtqueue 2 * pair + 1), if active.
    pub tx: Option<RingSetup>,
    /// Acked features; with VIRTIO_F_RING_PACKED both rings are packed (the layout
    /// is the device's, negotiated once: see [`make_ring`]).
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
    pub busy_poll: Option<Duration>,
    /// How long guest TX kicks stay off after a TX batch (None: re-enabled at once).
    pub tx_holdoff: Option<Duration>,
    /// Every pair's rate limits (this worker follows entry `pair`).
    pub rate_limits: Arc<RateLimits>,
}

/// What a stopped worker hands back.
pub struct StoppedWorker {
    /// RX ring (next_avail, next_used), if it ran ([`Virtqueue::indices`]: a packed
    /// ring's words, each with its wrap counter in bit 15).
    pub rx: Option<(u16, u16)>,
    /// TX ring (next_avail, next_used), if it ran.
    pub tx: Option<(u16, u16)>,
    /// The uplink queue.
    pub uplink: Box<dyn UplinkQueue>,
}

/// A running worker.
pub struct PairWorker {
    exit: EventFd,
    thread: JoinHandle<StoppedWorker>,
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
    pub fn stop(self) -> StoppedWorker {
        let _ = self.exit.write(1);
        match self.thread.join() {
            Ok(s) => s,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

/// The ring `setup` describes, in the layout the features negotiated: split, or
/// packed (VIRTIO_F_RING_PACKED), where the setup's three addresses are the
/// descriptor ring and the driver and device event structures, and its two indices
/// the positions in their word form ([`PackedIndices::from_words`]).
pub fn make_ring(
    setup: Option<RingSetup>,
    features: Features,
    max: u16,
    pair: usize,
    what: &str,
) -> Option<AnyRing> {
    let setup = setup?;
    let ring = if features.has(VIRTIO_F_RING_PACKED) {
        let size = setup.size;
        if size > max {
            log::error!("queue pair {pair}: {what} ring unusable: size {size} above {max}");
            return None;
        }
        PackedRing::new(PackedSetup {
            size,
            desc: setup.desc,
            driver_event: setup.avail,
            device_event: setup.used,
            indices: PackedIndices::from_words(setup.next_avail, setup.next_used),
            kick: setup.kick,
            call: setup.call,
            event_idx: setup.event_idx,
            indirect: setup.indirect,
            // VIRTIO_F_IN_ORDER is not offered.
            in_order: false,
            log: setup.log.map(|(log, _)| log),
        })
        .map(AnyRing::Packed)
        .map_err(|e| e.to_string())
    } else {
        Ring::new(setup, max)
            .map(AnyRing::Split)
            .map_err(|e| e.to_string())
    };
    match ring {
        Ok(r) => Some(r),
        Err(e) => {
            log::error!("queue pair {pair}: {what} ring unusable: {e}");
            None
        }
    }
}

/// Run `$body` with `$r` bound to the ring inside an [`AnyRing`], compiled once per
/// layout: the TX and RX paths are generic over [`Virtqueue`], so a batch on a split
/// ring runs the split ring's own code (one match per batch, none per chain).
macro_rules! with_ring {
    ($ring:expr, $r:ident => $body:expr) => {
        match $ring {
            AnyRing::Split($r) => $body,
            AnyRing::Packed($r) => $body,
        }
    };
}

/// A running queue pair: its rings, paths, states and uplink queue.
struct Pair {
    features: Features,
    mtu: u16,
    memory: Arc<SharedPageMap>,
    metrics: Arc<QueueMetrics>,
    uplink: Box<dyn UplinkQueue>,
    tx_ring: Option<AnyRing>,
    rx_ring: Option<AnyRing>,
    tx_path: TxPath,
    rx_path: RxPath,
    tx: TxState,
    rx: RxState,
    holdoff: Option<HoldoffTimer>,
    /// The snapshot generation the uplink was last given (u64::MAX: none yet).
    attached: u64,
    uplink_state: UplinkState,
    /// While the uplink is down: when to try reopening it next, and the last reason
    /// it could not be (each new reason is logged once).
    reopen_at: Instant,
    reopen_error: Option<String>,
    /// The rate limits, the generation the limiters were built from, and the limiters
    /// (None: that direction is not limited).
    limits: Arc<RateLimits>,
    limits_generation: u64,
    tx_limiter: Option<Limiter>,
    rx_limiter: Option<Limiter>,
    /// The worker's clock: throttles end at nanoseconds since this instant.
    origin: Instant,
    /// When each direction's current throttle began (meaningful while throttled).
    tx_throttled_at: u64,
    rx_throttled_at: u64,
}

/// Nanoseconds since `origin` (the worker's clock).
fn ns_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Pair {
    /// Packets moved so far, both ways (busy-polling measures from the last move).
    fn moved(&self) -> u64 {
        self.metrics.tx_packets.get() + self.metrics.rx_packets.get()
    }

    /// The current guest memory, given to the uplink whenever it changed.
    fn memory(&mut self) -> Arc<GuestPageMap> {
        let map = self.memory.load();
        if map.generation() != self.attached {
            self.attached = map.generation();
            self.uplink.attach_memory(&map);
        }
        map
    }

    /// A direction (`tx` or RX) became throttled (`on`) or stopped being: count it,
    /// and the time it spent throttled.
    fn throttle_changed(&mut self, tx: bool, on: bool) {
        let now = ns_since(self.origin);
        let m = &*self.metrics;
        let (count, ns, since) = if tx {
            (
                &m.tx_throttled,
                &m.tx_throttled_ns,
                &mut self.tx_throttled_at,
            )
        } else {
            (
                &m.rx_throttled,
                &m.rx_throttled_ns,
                &mut self.rx_throttled_at,
            )
        };
        if on {
            count.inc();
            *since = now;
        } else {
            ns.add(now.saturating_sub(*since));
        }
    }

    /// Move the TX state on `ev` and carry out what the transition asks for.
    fn tx_event(&mut self, ev: TxEvent) -> io::Result<()> {
        let mut ev = ev;
        loop {
            if ev
                == (TxEvent::Drained {
                    moved: Moved::Flood,
                })
            {
                if let Some(h) = self.holdoff.as_mut() {
                    h.flooded();
                }
            }
            let holdoff = self.holdoff.as_mut().is_some_and(|h| h.active());
            let (next, action) = self.tx.on(ev, holdoff);
            if ev == TxEvent::Budget {
                if let Some(h) = self.holdoff.as_mut() {
                    h.shorten();
                }
            }
            if self.tx.throttled_until().is_some() != next.throttled_until().is_some() {
                self.throttle_changed(true, next.throttled_until().is_some());
            }
            self.tx = next;
            match action {
                TxAction::None => return Ok(()),
                TxAction::ArmHoldoff => {
                    if let Some(h) = self.holdoff.as_mut() {
                        if h.arm()? {
                            self.metrics.tx_holdoffs.inc();
                        }
                    }
                    return Ok(());
                }
                TxAction::EnableKicks => {
                    if let Some(h) = self.holdoff.as_mut() {
                        h.relax();
                    }
                    let map = self.memory.load();
                    let more = self
                        .tx_ring
                        .as_mut()
                        .is_some_and(|r| r.enable_notification(&map));
                    if !more {
                        return Ok(());
                    }
                    // Chains arrived while kicks were off: look once more.
                    ev = TxEvent::KicksOnFoundChains;
                }
            }
        }
    }

    fn rx_event(&mut self, ev: RxEvent) {
        let next = self.rx.on(ev);
        if self.rx.throttled_until().is_some() != next.throttled_until().is_some() {
            self.throttle_changed(false, next.throttled_until().is_some());
        }
        self.rx = next;
    }

    /// Rebuild the limiters if the pair's rate limits changed since they were built
    /// (one atomic load when they did not), and tell both states.
    fn sync_limits(&mut self, pair: usize) -> io::Result<()> {
        let generation = self.limits.generation(pair);
        if generation == self.limits_generation {
            return Ok(());
        }
        self.limits_generation = generation;
        let limits = self.limits.get(pair).unwrap_or_default();
        let now = ns_since(self.origin);
        self.tx_limiter = Limiter::reconfigure(self.tx_limiter.take(), &limits.tx, now);
        self.rx_limiter = Limiter::reconfigure(self.rx_limiter.take(), &limits.rx, now);
        log::info!("queue pair {pair}: rate limits now {limits:?}");
        self.tx_event(TxEvent::LimitChanged)?;
        self.rx_event(RxEvent::LimitChanged);
        Ok(())
    }

    /// End the throttles whose time is up.
    fn end_throttles(&mut self) -> io::Result<()> {
        let (tx, rx) = (self.tx.throttled_until(), self.rx.throttled_until());
        if tx.is_none() && rx.is_none() {
            return Ok(());
        }
        let now = ns_since(self.origin);
        if tx.is_some_and(|until| now >= until) {
            self.tx_event(TxEvent::ThrottleEnded)?;
        }
        if rx.is_some_and(|until| now >= until) {
            self.rx_event(RxEvent::ThrottleEnded);
        }
        Ok(())
    }

    /// One look at the TX ring: up to a batch of chains to the uplink.
    fn look_tx(&mut self, map: &GuestPageMap) -> TxEvent {
        let Some(ring) = self.tx_ring.as_mut() else {
            return TxEvent::Broke;
        };
        let m = &*self.metrics;
        // A recheck looks with kicks on (they were just turned on), so that an empty
        // look can go idle as it is; every other look turns them off while it drains.
        if self.tx != TxState::Recheck {
            ring.disable_notification(map);
        }
        let batches = m.tx_batches.get();
        let (packets, bytes) = (m.tx_packets.get(), m.tx_bytes.get());
        let uplink = self.uplink.as_mut();
        // The one branch a batch pays for rate limiting.
        let (outcome, now) = match self.tx_limiter.as_mut() {
            None => {
                let o =
                    with_ring!(ring, r => self.tx_path.process(r, map, uplink, self.features, m));
                (o, 0)
            }
            Some(l) => {
                let now = ns_since(self.origin);
                l.refill(now);
                let o = with_ring!(ring, r => self
                    .tx_path
                    .process_gated(r, map, uplink, self.features, m, l));
                (o, now)
            }
        };
        match outcome {
            TxOutcome::Throttled(ns) => TxEvent::Throttled {
                until: now.saturating_add(ns),
            },
            TxOutcome::Blocked => TxEvent::Blocked,
            TxOutcome::Budget => TxEvent::Budget,
            // A broken ring's avail index may say there is always work.
            TxOutcome::Drained if ring.fault().is_some() => TxEvent::Broke,
            TxOutcome::Drained => {
                let chains = m.tx_packets.get().wrapping_sub(packets);
                let bytes = m.tx_bytes.get().wrapping_sub(bytes);
                let moved = if m.tx_batches.get() == batches {
                    Moved::Nothing
                } else {
                    classify(chains, bytes, ring.size())
                };
                TxEvent::Drained { moved }
            }
        }
    }

    /// One look at the uplink for the RX ring: up to a batch of packets to the guest.
    fn look_rx(&mut self, map: &GuestPageMap) -> RxEvent {
        let Some(ring) = self.rx_ring.as_mut() else {
            return RxEvent::Broke;
        };
        let m = &*self.metrics;
        let uplink = self.uplink.as_mut();
        let (features, mtu) = (self.features, self.mtu);
        let (outcome, now) = match self.rx_limiter.as_mut() {
            None => {
                let o =
                    with_ring!(ring, r => self.rx_path.process(r, map, uplink, features, mtu, m));
                (o, 0)
            }
            Some(l) => {
                let now = ns_since(self.origin);
                l.refill(now);
                let o = with_ring!(ring, r => self
                    .rx_path
                    .process_gated(r, map, uplink, features, mtu, m, l));
                (o, now)
            }
        };
        match outcome {
            _ if ring.fault().is_some() => RxEvent::Broke,
            RxOutcome::Throttled(ns) => RxEvent::Throttled {
                until: now.saturating_add(ns),
            },
            RxOutcome::NoBuffers => RxEvent::NoBuffers,
            RxOutcome::Drained => RxEvent::Drained,
            RxOutcome::Budget => RxEvent::Budget,
        }
    }

    /// Look at whatever the states want looked at, up to [`WORK_ROUNDS`] rounds.
    fn work(&mut self) -> io::Result<()> {
        let mut rounds = 0;
        while (self.tx.wants_look() || self.rx.wants_look()) && rounds < WORK_ROUNDS {
            rounds += 1;
            let map = self.memory();
            if self.tx.wants_look() {
                let ev = self.look_tx(&map);
                self.tx_event(ev)?;
            }
            if self.rx.wants_look() {
                let ev = self.look_rx(&map);
                self.rx_event(ev);
            }
        }
        Ok(())
    }

    /// The uplink queue says it is gone: log it once, count it, stop polling it.
    fn check_uplink(&mut self, pair: usize, poller: &mut Poller) -> io::Result<()> {
        if self.uplink_state == UplinkState::Down {
            return Ok(());
        }
        let Some(why) = self.uplink.down() else {
            return Ok(());
        };
        log::error!(
            "queue pair {pair}: {why}; not polled any more, guest TX is dropped \
             (tx_drop_uplink_down), and reopened as soon as it exists again"
        );
        self.metrics.uplink_lost.inc();
        poller.drop_uplink();
        self.uplink_state = UplinkState::Down;
        self.reopen_at = Instant::now();
        self.reopen_error = None;
        self.tx_event(TxEvent::UplinkLost)?;
        self.rx_event(RxEvent::UplinkLost);
        Ok(())
    }

    /// While the uplink is down, try to reopen it once per [`UPLINK_REOPEN_MS`].
    fn try_reopen(&mut self, pair: usize, poller: &mut Poller) {
        let now = Instant::now();
        if self.uplink_state != UplinkState::Down || now < self.reopen_at {
            return;
        }
        self.reopen_at = now + Duration::from_millis(UPLINK_REOPEN_MS.unsigned_abs().into());
        match self.uplink.reopen() {
            Ok(true) => {
                log::info!("queue pair {pair}: uplink reopened, traffic resumes");
                self.metrics.uplink_reopened.inc();
                poller.set_uplink_fds(self.uplink.fd(), self.uplink.tx_fd());
                self.uplink_state = UplinkState::Up;
                self.rx_event(RxEvent::UplinkBack);
            }
            Ok(false) => {}
            Err(e) => {
                let msg = e.to_string();
                if self.reopen_error.as_deref() != Some(msg.as_str()) {
                    log::error!(
                        "queue pair {pair}: cannot reopen the uplink: {msg}; retrying every {UPLINK_REOPEN_MS} ms"
                    );
                    self.reopen_error = Some(msg);
                }
            }
        }
    }

    /// Return the chains of TX packets that completed meanwhile.
    fn poll_in_flight(&mut self) {
        if let Some(ring) = self.tx_ring.as_mut() {
            let map = self.memory.load();
            with_ring!(ring, r => self
                .tx_path
                .poll_in_flight(r, &map, self.uplink.as_mut(), &self.metrics));
        }
    }

    /// The loop: work, sleep until something happens, turn it into events. Returns
    /// when asked to stop (or on an epoll failure).
    fn run(&mut self, pair: usize, exit: &EventFd, busy_poll: Option<Duration>) -> io::Result<()> {
        let mut poller = match self.uplink_state {
            UplinkState::Up => Poller::new(self.uplink.fd(), self.uplink.tx_fd())?,
            UplinkState::Down => Poller::new(None, None)?,
        };
        poller.add_readable(exit.as_raw_fd(), Event::Exit)?;
        if let Some(r) = &self.rx_ring {
            poller.add_readable(r.kick().as_raw_fd(), Event::RxKick)?;
        }
        if let Some(r) = &self.tx_ring {
            poller.add_readable(r.kick().as_raw_fd(), Event::TxKick)?;
        }
        if let Some(h) = &self.holdoff {
            poller.add_readable(h.fd(), Event::TxHoldoff)?;
        }
        let mut last_work = Instant::now();
        loop {
            self.sync_limits(pair)?;
            let before = self.moved();
            self.work()?;
            self.check_uplink(pair, &mut poller)?;
            poller.set_uplink(self.rx.wants_readable(), self.tx.wants_writable())?;
            // Busy-poll: keep looking at the rings without sleeping for a while after
            // the last packet moved.
            let now = Instant::now();
            if self.moved() != before {
                last_work = now;
            }
            if busy_poll.is_some_and(|budget| now.duration_since(last_work) < budget) {
                self.tx_event(TxEvent::BusyPoll)?;
                self.rx_event(RxEvent::BusyPoll);
            }
            let in_flight = self.tx_path.in_flight() > 0;
            let throttled =
                self.tx.throttled_until().is_some() || self.rx.throttled_until().is_some();
            let now = if throttled { ns_since(self.origin) } else { 0 };
            let sleep = state::sleep(self.tx, self.rx, self.uplink_state, in_flight, now);
            let mut woken = false;
            for ready in poller.wait(sleep.timeout_ms())? {
                woken = true;
                match ready.event {
                    Event::Exit => return Ok(()),
                    Event::RxKick => {
                        if let Some(r) = &self.rx_ring {
                            let _ = r.kick().read();
                        }
                        self.rx_event(RxEvent::Kick);
                    }
                    Event::TxKick => {
                        if let Some(r) = &self.tx_ring {
                            let _ = r.kick().read();
                        }
                        self.tx_event(TxEvent::Kick)?;
                    }
                    Event::TxHoldoff => {
                        if let Some(h) = self.holdoff.as_mut() {
                            h.clear();
                        }
                        self.tx_event(TxEvent::HoldoffExpired)?;
                    }
                    Event::Uplink => {
                        let f = ready.flags;
                        if f.intersects(epoll::Events::EPOLLERR | epoll::Events::EPOLLHUP) {
                            // A gone device reports an error for ever: find out first.
                            self.uplink.probe();
                            if self.uplink.down().is_some() {
                                continue;
                            }
                        }
                        if f.intersects(epoll::Events::EPOLLOUT | epoll::Events::EPOLLERR) {
                            self.tx_event(TxEvent::UplinkWritable)?;
                        }
                        if f.intersects(epoll::Events::EPOLLIN | epoll::Events::EPOLLHUP) {
                            self.rx_event(RxEvent::UplinkReadable);
                        }
                    }
                }
            }
            if in_flight {
                self.poll_in_flight();
            }
            self.end_throttles()?;
            self.check_uplink(pair, &mut poller)?;
            self.try_reopen(pair, &mut poller);
            // A timed sleep that ended with nothing (the blocked retry, the in-flight
            // poll): a blocked uplink is tried again.
            if !woken && matches!(sleep, Sleep::Ms(_)) && self.tx == TxState::Blocked {
                self.tx_event(TxEvent::UplinkWritable)?;
            }
            log::trace!("queue pair {pair}: tx {:?}, rx {:?}", self.tx, self.rx);
        }
    }

    /// The worker stops: stashed RX chains go back, TX packets in flight are waited
    /// for (bounded) and their chains returned.
    fn finish(mut self) -> StoppedWorker {
        // A throttle in progress counts its time up to now.
        if self.tx.throttled_until().is_some() {
            self.throttle_changed(true, false);
        }
        if self.rx.throttled_until().is_some() {
            self.throttle_changed(false, false);
        }
        if let Some(ring) = self.rx_ring.as_mut() {
            let map = self.memory.load();
            with_ring!(&mut *ring, r => self.rx_path.release(r, &map));
            // Chains given back empty (a stash with a gap) are shown to the guest now.
            ring.signal(&map, &self.metrics);
        }
        if let Some(ring) = self.tx_ring.as_mut() {
            let map = self.memory.load();
            with_ring!(ring, r => self
                .tx_path
                .finish(r, &map, self.uplink.as_mut(), &self.metrics));
        }
        StoppedWorker {
            rx: self.rx_ring.map(|r| r.indices()),
            tx: self.tx_ring.map(|r| r.indices()),
            uplink: self.uplink,
        }
    }
}

fn run(spec: WorkerSpec, exit: EventFd) -> StoppedWorker {
    let WorkerSpec {
        pair,
        rx,
        tx,
        features,
        mtu,
        max_queue_size,
        memory,
        metrics,
        uplink,
        busy_poll,
        tx_holdoff,
        rate_limits,
    } = spec;
    crate::sandbox::enter_or_exit(crate::sandbox::ThreadKind::Worker);
    let rx_ring = make_ring(rx, features, max_queue_size, pair, "RX");
    let tx_ring = make_ring(tx, features, max_queue_size, pair, "TX");
    let holdoff = match tx_holdoff
        .filter(|_| tx_ring.is_some())
        .map(HoldoffTimer::new)
    {
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            log::error!("queue pair {pair}: no TX holdoff timer, kicks stay on: {e}");
            None
        }
        None => None,
    };
    let uplink_state = match uplink.down() {
        None => UplinkState::Up,
        Some(why) => {
            log::warn!("queue pair {pair}: {why}; reopened as soon as it exists again");
            UplinkState::Down
        }
    };
    let mut rx_state = RxState::start(rx_ring.is_some());
    if uplink_state == UplinkState::Down {
        rx_state = rx_state.on(RxEvent::UplinkLost);
    }
    let origin = Instant::now();
    let limits_generation = rate_limits.generation(pair);
    let limits = rate_limits.get(pair).unwrap_or_default();
    let mut p = Pair {
        features,
        mtu,
        memory,
        metrics,
        uplink,
        tx: TxState::start(tx_ring.is_some()),
        rx: rx_state,
        tx_ring,
        rx_ring,
        tx_path: TxPath::default(),
        rx_path: RxPath::default(),
        holdoff,
        attached: u64::MAX,
        uplink_state,
        reopen_at: Instant::now(),
        reopen_error: None,
        tx_limiter: Limiter::new(&limits.tx, 0),
        rx_limiter: Limiter::new(&limits.rx, 0),
        limits: rate_limits,
        limits_generation,
        origin,
        tx_throttled_at: 0,
        rx_throttled_at: 0,
    };
    if let Err(e) = p.run(pair, &exit, busy_poll) {
        log::error!("queue pair {pair}: worker stopped: {e}");
    }
    p.finish()
}

#[cfg(test)]
mod tests;
