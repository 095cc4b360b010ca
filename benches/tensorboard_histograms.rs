//! What `--tensorboard`'s histograms cost: the same training loop with statistics every
//! `EVERY` steps and a TensorBoard observer, with and without
//! `Model::gather_histograms` (whole-tensor readbacks of every layer's weights, gradients
//! and activations at each statistics step, binned on the host).
//!
//! ```text
//! cargo bench --bench tensorboard_histograms                    # 100 × 64, batch 64, every 10
//! cargo bench --bench tensorboard_histograms -- 100 256 64 10 200   # DEPTH WIDTH BATCH EVERY STEPS
//! ```
//! Rounds alternate so drift on a shared machine hits both alike; the fastest round of
//! each is reported, with CPU-seconds per step and the event-file bytes written.

mod common;

use std::time::Instant;
use steadygrad::health::tensorboard::TensorBoardLog;
use steadygrad::model::health::histogram::{of_each, Histogram, BUCKETS};
use steadygrad::{BackendChoice, MlpSpec, Model};

fn main() -> anyhow::Result<()> {
    let arg = common::numeric_args();
    let (depth, width, batch, every, steps) =
        (arg(0, 100), arg(1, 64), arg(2, 64), arg(3, 10), arg(4, 100));
    let (input, output) = (32, 10);
    let spec = MlpSpec::new(input, &vec![width; depth], output).seed(1);
    let x: Vec<f32> = (0..batch * input)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let y: Vec<f32> = (0..batch).map(|i| (i % output) as f32).collect();
    let dir = std::env::temp_dir().join(format!("steadygrad-tb-bench-{}", std::process::id()));
    let mut models = Vec::new();
    for histograms in [false, true] {
        let mut m = Model::with_backend(spec.clone(), &BackendChoice::Auto)?;
        let sub = dir.join(if histograms { "with" } else { "without" });
        m.set_observer(Some(Box::new(TensorBoardLog::create(&sub, &spec)?)));
        m.gather_stats_every(every);
        m.gather_histograms(histograms);
        models.push((m, sub));
    }
    println!("device: {}", models[0].0.device());
    let time = |m: &mut Model, n: usize| -> anyhow::Result<(f64, f64)> {
        let cpu0 = common::process_cpu_secs().unwrap_or(0.0);
        let t = Instant::now();
        for _ in 0..n {
            m.train_batch(&x, &y)?;
        }
        m.wait_for_stats()?;
        m.check_finite()?;
        let cpu = common::process_cpu_secs().unwrap_or(0.0) - cpu0;
        Ok((t.elapsed().as_secs_f64() / n as f64, cpu / n as f64))
    };
    for (m, _) in models.iter_mut() {
        time(m, every)?;
    }
    let rounds = 5;
    let per_round = (steps / rounds).max(every);
    let (mut best, mut cpu) = ([f64::INFINITY; 2], [0.0; 2]);
    for _ in 0..rounds {
        for (v, (m, _)) in models.iter_mut().enumerate() {
            let (wall, c) = time(m, per_round)?;
            best[v] = best[v].min(wall);
            cpu[v] += c / rounds as f64;
        }
    }
    println!(
        "{input} → {depth} hidden × {width} → {output}, batch {batch}, statistics every {every} \
         steps, {} steps per variant",
        every + rounds * per_round
    );
    for (v, name) in ["scalars only", "scalars + histograms"].iter().enumerate() {
        let bytes: u64 = std::fs::read_dir(&models[v].1)?
            .map(|e| e.map(|e| e.metadata().map_or(0, |m| m.len())))
            .sum::<std::io::Result<u64>>()?;
        println!(
            "{name:<22} fastest round {:8.3} ms/step ({:+6.1}%), {:8.3} CPU-ms/step ({:+6.1}%), \
             event file {bytes} bytes",
            best[v] * 1e3,
            100.0 * (best[v] - best[0]) / best[0],
            cpu[v] * 1e3,
            100.0 * (cpu[v] - cpu[0]) / cpu[0],
        );
    }
    // The host's part of a statistics step: binning every tensor read, alone.
    let sizes = [input * width + width * width * (depth - 1) + width * output; 2];
    let acts = batch * (width * depth + output);
    let values: Vec<f32> = (0..sizes[0].max(acts)).map(|i| (i as f32).sin()).collect();
    let t = Instant::now();
    for n in [sizes[0], sizes[1], acts] {
        std::hint::black_box(Histogram::of(&values[..n], BUCKETS));
    }
    let one = t.elapsed().as_secs_f64();
    // As the trainer bins them: each layer's tensors apart, spread over the cores.
    let tensors: Vec<Vec<f32>> = (0..depth + 1)
        .flat_map(|_| [width * width, width * width, batch * width])
        .map(|n| values[..n].to_vec())
        .collect();
    let t = Instant::now();
    std::hint::black_box(of_each(&tensors, BUCKETS));
    println!(
        "host binning of the {} values read per statistics step: {:.1} ms on one thread, \
         {:.1} ms for {} tensors of about that size on {} threads",
        sizes[0] + sizes[1] + acts,
        one * 1e3,
        t.elapsed().as_secs_f64() * 1e3,
        tensors.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
