//! `train --distributed`: joining the MPI job, picking this rank's adapter, and leaving
//! the job cleanly (finalize on success, abort on an error so no rank waits forever).

use anyhow::Result;
use steadygrad::distributed::Distributed;
use steadygrad::BackendChoice;

/// Data-parallel training flags of `train`.
#[derive(clap::Args, Clone, Debug)]
pub struct DistArgs {
    /// Train data-parallel across the processes `mpirun -np N` started: each trains on its
    /// shard of every global batch of --batch × N rows and gradients are averaged, so the
    /// run equals one process with --batch × N. Needs a build with `--features mpi`.
    #[arg(long)]
    pub distributed: bool,
    /// Batch norm over the global batch (PyTorch's SyncBatchNorm): the ranks combine their
    /// batch-norm statistics, forward and backward, instead of each normalizing by its
    /// own shard, so the run equals one process with --batch × N also with batch norm,
    /// and every rank keeps the same running statistics.
    #[arg(long, requires = "distributed")]
    pub sync_bn: bool,
    /// Megabytes of gradients per all-reduce bucket (PyTorch DDP's bucket_cap_mb): the
    /// backward pass is submitted in parts, each ending where a bucket's gradients are
    /// complete, and the host all-reduces each bucket while the device computes the next
    /// parts. A size above the model's gradients gives one bucket after the whole
    /// backward pass.
    #[arg(
        long,
        default_value_t = 25.0,
        value_name = "MB",
        requires = "distributed"
    )]
    pub bucket_mb: f64,
    /// Seconds an exchange may wait for the other ranks; past it, the ranks that sent no
    /// heartbeat meanwhile (died or hung) are named and the job is stopped. It must exceed
    /// how far one rank can run ahead: a step, a checkpoint write.
    #[arg(
        long,
        default_value_t = 120.0,
        value_name = "SECONDS",
        requires = "distributed"
    )]
    pub collective_timeout: f64,
    /// Compare checksums of every rank's weights every N steps (0: after each epoch
    /// only); ranks that differ stop the run with an error naming them.
    #[arg(long, default_value_t = 50, value_name = "N", requires = "distributed")]
    pub replica_check_every: u64,
}

/// The data-parallel context of this process, when `--distributed` asked for one, with
/// the backend choice narrowed to this rank's adapter. `statistics`: the statistics
/// flags given (--log, --plots, --report, …).
pub fn join(
    args: &DistArgs,
    choice: &BackendChoice,
    statistics: &[&str],
) -> Result<Option<(Distributed, BackendChoice)>> {
    if !args.distributed {
        return Ok(None);
    }
    anyhow::ensure!(
        statistics.is_empty(),
        "{} cannot be combined with --distributed yet: gradient-health statistics steps are \
         not split for the gradient exchange",
        statistics.join(", ")
    );
    // A year at most: Duration cannot hold much more than 1e19 s, and the watchdog
    // doubles the timeout.
    anyhow::ensure!(
        args.collective_timeout.is_finite()
            && args.collective_timeout > 0.0
            && args.collective_timeout <= 3.2e7,
        "--collective-timeout must be a positive number of seconds, at most a year \
         (3.2e7), got {}",
        args.collective_timeout
    );
    anyhow::ensure!(
        args.bucket_mb.is_finite() && args.bucket_mb > 0.0 && args.bucket_mb <= 1e9,
        "--bucket-mb must be a positive number of megabytes, at most 1e9, got {}",
        args.bucket_mb
    );
    join_mpi(args, choice).map(Some)
}

#[cfg(feature = "mpi")]
fn join_mpi(args: &DistArgs, choice: &BackendChoice) -> Result<(Distributed, BackendChoice)> {
    use steadygrad::device::AdapterSelection;
    use steadygrad::distributed::mpi;
    let timeout = std::time::Duration::from_secs_f64(args.collective_timeout);
    let c = mpi::init()?.with_timeout(timeout);
    // Ranks on one host take the adapters in turn; several share one when there are
    // fewer adapters than ranks. An adapter named with --adapter is everyone's.
    let choice = match choice {
        BackendChoice::Auto => pick(AdapterSelection::default(), c.local_rank),
        BackendChoice::Gpu(sel) if sel.filter.is_none() => pick(sel.clone(), c.local_rank),
        other => other.clone(),
    };
    let mut dist = Distributed::new(Box::new(c), timeout, args.replica_check_every);
    dist.sync_bn = args.sync_bn;
    dist.bucket_bytes = Some((args.bucket_mb * 1e6).ceil() as u64);
    Ok((dist, choice))
}

/// The `local_rank`-th (modulo) of the best kind of adapter `sel` finds, as `auto` ranks
/// them (discrete, integrated, virtual, other, CPU), on one backend, so ranks neither land
/// on lavapipe beside a GPU nor take one GPU twice through two backends. `Auto` (the CPU
/// fallback) when there is none.
#[cfg(feature = "mpi")]
fn pick(sel: steadygrad::device::AdapterSelection, local_rank: usize) -> BackendChoice {
    use wgpu::DeviceType as T;
    let kind = |t: T| match t {
        T::DiscreteGpu => 0,
        T::IntegratedGpu => 1,
        T::VirtualGpu => 2,
        T::Other => 3,
        T::Cpu => 4,
    };
    let all = steadygrad::device::list_adapters(sel.backends);
    let Some(best) = all.iter().min_by_key(|a| kind(a.device_type)) else {
        return BackendChoice::Auto;
    };
    let (best_kind, backend) = (kind(best.device_type), best.backend);
    let pool: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, a)| kind(a.device_type) == best_kind && a.backend == backend)
        .map(|(i, _)| i)
        .collect();
    BackendChoice::Gpu(steadygrad::device::AdapterSelection {
        filter: Some(pool[local_rank % pool.len()].to_string()),
        ..sel
    })
}

#[cfg(not(feature = "mpi"))]
fn join_mpi(_: &DistArgs, _: &BackendChoice) -> Result<(Distributed, BackendChoice)> {
    anyhow::bail!(
        "--distributed needs MPI, which this build leaves out; rebuild with `cargo build \
         --release --features mpi` (Open MPI and libclang must be installed) and start it \
         with `mpirun -np N steadygrad train ... --distributed`"
    )
}

/// Ends this process's part in the MPI job after `result`: finalize on success; on an
/// error, print it naming the rank and abort the job, so ranks waiting for this one in
/// an exchange stop at once instead of at their timeout.
pub fn leave(result: Result<()>) -> Result<()> {
    #[cfg(feature = "mpi")]
    {
        use steadygrad::distributed::mpi;
        if mpi::running() {
            match &result {
                Ok(()) => mpi::finish(),
                Err(e) => {
                    let rank = mpi::rank();
                    eprintln!("error: rank {rank}: {e:#}");
                    // Ranks that fail at the same step (a non-finite guard fires on every
                    // rank, as the averaged gradients are everyone's) print their own
                    // error before the abort ends them. They left the same exchange
                    // moments ago; a second covers ranks sharing loaded cores.
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    mpi::abort(1);
                }
            }
        }
    }
    result
}
