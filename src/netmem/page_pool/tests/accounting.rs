// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The page pool's books under concurrency: the owner allocates (whole netmems and
//! frags) and puts while another thread returns netmems through a recycler. A model of
//! who holds what catches a netmem or frag handed out while still held, and whenever
//! both threads are in step (and at the end) `inflight` and the counters must match it.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::thread;

use proptest::prelude::*;

use super::*;

/// Who holds what, shared with the recycling thread: a netmem is held whole, or as
/// a set of non-overlapping frags.
#[derive(Debug)]
enum Holding {
    Whole,
    Frags(Vec<(u32, u32)>),
}

type Holdings = Arc<Mutex<HashMap<NetmemRef, Holding>>>;

/// One reference the test holds: a whole netmem or a frag `(offset, len)` of one.
type Ref = (NetmemRef, Option<(u32, u32)>);

fn drop_holding(holdings: &Holdings, (netmem, frag): Ref) {
    let mut h = holdings.lock().unwrap();
    let empty = match (h.get_mut(&netmem), frag) {
        (Some(Holding::Whole), None) => true,
        (Some(Holding::Frags(v)), Some(range)) => {
            let i = v.iter().position(|r| *r == range).expect("frag not held");
            v.swap_remove(i);
            v.is_empty()
        }
        other => panic!("dropping {netmem:?} {frag:?} but holding is {other:?}"),
    };
    if empty {
        h.remove(&netmem);
    }
}

fn take_holding(holdings: &Holdings, (netmem, frag): Ref) -> Result<(), TestCaseError> {
    let mut h = holdings.lock().unwrap();
    match (h.get_mut(&netmem), frag) {
        (None, None) => {
            h.insert(netmem, Holding::Whole);
        }
        (None, Some(range)) => {
            h.insert(netmem, Holding::Frags(vec![range]));
        }
        (Some(Holding::Frags(v)), Some((off, len))) => {
            let overlaps = v.iter().any(|&(o, l)| off < o + l && o < off + len);
            prop_assert!(
                !overlaps,
                "frag {off}+{len} of {netmem:?} overlaps one held: {v:?}"
            );
            v.push((off, len));
        }
        (held, _) => {
            return Err(TestCaseError::fail(format!(
                "{netmem:?} {frag:?} handed out while held as {held:?}"
            )));
        }
    }
    Ok(())
}

enum ToThread {
    Recycle(Ref),
    Sync(mpsc::Sender<()>),
}

#[derive(Clone, Debug)]
enum Op {
    Alloc,
    AllocFrag(u32),
    Put(usize),
    PutBulk(usize),
    Send(usize),
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Alloc),
        3 => (0u32..4200).prop_map(Op::AllocFrag),
        3 => any::<usize>().prop_map(Op::Put),
        1 => (1usize..40).prop_map(Op::PutBulk),
        2 => any::<usize>().prop_map(Op::Send),
        1 => Just(Op::Sync),
    ]
}

/// The bookkeeping of the test against the pool's.
struct Model {
    held: Vec<Ref>,
    /// Whole allocations plus frags that started a carving (offset 0).
    handouts: u64,
    /// The netmem the pool is carving frags from.
    cursor: Option<NetmemRef>,
}

fn check_accounting(pool: &PagePool, holdings: &Holdings, m: &Model) -> Result<(), TestCaseError> {
    let mut out: HashSet<NetmemRef> = holdings.lock().unwrap().keys().copied().collect();
    out.extend(m.cursor);
    let expect = pool.cached() + pool.ring_len() + out.len();
    prop_assert_eq!(pool.inflight(), u64::try_from(expect).unwrap());
    let s = pool.stats();
    prop_assert_eq!(s.alloc_fast + s.alloc_slow + s.alloc_refill, m.handouts);
    Ok(())
}

fn run_ops(chunks: usize, ring_size: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (mut pool, log) = checked_pool(chunks, ring_size);
    let holdings: Holdings = Arc::default();
    let (tx, rx) = mpsc::channel::<ToThread>();
    let recycler = pool.recycler();
    let thread_holdings = Arc::clone(&holdings);
    let worker = thread::spawn(move || {
        for msg in rx {
            match msg {
                ToThread::Recycle(r) => {
                    // Forget it first: once recycled the pool may hand it out again.
                    drop_holding(&thread_holdings, r);
                    recycler.recycle(r.0);
                }
                ToThread::Sync(ack) => ack.send(()).unwrap(),
            }
        }
    });
    let sync = |tx: &mpsc::Sender<ToThread>| {
        let (ack_tx, ack_rx) = mpsc::channel();
        tx.send(ToThread::Sync(ack_tx)).unwrap();
        ack_rx.recv().unwrap();
    };
    let mut m = Model {
        held: Vec::new(),
        handouts: 0,
        cursor: None,
    };
    for op in ops {
        match op {
            Op::Alloc => {
                if let Some(n) = pool.alloc_netmem_direct() {
                    take_holding(&holdings, (n, None))?;
                    m.held.push((n, None));
                    m.handouts += 1;
                }
            }
            Op::AllocFrag(size) => match pool.alloc_frag_direct(size) {
                Some((n, off)) => {
                    let len = size.max(1).next_multiple_of(PP_FRAG_ALIGN);
                    prop_assert!(off + len <= pool.chunk_size());
                    take_holding(&holdings, (n, Some((off, len))))?;
                    m.held.push((n, Some((off, len))));
                    m.cursor = Some(n);
                    if off == 0 {
                        m.handouts += 1;
                    }
                }
                None if size <= pool.chunk_size() => m.cursor = None,
                None => {}
            },
            Op::Put(i) if !m.held.is_empty() => {
                let r = m.held.swap_remove(i % m.held.len());
                drop_holding(&holdings, r);
                pool.put_netmem_direct(r.0);
            }
            Op::PutBulk(n) => {
                let k = n.min(m.held.len());
                let batch: Vec<Ref> = m.held.drain(..k).collect();
                for &r in &batch {
                    drop_holding(&holdings, r);
                }
                let netmems: Vec<NetmemRef> = batch.iter().map(|r| r.0).collect();
                pool.put_netmem_bulk_direct(&netmems);
            }
            Op::Send(i) if !m.held.is_empty() => {
                let r = m.held.swap_remove(i % m.held.len());
                tx.send(ToThread::Recycle(r)).unwrap();
            }
            Op::Sync => {
                sync(&tx);
                check_accounting(&pool, &holdings, &m)?;
            }
            Op::Put(_) | Op::Send(_) => {}
        }
    }
    // Give everything back, half through the other thread.
    for (i, r) in std::mem::take(&mut m.held).into_iter().enumerate() {
        if i % 2 == 0 {
            tx.send(ToThread::Recycle(r)).unwrap();
        } else {
            drop_holding(&holdings, r);
            pool.put_netmem_direct(r.0);
        }
    }
    sync(&tx);
    check_accounting(&pool, &holdings, &m)?;
    prop_assert!(holdings.lock().unwrap().is_empty());
    // Each handout came back exactly once (the netmem being carved is still the
    // pool's own until destroy).
    let s = pool.stats();
    let returns = s.recycle_cached + s.recycle_ring + s.recycle_ring_full + s.recycle_released_ref;
    prop_assert_eq!(returns + u64::from(m.cursor.is_some()), m.handouts);
    drop(tx);
    worker.join().unwrap();
    prop_assert!(matches!(pool.destroy(), PagePoolDestroy::Released));
    let log = log.lock().unwrap();
    prop_assert!(log.destroyed);
    prop_assert!(log.outstanding.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn accounting_survives_any_interleaving(
        chunks in 1usize..300,
        ring_size in 1usize..80,
        ops in proptest::collection::vec(op(), 0..400),
    ) {
        run_ops(chunks, ring_size, ops)?;
    }
}

/// The owner allocates and puts while another thread recycles at the same time; no
/// netmem is ever handed out twice and the books balance at the end.
#[test]
fn concurrent_recycling_stress() {
    let (mut pool, log) = checked_pool(512, 64);
    let holdings: Holdings = Arc::default();
    let (tx, rx) = mpsc::sync_channel::<Ref>(256);
    let recycler = pool.recycler();
    let thread_holdings = Arc::clone(&holdings);
    let worker = thread::spawn(move || {
        for r in rx {
            drop_holding(&thread_holdings, r);
            recycler.recycle(r.0);
        }
    });
    let mut held: Vec<Ref> = Vec::new();
    for i in 0..200_000u32 {
        let got = if i % 3 == 0 {
            pool.alloc_frag_direct(700 + i % 2000).map(|(n, off)| {
                (
                    n,
                    Some((off, (700 + i % 2000).next_multiple_of(PP_FRAG_ALIGN))),
                )
            })
        } else {
            pool.alloc_netmem_direct().map(|n| (n, None))
        };
        if let Some(r) = got {
            take_holding(&holdings, r).unwrap();
            held.push(r);
        }
        if held.len() > 100 || got.is_none() {
            let r = held.swap_remove(usize::try_from(i).unwrap() % held.len());
            if i % 2 == 0 {
                tx.send(r).unwrap();
            } else {
                drop_holding(&holdings, r);
                pool.put_netmem_direct(r.0);
            }
        }
    }
    for r in held {
        tx.send(r).unwrap();
    }
    drop(tx);
    worker.join().unwrap();
    assert!(holdings.lock().unwrap().is_empty());
    let s = pool.stats();
    assert!(s.recycle_ring > 0 && s.alloc_refill > 0);
    assert_released(pool, &log);
}
