//! Gradient health end to end: statistics records against values computed on the host
//! from the model's own tensors, GPU against CPU, the detectors on models that should and
//! should not trigger them, the non-finite stop (step, layer, tensor, and an untouched
//! checkpoint), logs and plots.

mod common;

use common::health::{batch, cpu, fit, gpu, spirals};

use steadygrad::health::detect::layer_list;
use steadygrad::health::log::MetricsLog;
use steadygrad::health::{
    detect, plot, DetectorConfig, LayerStats, NonFiniteError, StepStats, TrainObserver, WarningKind,
};
use steadygrad::model::lower as mlp;
use steadygrad::ops::Op;
use steadygrad::ops::*;
use steadygrad::{
    Activation, BatchNorm, BnPlacement, Clip, FitOptions, Init, Loss, MlpSpec, Model, Optimizer,
};

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

fn close(a: f32, b: f64, scale: f64, what: &str) {
    let tol = 1e-5 + 1e-4 * scale.max(b.abs());
    assert!(
        (a as f64 - b).abs() <= tol,
        "{what}: record {a} vs host {b} (tolerance {tol:e})"
    );
}

/// Every statistic of one training step, recomputed on the host from the tensors the step
/// wrote (CPU backend, so the tensors are exactly those the statistics saw). Covers ReLU
/// with batch norm after the activation (the layer output is not the activation output)
/// and tanh (saturation), with an odd batch of 7 rows.
#[test]
fn record_matches_host_computation_from_the_models_tensors() {
    let specs = [
        MlpSpec::new(2, &[33, 7], 3)
            .activation(Activation::Relu)
            .batch_norm(BatchNorm {
                placement: BnPlacement::AfterActivation,
                ..BatchNorm::default()
            })
            .seed(3),
        MlpSpec::new(2, &[9, 33], 3)
            .activation(Activation::Tanh)
            .init(Init::Normal {
                mean: 0.0,
                std: 2.0,
            })
            .seed(4),
    ];
    let d = spirals(20);
    let rows = 7;
    for spec in specs {
        let mut m = Model::new(spec.clone(), cpu()).unwrap();
        m.gather_stats_every(1);
        let (x, y) = batch(&d, rows, 3);
        let before = m.state_dict().unwrap();
        m.train_batch(&x, &y).unwrap();
        let after = m.state_dict().unwrap();
        let record = m.stats_history().last().expect("a record").clone();
        assert_eq!(record.step, 1);
        let param = |set: &[steadygrad::NamedTensor], name: &str| {
            set.iter().find(|t| t.name == name).unwrap().values.clone()
        };
        let hidden = spec.hidden.len();
        for l in 0..spec.num_layers() {
            let s = &record.layers[l];
            let what = |f: &str| format!("{} layer {l} {f}", spec.activation);
            // The layer's output: what the next layer reads.
            let out_name = match (l < hidden, spec.batch_norm.is_some()) {
                (false, _) => format!("layers.{l}.z"),
                (true, true) => format!("layers.{l}.bn.out"),
                (true, false) => format!("layers.{l}.h"),
            };
            let out = m.read_tensor(rows, &out_name).unwrap();
            let n = out.len() as f64;
            let mean = out.iter().map(|&v| v as f64).sum::<f64>() / n;
            let std = (out.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            close(s.act_mean.unwrap(), mean, std, &what("mean"));
            close(s.act_std.unwrap(), std, std, &what("std"));
            let w = param(&before, &format!("layers.{l}.linear.weight"));
            let w1 = param(&after, &format!("layers.{l}.linear.weight"));
            let dw = m
                .read_tensor(rows, &format!("layers.{l}.linear.weight.grad"))
                .unwrap();
            let db = m
                .read_tensor(rows, &format!("layers.{l}.linear.bias.grad"))
                .unwrap();
            close(
                s.weight_grad_norm.unwrap(),
                norm(&dw),
                norm(&dw),
                &what("‖∇W‖"),
            );
            close(
                s.bias_grad_norm.unwrap(),
                norm(&db),
                norm(&db),
                &what("‖∇b‖"),
            );
            close(s.weight_norm.unwrap(), norm(&w), norm(&w), &what("‖W‖"));
            let diff: Vec<f32> = w1.iter().zip(&w).map(|(a, b)| a - b).collect();
            let ratio = norm(&diff) / norm(&w);
            close(s.update_ratio.unwrap(), ratio, ratio, &what("update ratio"));
            assert_eq!(s.act_nonfinite + s.grad_nonfinite, 0);
            if l == hidden {
                assert!(
                    s.dead.is_none() && s.saturated.is_none(),
                    "{}",
                    what("output")
                );
                continue;
            }
            let act_in = m.read_tensor(rows, &format!("layers.{l}.z")).unwrap();
            let act_out = m.read_tensor(rows, &format!("layers.{l}.h")).unwrap();
            let cols = spec.hidden[l];
            match spec.activation {
                Activation::Relu => {
                    let dead = (0..cols)
                        .filter(|&c| (0..rows).all(|r| act_in[r * cols + c] <= 0.0))
                        .count() as f64
                        / cols as f64;
                    close(s.dead.unwrap(), dead, 1.0, &what("dead"));
                    assert!(s.saturated.is_none());
                }
                _ => {
                    let sat = act_out.iter().filter(|y| y.abs() >= 0.98).count() as f64
                        / act_out.len() as f64;
                    close(s.saturated.unwrap(), sat, 1.0, &what("saturated"));
                    assert!(s.dead.is_none());
                }
            }
        }
        // The global block: the batch's loss and accuracy.
        let rows_loss = m.read_tensor(rows, "loss.rows").unwrap();
        let correct = m.read_tensor(rows, "loss.correct").unwrap();
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        close(record.loss, mean(&rows_loss), 1.0, "batch loss");
        close(
            record.accuracy.unwrap(),
            mean(&correct),
            1.0,
            "batch accuracy",
        );
    }
}

fn assert_records_close(g: &StepStats, c: &StepStats, rtol: f64) {
    assert_eq!((g.step, g.layers.len()), (c.step, c.layers.len()));
    let pairs = |a: &LayerStats, b: &LayerStats| {
        [
            ("act mean", a.act_mean, b.act_mean, a.act_std),
            ("act std", a.act_std, b.act_std, a.act_std),
            ("dead", a.dead, b.dead, Some(1.0)),
            ("saturated", a.saturated, b.saturated, Some(1.0)),
            (
                "‖∇W‖",
                a.weight_grad_norm,
                b.weight_grad_norm,
                b.weight_grad_norm,
            ),
            ("‖∇b‖", a.bias_grad_norm, b.bias_grad_norm, b.bias_grad_norm),
            ("‖W‖", a.weight_norm, b.weight_norm, b.weight_norm),
            (
                "update ratio",
                a.update_ratio,
                b.update_ratio,
                b.update_ratio,
            ),
        ]
    };
    for (a, b) in g.layers.iter().zip(&c.layers) {
        for (what, x, y, scale) in pairs(a, b) {
            assert_eq!(x.is_some(), y.is_some(), "layer {} {what}", a.layer);
            if let (Some(x), Some(y)) = (x, y) {
                let tol = 1e-6 + rtol * scale.unwrap_or(0.0).abs().max(y.abs()) as f64;
                assert!(
                    ((x - y) as f64).abs() <= tol,
                    "step {} layer {} {what}: gpu {x} vs cpu {y}",
                    g.step,
                    a.layer
                );
            }
        }
    }
    assert!(((g.loss - c.loss) as f64).abs() <= 1e-5 + rtol * c.loss.abs() as f64);
}

/// The whole statistics step on the GPU against the CPU reference, odd sizes, sigmoid
/// (saturation) and ReLU with batch norm and dropout (dead units, BN and dropout between
/// the activation and the layer output), over several steps.
#[test]
fn gpu_statistics_match_cpu() {
    let d = spirals(40);
    let specs = [
        MlpSpec::new(2, &[33, 1, 7], 3)
            .activation(Activation::Sigmoid)
            .init(Init::Normal {
                mean: 0.0,
                std: 3.0,
            })
            .seed(1),
        MlpSpec::new(2, &[257, 33], 3)
            .activation(Activation::Relu)
            .batch_norm(BatchNorm::default())
            .dropout(0.2)
            .optimizer(Optimizer::sgd(0.1))
            .seed(2),
    ];
    for spec in specs {
        let mut records = Vec::new();
        for engine in [gpu(), cpu()] {
            let mut m = Model::new(spec.clone(), engine).unwrap();
            m.gather_stats_every(2);
            for step in 0..5 {
                let (x, y) = batch(&d, 33, 7 * step);
                m.train_batch(&x, &y).unwrap();
            }
            m.check_finite().unwrap();
            m.wait_for_stats().unwrap();
            records.push(m.take_stats_history());
        }
        let (g, c) = (&records[0], &records[1]);
        let steps = |r: &[StepStats]| r.iter().map(|s| s.step).collect::<Vec<_>>();
        assert_eq!(steps(g), [1, 3, 5]);
        assert_eq!(steps(c), [1, 3, 5]);
        // The first record comes from identical weights; later ones from weights that
        // differ by the rounding of earlier steps.
        assert_records_close(&g[0], &c[0], 1e-4);
        for (a, b) in g.iter().zip(c).skip(1) {
            assert_records_close(a, b, 1e-3);
        }
    }
}

/// Statistics cost nothing when off: the ordinary training step contains no statistics
/// op, and a model that never asks gets no records.
#[test]
fn statistics_are_a_separate_op_list() {
    let spec = MlpSpec::new(2, &[8, 8], 3).seed(1);
    let plan = mlp::build(&spec, &spec.persistent(), 4).unwrap();
    let is_stats = |op: &Op| {
        matches!(
            op,
            Op::ActivationStats(ActivationStats { .. })
                | Op::Norm(Norm { .. })
                | Op::CopyInto(CopyInto { .. })
        )
    };
    assert!(!plan.train.iter().any(is_stats));
    assert!(plan.train_stats.iter().any(is_stats));
    // The guard is in both: it is always on.
    let guards = |ops: &[Op]| {
        ops.iter()
            .filter(|op| matches!(op, Op::GuardFinite(GuardFinite { .. })))
            .count()
    };
    assert!(guards(&plan.train) > 0);
    assert_eq!(guards(&plan.train), guards(&plan.train_stats));
    let mut m = Model::new(spec, gpu()).unwrap();
    fit(&mut m, &spirals(10), 2, 8).unwrap();
    assert!(m.stats_history().is_empty());
    m.gather_stats_every(3);
    fit(&mut m, &spirals(10), 2, 8).unwrap();
    // 30 rows in batches of 8: 4 steps per epoch, 8 steps, records every 3rd from the
    // first of this run: steps 9, 12, 15.
    let steps: Vec<u64> = m.stats_history().iter().map(|s| s.step).collect();
    assert_eq!(steps, [9, 12, 15], "every record arrives by the end of fit");
    assert!(m.stats_history().iter().all(|s| s.epoch >= 3));
}

fn kinds(w: &[steadygrad::health::Warning]) -> Vec<WarningKind> {
    w.iter().map(|w| w.kind).collect()
}

/// A 20-layer sigmoid network with N(0, 1) weights: the first layer's gradient is orders
/// of magnitude below the output layer's. On both backends.
#[test]
fn vanishing_is_detected_in_deep_sigmoid_with_unit_normal_init() {
    let spec = MlpSpec::new(2, &[32; 20], 3)
        .activation(Activation::Sigmoid)
        .init(Init::Normal {
            mean: 0.0,
            std: 1.0,
        })
        .optimizer(Optimizer::sgd(0.1))
        .seed(7);
    for engine in [gpu(), cpu()] {
        let mut m = Model::new(spec.clone(), engine).unwrap();
        m.gather_stats_every(2);
        fit(&mut m, &spirals(60), 2, 32).unwrap();
        let warnings =
            steadygrad::health::detect(m.spec(), m.stats_history(), &DetectorConfig::default());
        let v = warnings
            .iter()
            .find(|w| w.kind == WarningKind::Vanishing)
            .unwrap_or_else(|| panic!("no vanishing warning: {warnings:?}"));
        assert_eq!(v.layers.first(), Some(&0), "{v}");
        assert!(v.evidence.contains("layer 0"), "{v}");
        // Advice fitted to this model: Glorot instead of N(0,1), a non-saturating
        // activation, batch norm, skip connections; no clipping or learning rate advice.
        let text = v.remedies.join("\n");
        assert!(v.remedies[0].contains("--init glorot-uniform"), "{text}");
        assert!(v.remedies[1].contains("non-saturating"), "{text}");
        assert!(text.contains("--batch-norm"), "{text}");
        assert!(
            !text.contains("--clip-norm") && !text.contains("--lr"),
            "{text}"
        );
    }
}

/// He init, ReLU and batch norm train without a finding.
#[test]
fn healthy_relu_he_batch_norm_stays_quiet() {
    let spec = MlpSpec::new(2, &[32; 8], 3)
        .activation(Activation::Relu)
        .init(Init::HeNormal)
        .batch_norm(BatchNorm::default())
        .optimizer(Optimizer::sgd(0.05))
        .seed(3);
    for engine in [gpu(), cpu()] {
        let mut m = Model::new(spec.clone(), engine).unwrap();
        m.gather_stats_every(3);
        fit(&mut m, &spirals(80), 3, 32).unwrap();
        assert!(m.stats_history().len() >= 5);
        let warnings =
            steadygrad::health::detect(m.spec(), m.stats_history(), &DetectorConfig::default());
        assert!(warnings.is_empty(), "{:#?}", warnings);
    }
}

/// A huge learning rate on a ReLU network: training stops on non-finite values, or the
/// detectors report exploding gradients or non-finite values.
#[test]
fn huge_learning_rate_stops_or_is_reported_as_exploding() {
    let spec = MlpSpec::new(2, &[32; 8], 3)
        .activation(Activation::Relu)
        .optimizer(Optimizer::sgd(50.0))
        .seed(5);
    for engine in [gpu(), cpu()] {
        let mut m = Model::new(spec.clone(), engine).unwrap();
        m.gather_stats_every(2);
        let result = fit(&mut m, &spirals(60), 3, 16);
        let warnings =
            steadygrad::health::detect(m.spec(), m.stats_history(), &DetectorConfig::default());
        let stopped = result
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<NonFiniteError>())
            .is_some();
        let flagged = kinds(&warnings)
            .iter()
            .any(|k| matches!(k, WarningKind::Exploding | WarningKind::NonFinite));
        assert!(stopped || flagged, "{result:?} {warnings:#?}");
        if let Some(w) = warnings.iter().find(|w| w.kind == WarningKind::NonFinite) {
            let text = w.remedies.join("\n");
            assert!(
                text.contains("--clip-norm") && text.contains("--lr 5"),
                "{text}"
            );
            // He init already: no init advice.
            assert!(!text.contains("--init"), "{text}");
        }
    }
}

/// Detectors and advice on hand-made histories: each fires on its condition, stays quiet
/// otherwise, and leaves out remedies the model already uses.
#[test]
fn detectors_and_advice_on_synthetic_histories() {
    let layer = |l: usize, grad: f32, dead: Option<f32>, sat: Option<f32>| LayerStats {
        layer: l,
        units: 8,
        act_mean: Some(0.0),
        act_std: Some(1.0),
        dead,
        saturated: sat,
        weight_grad_norm: Some(grad),
        bias_grad_norm: Some(grad / 10.0),
        weight_norm: Some(1.0),
        update_ratio: Some(1e-3),
        act_nonfinite: 0,
        grad_nonfinite: 0,
    };
    let record = |step: u64, grads: &[f32], dead: Option<f32>, sat: Option<f32>| StepStats {
        step,
        epoch: 1,
        loss: 1.0,
        accuracy: Some(0.5),
        layers: grads
            .iter()
            .enumerate()
            .map(|(l, &g)| layer(l, g, dead.filter(|_| l + 1 < grads.len()), sat))
            .collect(),
    };
    let cfg = DetectorConfig::default();
    let relu = MlpSpec::new(2, &[8, 8], 3).activation(Activation::Relu);

    // Vanishing: a ratio of 1e-3 in every record; not with one record at 1e-3 among 0.5s.
    let h: Vec<StepStats> = (0..5)
        .map(|i| record(i, &[1e-3, 0.1, 1.0], None, None))
        .collect();
    assert_eq!(kinds(&detect(&relu, &h, &cfg)), [WarningKind::Vanishing]);
    let mut h2: Vec<StepStats> = (0..5)
        .map(|i| record(i, &[0.5, 0.1, 1.0], None, None))
        .collect();
    h2[2] = record(2, &[1e-3, 0.1, 1.0], None, None);
    assert!(detect(&relu, &h2, &cfg).is_empty());

    // Exploding: ×20 over the window fires, ×2 does not.
    let grow = |f: f32| -> Vec<StepStats> {
        (0..5)
            .map(|i| {
                let g = f.powf(i as f32 / 4.0);
                record(i, &[g, g, g], None, None)
            })
            .collect()
    };
    let w = detect(&relu, &grow(20.0), &cfg);
    assert_eq!(kinds(&w), [WarningKind::Exploding]);
    assert_eq!(w[0].layers, [0, 1, 2]);
    assert!(detect(&relu, &grow(2.0), &cfg).is_empty());

    // Dying ReLU: 80% dead fires for ReLU; the same numbers under leaky ReLU do not.
    let dead: Vec<StepStats> = (0..5)
        .map(|i| record(i, &[0.5, 1.0, 1.0], Some(0.8), None))
        .collect();
    assert_eq!(kinds(&detect(&relu, &dead, &cfg)), [WarningKind::DyingRelu]);
    let leaky = relu.clone().activation(Activation::LEAKY_RELU);
    assert!(detect(&leaky, &dead, &cfg).is_empty());

    // Saturation.
    let tanh = MlpSpec::new(2, &[8, 8], 3).activation(Activation::Tanh);
    let sat: Vec<StepStats> = (0..5)
        .map(|i| record(i, &[0.5, 1.0, 1.0], None, Some(0.7)))
        .collect();
    assert_eq!(kinds(&detect(&tanh, &sat, &cfg)), [WarningKind::Saturation]);

    // Advice follows the configuration.
    let remedies = |spec: &MlpSpec, h: &[StepStats]| detect(spec, h, &cfg)[0].remedies.join("\n");
    let exploding = grow(20.0);
    let plain = remedies(&relu, &exploding);
    assert!(
        plain.contains("--batch-norm") && plain.contains("--clip-norm") && plain.contains("--lr"),
        "{plain}"
    );
    assert!(
        !plain.contains("--init"),
        "ReLU with the default (He) init needs no init advice: {plain}"
    );
    let equipped = relu
        .clone()
        .batch_norm(BatchNorm::default())
        .clip(Clip::Norm(1.0));
    let text = remedies(&equipped, &exploding);
    assert!(
        !text.contains("--batch-norm") && !text.contains("--clip-norm"),
        "{text}"
    );
    assert!(text.contains("lower the learning rate from 0.01"), "{text}");
    let glorot_relu = relu.clone().init(Init::GlorotUniform);
    assert!(remedies(&glorot_relu, &exploding)
        .starts_with("initialise the weights for relu: he-normal"));
    let selu = relu
        .clone()
        .activation(Activation::Selu)
        .init(Init::HeNormal);
    assert!(remedies(&selu, &exploding).contains("--init lecun-normal"));
    let dying = remedies(&relu, &dead);
    assert!(dying.contains("leaky"), "{dying}");
    let v = remedies(
        &MlpSpec::new(2, &[8, 8], 3).activation(Activation::Sigmoid),
        &h,
    );
    assert!(
        v.starts_with("use a non-saturating"),
        "Glorot is sigmoid's init: {v}"
    );

    assert_eq!(layer_list(&[3]), "layer 3");
    assert_eq!(layer_list(&[0, 1, 2]), "layers 0-2");
    assert_eq!(layer_list(&[1, 5]), "layers 1, 5");

    let bad = DetectorConfig {
        window: 0,
        ..cfg.clone()
    };
    assert!(bad.validate().is_err());
    assert!(DetectorConfig {
        exploding_factor: 1.0,
        ..cfg.clone()
    }
    .validate()
    .is_err());
    assert!(DetectorConfig {
        dead_fraction: 1.5,
        ..cfg
    }
    .validate()
    .is_err());
}

/// Logs get one row per record; plots are written as SVG and PNG.
#[test]
fn logs_and_plots() {
    let tmp = common::TempDir::new("health-out");
    let dir = tmp.path();
    let spec = MlpSpec::new(2, &[8, 8], 3)
        .seed(1)
        .loss(Loss::SoftmaxCrossEntropy);
    let mut m = Model::new(spec, cpu()).unwrap();
    m.gather_stats_every(2);
    let (csv, jsonl) = (dir.join("m.csv"), dir.join("m.jsonl"));
    let logs: Vec<Box<dyn TrainObserver>> = vec![
        Box::new(MetricsLog::create(&csv).unwrap()),
        Box::new(MetricsLog::create(&jsonl).unwrap()),
    ];
    m.set_observer(Some(Box::new(steadygrad::health::Observers(logs))));
    fit(&mut m, &spirals(10), 2, 8).unwrap();
    m.set_observer(None);
    let n = m.stats_history().len();
    assert_eq!(n, 4, "8 steps, every 2nd");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n + 1);
    assert!(
        lines[0].starts_with("step,epoch,loss,accuracy,total_grad_norm,nonfinite,layer0_act_mean")
    );
    let cols = lines[0].split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == cols));
    let json = std::fs::read_to_string(&jsonl).unwrap();
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), n);
    assert_eq!(rows[0]["step"], 1);
    assert_eq!(rows[0]["layers"].as_array().unwrap().len(), 3);
    assert!(
        rows[0]["layers"][2]["dead"].is_null(),
        "the output layer has no activation"
    );
    let e = MetricsLog::create(&dir.join("m.txt")).err().unwrap();
    assert!(e.to_string().contains(".csv"), "{e}");

    let files = plot::write_all(
        &dir.join("plots"),
        &[plot::Run {
            label: "relu",
            stats: m.stats_history(),
        }],
    )
    .unwrap();
    assert_eq!(files.len(), 6);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        match f.extension().unwrap().to_str().unwrap() {
            "png" => assert!(bytes.starts_with(b"\x89PNG"), "{}", f.display()),
            _ => assert!(
                String::from_utf8_lossy(&bytes).contains("<svg"),
                "{}",
                f.display()
            ),
        }
    }
    let e = plot::write_all(
        &dir.join("empty"),
        &[plot::Run {
            label: "x",
            stats: &[],
        }],
    )
    .unwrap_err();
    assert!(e.to_string().contains("no statistics"), "{e}");
}

fn report(epoch: usize, loss: f32, val: Option<(f32, f32)>) -> steadygrad::EpochReport {
    let m = |loss: f32, acc: f32| steadygrad::Metrics {
        loss,
        accuracy: Some(acc),
        rows: 100,
    };
    steadygrad::EpochReport {
        epoch,
        train: m(loss, 0.5),
        valid: val.map(|(l, a)| m(l, a)),
        samples_per_sec: 1.0,
        penalty: None,
        lr: 0.1,
    }
}

fn loss_record(step: u64, loss: f32) -> StepStats {
    StepStats {
        step,
        epoch: 1,
        loss,
        accuracy: None,
        layers: Vec::new(),
    }
}

/// Run-level verdicts on hand-made runs: each fires on its condition and stays quiet on a
/// run that is merely noisy.
#[test]
fn divergence_verdicts_on_synthetic_runs() {
    let spec = MlpSpec::new(2, &[8, 8], 10).activation(Activation::Relu);
    let cfg = DetectorConfig::default();
    let run_kinds = |h: &[StepStats], e: &[steadygrad::EpochReport]| {
        kinds(&steadygrad::health::detect_run(&spec, h, e, &cfg))
    };
    let falling: Vec<StepStats> = (1..=10).map(|i| loss_record(i, 2.3 / i as f32)).collect();
    let good = [
        report(1, 1.0, Some((0.9, 0.7))),
        report(2, 0.6, Some((0.7, 0.8))),
        report(3, 0.4, Some((0.65, 0.82))),
    ];
    assert!(run_kinds(&falling, &good).is_empty());

    // A batch loss 10× the median of the records before it.
    let mut spiky = falling.clone();
    spiky[7].loss = 10.0 * 2.3 / 5.0;
    assert_eq!(run_kinds(&spiky, &good), [WarningKind::LossSpike]);

    // Ending above the start.
    let rising: Vec<StepStats> = (1..=10)
        .map(|i| loss_record(i, 2.0 + 0.01 * i as f32))
        .collect();
    let ends_high = [report(1, 2.1, None), report(2, 2.4, None)];
    assert!(run_kinds(&rising, &ends_high).contains(&WarningKind::Diverging));

    // The validation loss of the issue's example: 0.55 → 84.9, accuracy to 9.8%.
    let issue = [
        report(1, 1.0, Some((0.55, 0.85))),
        report(2, 0.9, Some((3.0, 0.5))),
        report(3, 0.8, Some((84.9, 0.098))),
    ];
    let k = run_kinds(&falling, &issue);
    assert!(k.contains(&WarningKind::RisingValidationLoss), "{k:?}");
    assert!(k.contains(&WarningKind::AccuracyCollapse), "{k:?}");
    // Overfitting-sized drift (×1.2) is not called rising.
    let drift = [
        report(1, 1.0, Some((0.5, 0.8))),
        report(2, 0.8, Some((0.6, 0.8))),
    ];
    assert!(run_kinds(&falling, &drift).is_empty());
}

/// A real run that goes nowhere: ReLU, 10 hidden layers, Adam at lr 0.1 on the digits
/// (the loss spikes to about 50 in the first epoch and accuracy ends at chance). The
/// detectors over the statistics alone find at most dying units; the run verdicts say
/// what a user sees, and such a run is never healthy.
#[test]
fn diverging_digits_run_gets_a_divergence_verdict() {
    let (train, valid) = common::digits::load();
    let spec = MlpSpec::new(64, &[64; 10], 10)
        .activation(Activation::Relu)
        .optimizer(Optimizer::adam(0.1))
        .seed(42);
    let opts = FitOptions {
        epochs: 4,
        batch_size: 32,
        shuffle_seed: 42,
        drop_last: false,
    };
    let mut m = Model::new(spec, gpu()).unwrap();
    m.gather_stats_every(5);
    let mut reports = Vec::new();
    let result = m.fit(&train, Some(&valid), &opts, |r| reports.push(r.clone()));
    if let Err(e) = &result {
        // A NaN stop is an even clearer verdict of its own.
        assert!(e.downcast_ref::<NonFiniteError>().is_some(), "{e:#}");
        return;
    }
    let w = steadygrad::health::detect_run(
        m.spec(),
        m.stats_history(),
        &reports,
        &DetectorConfig::default(),
    );
    let k = kinds(&w);
    let divergence = [
        WarningKind::LossSpike,
        WarningKind::Diverging,
        WarningKind::RisingValidationLoss,
        WarningKind::AccuracyCollapse,
    ];
    assert!(
        k.iter().any(|k| divergence.contains(k)),
        "{reports:?}\n{w:#?}"
    );
    let last = reports.last().unwrap().valid.unwrap().accuracy.unwrap();
    assert!(last < 0.2, "the run was meant to fail: {reports:?}");
}
