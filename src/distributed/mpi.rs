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
use std::sync::atomic::{AtomicBool, Ordering};

static RUNNING: AtomicBool = AtomicBool::new(false);

/// This process's place in `MPI_COMM_WORLD`. Holds no communicator handle (raw MPI
/// handles are not `Send`); each call wraps the world communicator afresh, which costs
/// nothing.
#[derive(Clone, Copy, Debug)]
pub struct MpiCollective {
    rank: usize,
    size: usize,
    /// Rank among the processes on this host, which picks the adapter.
    pub local_rank: usize,
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

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
        ensure!(
            values.len() <= i32::MAX as usize,
            "{} values are more than one MPI call can sum",
            values.len()
        );
        let send = values.to_vec();
        SimpleCommunicator::world().all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        let mut all = vec![0u64; self.size];
        SimpleCommunicator::world().all_gather_into(&value, &mut all[..]);
        Ok(all)
    }
}
