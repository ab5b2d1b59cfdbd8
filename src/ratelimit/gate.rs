// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What the TX and RX paths ask before each packet: [`Gate`].
//!
//! The paths are generic over it, so a pair without limits runs them with
//! [`Unlimited`], whose answers are constants the compiler folds away: the data path
//! pays one branch per batch (which of the two to call), not one per packet.

use super::Limiter;

/// Whether the next packet may go, and its charge once it went.
pub trait Gate {
    /// May a packet of `bytes` bytes go now? `Err`: nanoseconds until it may.
    fn check(&self, bytes: u64) -> Result<(), u64>;
    /// May a packet whose size is not known yet be read now (RX)? `Err`: nanoseconds
    /// until it may.
    fn ready(&self) -> Result<(), u64>;
    /// A packet of `bytes` bytes went.
    fn charge(&mut self, bytes: u64);
}

/// No limit: every packet goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl Gate for Unlimited {
    #[inline(always)]
    fn check(&self, _bytes: u64) -> Result<(), u64> {
        Ok(())
    }

    #[inline(always)]
    fn ready(&self) -> Result<(), u64> {
        Ok(())
    }

    #[inline(always)]
    fn charge(&mut self, _bytes: u64) {}
}

impl Gate for Limiter {
    #[inline]
    fn check(&self, bytes: u64) -> Result<(), u64> {
        Limiter::check(self, bytes)
    }

    #[inline]
    fn ready(&self) -> Result<(), u64> {
        Limiter::ready(self)
    }

    #[inline]
    fn charge(&mut self, bytes: u64) {
        Limiter::charge(self, bytes)
    }
}
