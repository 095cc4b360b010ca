//! Data-parallel training across processes: every rank holds the whole model, trains on
//! its shard of each global batch, and averages gradients with the others before the same
//! update, so the weights stay identical everywhere.
//!
//! A data-parallel plan splits the training step into parts (`graph::Stage::Part`) where
//! the host exchanges with the other ranks (`graph::Exchange`): each bucket of gradients
//! once the backward pass has completed it (all-reduced while the device computes the
//! following parts), and with synchronized batch norm each batch norm's statistics
//! ([`merge_moments`]) and backward sums. Dropout masks are offset by the rank's first
//! global row, so every rank draws the single-process masks of its rows.
//!
//! The trainer sees only [`Collective`], so it does not depend on MPI: [`Solo`] is the
//! one-process identity (for tests and for the logic shared with a single process), and
//! `mpi::MpiCollective` (feature `mpi`) the real one. [`Distributed`] wraps a collective
//! with what every call needs: a watchdog that turns a peer that stopped answering into
//! an error within a bounded time, and the timings the bench reports.

#[cfg(feature = "mpi")]
pub mod mpi;

use anyhow::Result;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The collective operations data-parallel training needs. Every rank must make the same
/// calls in the same order, as with MPI.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sums `values` element-wise across ranks, in place; every rank gets the same sums.
    /// `what` names the call in the error a silent rank causes.
    fn sum_f32(&self, values: &mut [f32], what: &str) -> Result<()>;
    /// Every rank's `value`, indexed by rank.
    fn gather_u64(&self, value: u64) -> Result<Vec<u64>>;
}

/// The collective of a single process: sums are the values themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _values: &mut [f32], _what: &str) -> Result<()> {
        Ok(())
    }
    fn gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        Ok(vec![value])
    }
}

/// Rows `[lo, hi)` of a global batch of `len` rows that rank `rank` of `world` trains on:
/// consecutive, so the ranks' shards laid end to end are the single-process batch, and
/// differing by at most one row when `len` does not divide evenly.
pub fn shard(len: usize, rank: usize, world: usize) -> (usize, usize) {
    (rank * len / world, (rank + 1) * len / world)
}

/// The global batch's `[mean; biased var; unbiased var]` per feature (`3·cols`) from
/// every rank's `[rows, mean (cols), M2 (cols)]` laid end to end in `gathered`, merged in
/// `f64` with Chan et al.'s pairwise formula, `M2 = Σ M2ᵣ + Σ nᵣ·(meanᵣ − mean)²`, which
/// adds centered sums without the cancellation of `Σx² − N·mean²`.
pub fn merge_moments(gathered: &[f32], cols: usize) -> Result<Vec<f32>> {
    let width = 1 + 2 * cols;
    anyhow::ensure!(
        gathered.len().is_multiple_of(width),
        "batch-norm statistics of {} values are not whole ranks of {width}",
        gathered.len()
    );
    let ranks = || gathered.chunks(width);
    let total: f64 = ranks().map(|r| r[0] as f64).sum();
    anyhow::ensure!(
        total >= 2.0,
        "batch norm needs at least 2 rows per global training batch to estimate a \
         variance, got {total}"
    );
    let mut out = vec![0.0f32; 3 * cols];
    for c in 0..cols {
        let mean = ranks().map(|r| r[0] as f64 * r[1 + c] as f64).sum::<f64>() / total;
        let m2: f64 = ranks()
            .map(|r| {
                let (n, m) = (r[0] as f64, r[1 + c] as f64);
                r[1 + cols + c] as f64 + n * (m - mean) * (m - mean)
            })
            .sum();
        out[c] = mean as f32;
        out[cols + c] = (m2 / total) as f32;
        out[2 * cols + c] = (m2 / (total - 1.0)) as f32;
    }
    Ok(out)
}

/// FNV-1a over the bits of `values`, chained from `hash`: equal only for bit-identical
/// tensors, which replicas of one model must hold.
pub fn checksum(hash: u64, values: &[f32]) -> u64 {
    values.iter().fold(hash, |h, v| {
        v.to_bits().to_le_bytes().iter().fold(h, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
        })
    })
}

/// The FNV-1a offset basis, where [`checksum`] chains start.
pub const CHECKSUM_START: u64 = 0xCBF2_9CE4_8422_2325;

/// Time and traffic of the gradient exchange, summed over steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExchangeStats {
    pub steps: u64,
    /// Forward, backward and reading the gradients back, on this rank: until the last
    /// bucket arrived, less the all-reduces of earlier buckets done meanwhile.
    pub compute: Duration,
    /// The all-reduces of the gradient buckets, waiting for the slowest rank included,
    /// overlapped with the device's backward pass or not.
    pub all_reduce: Duration,
    /// Writing the averaged gradients back and the update (enqueued, not awaited).
    pub update: Duration,
    /// Gradient bytes each rank contributed to the all-reduce.
    pub bytes: u64,
    /// Gradient all-reduces (buckets) over all steps.
    pub buckets: u64,
    /// Synchronized batch-norm exchanges over all steps, and their time (included in
    /// `compute`: the device waits for them).
    pub bn_exchanges: u64,
    pub bn_exchange: Duration,
}

/// PyTorch DDP's default bucket, 25 MB.
pub const DEFAULT_BUCKET_BYTES: u64 = 25_000_000;

/// A [`Collective`] with a watchdog, the replica-check period and the timings.
pub struct Distributed {
    collective: Box<dyn Collective>,
    /// Steps between comparisons of the replicas' weight checksums (0: only at the start
    /// and after each epoch).
    pub check_every: u64,
    pub stats: ExchangeStats,
    /// Batch norm over the global batch (PyTorch's `SyncBatchNorm`) rather than each
    /// rank's shard; set before `Model::set_distributed`.
    pub sync_bn: bool,
    /// Gradient bytes per all-reduce bucket (see `SplitOptions::bucket_bytes`); `None`:
    /// one bucket after the whole backward pass. [`DEFAULT_BUCKET_BYTES`] to start with.
    pub bucket_bytes: Option<u64>,
    watchdog: Watchdog,
}

impl Distributed {
    /// `timeout` is the collective's own bound on waiting for the other ranks (see
    /// `MpiCollective::with_timeout`, which names the silent ranks past it); the watchdog
    /// here ends the process at twice that plus 5 s, should a call block inside MPI
    /// regardless.
    pub fn new(collective: Box<dyn Collective>, timeout: Duration, check_every: u64) -> Self {
        let backstop = timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(5));
        let watchdog = Watchdog::start(collective.rank(), collective.size(), backstop);
        Distributed {
            collective,
            check_every,
            stats: ExchangeStats::default(),
            sync_bn: false,
            bucket_bytes: Some(DEFAULT_BUCKET_BYTES),
            watchdog,
        }
    }

    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    pub fn size(&self) -> usize {
        self.collective.size()
    }

    /// [`Collective::sum_f32`] under the watchdog; `what` names the call in errors.
    pub fn sum_f32(&self, values: &mut [f32], what: &str) -> Result<()> {
        self.watchdog
            .around(what, || self.collective.sum_f32(values, what))
    }

    /// Compares `hash` (of this rank's replicated state) across ranks; an error naming
    /// the ranks that disagree with rank 0.
    pub fn check_replicas(&self, hash: u64, when: &str) -> Result<()> {
        let what = "comparing weight checksums";
        let all = (self.watchdog).around(what, || self.collective.gather_u64(hash))?;
        let differing: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|&(_, h)| *h != all[0])
            .map(|(r, _)| r.to_string())
            .collect();
        anyhow::ensure!(
            differing.is_empty(),
            "the replicas diverged {when}: the weights and optimizer state of rank(s) {} differ \
             from rank 0's (checksums {all:016x?}); every rank must start from the same \
             weights and run the same build on the same kind of device",
            differing.join(", ")
        );
        Ok(())
    }
}

/// A thread that ends the process when a collective call outlasts the timeout: a peer
/// that died or hangs would otherwise leave this rank blocked in MPI forever.
struct Watchdog {
    rank: usize,
    /// The call in progress: when it started and what it is.
    current: Arc<Mutex<Option<(Instant, String)>>>,
}

impl Watchdog {
    fn start(rank: usize, world: usize, timeout: Duration) -> Watchdog {
        let current: Arc<Mutex<Option<(Instant, String)>>> = Arc::default();
        let watched = Arc::clone(&current);
        if world > 1 {
            let tick = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
            std::thread::spawn(move || loop {
                std::thread::sleep(tick);
                let stalled = watched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .filter(|(since, _)| since.elapsed() > timeout)
                    .map(|(_, what)| what.clone());
                if let Some(what) = stalled {
                    eprintln!(
                        "error: rank {rank} of {world}: {what} got no answer from the other \
                         ranks within {:.0} s: a rank died or stopped responding; stopping",
                        timeout.as_secs_f64()
                    );
                    // Not MPI_Abort: this thread may not call MPI while the main thread is
                    // inside it. A rank that exits without finalizing makes mpirun stop
                    // the others.
                    std::process::exit(3);
                }
            });
        }
        Watchdog { rank, current }
    }

    fn around<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let set = |v| *self.current.lock().unwrap_or_else(|p| p.into_inner()) = v;
        set(Some((
            Instant::now(),
            format!("{what} (rank {})", self.rank),
        )));
        let out = f();
        set(None);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_tile_the_batch_in_order() {
        for (len, world) in [(64, 2), (65, 2), (7, 3), (3, 4)] {
            let mut next = 0;
            for r in 0..world {
                let (lo, hi) = shard(len, r, world);
                assert_eq!(lo, next, "len {len} world {world} rank {r}");
                assert!(hi - lo <= len.div_ceil(world));
                next = hi;
            }
            assert_eq!(next, len);
        }
        assert_eq!(shard(64, 1, 2), (32, 64));
    }

    #[test]
    fn checksum_sees_one_bit() {
        let a = checksum(CHECKSUM_START, &[1.0, 2.0]);
        assert_ne!(
            a,
            checksum(CHECKSUM_START, &[1.0, f32::from_bits(2.0f32.to_bits() ^ 1)])
        );
        assert_eq!(a, checksum(CHECKSUM_START, &[1.0, 2.0]));
    }

    #[test]
    fn merged_moments_are_the_whole_batch() {
        let x = [1.0f64, 4.0, -2.0, 7.0, 0.5];
        let part = |xs: &[f64]| {
            let n = xs.len() as f64;
            let m = xs.iter().sum::<f64>() / n;
            let m2: f64 = xs.iter().map(|v| (v - m) * (v - m)).sum();
            [n as f32, m as f32, m2 as f32]
        };
        let gathered = [part(&x[..2]), part(&x[2..])].concat();
        let out = merge_moments(&gathered, 1).unwrap();
        let m = x.iter().sum::<f64>() / 5.0;
        let m2: f64 = x.iter().map(|v| (v - m) * (v - m)).sum();
        assert!((out[0] as f64 - m).abs() < 1e-6);
        assert!((out[1] as f64 - m2 / 5.0).abs() < 1e-5);
        assert!((out[2] as f64 - m2 / 4.0).abs() < 1e-5);
        assert!(merge_moments(&[1.0, 0.0, 0.0], 1).is_err());
        assert!(merge_moments(&[1.0, 0.0], 1).is_err());
    }

    #[test]
    fn solo_replicas_agree() {
        let d = Distributed::new(Box::new(Solo), Duration::from_secs(1), 0);
        d.check_replicas(42, "at the start").unwrap();
        let mut v = [1.0, 2.0];
        d.sum_f32(&mut v, "test").unwrap();
        assert_eq!(v, [1.0, 2.0]);
    }
}
