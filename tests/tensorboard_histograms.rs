//! Histograms in `--tensorboard` event files, read by the independent reader in
//! `common::events`: tags, steps and sizes, and values that match the tensors they describe
//! (the saved checkpoint's weights, tensors read through the library on CPU and GPU).

mod common;

use common::events::{read_events, Histo};
use common::TempDir;
use std::path::Path;
use std::sync::{Arc, Mutex};
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::health::{HistogramKind, StepHistograms, TrainObserver};
use steadygrad::{Engine, MlpSpec, Model};

/// Min, max, sum and sum of squares of `v` in f64, as a histogram of it must hold them.
fn moments(v: &[f32]) -> (f64, f64, f64, f64) {
    let mut m = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0.0);
    for &x in v {
        let x = f64::from(x);
        m = (m.0.min(x), m.1.max(x), m.2 + x, m.3 + x * x);
    }
    m
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

/// The structure every histogram must have, whatever its tensor.
fn check_shape(tag: &str, h: &Histo) {
    assert_eq!(h.bucket.len(), h.bucket_limit.len(), "{tag}");
    assert!(!h.bucket.is_empty(), "{tag}");
    assert_eq!(h.bucket.iter().sum::<f64>(), h.num, "{tag}: bucket counts");
    assert!(h.min <= h.max, "{tag}");
    assert_eq!(*h.bucket_limit.last().unwrap(), h.max, "{tag}");
    assert!(
        h.bucket_limit.windows(2).all(|w| w[0] < w[1]),
        "{tag}: {:?}",
        h.bucket_limit
    );
}

#[test]
fn cli_histograms_match_the_checkpoint() {
    let tmp = TempDir::new("tb-histo");
    let d = tmp.path();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits_train.csv");
    let (ok, out, err) = common::run_cli(
        &[
            "train",
            "--backend",
            "cpu",
            "--data",
            &data.display().to_string(),
            "--depth",
            "2",
            "--width",
            "16",
            "--epochs",
            "1",
            "--batch",
            "100",
            "--stats-every",
            "11",
            "--tensorboard",
            "tb",
            "--save",
            "ck.safetensors",
        ],
        d,
    );
    assert!(ok, "{out}{err}");
    let ev = read_events(&d.join("tb"));
    let steps: Vec<i64> = ev.scalars["train/batch_loss"].iter().map(|s| s.0).collect();
    // 1438 rows, 1150 of them for training: 11 batches of 100 and one of 50.
    assert_eq!(steps, [1, 12]);

    let ck = std::fs::read(d.join("ck.safetensors")).unwrap();
    let ck = safetensors::SafeTensors::deserialize(&ck).unwrap();
    let widths = [64, 16, 16, 10];
    let mut tags = Vec::new();
    for l in 0..3 {
        for kind in ["weights", "gradients", "activations"] {
            let tag = format!("layer_{l}/{kind}");
            let series = &ev.histograms[&tag];
            assert_eq!(
                series.iter().map(|s| s.0).collect::<Vec<_>>(),
                steps,
                "{tag}"
            );
            for (step, h) in series {
                check_shape(&tag, h);
                let numel = match kind {
                    "activations" if *step == 1 => 100 * widths[l + 1],
                    "activations" => 50 * widths[l + 1],
                    _ => widths[l] * widths[l + 1],
                };
                assert_eq!(h.num, numel as f64, "{tag} at step {step}");
            }
            tags.push(tag);
        }
        // The checkpoint is saved after the epoch's last step, step 12: its weights are
        // the ones that step's histogram describes.
        let w = ck.tensor(&format!("layers.{l}.linear.weight")).unwrap();
        let w: Vec<f32> = bytemuck::pod_collect_to_vec(w.data());
        let h = &ev.histograms[&format!("layer_{l}/weights")][1].1;
        let (min, max, sum, sq) = moments(&w);
        assert!(close(h.min, min) && close(h.max, max), "layer {l}: {h:?}");
        assert!(close(h.sum, sum) && close(h.sum_squares, sq), "layer {l}");
    }
    tags.sort();
    assert_eq!(ev.histograms.keys().cloned().collect::<Vec<_>>(), tags);
}

/// Collects the histograms a model hands its observer.
struct Keep(Arc<Mutex<Vec<StepHistograms>>>);

impl TrainObserver for Keep {
    fn on_histograms(&mut self, h: &StepHistograms) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(h.clone());
        Ok(())
    }
}

/// Trains a few steps with histograms on and compares the last step's histograms with
/// the tensors read back by name afterwards.
fn histograms_match_the_tensors(engine: Box<dyn Engine>) {
    let spec = MlpSpec::new(5, &[12, 9], 3).seed(3);
    let mut m = Model::new(spec, engine).unwrap();
    let kept = Arc::new(Mutex::new(Vec::new()));
    m.set_observer(Some(Box::new(Keep(kept.clone()))));
    m.gather_stats_every(2);
    m.gather_histograms(true);
    let rows = 7;
    let x: Vec<f32> = (0..rows * 5).map(|i| (i as f32 * 0.71).sin()).collect();
    let y: Vec<f32> = (0..rows).map(|i| (i % 3) as f32).collect();
    for _ in 0..5 {
        m.train_batch(&x, &y).unwrap();
    }
    m.wait_for_stats().unwrap();
    let kept = kept.lock().unwrap();
    assert_eq!(kept.iter().map(|h| h.step).collect::<Vec<_>>(), [1, 3, 5]);
    let last = kept.last().unwrap();
    assert_eq!(last.layers.len(), 9);
    for h in &last.layers {
        let l = h.layer;
        let name = match h.kind {
            HistogramKind::Weights => format!("layers.{l}.linear.weight"),
            HistogramKind::Gradients => format!("layers.{l}.linear.weight.grad"),
            HistogramKind::Activations if l == 2 => "layers.2.z".to_string(),
            HistogramKind::Activations => format!("layers.{l}.h"),
        };
        let v = m.read_tensor(rows, &name).unwrap();
        let (min, max, sum, sq) = moments(&v);
        let g = &h.histogram;
        assert_eq!((g.num, g.nonfinite), (v.len() as u64, 0), "{name}");
        assert!(close(g.min, min) && close(g.max, max), "{name}");
        assert!(close(g.sum, sum) && close(g.sum_squares, sq), "{name}");
        assert_eq!(g.bucket.iter().sum::<f64>(), v.len() as f64, "{name}");
    }
}

#[test]
fn cpu_histograms_match_the_tensors() {
    histograms_match_the_tensors(Box::new(CpuEngine::new()));
}

#[test]
fn gpu_histograms_match_the_tensors() {
    histograms_match_the_tensors(Box::new(GpuEngine::new(common::gpu())));
}
