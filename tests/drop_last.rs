//! `FitOptions::drop_last` (PyTorch's `DataLoader(drop_last=True)`) and the last batch of
//! one row under batch norm, which cannot be trained on and is skipped.

mod common;

use steadygrad::cpu::CpuEngine;
use steadygrad::engine::Engine;
use steadygrad::gpu::GpuEngine;
use steadygrad::{data, BatchNorm, Dataset, FitOptions, MlpSpec, Model};

/// 65 rows: two batches of 32 and a last batch of one row.
fn rows65() -> Dataset {
    let all = data::synthetic::spirals(13, 5, 0.05, 3);
    assert_eq!(all.rows, 65);
    all
}

fn fit(
    engine: Box<dyn Engine>,
    bn: bool,
    data: &Dataset,
    drop_last: bool,
    epochs: usize,
) -> anyhow::Result<(Vec<usize>, u64)> {
    let mut spec = MlpSpec::new(2, &[8, 8], 5).seed(1);
    if bn {
        spec = spec.batch_norm(BatchNorm::default());
    }
    let mut m = Model::new(spec, engine)?;
    let opts = FitOptions {
        epochs,
        batch_size: 32,
        shuffle_seed: 4,
        drop_last,
    };
    let reports = m.fit(data, None, &opts, |_| {})?;
    Ok((reports.iter().map(|r| r.train.rows).collect(), m.steps()?))
}

fn cpu() -> Box<dyn Engine> {
    Box::new(CpuEngine::new())
}

#[test]
fn drop_last_skips_the_partial_batch() {
    let d = rows65();
    assert_eq!(fit(cpu(), false, &d, false, 2).unwrap(), (vec![65, 65], 6));
    assert_eq!(fit(cpu(), false, &d, true, 2).unwrap(), (vec![64, 64], 4));
    // A whole number of batches loses nothing.
    let d64 = d.slice(0, 64);
    assert_eq!(fit(cpu(), false, &d64, true, 1).unwrap(), (vec![64], 2));
}

#[test]
fn batch_norm_skips_a_last_batch_of_one_row() {
    let d = rows65();
    for engine in [
        cpu(),
        Box::new(GpuEngine::new(common::gpu())) as Box<dyn Engine>,
    ] {
        // Without the skip this aborts: batch norm has no variance over one row.
        let (rows, steps) = fit(engine, true, &d, false, 2).unwrap();
        assert_eq!((rows, steps), (vec![64, 64], 4));
    }
    // A last batch of two rows trains.
    let d66 = data::synthetic::spirals(33, 2, 0.05, 3);
    assert_eq!(d66.rows, 66);
    let d66 = Dataset {
        classes: Some(5),
        ..d66
    };
    assert_eq!(fit(cpu(), true, &d66, false, 1).unwrap(), (vec![66], 3));
}

#[test]
fn impossible_batches_are_errors() {
    let d = rows65();
    let e = format!(
        "{:#}",
        fit(cpu(), false, &d.slice(0, 20), true, 1).unwrap_err()
    );
    assert!(
        e.contains("drop_last") && e.contains("fewer than one batch"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        fit(cpu(), true, &d.slice(0, 1), false, 1).unwrap_err()
    );
    assert!(e.contains("batch norm needs at least 2 rows"), "{e}");
}
