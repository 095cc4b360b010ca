//! [`Collective`] over MPI (rsmpi), for processes started by `mpirun`.
//!
//! MPI is finalized by [`finish`] on success and the job aborted by [`abort`] on an error,
//! never by dropping the universe: a rank that finalizes while its peers wait inside a
//! collective would leave them blocked, where an abort stops the whole job at once.

use super::Collective;
use anyhow::{ensure, Result};
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The tag of the heartbeats ranks send while they wait in a collective.
const HEARTBEAT: i32 = 0x5348;

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Collectives this process has started; every rank counts the same, so a heartbeat
/// carrying it belongs to the collective now waited for, not to an earlier one.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// This process's place in `MPI_COMM_WORLD`. Holds no communicator handle (raw MPI
/// handles are not `Send`); each call wraps the world communicator afresh, which costs
/// nothing.
#[derive(Clone, Copy, Debug)]
pub struct MpiCollective {
    rank: usize,
    size: usize,
    /// Rank among the processes on this host, which picks the adapter.
    pub local_rank: usize,
    /// How long a collective may wait for the other ranks.
    timeout: Duration,
}

/// Initializes MPI once per process.
pub fn init() -> Result<MpiCollective> {
    let universe = mpi::initialize().ok_or_else(|| {
        anyhow::anyhow!(
            "MPI was already initialized in this process; start one training per process"
        )
    })?;
    // Finalized explicitly by `finish`, see the module docs.
    std::mem::forget(universe);
    RUNNING.store(true, Ordering::SeqCst);
    let world = SimpleCommunicator::world();
    let local = world.split_shared(world.rank());
    Ok(MpiCollective {
        rank: world.rank() as usize,
        size: world.size() as usize,
        local_rank: local.rank() as usize,
        timeout: Duration::from_secs(120),
    })
}

/// Whether [`init`] ran and neither [`finish`] nor [`abort`] has.
pub fn running() -> bool {
    RUNNING.load(Ordering::SeqCst)
}

/// Waits for every rank, then finalizes MPI.
pub fn finish() {
    if RUNNING.swap(false, Ordering::SeqCst) {
        SimpleCommunicator::world().barrier();
        // SAFETY: MPI was initialized by `init` and is finalized once, here.
        unsafe {
            mpi::ffi::MPI_Finalize();
        }
    }
}

/// This process's rank in `MPI_COMM_WORLD` (MPI must be initialized).
pub fn rank() -> usize {
    SimpleCommunicator::world().rank() as usize
}

/// Ends every rank of the job with `code` (MPI_Abort).
pub fn abort(code: i32) -> ! {
    SimpleCommunicator::world().abort(code)
}

impl MpiCollective {
    /// Bounds every collective's wait for the other ranks (default 120 s).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        MpiCollective { timeout, ..self }
    }

    /// Polls `done` (which tests a non-blocking collective) until it completes. Meanwhile
    /// every rank waiting sends the others a heartbeat now and then, so past the timeout
    /// the ranks not heard from are the dead or hung ones: they are named and the job is
    /// aborted (inside the collective's scope, which cannot be left with it pending).
    fn wait(&self, what: &str, mut done: impl FnMut() -> bool) {
        let world = SimpleCommunicator::world();
        let seq = SEQUENCE.fetch_add(1, Ordering::SeqCst);
        let others: Vec<usize> = (0..self.size).filter(|&r| r != self.rank).collect();
        let mut heard = vec![false; self.size];
        heard[self.rank] = true;
        let interval = (self.timeout / 4).min(Duration::from_secs(1));
        let started = Instant::now();
        let mut next_beat = interval / 2;
        while !done() {
            for &r in &others {
                let p = world.process_at_rank(r as i32);
                while p.immediate_probe_with_tag(HEARTBEAT).is_some() {
                    let (beat, _): (u64, _) = p.receive_with_tag(HEARTBEAT);
                    heard[r] |= beat == seq;
                }
            }
            let waited = started.elapsed();
            if waited >= next_beat {
                for &r in &others {
                    world
                        .process_at_rank(r as i32)
                        .send_with_tag(&seq, HEARTBEAT);
                }
                next_beat += interval;
            }
            if waited > self.timeout {
                let silent: Vec<String> = (0..self.size)
                    .filter(|&r| !heard[r])
                    .map(|r| r.to_string())
                    .collect();
                eprintln!(
                    "error: rank {}: {what} waited {:.0} s for rank(s) {}, which died or stopped \
                     responding; stopping the job",
                    self.rank,
                    self.timeout.as_secs_f64(),
                    silent.join(", ")
                );
                abort(2);
            }
            // Yielding, not sleeping, for the first second: MPI makes progress on the
            // transfer only inside `done`. Then sleeping, as ranks may share cores.
            if waited < Duration::from_secs(1) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f32(&self, values: &mut [f32], what: &str) -> Result<()> {
        ensure!(
            values.len() <= i32::MAX as usize,
            "{} values are more than one MPI call can sum",
            values.len()
        );
        let send = values.to_vec();
        let world = SimpleCommunicator::world();
        mpi::request::scope(|scope| {
            let sum = SystemOperation::sum();
            let mut req = Some(world.immediate_all_reduce_into(scope, &send[..], values, sum));
            self.wait(what, || test(&mut req));
        });
        Ok(())
    }

    fn gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        let mut all = vec![0u64; self.size];
        let world = SimpleCommunicator::world();
        mpi::request::scope(|scope| {
            let mut req = Some(world.immediate_all_gather_into(scope, &value, &mut all[..]));
            self.wait("comparing weight checksums", || test(&mut req));
        });
        Ok(all)
    }
}

/// Whether the request in `req` completed (taking it then).
fn test<'a, D: ?Sized, S: mpi::request::Scope<'a>>(
    req: &mut Option<mpi::request::Request<'a, D, S>>,
) -> bool {
    match req.take().map(|r| r.test()) {
        Some(Err(pending)) => {
            *req = Some(pending);
            false
        }
        _ => true,
    }
}
