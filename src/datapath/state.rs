// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The states of a queue pair worker: one value per direction, and every event a
//! pure transition of it.
//!
//! The worker's loop ([`super::worker`]) turns what happened (a kick, the end of a
//! look at a ring, a timer, the uplink's readiness) into a [`TxEvent`] or an
//! [`RxEvent`], asks the state for its successor, and carries out the [`TxAction`]
//! that comes with it. Nothing here touches a ring, an fd or a clock, so every
//! transition is tested on its own below.
//!
//! TX: [`TxState::Pending`] means look at the ring now; a look ends on
//! [`TxEvent::Drained`], [`TxEvent::Budget`], [`TxEvent::Blocked`] or
//! [`TxEvent::Broke`]. With `--tx-holdoff` a look that moved packets leaves the
//! guest's kicks off ([`TxState::HeldOff`]) and a timer brings the next look; only an
//! empty look that the timer asked for turns kicks on again. RX: the uplink is read
//! only while the guest has buffers ([`RxState::Pending`], [`RxState::Waiting`]);
//! without them the worker waits for a kick ([`RxState::NoBuffers`]).
//!
//! Rate limits: a look that finds a direction's token bucket dry stops there and
//! throttles it ([`TxState::Throttled`], [`RxState::Throttled`]) until a clock reading
//! (nanoseconds on the worker's clock); [`sleep`] wakes the worker then, and the
//! throttle ends on [`TxEvent::ThrottleEnded`] or at once when the limits change
//! ([`TxEvent::LimitChanged`]). A throttled TX pops no chains and leaves the guest's
//! kicks off: they could only wake the worker to do nothing, one VM exit per packet,
//! while the guest's ring fills (its queue backs up: backpressure, nothing dropped).
//! A throttled RX does not read or poll the uplink, whose queue fills as the kernel's
//! TAP queue would.

/// The TX side of a queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    /// No TX ring: nothing ever happens.
    Off,
    /// Kicks are on and the ring was empty: wait for a kick.
    Idle,
    /// The ring may hold chains: look now.
    Pending,
    /// Kicks are on, and turning them on found the avail index moved: look once,
    /// leaving kicks on. An empty look goes idle as it is, without turning kicks on
    /// and asking again, so a ring whose index keeps moving without chains to pop
    /// cannot keep the worker turning; a look that moved chains ends like any other.
    Recheck,
    /// Kicks stay off after a batch and the holdoff timer brings the next look;
    /// `due`: a look is wanted before the timer (a kick that raced with the holdoff,
    /// busy-polling).
    HeldOff {
        /// Look now, without ending the holdoff.
        due: bool,
    },
    /// The uplink refused a packet (kept on the ring): wait until it is writable,
    /// or for the retry timeout (some uplinks never report writability).
    Blocked,
    /// The ring misbehaved (an impossible avail index, unreadable memory): left alone
    /// until the control plane sets it up again.
    Broken,
    /// A rate limit ran dry: no chain is popped and kicks stay off until `until`.
    Throttled {
        /// When the limit allows the next packet (ns on the worker's clock).
        until: u64,
    },
}

/// What happened to the TX side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxEvent {
    /// The guest kicked.
    Kick,
    /// Turning kicks on found chains already there.
    KicksOnFoundChains,
    /// A look emptied the ring, having moved `moved`.
    Drained {
        /// What the look moved.
        moved: Moved,
    },
    /// A look stopped on its batch budget: chains are left.
    Budget,
    /// A look stopped because the uplink had no room.
    Blocked,
    /// A look found the ring broken.
    Broke,
    /// The holdoff timer ran out.
    HoldoffExpired,
    /// The uplink may take packets again (writable, an error to report, or the
    /// blocked retry timeout).
    UplinkWritable,
    /// Busy-polling: look without waiting for a kick.
    BusyPoll,
    /// The uplink is gone: its sends are counted drops from now on, nothing blocks.
    UplinkLost,
    /// A look stopped on the rate limit (the chain stays on the ring).
    Throttled {
        /// When the limit allows the next packet (ns on the worker's clock).
        until: u64,
    },
    /// The throttle's time is up.
    ThrottleEnded,
    /// The pair's rate limits were changed (or removed).
    LimitChanged,
}

/// What a TX look that emptied the ring moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Nothing.
    Nothing,
    /// One small packet: sparse or request/response traffic, whose next packet must
    /// not wait for a timer.
    Sparse,
    /// A stream's batch (two chains or more, or a large packet): worth holding the
    /// guest's kicks off for (`--tx-holdoff`).
    Stream,
    /// Half the ring or more: the guest fills the ring faster than a timer could
    /// serve it (a flood of small packets from a fast guest), so it is served by its
    /// kicks, as without a holdoff.
    Flood,
}

/// What the loop must do on entering the new TX state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxAction {
    /// Nothing.
    None,
    /// Turn the guest's kicks on; if chains arrived meanwhile, feed
    /// [`TxEvent::KicksOnFoundChains`].
    EnableKicks,
    /// Start the holdoff timer.
    ArmHoldoff,
}

impl TxState {
    /// The state for a worker starting with (`ring`) or without a TX ring: a ring
    /// starts working without waiting for a kick.
    pub fn start(ring: bool) -> Self {
        if ring {
            TxState::Pending
        } else {
            TxState::Off
        }
    }

    /// Whether the worker should look at the TX ring now.
    pub fn wants_look(self) -> bool {
        matches!(
            self,
            TxState::Pending | TxState::Recheck | TxState::HeldOff { due: true }
        )
    }

    /// Whether the worker waits for the uplink to turn writable.
    pub fn wants_writable(self) -> bool {
        self == TxState::Blocked
    }

    /// Until when TX is throttled, if it is.
    pub fn throttled_until(self) -> Option<u64> {
        match self {
            TxState::Throttled { until } => Some(until),
            _ => None,
        }
    }

    /// The successor of `self` on `ev`, and what to do on entering it. `holdoff`:
    /// a TX holdoff is configured.
    pub fn on(self, ev: TxEvent, holdoff: bool) -> (TxState, TxAction) {
        use TxAction as A;
        use TxEvent as E;
        use TxState as S;
        match (self, ev) {
            // Nothing happens on a missing or broken ring.
            (S::Off, _) => (S::Off, A::None),
            (S::Broken, _) => (S::Broken, A::None),
            // A look's end: these events only come from a look, and a look only
            // happens in a state that wants one.
            (_, E::Broke) => (S::Broken, A::None),
            // The uplink's writability brings TX back, not the holdoff timer.
            (_, E::Blocked) => (S::Blocked, A::None),
            // Kicks stay off while throttled (the look turned them off): the timer, not
            // the guest, brings the next look. A holdoff running meanwhile is over.
            (_, E::Throttled { until }) => (S::Throttled { until }, A::None),
            // A removed or changed limit may allow packets now: look, and throttle again
            // if it does not.
            (S::Throttled { .. }, E::ThrottleEnded | E::LimitChanged) => (S::Pending, A::None),
            (s, E::Budget) => (s, A::None),
            (S::HeldOff { .. }, E::Drained { .. }) => (S::HeldOff { due: false }, A::None),
            // The recheck found nothing (or one small packet): kicks are on, nothing to
            // ask again.
            // Only an empty one: a recheck that moved chains left the guest's avail_event
            // behind them (it looks with kicks on), and with EVENT_IDX a guest whose
            // avail_event is behind does not kick: kicks must be turned on again.
            (
                S::Recheck,
                E::Drained {
                    moved: Moved::Nothing,
                },
            ) => (S::Idle, A::None),
            (
                _,
                E::Drained {
                    moved: Moved::Stream,
                },
            ) if holdoff => (S::HeldOff { due: false }, A::ArmHoldoff),
            (_, E::Drained { .. }) => (S::Idle, A::EnableKicks),
            // Wake-ups.
            (S::Idle, E::Kick | E::BusyPoll) => (S::Pending, A::None),
            (S::Idle, E::KicksOnFoundChains) => (S::Recheck, A::None),
            // A real kick during the recheck: an ordinary look.
            (S::Recheck, E::Kick) => (S::Pending, A::None),
            (S::HeldOff { .. }, E::Kick | E::BusyPoll) => (S::HeldOff { due: true }, A::None),
            // The timer's look: if it finds nothing the holdoff ends.
            (S::HeldOff { .. }, E::HoldoffExpired) => (S::Pending, A::None),
            (S::Blocked, E::UplinkWritable) => (S::Pending, A::None),
            // A gone uplink never turns writable: the kept chain is dropped and counted
            // by the next look, like every chain until the uplink is back.
            (S::Blocked, E::UplinkLost) => (S::Pending, A::None),
            // Everything else changes nothing: a kick while blocked or throttled waits
            // for the uplink or the timer, a stale timer fires after the holdoff ended,
            // the uplink reports writability while TX is not blocked, a throttled TX
            // whose uplink went away drops its chains after the throttle, a limit
            // changes while TX is not throttled.
            (
                s,
                E::Kick
                | E::KicksOnFoundChains
                | E::BusyPoll
                | E::HoldoffExpired
                | E::UplinkWritable
                | E::UplinkLost
                | E::ThrottleEnded
                | E::LimitChanged,
            ) => (s, A::None),
        }
    }
}

/// The RX side of a queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxState {
    /// No RX ring.
    Off,
    /// The uplink may have packets and the guest buffers: look now.
    Pending,
    /// The uplink had nothing more: wait for it to turn readable (or a kick).
    Waiting,
    /// The guest has not posted enough buffers: the uplink is not read until it kicks.
    NoBuffers,
    /// The ring misbehaved: left alone until set up again.
    Broken,
    /// The uplink is gone: nothing to read until it is reopened.
    UplinkDown,
    /// A rate limit ran dry: the uplink is neither read nor polled until `until`.
    Throttled {
        /// When the limit allows the next packet (ns on the worker's clock).
        until: u64,
    },
}

/// What happened to the RX side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxEvent {
    /// The guest kicked (it posted buffers).
    Kick,
    /// The uplink turned readable (or hung up: the next read reports why).
    UplinkReadable,
    /// A look read everything the uplink had.
    Drained,
    /// A look ran out of guest buffers.
    NoBuffers,
    /// A look stopped on its batch budget.
    Budget,
    /// A look found the ring broken.
    Broke,
    /// Busy-polling: look without waiting for the uplink.
    BusyPoll,
    /// The uplink is gone.
    UplinkLost,
    /// The uplink was reopened.
    UplinkBack,
    /// A look stopped on the rate limit.
    Throttled {
        /// When the limit allows the next packet (ns on the worker's clock).
        until: u64,
    },
    /// The throttle's time is up.
    ThrottleEnded,
    /// The pair's rate limits were changed (or removed).
    LimitChanged,
}

impl RxState {
    /// The state for a worker starting with (`ring`) or without an RX ring: a ring
    /// starts working at once (the guest may have posted its buffers long ago, before
    /// a backend restart, and will not kick again).
    pub fn start(ring: bool) -> Self {
        if ring {
            RxState::Pending
        } else {
            RxState::Off
        }
    }

    /// Whether the worker should read the uplink into the RX ring now.
    pub fn wants_look(self) -> bool {
        self == RxState::Pending
    }

    /// Whether the uplink should be polled for readability.
    pub fn wants_readable(self) -> bool {
        matches!(self, RxState::Pending | RxState::Waiting)
    }

    /// Until when RX is throttled, if it is.
    pub fn throttled_until(self) -> Option<u64> {
        match self {
            RxState::Throttled { until } => Some(until),
            _ => None,
        }
    }

    /// The successor of `self` on `ev`.
    pub fn on(self, ev: RxEvent) -> RxState {
        use RxEvent as E;
        use RxState as S;
        match (self, ev) {
            (S::Off, _) => S::Off,
            (S::Broken, _) => S::Broken,
            (_, E::Broke) => S::Broken,
            (_, E::UplinkLost) => S::UplinkDown,
            // Back: look at once (the guest's buffers may have been posted meanwhile).
            (S::UplinkDown, E::UplinkBack) => S::Pending,
            // Nothing is read from a gone uplink, whatever the guest does.
            (S::UplinkDown, _) => S::UplinkDown,
            (_, E::Throttled { until }) => S::Throttled { until },
            (S::Throttled { .. }, E::ThrottleEnded | E::LimitChanged) => S::Pending,
            // Throttled: buffers posted, the uplink ready or busy-polling wait for the
            // timer.
            (s @ S::Throttled { .. }, _) => s,
            (s, E::UplinkBack | E::ThrottleEnded | E::LimitChanged) => s,
            (_, E::NoBuffers) => S::NoBuffers,
            (_, E::Drained) => S::Waiting,
            (s, E::Budget) => s,
            // Buffers posted: look, whatever the uplink said.
            (_, E::Kick) => S::Pending,
            (S::Waiting, E::UplinkReadable | E::BusyPoll) => S::Pending,
            // Without buffers neither the uplink nor busy-polling brings a look.
            (s, E::UplinkReadable | E::BusyPoll) => s,
        }
    }
}

/// How long the worker may sleep in `epoll_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sleep {
    /// Do not sleep: look at the event fds and go on.
    No,
    /// Sleep at most this many milliseconds.
    Ms(i32),
    /// Sleep until an event.
    Forever,
}

impl Sleep {
    /// The epoll timeout argument.
    pub fn timeout_ms(self) -> i32 {
        match self {
            Sleep::No => 0,
            Sleep::Ms(ms) => ms,
            Sleep::Forever => -1,
        }
    }
}

/// While the uplink refuses TX, retry this often even without writability (ms).
pub const TX_BLOCKED_RETRY_MS: i32 = 10;

/// While TX packets are in flight, look at their completions this often (ms): their
/// completion raises no event on the worker's fds.
pub const IN_FLIGHT_POLL_MS: i32 = 1;

/// While the uplink is gone, try to reopen it this often (ms).
pub const UPLINK_REOPEN_MS: i32 = 1000;

/// While throttled, look at the pair's rate limits at least this often (ms), so a
/// limit changed or removed during a long throttle takes effect at once.
pub const THROTTLE_RECHECK_MS: i32 = 10;

/// Whether the pair's uplink queue works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkState {
    /// It works.
    Up,
    /// It is gone (its device was deleted): not polled, reopened now and then.
    Down,
}

/// Milliseconds from `now` until `until`, rounded up (a wake-up before the throttle
/// ends would find it still on), at most [`THROTTLE_RECHECK_MS`].
fn ms_until(until: u64, now: u64) -> i32 {
    let ns = until.saturating_sub(now);
    let ms = ns.div_ceil(1_000_000);
    i32::try_from(ms).map_or(THROTTLE_RECHECK_MS, |ms| ms.min(THROTTLE_RECHECK_MS))
}

/// How long the worker sleeps, given its states, whether TX packets are in flight
/// and the time on the worker's clock (ns).
pub fn sleep(tx: TxState, rx: RxState, uplink: UplinkState, in_flight: bool, now: u64) -> Sleep {
    if tx.wants_look() || rx.wants_look() {
        return Sleep::No;
    }
    let mut ms: Option<i32> = None;
    let mut at_most = |t: i32| ms = Some(ms.map_or(t, |m| m.min(t)));
    if in_flight {
        at_most(IN_FLIGHT_POLL_MS);
    }
    // A blocked uplink normally reports writability; some only drain when kicked
    // (an AF_XDP TX ring filled while its link was down), so retry anyway.
    if tx == TxState::Blocked {
        at_most(TX_BLOCKED_RETRY_MS);
    }
    if uplink == UplinkState::Down {
        at_most(UPLINK_REOPEN_MS);
    }
    // The earliest throttle's end.
    for until in [tx.throttled_until(), rx.throttled_until()]
        .into_iter()
        .flatten()
    {
        at_most(ms_until(until, now));
    }
    match ms {
        None => Sleep::Forever,
        Some(0) => Sleep::No,
        Some(ms) => Sleep::Ms(ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TxAction as A;
    use TxEvent as E;
    use TxState as S;

    const ALL_TX_EVENTS: [TxEvent; 16] = [
        E::KicksOnFoundChains,
        E::Throttled { until: 5 },
        E::ThrottleEnded,
        E::LimitChanged,
        E::UplinkLost,
        E::Kick,
        E::Drained {
            moved: Moved::Nothing,
        },
        E::Drained {
            moved: Moved::Sparse,
        },
        E::Drained {
            moved: Moved::Stream,
        },
        E::Drained {
            moved: Moved::Flood,
        },
        E::Budget,
        E::Blocked,
        E::Broke,
        E::HoldoffExpired,
        E::UplinkWritable,
        E::BusyPoll,
    ];

    const ALL_TX_STATES: [TxState; 9] = [
        S::Recheck,
        S::Throttled { until: 5 },
        S::Off,
        S::Idle,
        S::Pending,
        S::HeldOff { due: false },
        S::HeldOff { due: true },
        S::Blocked,
        S::Broken,
    ];

    #[test]
    fn a_ring_starts_without_waiting_for_a_kick() {
        assert_eq!(TxState::start(true), S::Pending);
        assert_eq!(TxState::start(false), S::Off);
        assert_eq!(RxState::start(true), RxState::Pending);
        assert_eq!(RxState::start(false), RxState::Off);
        assert!(S::Pending.wants_look());
        assert!(RxState::Pending.wants_look());
    }

    #[test]
    fn off_and_broken_ignore_every_event() {
        // A broken ring's avail index may always say there is work: it must never be
        // looked at again (it spun a core at 100 % before).
        for holdoff in [false, true] {
            for ev in ALL_TX_EVENTS {
                assert_eq!(S::Off.on(ev, holdoff), (S::Off, A::None), "{ev:?}");
                assert_eq!(S::Broken.on(ev, holdoff), (S::Broken, A::None), "{ev:?}");
            }
        }
        assert!(!S::Broken.wants_look() && !S::Broken.wants_writable());
    }

    /// One small packet (sparse, request/response traffic) never holds kicks off, even
    /// with a holdoff configured: its next packet must not wait for a timer; nor does a
    /// flood that fills half the ring between looks (a timer would hold the guest back).
    #[test]
    fn a_sparse_or_flooding_look_turns_kicks_on_even_with_a_holdoff() {
        for moved in [Moved::Sparse, Moved::Flood] {
            assert_eq!(
                S::Pending.on(E::Drained { moved }, true),
                (S::Idle, A::EnableKicks)
            );
            assert_eq!(
                S::Recheck.on(E::Drained { moved }, true),
                (S::Idle, A::EnableKicks)
            );
        }
    }

    #[test]
    fn without_holdoff_a_drained_ring_turns_kicks_on() {
        for moved in [Moved::Nothing, Moved::Sparse, Moved::Stream] {
            assert_eq!(
                S::Pending.on(E::Drained { moved }, false),
                (S::Idle, A::EnableKicks)
            );
        }
        assert_eq!(S::Idle.on(E::Kick, false), (S::Pending, A::None));
        assert_eq!(S::Pending.on(E::Budget, false), (S::Pending, A::None));
        assert!(!S::Idle.wants_look());
    }

    #[test]
    fn a_look_that_moved_packets_holds_kicks_off_and_arms_the_timer() {
        assert_eq!(
            S::Pending.on(
                E::Drained {
                    moved: Moved::Stream
                },
                true
            ),
            (S::HeldOff { due: false }, A::ArmHoldoff)
        );
        // An empty look outside a holdoff does not start one.
        assert_eq!(
            S::Pending.on(
                E::Drained {
                    moved: Moved::Nothing
                },
                true
            ),
            (S::Idle, A::EnableKicks)
        );
        assert!(!S::HeldOff { due: false }.wants_look());
    }

    #[test]
    fn a_kick_that_raced_with_the_holdoff_looks_but_keeps_holding() {
        let held = S::HeldOff { due: false };
        assert_eq!(held.on(E::Kick, true), (S::HeldOff { due: true }, A::None));
        assert!(S::HeldOff { due: true }.wants_look());
        // Its look, empty or not, keeps holding: the timer is still running, so no
        // second arm and no kicks.
        for moved in [Moved::Nothing, Moved::Sparse, Moved::Stream] {
            assert_eq!(
                S::HeldOff { due: true }.on(E::Drained { moved }, true),
                (S::HeldOff { due: false }, A::None)
            );
        }
        assert_eq!(
            held.on(E::BusyPoll, true),
            (S::HeldOff { due: true }, A::None)
        );
    }

    #[test]
    fn only_the_timers_empty_look_ends_the_holdoff() {
        let (s, a) = S::HeldOff { due: false }.on(E::HoldoffExpired, true);
        assert_eq!((s, a), (S::Pending, A::None));
        assert_eq!(
            s.on(
                E::Drained {
                    moved: Moved::Nothing
                },
                true
            ),
            (S::Idle, A::EnableKicks)
        );
        assert_eq!(
            s.on(
                E::Drained {
                    moved: Moved::Stream
                },
                true
            ),
            (S::HeldOff { due: false }, A::ArmHoldoff),
            "a timer look that moved packets holds again"
        );
        // A timer that fires after the holdoff ended changes nothing.
        assert_eq!(S::Idle.on(E::HoldoffExpired, true), (S::Idle, A::None));
    }

    #[test]
    fn a_blocked_uplink_ends_the_holdoff_and_its_writability_brings_tx_back() {
        for s in [S::Pending, S::HeldOff { due: true }] {
            assert_eq!(s.on(E::Blocked, true), (S::Blocked, A::None));
        }
        let b = S::Blocked;
        assert!(b.wants_writable() && !b.wants_look());
        // Neither kicks, busy-polling nor the holdoff timer look at a blocked ring.
        for ev in [E::Kick, E::BusyPoll, E::HoldoffExpired] {
            assert_eq!(b.on(ev, true), (S::Blocked, A::None), "{ev:?}");
        }
        assert_eq!(b.on(E::UplinkWritable, true), (S::Pending, A::None));
        // Writability while not blocked does not make a look.
        assert_eq!(S::Idle.on(E::UplinkWritable, false), (S::Idle, A::None));
    }

    /// A ring whose avail index moves when kicks are turned on but whose look finds
    /// nothing (a guest flipping its index) must not keep the worker asking: the
    /// empty recheck goes idle with no action, kicks left on.
    #[test]
    fn an_empty_recheck_goes_idle_without_asking_again() {
        for holdoff in [false, true] {
            let (s, a) = S::Idle.on(E::KicksOnFoundChains, holdoff);
            assert_eq!((s, a), (S::Recheck, A::None));
            assert!(s.wants_look());
            assert_eq!(
                s.on(
                    E::Drained {
                        moved: Moved::Nothing
                    },
                    holdoff
                ),
                (S::Idle, A::None)
            );
            // Chains found: an ordinary end of a look.
            let worked = s.on(
                E::Drained {
                    moved: Moved::Stream,
                },
                holdoff,
            );
            if holdoff {
                assert_eq!(worked, (S::HeldOff { due: false }, A::ArmHoldoff));
            } else {
                assert_eq!(worked, (S::Idle, A::EnableKicks));
            }
            // One small packet moved: kicks must go on again (the recheck looked with
            // them on, and the guest's avail_event is behind the chain it popped: with
            // EVENT_IDX the guest would never kick again).
            assert_eq!(
                s.on(
                    E::Drained {
                        moved: Moved::Sparse
                    },
                    holdoff
                ),
                (S::Idle, A::EnableKicks)
            );
            // A real kick meanwhile: an ordinary look, whose empty end turns kicks on.
            assert_eq!(s.on(E::Kick, holdoff), (S::Pending, A::None));
            assert_eq!(s.on(E::Broke, holdoff), (S::Broken, A::None));
            assert_eq!(s.on(E::Budget, holdoff), (S::Recheck, A::None));
        }
    }

    #[test]
    fn a_broken_ring_ends_everything_including_the_holdoff() {
        for s in [S::Pending, S::HeldOff { due: true }] {
            assert_eq!(s.on(E::Broke, true), (S::Broken, A::None));
        }
    }

    #[test]
    fn only_blocked_wants_writability_and_every_state_has_an_answer() {
        for s in ALL_TX_STATES {
            assert_eq!(s.wants_writable(), s == S::Blocked, "{s:?}");
            for ev in ALL_TX_EVENTS {
                for holdoff in [false, true] {
                    let (next, action) = s.on(ev, holdoff);
                    // Without a holdoff no state leads into one (HeldOff itself is
                    // unreachable then).
                    if !holdoff && !matches!(s, S::HeldOff { .. }) {
                        assert!(
                            !matches!(next, S::HeldOff { .. }) && action != A::ArmHoldoff,
                            "{s:?} + {ev:?} holds without a holdoff"
                        );
                    }
                    if action == A::EnableKicks {
                        assert_eq!(next, S::Idle, "kicks go on only when idle");
                    }
                }
            }
        }
    }

    #[test]
    fn rx_reads_the_uplink_only_while_the_guest_has_buffers() {
        use RxEvent as E;
        use RxState as S;
        assert_eq!(S::Pending.on(E::Drained), S::Waiting);
        assert_eq!(S::Pending.on(E::Budget), S::Pending);
        assert_eq!(S::Pending.on(E::NoBuffers), S::NoBuffers);
        assert_eq!(S::Waiting.on(E::UplinkReadable), S::Pending);
        assert_eq!(S::Waiting.on(E::BusyPoll), S::Pending);
        assert_eq!(S::Waiting.on(E::Kick), S::Pending);
        // Without buffers only a kick brings a look: not the uplink, not busy-polling.
        assert_eq!(S::NoBuffers.on(E::UplinkReadable), S::NoBuffers);
        assert_eq!(S::NoBuffers.on(E::BusyPoll), S::NoBuffers);
        assert_eq!(S::NoBuffers.on(E::Kick), S::Pending);
        assert!(S::Waiting.wants_readable() && S::Pending.wants_readable());
        assert!(!S::NoBuffers.wants_readable() && !S::NoBuffers.wants_look());
    }

    #[test]
    fn a_broken_or_missing_rx_ring_ignores_everything() {
        use RxEvent as E;
        use RxState as S;
        assert_eq!(S::Pending.on(E::Broke), S::Broken);
        for ev in [
            E::Kick,
            E::UplinkReadable,
            E::Drained,
            E::NoBuffers,
            E::Budget,
            E::Broke,
            E::BusyPoll,
            E::UplinkLost,
            E::UplinkBack,
        ] {
            assert_eq!(S::Broken.on(ev), S::Broken, "{ev:?}");
            assert_eq!(S::Off.on(ev), S::Off, "{ev:?}");
        }
        assert!(!S::Broken.wants_readable() && !S::Off.wants_readable());
    }

    fn sleep4(tx: TxState, rx: RxState, in_flight: bool) -> Sleep {
        sleep(tx, rx, UplinkState::Up, in_flight, 0)
    }

    #[test]
    fn a_gone_uplink_unblocks_tx_and_stops_rx_until_it_is_back() {
        use RxEvent as R;
        assert_eq!(S::Blocked.on(E::UplinkLost, true), (S::Pending, A::None));
        for s in [S::Idle, S::Pending, S::HeldOff { due: false }, S::Broken] {
            assert_eq!(s.on(E::UplinkLost, true), (s, A::None), "{s:?}");
        }
        for s in [RxState::Pending, RxState::Waiting, RxState::NoBuffers] {
            assert_eq!(s.on(R::UplinkLost), RxState::UplinkDown, "{s:?}");
        }
        let down = RxState::UplinkDown;
        assert!(!down.wants_readable() && !down.wants_look());
        for ev in [
            R::Kick,
            R::UplinkReadable,
            R::BusyPoll,
            R::Drained,
            R::Budget,
        ] {
            assert_eq!(down.on(ev), down, "{ev:?}");
        }
        assert_eq!(down.on(R::UplinkBack), RxState::Pending);
        assert_eq!(RxState::Waiting.on(R::UplinkBack), RxState::Waiting);
        assert_eq!(RxState::Broken.on(R::UplinkLost), RxState::Broken);
        // Down: the worker wakes up to try to reopen it, unless it has work.
        let (tx, rx) = (S::Idle, RxState::UplinkDown);
        assert_eq!(
            sleep(tx, rx, UplinkState::Down, false, 0),
            Sleep::Ms(UPLINK_REOPEN_MS)
        );
        assert_eq!(
            sleep(S::Pending, rx, UplinkState::Down, false, 0),
            Sleep::No
        );
        assert_eq!(sleep(tx, rx, UplinkState::Up, false, 0), Sleep::Forever);
    }

    #[test]
    fn the_worker_sleeps_only_when_nothing_is_due() {
        let rx = RxState::Waiting;
        assert_eq!(sleep4(S::Pending, rx, false), Sleep::No);
        assert_eq!(sleep4(S::Idle, RxState::Pending, true), Sleep::No);
        assert_eq!(sleep4(S::HeldOff { due: true }, rx, false), Sleep::No);
        assert_eq!(sleep4(S::Idle, rx, false), Sleep::Forever);
        assert_eq!(sleep4(S::HeldOff { due: false }, rx, false), Sleep::Forever);
        assert_eq!(sleep4(S::Broken, RxState::Broken, false), Sleep::Forever);
        // A blocked uplink that never reports writability is retried.
        assert_eq!(
            sleep4(S::Blocked, rx, false),
            Sleep::Ms(TX_BLOCKED_RETRY_MS)
        );
        // Packets in flight complete without an event: look at them soon.
        assert_eq!(sleep4(S::Idle, rx, true), Sleep::Ms(IN_FLIGHT_POLL_MS));
        assert_eq!(sleep4(S::Blocked, rx, true), Sleep::Ms(IN_FLIGHT_POLL_MS));
        assert_eq!(Sleep::Forever.timeout_ms(), -1);
        assert_eq!(Sleep::No.timeout_ms(), 0);
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_dry_bucket_throttles_tx_and_only_its_timer_or_a_new_limit_ends_it() {
        let until = 7 * MS;
        let t = S::Throttled { until };
        for s in [S::Pending, S::HeldOff { due: true }] {
            for holdoff in [false, true] {
                assert_eq!(s.on(E::Throttled { until }, holdoff), (t, A::None), "{s:?}");
            }
        }
        // Throttled: no look, no writability, and no kicks turned on (A::None): the
        // guest's ring fills, nothing is popped or dropped.
        assert!(!t.wants_look() && !t.wants_writable());
        assert_eq!(t.throttled_until(), Some(until));
        for ev in [
            E::Kick,
            E::BusyPoll,
            E::HoldoffExpired,
            E::UplinkWritable,
            E::UplinkLost,
        ] {
            assert_eq!(t.on(ev, true), (t, A::None), "{ev:?}");
        }
        assert_eq!(t.on(E::ThrottleEnded, true), (S::Pending, A::None));
        // A limit removed (or changed) at run time ends the throttle at once.
        assert_eq!(t.on(E::LimitChanged, false), (S::Pending, A::None));
        // Outside a throttle neither changes anything.
        for s in [S::Idle, S::Pending, S::HeldOff { due: false }, S::Blocked] {
            for ev in [E::ThrottleEnded, E::LimitChanged] {
                assert_eq!(s.on(ev, true), (s, A::None), "{s:?} {ev:?}");
            }
        }
    }

    #[test]
    fn a_broken_ring_stays_broken_whatever_the_limits_do() {
        for ev in [E::Throttled { until: 1 }, E::ThrottleEnded, E::LimitChanged] {
            assert_eq!(S::Broken.on(ev, false), (S::Broken, A::None), "{ev:?}");
            assert_eq!(RxState::Broken.on(rx_of(ev)), RxState::Broken, "{ev:?}");
        }
        // A throttled TX whose ring then breaks (the timer's look) is broken.
        let (s, _) = S::Throttled { until: 1 }.on(E::ThrottleEnded, false);
        assert_eq!(s.on(E::Broke, false), (S::Broken, A::None));
    }

    fn rx_of(ev: TxEvent) -> RxEvent {
        match ev {
            E::Throttled { until } => RxEvent::Throttled { until },
            E::ThrottleEnded => RxEvent::ThrottleEnded,
            _ => RxEvent::LimitChanged,
        }
    }

    #[test]
    fn a_throttled_rx_neither_reads_nor_polls_the_uplink() {
        use RxEvent as R;
        use RxState as X;
        let t = X::Throttled { until: 3 * MS };
        for s in [X::Pending, X::Waiting] {
            assert_eq!(s.on(R::Throttled { until: 3 * MS }), t);
        }
        assert!(
            !t.wants_look() && !t.wants_readable(),
            "polling it would spin"
        );
        for ev in [R::Kick, R::UplinkReadable, R::BusyPoll, R::UplinkBack] {
            assert_eq!(t.on(ev), t, "{ev:?}");
        }
        assert_eq!(t.on(R::ThrottleEnded), X::Pending);
        assert_eq!(t.on(R::LimitChanged), X::Pending);
        // A gone uplink or a broken ring win over the throttle.
        assert_eq!(t.on(R::UplinkLost), X::UplinkDown);
        assert_eq!(t.on(R::Broke), X::Broken);
        assert_eq!(X::UplinkDown.on(R::LimitChanged), X::UplinkDown);
        for s in [X::Waiting, X::NoBuffers] {
            assert_eq!(s.on(R::LimitChanged), s);
            assert_eq!(s.on(R::ThrottleEnded), s);
        }
    }

    #[test]
    fn the_worker_wakes_when_the_earliest_throttle_ends() {
        let up = UplinkState::Up;
        let tx = S::Throttled { until: 5 * MS };
        let rx = RxState::Throttled { until: 3 * MS + 1 };
        // Rounded up: waking before the end would find the throttle still on.
        assert_eq!(sleep(tx, rx, up, false, 0), Sleep::Ms(4));
        assert_eq!(sleep(tx, RxState::Waiting, up, false, 0), Sleep::Ms(5));
        assert_eq!(
            sleep(tx, RxState::Waiting, up, false, 4 * MS + 1),
            Sleep::Ms(1)
        );
        // Over: do not sleep (the loop ends the throttle).
        assert_eq!(sleep(tx, rx, up, false, 5 * MS), Sleep::No);
        // In flight packets still get their 1 ms.
        assert_eq!(sleep(tx, rx, up, true, 0), Sleep::Ms(IN_FLIGHT_POLL_MS));
        // A long throttle still wakes the worker often enough to see a changed limit,
        // and a stop (the exit fd) always wakes it: a stop while throttled is at once.
        let long = S::Throttled { until: u64::MAX };
        assert_eq!(
            sleep(long, RxState::Waiting, up, false, 0),
            Sleep::Ms(THROTTLE_RECHECK_MS)
        );
        assert_eq!(
            sleep(long, RxState::UplinkDown, UplinkState::Down, false, 0),
            Sleep::Ms(THROTTLE_RECHECK_MS)
        );
        // A look due wins over everything.
        assert_eq!(sleep(long, RxState::Pending, up, false, 0), Sleep::No);
    }
}
