//! Data-parallel training on one host (`--features mpi`): per step, the time of forward
//! and backward with the gradient readback (compute), of the gradient all-reduce, the
//! whole step, and the gradient bytes each rank sends, for W1 and W2 (batch 256 per rank)
//! with 1 and 2 ranks, with one gradient bucket after the whole backward pass and with
//! 2 MB buckets overlapped with it (`--bucket-mb`).
//!
//! ```text
//! cargo bench --features mpi --bench distributed                 # 1 and 2 ranks, W1 and W2
//! cargo bench --features mpi --bench distributed -- --steps 8 --workloads w1 --json
//! ```
//! Started by cargo, the bench starts itself under `mpirun -np 1` and `mpirun -np 2
//! --oversubscribe` and passes their lines on; started by mpirun, it measures. `--steps`:
//! timed steps per rank count and workload (default 6, after 2 untimed ones).
//! `--ranks`: comma-separated rank counts (default 1,2).

mod common;

use common::{json_line, noise, Args};
use std::process::Command;
use std::time::Duration;
use steadygrad::distributed::{mpi, Distributed};
use steadygrad::{BackendChoice, Dataset, FitOptions, Model};

const BATCH: usize = 256;

fn main() {
    let args = Args::parse();
    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() {
        measure(&args);
        mpi::finish();
        return;
    }
    let ranks = args
        .value("ranks", "STEADYGRAD_BENCH_RANKS")
        .unwrap_or_else(|| "1,2".into());
    let me = std::env::current_exe().expect("the bench's own path");
    for n in ranks.split(',') {
        let status = Command::new("mpirun")
            .args(["-np", n.trim(), "--oversubscribe"])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
            .arg(&me)
            .args(std::env::args().skip(1))
            .status()
            .expect("mpirun (Open MPI) is installed");
        assert!(status.success(), "the bench under mpirun -np {n} failed");
    }
}

fn measure(args: &Args) {
    let steps = args.number("steps", "STEADYGRAD_BENCH_STEPS", 6).max(1);
    let warmup = 2;
    let workloads = args
        .value("workloads", "STEADYGRAD_BENCH_WORKLOADS")
        .unwrap_or_else(|| "w1,w2".into());
    let collective = mpi::init()
        .expect("MPI")
        .with_timeout(Duration::from_secs(600));
    let configs = [("one bucket", None), ("2 MB buckets", Some(2_000_000))];
    for (name, (buckets, bucket_bytes)) in workloads
        .split(',')
        .flat_map(|w| configs.iter().map(move |c| (w, *c)))
    {
        let spec =
            steadygrad::bench::standard_spec(name.trim(), false).unwrap_or_else(|e| panic!("{e}"));
        let mut model = Model::with_backend(spec.clone(), &BackendChoice::Auto).expect("model");
        let mut dist = Distributed::new(Box::new(collective), Duration::from_secs(600), 0);
        dist.bucket_bytes = bucket_bytes;
        let (rank, world) = (dist.rank(), dist.size());
        model.set_distributed(dist).expect("replicas agree");
        let rows = BATCH * world;
        let data = |steps: usize, seed| {
            let n = rows * steps;
            let labels: Vec<usize> = (0..n).map(|i| i % spec.output).collect();
            let x = noise(n * spec.input, seed)
                .iter()
                .map(|v| v * 0.5 + 0.5)
                .collect();
            Dataset::classification(x, &labels, spec.input, spec.output).expect("data")
        };
        let opts = FitOptions {
            epochs: 1,
            batch_size: BATCH,
            shuffle_seed: 1,
            drop_last: true,
        };
        model
            .fit(&data(warmup, 3), None, &opts, |_| {})
            .expect("warm-up");
        let before = model.exchange_stats().expect("distributed");
        let clock = std::time::Instant::now();
        model
            .fit(&data(steps, 4), None, &opts, |_| {})
            .expect("timed steps");
        let wall = clock.elapsed();
        let after = model.exchange_stats().expect("distributed");
        let n = (after.steps - before.steps) as f64;
        let step = wall.as_secs_f64() * 1e3 / n;
        let per_step = (after.buckets - before.buckets) as f64 / n;
        let ms = |a: Duration, b: Duration| (a - b).as_secs_f64() * 1e3 / n;
        let compute = ms(after.compute, before.compute);
        let reduce = ms(after.all_reduce, before.all_reduce);
        let update = ms(after.update, before.update);
        let bytes = (after.bytes - before.bytes) / n as u64;
        if rank != 0 {
            continue;
        }
        if args.json {
            println!(
                "{}",
                json_line(&[
                    ("bench", "distributed".into()),
                    ("workload", name.into()),
                    ("ranks", world.into()),
                    ("buckets", per_step.into()),
                    ("step_ms", step.into()),
                    ("device", model.device().into()),
                    ("compute_ms", compute.into()),
                    ("all_reduce_ms", reduce.into()),
                    ("update_ms", update.into()),
                    ("bytes_per_step", (bytes as usize).into()),
                    ("commit", common::git_commit().into()),
                ])
            );
        } else {
            println!(
                "{name} ranks {world}, {buckets} ({per_step:.0} per step): step {step:.1} ms, \
                 compute {compute:.1} ms, all-reduce {reduce:.1} ms, update {update:.1} ms, \
                 {:.1} MB gradients per step per rank ({})",
                bytes as f64 / 1e6,
                model.device()
            );
        }
    }
}
