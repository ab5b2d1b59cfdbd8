// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Parked pools: those destroyed while netmems were still in flight (Linux: a pool
//! `page_pool_destroy` could not release at once, which a delayed work retries and
//! the netlink page-pool dump still lists, detached, with its inflight count).
//!
//! [`PagePool::destroy`](super::PagePool::destroy) parks such a pool under its provider
//! lock; the last netmem to come back releases the memory and unparks it.
//! [`parked_pools`] lists those still waiting.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::PoolShared;

/// Pools destroyed while netmems were still in flight.
static PARKED: Mutex<Vec<Arc<PoolShared>>> = Mutex::new(Vec::new());

/// Keep a destroyed pool with netmems in flight (and so its memory) until [`unpark`].
pub(super) fn park(shared: &Arc<PoolShared>) -> PagePoolParked {
    let mut parked = PARKED.lock().unwrap_or_else(|e| e.into_inner());
    parked.push(Arc::clone(shared));
    PagePoolParked(Arc::clone(shared))
}

/// Drop the registry's hold on pool `id` once its memory is released.
pub(super) fn unpark(id: u32) {
    let removed = {
        let mut parked = PARKED.lock().unwrap_or_else(|e| e.into_inner());
        parked
            .iter()
            .position(|p| p.id == id)
            .map(|i| parked.swap_remove(i))
    };
    drop(removed);
}

/// Pools that were destroyed with netmems in flight and still keep their memory.
pub fn parked_pools() -> Vec<PagePoolParked> {
    let parked = PARKED.lock().unwrap_or_else(|e| e.into_inner());
    parked
        .iter()
        .map(|p| PagePoolParked(Arc::clone(p)))
        .collect()
}

/// A destroyed pool waiting for its netmems to come back.
#[derive(Clone, Debug)]
pub struct PagePoolParked(Arc<PoolShared>);

impl PagePoolParked {
    /// The pool's id.
    pub fn id(&self) -> u32 {
        self.0.id
    }

    /// Netmems still out.
    pub fn inflight(&self) -> u64 {
        self.0.inflight()
    }

    /// Whether every netmem came back and the provider's memory was released.
    pub fn is_released(&self) -> bool {
        self.0.memory_released.load(Ordering::Acquire)
    }
}
