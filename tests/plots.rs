//! Non-finite statistics stay visible: decoded as NaN rather than 0, drawn grey rather
//! than as a zero gradient in the heatmap, and written as "nan"/"inf" rather than `null`
//! in JSON; and the heatmap's title fits a single-run figure.

mod common;

use common::TempDir;
use steadygrad::health::log::MetricsLog;
use steadygrad::health::plot::{self, heatmap_cell_color, Run};
use steadygrad::health::table::layer_table;
use steadygrad::health::{LayerStats, StepStats};
use steadygrad::model::health::layout as st;
use steadygrad::MlpSpec;

fn layer(layer: usize, grad: Option<f32>, act_std: Option<f32>) -> LayerStats {
    LayerStats {
        layer,
        units: 4,
        act_mean: Some(0.1),
        act_std,
        dead: None,
        saturated: None,
        weight_grad_norm: grad,
        bias_grad_norm: grad,
        weight_norm: Some(1.0),
        update_ratio: Some(1e-3),
        act_nonfinite: 0,
        grad_nonfinite: 0,
    }
}

/// Four layers over 20 records: layer 1's gradient is `middle` at every record, the others
/// span 1e-3..1.
fn run_with(middle: Option<f32>) -> Vec<StepStats> {
    (0..20)
        .map(|i| StepStats {
            step: 1 + 5 * i as u64,
            epoch: 1,
            loss: 1.0,
            accuracy: Some(0.5),
            layers: (0..4)
                .map(|l| {
                    let g = if l == 1 {
                        middle
                    } else {
                        Some(10f32.powi(l as i32 - 3))
                    };
                    layer(l, g, Some(0.5))
                })
                .collect(),
        })
        .collect()
}

fn count(pixels: &[u8], c: plotters::style::RGBColor) -> usize {
    pixels
        .chunks_exact(3)
        .filter(|p| p[0] == c.0 && p[1] == c.1 && p[2] == c.2)
        .count()
}

#[test]
fn heatmap_colours_non_finite_cells_grey_not_as_zero() {
    let range = (-3.0, 0.0);
    let nan = heatmap_cell_color(Some(f32::NAN), range);
    let inf = heatmap_cell_color(Some(f32::INFINITY), range);
    let zero = heatmap_cell_color(Some(0.0), range);
    let frozen = heatmap_cell_color(None, range);
    let smallest = heatmap_cell_color(Some(1e-3), range);
    assert_eq!(nan, inf);
    assert_eq!((nan.0, nan.1, nan.2), (150, 150, 150), "NaN is the grey");
    for other in [zero, frozen, smallest] {
        assert_ne!(nan, other);
    }
    assert_ne!(
        zero, smallest,
        "zero must differ from the bottom of the scale"
    );

    // In the rendered figure: the same run with layer 1 NaN, then zero, at every record.
    let render = |middle: Option<f32>| {
        let stats = run_with(middle);
        plot::gradient_heatmap_rgb(&[Run {
            label: "run",
            stats: &stats,
        }])
        .unwrap()
    };
    let (with_nan, w, h) = render(Some(f32::NAN));
    let (with_zero, w2, h2) = render(Some(0.0));
    assert_eq!((w, h), (w2, h2));
    // A layer's row of cells across the panel is thousands of pixels; the legend swatches
    // and anti-aliased text are a few hundred at most.
    let cells = 5_000;
    let grey = (count(&with_nan, nan), count(&with_zero, nan));
    assert!(
        grey.0 > grey.1 + cells,
        "NaN cells are not drawn grey: {grey:?} grey pixels (NaN run, zero run)"
    );
    let black = (count(&with_nan, zero), count(&with_zero, zero));
    assert!(
        black.1 > black.0 + cells,
        "zero cells are not drawn in the zero colour: {black:?}"
    );
}

#[test]
fn heatmap_title_is_not_clipped_in_a_single_run_plot() {
    let stats = run_with(Some(0.1));
    let (px, w, _) = plot::gradient_heatmap_rgb(&[Run {
        label: "one run",
        stats: &stats,
    }])
    .unwrap();
    // The title is the only ink in the top band of the figure.
    let (mut left, mut right) = (w, 0);
    for y in 0..26u32 {
        for x in 0..w {
            let i = 3 * (y * w + x) as usize;
            if px[i..i + 3].iter().any(|&v| v < 200) {
                left = left.min(x);
                right = right.max(x);
            }
        }
    }
    assert!(right > left, "no title drawn");
    let margin = (left, w - 1 - right);
    assert!(
        margin.0 >= 10 && margin.1 >= 10,
        "title touches the figure's edge (margins {margin:?} of {w} px): clipped"
    );
    assert!(
        margin.0.abs_diff(margin.1) <= 20,
        "title is not centred (margins {margin:?}): cut off at one side"
    );
}

#[test]
fn plots_with_non_finite_values_are_written() {
    let tmp = TempDir::new("plots");
    let stats = run_with(Some(f32::NAN));
    let files = plot::write_all(
        tmp.path(),
        &[Run {
            label: "nan",
            stats: &stats,
        }],
    )
    .unwrap();
    let svg = std::fs::read_to_string(tmp.path().join("grad_heatmap.svg")).unwrap();
    assert!(
        svg.contains("#969696"),
        "no grey cell in the SVG heatmap ({} files)",
        files.len()
    );
    assert!(
        svg.contains("NaN or inf"),
        "the legend does not name the grey"
    );
}

/// A record in which layer 0's output and gradients are entirely non-finite: the device
/// leaves such elements out, so the sums over what is left are 0.
#[test]
fn statistics_of_an_all_non_finite_tensor_decode_as_nan_not_zero() {
    let spec = MlpSpec::new(2, &[4], 3);
    let mut r = vec![0.0f32; st::record_len(2)];
    r[st::ACT_NONFINITE] = 8.0 * 4.0;
    r[st::WEIGHT_GRAD_NONFINITE] = 8.0;
    r[st::BIAS_GRAD_NONFINITE] = 4.0;
    r[st::WEIGHT_NORM] = 2.0;
    r[st::UPDATE_NONFINITE] = 8.0;
    // Layer 1: finite and genuinely zero gradients (dead units above), which stay 0.
    let l1 = st::LAYER_STRIDE;
    r[l1 + st::ACT_MEAN] = 0.5;
    r[l1 + st::ACT_STD] = 0.2;
    r[l1 + st::WEIGHT_NORM] = 1.0;
    let g = st::global_at(2);
    r[g + st::STEP] = f32::from_bits(9);
    let s = StepStats::decode(&r, &spec, 0, 1).unwrap();
    let l0 = &s.layers[0];
    for (name, v) in [
        ("act_mean", l0.act_mean),
        ("act_std", l0.act_std),
        ("weight_grad_norm", l0.weight_grad_norm),
        ("bias_grad_norm", l0.bias_grad_norm),
        ("update_ratio", l0.update_ratio),
    ] {
        assert!(v.is_some_and(f32::is_nan), "{name} = {v:?}, want NaN");
    }
    assert_eq!(l0.weight_norm, Some(2.0), "a finite norm is kept");
    assert_eq!(s.layers[1].weight_grad_norm, Some(0.0));
    assert_eq!(s.layers[1].act_std, Some(0.2));
    assert!(s.total_grad_norm().is_nan());
    let table = layer_table(&s);
    let row0 = table.lines().nth(1).unwrap();
    assert!(row0.contains("NaN") && !row0.contains("0.00e0"), "{row0}");
}

#[test]
fn json_tells_non_finite_values_from_missing_ones() {
    let mut l = layer(0, Some(f32::NAN), Some(f32::INFINITY));
    l.act_mean = Some(f32::NEG_INFINITY);
    l.dead = None;
    let v = serde_json::to_value(&l).unwrap();
    assert_eq!(v["act_std"], "inf");
    assert_eq!(v["act_mean"], "-inf");
    assert_eq!(v["weight_grad_norm"], "nan");
    assert!(v["dead"].is_null(), "None stays null: {v}");
    assert_eq!(v["act_nonfinite"], 0);
    assert!((v["update_ratio"].as_f64().unwrap() - 1e-3).abs() < 1e-9);

    let s = StepStats {
        step: 3,
        epoch: 1,
        loss: f32::NAN,
        accuracy: Some(0.25),
        layers: vec![l],
    };
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["loss"], "nan");
    assert_eq!(v["layers"][0]["act_std"], "inf");

    // The JSON Lines log writes the same.
    let tmp = TempDir::new("plots");
    let path = tmp.path().join("m.jsonl");
    MetricsLog::create(&path).unwrap().write(&s).unwrap();
    let line = std::fs::read_to_string(&path).unwrap();
    let row: serde_json::Value = serde_json::from_str(line.trim()).expect("valid JSON");
    assert_eq!(row["layers"][0]["act_std"], "inf", "{line}");
    assert_eq!(row["loss"], "nan");
    assert_eq!(row["total_grad_norm"], "nan");
}
