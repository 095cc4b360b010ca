//! `steadygrad bench` end to end in its quick mode, so the command (and the figures
//! scripts/gpu-bench.sh collects) cannot rot: every JSON line parses, every figure is
//! there, finite and positive, and the flags' errors name the problem. The figures
//! themselves are not checked: speed is reported, never asserted.

use serde_json::Value;
use std::process::Command;

/// Runs the binary; returns (success, stdout, stderr).
fn bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_steadygrad"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Every stdout line as JSON; panics naming the line that is not.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn of_kind<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["kind"] == kind).collect()
}

fn positive(line: &Value, field: &str) -> f64 {
    let v = line[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing or not a number in {line}"));
    assert!(v.is_finite() && v > 0.0, "{field} = {v} in {line}");
    v
}

#[test]
fn quick_json_has_every_figure_and_peak_gives_a_share() {
    let (ok, out, err) = bench(&["--quick", "--json", "--peak", "1000"]);
    assert!(ok, "bench failed: {err}\n{out}");
    let lines = json_lines(&out);

    let adapter = of_kind(&lines, "adapter");
    assert_eq!(adapter.len(), 1, "{out}");
    for field in ["name", "backend", "driver", "matmul_variant"] {
        assert!(adapter[0][field].is_string(), "{field} in {}", adapter[0]);
    }
    assert_eq!(adapter[0]["peak_gflops"].as_f64(), Some(1000.0));

    let train = of_kind(&lines, "train");
    let names: Vec<&str> = train
        .iter()
        .map(|l| l["workload"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["w1", "w2", "w1-bn"]);
    let mut dispatches = Vec::new();
    for line in &train {
        for field in ["samples_per_sec", "ms_per_step", "first_step_ms", "loss"] {
            positive(line, field);
        }
        // samples/s and ms/step come from the same window.
        let (rate, ms) = (
            positive(line, "samples_per_sec"),
            positive(line, "ms_per_step"),
        );
        let batch = line["batch"].as_f64().unwrap();
        assert!((rate * ms / 1e3 / batch - 1.0).abs() < 1e-6, "{line}");
        let d = line["dispatches_per_step"]
            .as_u64()
            .unwrap_or_else(|| panic!("dispatches_per_step is not an integer: {line}"));
        assert!(d > 0, "{line}");
        dispatches.push(d);
    }
    // Batch norm, Adam, clipping and dropout add dispatches to W1's step: the count is
    // the engine's, not a constant.
    assert!(dispatches[2] > dispatches[0], "{dispatches:?}");

    let matmul = of_kind(&lines, "matmul");
    assert_eq!(matmul.len(), 6, "2 quick sizes × 3 forms: {out}");
    let forms: Vec<&str> = matmul.iter().map(|l| l["form"].as_str().unwrap()).collect();
    assert_eq!(forms, ["nt", "nn", "tn", "nt", "nn", "tn"]);
    for line in &matmul {
        let gflops = positive(line, "gflops");
        let share = positive(line, "share_of_peak");
        assert!((share - gflops / 1000.0).abs() < 1e-9, "{line}");
    }
}

#[test]
fn without_peak_a_share_appears_only_for_a_known_adapter() {
    let (ok, out, err) = bench(&[
        "--quick",
        "--json",
        "--workloads",
        "none",
        "--matmul-sizes",
        "32",
    ]);
    assert!(ok, "bench failed: {err}\n{out}");
    let lines = json_lines(&out);
    assert!(of_kind(&lines, "train").is_empty(), "{out}");
    let known = of_kind(&lines, "adapter")[0]["peak_gflops"].is_number();
    let matmul = of_kind(&lines, "matmul");
    assert_eq!(matmul.len(), 3, "{out}");
    for line in matmul {
        positive(line, "gflops");
        assert_eq!(line["share_of_peak"].is_number(), known, "{line}");
    }

    let (ok, out, err) = bench(&["--quick", "--workloads", "none", "--matmul-sizes", "32"]);
    assert!(ok, "bench failed: {err}\n{out}");
    assert!(out.contains("fp32 peak"), "{out}");
    assert_eq!(out.contains("peak unknown, pass --peak"), !known, "{out}");
}

#[test]
fn model_flags_make_the_model_workload_and_the_table_names_it() {
    let (ok, out, err) = bench(&[
        "--quick",
        "--depth",
        "3",
        "--width",
        "24",
        "--input",
        "5",
        "--output",
        "4",
        "--optimizer",
        "adam",
        "--matmul-sizes",
        "none",
        "--profile",
    ]);
    assert!(ok, "bench failed: {err}\n{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("model "))
        .unwrap_or_else(|| panic!("no row for the model workload:\n{out}"));
    assert!(row.contains("5 → 3×24 relu → 4"), "{row}");
    assert!(row.contains("Adam"), "{row}");
    assert!(!out.lines().any(|l| l.starts_with("w1 ")), "{out}");
    assert!(
        out.contains("samples/s") && out.contains("dispatches/step"),
        "{out}"
    );
    assert!(out.contains("profile of model:"), "{out}");
}

#[test]
fn bad_flags_are_named_before_anything_runs() {
    for (args, says) in [
        (&["--workloads", "w1,w3"][..], "unknown workload 'w3'"),
        (&["--workloads", ","][..], "--workloads is empty"),
        (
            &["--matmul-sizes", "12x0x4"][..],
            "bad matmul size '12x0x4'",
        ),
        (
            &["--matmul-sizes", "64x64"][..],
            "expected N (for N×N×N) or MxKxN",
        ),
        (&["--matmul-sizes", "70000"][..], "too large"),
        (&["--peak", "-5"][..], "--peak must be a positive number"),
        (&["--peak", "0"][..], "--peak must be a positive number"),
        (&["--steps", "0"][..], "--steps must be at least 1"),
        (&["--batch", "0"][..], "--batch must be at least 1"),
        (
            &["--input", "0", "--workloads", "model"][..],
            "--input and --output",
        ),
        (&["--variant", "fast"][..], "unknown matmul variant 'fast'"),
        (&["--json-file", "/"][..], "--json-file: cannot write '/'"),
    ] {
        let (ok, out, err) = bench(args);
        assert!(!ok, "{args:?} succeeded:\n{out}");
        assert!(err.contains(says), "{args:?}: expected '{says}' in:\n{err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let (ok, _, err) = bench(&["--backend", "cpu", "--quick"]);
    assert!(!ok && err.contains("bench measures a GPU adapter"), "{err}");
}

#[test]
fn gpu_bench_script_prints_the_table_and_writes_the_json_lines() {
    let dir = std::env::temp_dir().join(format!("steadygrad-gpu-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bench.jsonl");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-bench.sh");
    let out = Command::new("bash")
        .args([
            script,
            "--quick",
            "--workloads",
            "w1",
            "--matmul-sizes",
            "32",
        ])
        .env("STEADYGRAD", env!("CARGO_BIN_EXE_steadygrad"))
        .env("BENCH_OUT", &file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().any(|l| l.starts_with("w1 ")), "{stdout}");
    assert!(stdout.contains("GFLOP/s"), "{stdout}");
    let lines = json_lines(&std::fs::read_to_string(&file).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["adapter", "train", "matmul", "matmul", "matmul"]);
    positive(&lines[1], "samples_per_sec");
    assert!(lines[1]["dispatches_per_step"]
        .as_u64()
        .is_some_and(|d| d > 0));
}

/// A pinned tile runs the tiled kernel (even on a CPU-backed adapter) and every matmul
/// line names it, in the table and in JSON; an unknown tile or tuning mode is refused by
/// name.
#[test]
fn matmul_lines_name_the_tile_they_ran_with() {
    let common = [
        "--quick",
        "--workloads",
        "none",
        "--matmul-sizes",
        "40x24x56",
    ];
    let pinned = [&common[..], &["--matmul-tile", "32x32-4x4"]].concat();
    let (ok, out, err) = bench(&[&pinned[..], &["--json"]].concat());
    assert!(ok, "bench failed: {err}\n{out}");
    let lines = json_lines(&out);
    assert_eq!(of_kind(&lines, "adapter")[0]["matmul_variant"], "tiled");
    let matmuls = of_kind(&lines, "matmul");
    assert_eq!(matmuls.len(), 3, "{out}");
    for l in matmuls {
        assert_eq!(l["tile"], "32x32-4x4", "{l}");
        assert_eq!(l["tile_source"], "pinned", "{l}");
        assert!(l["shape_class"]
            .as_str()
            .is_some_and(|c| c.ends_with("64×32×64")));
    }
    let (ok, out, err) = bench(&pinned);
    assert!(ok, "bench failed: {err}\n{out}");
    assert!(out.contains("matmul tile: 32x32-4x4 (pinned)"), "{out}");
    assert_eq!(out.matches("32x32-4x4 (pinned)").count(), 4, "{out}");

    let (ok, _, err) = bench(&[&common[..], &["--matmul-tile", "96x96"]].concat());
    assert!(!ok && err.contains("unknown matmul tile '96x96'"), "{err}");
    let (ok, _, err) = bench(&[&common[..], &["--matmul-tune", "sometimes"]].concat());
    assert!(!ok && err.contains("unknown matmul tuning mode"), "{err}");
}
