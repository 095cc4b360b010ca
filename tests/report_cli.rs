//! `--tensorboard` and `--report` end to end: event files parsed back by a reader of the
//! documented record format written here (not the crate's encoder), and HTML reports
//! checked for self-containment, chart sizes and content, and rendered by headless
//! Chromium.

mod common;

use common::events::read_events;
use common::TempDir;
use std::path::Path;
use std::process::Command;
use steadygrad::health::report::{Report, ReportObserver};
use steadygrad::health::{DetectorConfig, Observers, TrainObserver};
use steadygrad::{BackendChoice, FitOptions, MlpSpec, Model};

fn run(args: &[&str], cwd: &Path) -> (bool, String, String) {
    common::run_cli(args, cwd)
}

fn digits() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/digits_train.csv")
        .display()
        .to_string()
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn f32_of(v: &serde_json::Value) -> f32 {
    match v {
        serde_json::Value::String(s) if s == "nan" => f32::NAN,
        v => v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")) as f32,
    }
}

#[test]
fn tensorboard_events_hold_the_runs_scalars() {
    let tmp = TempDir::new("report-tb");
    let d = tmp.path();
    let data = digits();
    let (ok, out, err) = run(
        &[
            "diagnose",
            "--backend",
            "cpu",
            "--data",
            &data,
            "--depth",
            "3",
            "--width",
            "16",
            "--epochs",
            "3",
            "--stats-every",
            "7",
            "--json",
            "--no-trials",
            "--tensorboard",
            "tb",
            "--log",
            "log.jsonl",
        ],
        d,
    );
    assert!(ok, "{out}{err}");
    let summary = json(&out);
    let ev = read_events(&d.join("tb"));
    assert_eq!(ev.file_version.as_deref(), Some("brain.Event:2"));

    // Epoch scalars at the epoch number, equal to the ones --json reports.
    let epochs = summary["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 3);
    for (tag, key) in [
        ("epoch/loss", "loss"),
        ("epoch/accuracy", "accuracy"),
        ("epoch/val_loss", "val_loss"),
        ("epoch/val_accuracy", "val_accuracy"),
    ] {
        let want: Vec<(i64, f32)> = epochs
            .iter()
            .map(|e| (e["epoch"].as_i64().unwrap(), f32_of(&e[key])))
            .collect();
        assert_eq!(ev.scalars[tag], want, "{tag}");
    }

    // Statistics scalars at each record's step, equal to the metric log's.
    let log: Vec<serde_json::Value> = std::fs::read_to_string(d.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(json)
        .collect();
    assert!(log.len() >= 3, "{}", log.len());
    let at_steps = |f: &dyn Fn(&serde_json::Value) -> f32| -> Vec<(i64, f32)> {
        log.iter()
            .map(|r| (r["step"].as_i64().unwrap(), f(r)))
            .collect()
    };
    assert_eq!(
        ev.scalars["train/batch_loss"],
        at_steps(&|r| f32_of(&r["loss"]))
    );
    assert_eq!(
        ev.scalars["train/batch_accuracy"],
        at_steps(&|r| f32_of(&r["accuracy"]))
    );
    assert_eq!(
        ev.scalars["grad_norm/total"],
        at_steps(&|r| f32_of(&r["total_grad_norm"]))
    );
    for l in 0..4 {
        assert_eq!(
            ev.scalars[&format!("grad_norm/layer_{l}")],
            at_steps(&|r| f32_of(&r["layers"][l]["weight_grad_norm"])),
            "layer {l}"
        );
        assert_eq!(
            ev.scalars[&format!("update_ratio/layer_{l}")],
            at_steps(&|r| f32_of(&r["layers"][l]["update_ratio"])),
            "layer {l}"
        );
    }
    let lr = &ev.scalars["train/learning_rate"];
    assert!(
        lr.len() == log.len() && lr.iter().all(|&(_, v)| v == 0.05),
        "{lr:?}"
    );
    // Steps 1, 8, 15, ...
    assert_eq!(ev.scalars["train/batch_loss"][1].0, 8);
}

#[test]
fn a_non_finite_stop_leaves_readable_files() {
    let tmp = TempDir::new("report-nan");
    let d = tmp.path();
    let (ok, out, err) = run(
        &[
            "diagnose",
            "--backend",
            "cpu",
            "--depth",
            "6",
            "--width",
            "32",
            "--lr",
            "20",
            "--epochs",
            "3",
            "--stats-every",
            "1",
            "--json",
            "--trial-budget",
            "20",
            "--tensorboard",
            "tb",
            "--report",
            "run.html",
        ],
        d,
    );
    assert!(ok, "{out}{err}");
    let summary = json(&out);
    let stop = &summary["stopped"];
    let step = stop["step"].as_i64().expect("the run diverges");
    let op = stop["op"].as_str().unwrap();

    // Every record up to the stop, the stop's own included.
    let ev = read_events(&d.join("tb"));
    let losses = &ev.scalars["train/batch_loss"];
    assert_eq!(
        losses.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=step).collect::<Vec<_>>()
    );
    assert!(!ev.scalars.contains_key("epoch/val_loss"));

    let html = std::fs::read_to_string(d.join("run.html")).unwrap();
    assert_self_contained(&html);
    assert!(
        html.contains("stopped: non-finite values at step"),
        "status"
    );
    assert!(html.contains(op), "the op '{op}' is not in the report");
    assert!(html.contains(stop["tensor"].as_str().unwrap()));
    // The remedy trials with every remedy tried and the recommendation.
    assert!(html.contains("<h2>Remedy trials</h2>"));
    for t in summary["trials"]["trials"].as_array().unwrap() {
        let label = t["label"].as_str().unwrap();
        let label = label.replace('&', "&amp;").replace('<', "&lt;");
        assert!(html.contains(&label), "{label}");
    }
    assert!(html.contains("Recommendation:"));
}

/// Nothing outside the file: no scripts, no links, no imports, no external URLs; the
/// SVG namespace is a name, not a fetch.
fn assert_self_contained(html: &str) {
    let lower = html.to_ascii_lowercase();
    assert!(lower.starts_with("<!doctype html>"));
    for bad in ["<script", "@import", "<link", "<img", "<iframe", "<object"] {
        assert!(!lower.contains(bad), "{bad}");
    }
    for attr in ["src=", "href=", "url("] {
        for (i, _) in lower.match_indices(attr) {
            let rest = lower[i + attr.len()..].trim_start_matches(['"', '\'']);
            assert!(
                rest.starts_with("data:"),
                "{attr} to {}",
                &rest[..rest.len().min(60)]
            );
        }
    }
    let without_ns = lower.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!without_ns.contains("http:"), "an http reference");
    assert!(!without_ns.contains("https:"), "an https reference");
    assert!(!without_ns.contains("//fonts"), "a font");
}

/// Every `<svg` tag's width and height attributes, which must be positive numbers.
fn svg_sizes(html: &str) -> Vec<(f64, f64)> {
    html.match_indices("<svg")
        .map(|(i, _)| {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            let attr = |name: &str| -> f64 {
                let at = tag
                    .find(&format!(" {name}=\""))
                    .unwrap_or_else(|| panic!("no {name} in {tag}"));
                let v = &tag[at + name.len() + 3..];
                v[..v.find('"').unwrap()]
                    .parse()
                    .unwrap_or_else(|e| panic!("{name} of {tag}: {e}"))
            };
            (attr("width"), attr("height"))
        })
        .collect()
}

#[test]
fn train_report_is_self_contained_with_sized_charts() {
    let tmp = TempDir::new("report-train");
    let d = tmp.path();
    let data = digits();
    let (ok, out, err) = run(
        &[
            "train",
            "--backend",
            "cpu",
            "--data",
            &data,
            "--depth",
            "4",
            "--width",
            "16",
            "--epochs",
            "2",
            "--report",
            "run.html",
        ],
        d,
    );
    assert!(ok, "{out}{err}");
    let html = std::fs::read_to_string(d.join("run.html")).unwrap();
    assert_self_contained(&html);
    let sizes = svg_sizes(&html);
    // Three line charts, three heatmaps each with its inner grid.
    assert_eq!(sizes.len(), 9, "{sizes:?}");
    assert!(sizes.iter().all(|&(w, h)| w > 0.0 && h > 0.0), "{sizes:?}");
    for id in [
        "loss-chart",
        "accuracy-chart",
        "batch-chart",
        "gradient-heatmap",
        "update-heatmap",
        "activation-heatmap",
    ] {
        assert!(html.contains(&format!("<figure id={id}>")), "{id}");
    }
    assert!(html.contains("64 → 4 hidden × 16 → 10"), "model summary");
    assert!(html.contains("CPU reference backend"), "device");
    assert!(html.contains("finished: healthy") || html.contains("finished: "));
    assert!(html.contains("2 of 2"), "epochs");
    // The epoch lines' validation losses are in the chart's data range: the chart has a
    // polyline of two points per series.
    let loss = &html[html.find("id=loss-chart").unwrap()..];
    let loss = &loss[..loss.find("</figure>").unwrap()];
    assert_eq!(loss.matches("<path d=\"M").count(), 2, "{loss}");
    // A phone-width layout rule.
    assert!(html.contains("@media (max-width:600px)"));
    assert!(html.contains("name=viewport"));

    // Bad paths fail before training, naming the option.
    let (ok, _, err) = run(
        &[
            "train",
            "--backend",
            "cpu",
            "--epochs",
            "1",
            "--report",
            "no/such/dir/run.html",
        ],
        d,
    );
    assert!(!ok && err.contains("--report"), "{err}");
    let (ok, _, err) = run(
        &[
            "train",
            "--backend",
            "cpu",
            "--epochs",
            "1",
            "--report",
            "r.html",
            "--stats-every",
            "0",
        ],
        d,
    );
    assert!(
        !ok && err.contains("--stats-every must be at least 1"),
        "{err}"
    );
}

/// The report is rewritten after every epoch, so a run that dies mid-way leaves one.
#[test]
fn report_is_rewritten_after_each_epoch() {
    let tmp = TempDir::new("report-epochs");
    let path = tmp.path().join("run.html");
    let train = steadygrad::data::synthetic::spirals(60, 3, 0.05, 1);
    let valid = steadygrad::data::synthetic::spirals(20, 3, 0.05, 2);
    let spec = MlpSpec::new(2, &[8, 8], 3).seed(3);
    let mut m = Model::with_backend(spec.clone(), &BackendChoice::Cpu).unwrap();
    m.gather_stats_every(2);
    let shown = std::rc::Rc::new(std::cell::RefCell::new(Report {
        title: "test".into(),
        ..Report::default()
    }));
    let observer = ReportObserver::new(&path, shown.clone(), &spec, DetectorConfig::default());
    let observers: Vec<Box<dyn TrainObserver>> = vec![Box::new(observer)];
    m.set_observer(Some(Box::new(Observers(observers))));
    let opts = FitOptions {
        epochs: 3,
        batch_size: 16,
        shuffle_seed: 1,
        drop_last: false,
    };
    let mut seen = Vec::new();
    m.fit(&train, Some(&valid), &opts, |r| {
        let html = std::fs::read_to_string(&path).expect("written by the epoch's end");
        assert_self_contained(&html);
        assert!(
            html.contains(&format!("in progress: written after epoch {}", r.epoch)),
            "epoch {}",
            r.epoch
        );
        assert!(html.contains(&format!("{} of 3", r.epoch)));
        seen.push(r.epoch);
    })
    .unwrap();
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(shown.borrow().epochs.len(), 3);
}

/// A report as large as the issue asks for: 100 layers, 10,000 steps with statistics
/// every 10.
#[test]
fn a_hundred_layer_ten_thousand_step_report_stays_small() {
    use steadygrad::health::{LayerStats, StepStats};
    let layers = 100;
    let stats: Vec<StepStats> = (0..1000u64)
        .map(|i| StepStats {
            step: 1 + 10 * i,
            epoch: 1 + i as usize / 10,
            loss: 2.0 / (1.0 + i as f32 / 100.0),
            accuracy: Some(0.5),
            layers: (0..layers)
                .map(|l| {
                    let g =
                        10f32.powf(-((layers - l) as f32) / 20.0) * (1.0 + (i % 7) as f32 / 10.0);
                    LayerStats {
                        layer: l,
                        units: 64,
                        act_mean: Some(0.1),
                        act_std: Some(0.5 + (l as f32 + i as f32) % 3.0),
                        dead: Some(0.0),
                        saturated: None,
                        weight_grad_norm: Some(if i == 999 && l == 50 { f32::NAN } else { g }),
                        bias_grad_norm: Some(g / 10.0),
                        weight_norm: Some(3.0),
                        update_ratio: Some(g / 30.0),
                        // Overflowed elements that the mean and std leave out.
                        act_nonfinite: u32::from(i == 500 && l == 20),
                        grad_nonfinite: 0,
                    }
                })
                .collect(),
        })
        .collect();
    let report = Report {
        title: "train".into(),
        stats,
        finished: true,
        ..Report::default()
    };
    let html = report.html();
    eprintln!("100 layers, 10,000 steps: {} bytes", html.len());
    assert!(html.len() < 1_500_000, "{} bytes", html.len());
    assert_self_contained(&html);
    // The non-finite cell of the last column survives the downsampling.
    let grads = &html[html.find("id=gradient-heatmap").unwrap()..];
    assert!(grads[..grads.find("</figure>").unwrap()].contains("<path fill=\"#d62728\""));
    let acts = &html[html.find("id=activation-heatmap").unwrap()..];
    assert!(acts[..acts.find("</figure>").unwrap()].contains("<path fill=\"#d62728\""));
    let updates = &html[html.find("id=update-heatmap").unwrap()..];
    assert!(!updates[..updates.find("</figure>").unwrap()].contains("<path fill=\"#d62728\""));
}

#[test]
fn experiment_report_shows_every_configuration() {
    let tmp = TempDir::new("report-experiment");
    let d = tmp.path();
    let (ok, out, err) = run(
        &[
            "experiment",
            "--backend",
            "cpu",
            "vanishing",
            "--depth",
            "6",
            "--width",
            "8",
            "--epochs",
            "1",
            "--points",
            "40",
            "--no-plots",
            "--json",
            "--report",
            "exp.html",
        ],
        d,
    );
    assert!(ok, "{out}{err}");
    let summary = json(&out);
    let html = std::fs::read_to_string(d.join("exp.html")).unwrap();
    assert_self_contained(&html);
    let outcomes = summary["outcomes"].as_array().unwrap();
    let verdicts = summary["verdicts"].as_array().unwrap();
    let held = verdicts.iter().filter(|v| v["holds"] == true).count();
    assert!(
        html.contains(&format!("{held} of {} claims hold", verdicts.len()))
            || html.contains(&format!("all {held} claims hold")),
        "status"
    );
    for (i, o) in outcomes.iter().enumerate() {
        let label = o["label"].as_str().unwrap();
        assert!(html.contains(&format!("<h2>{label}</h2>")), "{label}");
        assert!(
            html.contains(&format!("id=gradient-heatmap-{i}>")),
            "{label}"
        );
    }
    let sizes = svg_sizes(&html);
    // A line chart and a heatmap (with its grid) per configuration.
    assert_eq!(sizes.len(), 3 * outcomes.len(), "{sizes:?}");
    assert!(sizes.iter().all(|&(w, h)| w > 0.0 && h > 0.0), "{sizes:?}");
    // Learning rates as typed, not as f32 products.
    assert!(!html.contains("0.59999"), "an unrounded learning rate");
}

#[test]
fn chromium_renders_the_report() {
    let tmp = TempDir::new("report-chromium");
    let d = tmp.path();
    let data = digits();
    let (ok, out, err) = run(
        &[
            "train",
            "--backend",
            "cpu",
            "--data",
            &data,
            "--depth",
            "3",
            "--width",
            "16",
            "--epochs",
            "2",
            "--report",
            "run.html",
        ],
        d,
    );
    assert!(ok, "{out}{err}");
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("no chromium: scripts/test.sh installs it (apt-get install chromium)");
    let page = d.join("run.html");
    let common = [
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
    ];
    for (width, name) in [(1200, "wide.png"), (390, "phone.png")] {
        let shot = d.join(name);
        let o = Command::new(browser)
            .args(common)
            .arg(format!("--screenshot={}", shot.display()))
            .arg(format!("--window-size={width},2000"))
            .arg(&page)
            .output()
            .unwrap();
        let png = std::fs::read(&shot).unwrap_or_else(|e| {
            panic!(
                "no screenshot ({e}): {}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}: {} bytes",
            png.len()
        );
    }
    let o = Command::new(browser)
        .args(common)
        .arg("--dump-dom")
        .arg(&page)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(dom.contains("<h2>Verdicts</h2>"), "{dom}");
    assert_eq!(dom.matches("<svg").count(), 9, "charts in the parsed page");
}
