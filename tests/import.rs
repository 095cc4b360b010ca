//! `--init-from` from other layouts: PyTorch's `nn.Sequential` names, a user's name
//! map, and steadygrad's own names without the config metadata.

mod common;

use common::TempDir;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use steadygrad::checkpoint;
use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::model::import::{Layout, NameMap, Pretrained};
use steadygrad::{Activation, BatchNorm, BnPlacement, Engine, MlpSpec, Model, NamedTensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cpu() -> Box<dyn Engine> {
    Box::new(CpuEngine::new())
}

/// The model the fixtures' nn.Sequential describes: 4 → [6, 5] → 3, ReLU, batch norm
/// before the activation.
fn sequential_spec() -> MlpSpec {
    MlpSpec::new(4, &[6, 5], 3)
        .activation(Activation::Relu)
        .batch_norm(BatchNorm::default())
}

fn error_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// The file's arrays by their own names, as f64.
fn arrays(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let (tensors, _) = checkpoint::load(path).unwrap();
    tensors
        .into_iter()
        .map(|t| {
            let v = t.values.iter().map(|&x| x as f64).collect();
            (t.name, (t.shape, v))
        })
        .collect()
}

/// `x W^T + b` for one row.
fn linear(a: &BTreeMap<String, (Vec<usize>, Vec<f64>)>, i: usize, x: &[f64]) -> Vec<f64> {
    let (shape, w) = &a[&format!("{i}.weight")];
    let (_, b) = &a[&format!("{i}.bias")];
    let (out, inp) = (shape[0], shape[1]);
    assert_eq!(x.len(), inp);
    (0..out)
        .map(|o| b[o] + (0..inp).map(|k| w[o * inp + k] * x[k]).sum::<f64>())
        .collect()
}

/// BatchNorm1d in eval mode: `(x - running_mean) / sqrt(running_var + eps) · γ + β`.
fn batch_norm(a: &BTreeMap<String, (Vec<usize>, Vec<f64>)>, i: usize, x: &[f64]) -> Vec<f64> {
    let get = |what: &str| &a[&format!("{i}.{what}")].1;
    let (g, b, mean, var) = (
        get("weight"),
        get("bias"),
        get("running_mean"),
        get("running_var"),
    );
    (0..x.len())
        .map(|j| (x[j] - mean[j]) / (var[j] + 1e-5).sqrt() * g[j] + b[j])
        .collect()
}

fn relu(x: Vec<f64>) -> Vec<f64> {
    x.into_iter().map(|v| v.max(0.0)).collect()
}

fn inputs(rows: usize) -> Vec<f32> {
    (0..rows * 4)
        .map(|k| ((k as f32 * 0.37).sin() * 2.0) + 0.1 * k as f32 / rows as f32)
        .collect()
}

/// The nn.Sequential fixture (Linear-BN-ReLU-Linear-BN-ReLU-Linear) loads whole and
/// predicts what a forward pass computed here from its arrays gives, on both backends.
#[test]
fn sequential_fixture_predicts_like_its_forward_pass() {
    let path = fixture("sequential_mlp.safetensors");
    let p = Pretrained::read(&path, None).unwrap();
    assert_eq!(p.layout, Layout::Sequential);
    assert!(
        p.config.is_none(),
        "no steadygrad metadata in a PyTorch file"
    );
    assert_eq!(p.layer_sizes().unwrap(), vec![4, 6, 5, 3]);
    assert_eq!(p.source("layers.1.bn.running_var"), "4.running_var");

    let a = arrays(&path);
    let rows = 7;
    let x = inputs(rows);
    let want: Vec<f64> = x
        .chunks(4)
        .flat_map(|row| {
            let h: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let h = relu(batch_norm(&a, 1, &linear(&a, 0, &h)));
            let h = relu(batch_norm(&a, 4, &linear(&a, 3, &h)));
            linear(&a, 6, &h)
        })
        .collect();

    for engine in [
        cpu(),
        Box::new(GpuEngine::new(common::gpu())) as Box<dyn Engine>,
    ] {
        let mut m = Model::new(sequential_spec(), engine).unwrap();
        let fresh = m.predict(&x).unwrap();
        p.load_into(&mut m, 3).unwrap();
        let got = m.predict(&x).unwrap();
        assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "output {k}: got {g}, forward pass {w}"
            );
        }
        // The comparison can fail: a model left at its initialisation differs.
        assert!(fresh
            .iter()
            .zip(&want)
            .any(|(g, w)| (*g as f64 - w).abs() > 1e-3));
    }
}

/// Keeping only the lower layers loads them and leaves the rest fresh, as with a
/// steadygrad checkpoint: the mixed fixture's first layer (Linear + BatchNorm1d) fits a
/// model with batch norm on every hidden layer.
#[test]
fn sequential_lower_layers_transfer() {
    let p = Pretrained::read(&fixture("sequential_mixed_bn.safetensors"), None).unwrap();
    let mut m = Model::new(sequential_spec().seed(9), cpu()).unwrap();
    let before = m.state_dict().unwrap();
    p.load_into(&mut m, 1).unwrap();
    let a = arrays(&fixture("sequential_mixed_bn.safetensors"));
    for t in m.state_dict().unwrap() {
        let source = p.source(&t.name);
        if t.name.starts_with("layers.0.") {
            let want: Vec<f32> = a[source].1.iter().map(|&v| v as f32).collect();
            assert_eq!(t.values, want, "{} from {source}", t.name);
        } else {
            let old = before.iter().find(|b| b.name == t.name).unwrap();
            assert_eq!(t.values, old.values, "{} stays fresh", t.name);
        }
    }
}

/// A BatchNorm1d where the model has none is named, with the flag that adds it.
#[test]
fn batch_norm_the_model_lacks_is_named() {
    let p = Pretrained::read(&fixture("sequential_mixed_bn.safetensors"), None).unwrap();
    let spec = MlpSpec::new(4, &[6, 5], 3);
    let mut m = Model::new(spec, cpu()).unwrap();
    let e = error_of(p.load_into(&mut m, 3));
    assert!(
        e.contains("'1.weight'") && e.contains("--batch-norm before"),
        "{e}"
    );
    // After the activation instead of before it is another model.
    let spec = sequential_spec().batch_norm(BatchNorm {
        placement: BnPlacement::AfterActivation,
        ..BatchNorm::default()
    });
    let mut m = Model::new(spec, cpu()).unwrap();
    let e = error_of(p.load_into(&mut m, 1));
    assert!(e.contains("'1.weight'") && e.contains("before"), "{e}");
}

/// The mixed fixture has no batch norm on its second hidden layer, so a model with
/// batch norm everywhere lacks tensors for it: every missing parameter is listed.
#[test]
fn missing_parameters_are_listed() {
    let p = Pretrained::read(&fixture("sequential_mixed_bn.safetensors"), None).unwrap();
    let mut m = Model::new(sequential_spec(), cpu()).unwrap();
    let e = error_of(p.load_into(&mut m, 3));
    assert!(e.contains("parameters that found no tensor"), "{e}");
    for what in ["weight", "bias", "running_mean", "running_var"] {
        assert!(
            e.contains(&format!("'layers.1.bn.{what}' [5]")),
            "{what}: {e}"
        );
    }
    assert!(!e.contains("layers.0."), "{e}");
}

/// The widths of the file and of the flags must agree; the error names the tensor in
/// the file and both shapes.
#[test]
fn shape_mismatch_names_both_shapes() {
    let p = Pretrained::read(&fixture("sequential_mlp.safetensors"), None).unwrap();
    let spec = MlpSpec::new(4, &[8, 8], 3)
        .activation(Activation::Relu)
        .batch_norm(BatchNorm::default());
    let mut m = Model::new(spec, cpu()).unwrap();
    let e = error_of(p.load_into(&mut m, 2));
    assert!(
        e.contains("'0.weight'") && e.contains("[6, 4]") && e.contains("[8, 4]"),
        "{e}"
    );
    assert!(e.contains("--width"), "{e}");
    // Deeper than the file.
    let mut m = Model::new(sequential_spec(), cpu()).unwrap();
    let e = error_of(p.load_into(&mut m, 4));
    assert!(
        e.contains("cannot keep 4 layers") && e.contains("3 linear layers"),
        "{e}"
    );
}

fn save(dir: &Path, name: &str, tensors: Vec<NamedTensor>) -> PathBuf {
    let path = dir.join(name);
    checkpoint::save(&path, &tensors, &BTreeMap::new()).unwrap();
    path
}

fn renamed(state: &[NamedTensor], f: impl Fn(&str) -> String) -> Vec<NamedTensor> {
    state
        .iter()
        .map(|t| NamedTensor {
            name: f(&t.name),
            ..t.clone()
        })
        .collect()
}

/// A name map with a pattern rule and exact entries renames another model's tensors;
/// the loaded model predicts exactly as the one they came from.
#[test]
fn name_map_renames_and_loads() {
    let tmp = TempDir::new("import-map");
    let spec = MlpSpec::new(3, &[5, 5], 2)
        .activation(Activation::Tanh)
        .batch_norm(BatchNorm::default())
        .seed(21);
    let mut source = Model::new(spec.clone(), cpu()).unwrap();
    source
        .train_batch(&common::random(12, 1)[..12], &[0.0, 1.0, 1.0, 0.0])
        .unwrap();
    let state = source.state_dict().unwrap();
    // encoder.{i}.fc.*, encoder.{i}.norm.*, head.*
    let theirs = renamed(&state, |n| {
        let rest = n.strip_prefix("layers.").unwrap();
        let (l, attr) = rest.split_once('.').unwrap();
        if l == "2" {
            return format!("head.{}", attr.strip_prefix("linear.").unwrap());
        }
        format!(
            "encoder.{l}.{}",
            attr.replace("linear.", "fc.").replace("bn.", "norm.")
        )
    });
    let path = save(tmp.path(), "theirs.safetensors", theirs);
    let map = NameMap::parse(
        r#"
        "encoder.{i}.fc.{p}" = "layers.{i}.linear.{p}"
        "encoder.{i}.norm.weight" = "layers.{i}.bn.weight"
        "encoder.{i}.norm.bias" = "layers.{i}.bn.bias"
        "encoder.{i}.norm.running_mean" = "layers.{i}.bn.running_mean"
        "encoder.{i}.norm.running_var" = "layers.{i}.bn.running_var"
        "head.weight" = "layers.2.linear.weight"
        "head.bias" = "layers.2.linear.bias"
        "#,
    );
    // `{p}` stands for digits only, so `fc.weight` matches no rule.
    let map = map.unwrap();
    let e = error_of(Pretrained::read(&path, Some(&map)));
    assert!(
        e.contains("match no name map entry") && e.contains("'encoder.0.fc.weight'"),
        "{e}"
    );
    let map = NameMap::parse(
        r#"
        "encoder.{i}.fc.weight" = "layers.{i}.linear.weight"
        "encoder.{i}.fc.bias" = "layers.{i}.linear.bias"
        "encoder.{i}.norm.weight" = "layers.{i}.bn.weight"
        "encoder.{i}.norm.bias" = "layers.{i}.bn.bias"
        "encoder.{i}.norm.running_mean" = "layers.{i}.bn.running_mean"
        "encoder.{i}.norm.running_var" = "layers.{i}.bn.running_var"
        "head.weight" = "layers.2.linear.weight"
        "head.bias" = "layers.2.linear.bias"
        "#,
    )
    .unwrap();
    let p = Pretrained::read(&path, Some(&map)).unwrap();
    assert_eq!(p.layout, Layout::NameMap);
    assert_eq!(p.layer_sizes().unwrap(), vec![3, 5, 5, 2]);
    assert_eq!(
        p.source("layers.1.bn.running_mean"),
        "encoder.1.norm.running_mean"
    );
    let mut m = Model::new(spec.seed(5), cpu()).unwrap();
    p.load_into(&mut m, 3).unwrap();
    let x = common::random(18, 3);
    assert_eq!(m.predict(&x).unwrap(), source.predict(&x).unwrap());
}

/// A tensor the map sends to a name the model lacks is listed with its own name.
#[test]
fn unmatched_tensor_is_listed_under_its_own_name() {
    let tmp = TempDir::new("import-unmatched");
    let spec = MlpSpec::new(3, &[4], 2).seed(2);
    let mut source = Model::new(spec.clone(), cpu()).unwrap();
    let mut theirs = renamed(&source.state_dict().unwrap(), |n| format!("net.{n}"));
    theirs.push(NamedTensor {
        name: "net.layers.0.scale".into(),
        shape: vec![4],
        values: vec![1.0; 4],
    });
    let path = save(tmp.path(), "extra.safetensors", theirs);
    // Rules rename whole names; `scale` becomes `layers.0.scale`, which the model lacks.
    let map = NameMap::parse(
        r#"
        "net.layers.{i}.linear.weight" = "layers.{i}.linear.weight"
        "net.layers.{i}.linear.bias" = "layers.{i}.linear.bias"
        "net.layers.{i}.scale" = "layers.{i}.scale"
        "#,
    )
    .unwrap();
    let p = Pretrained::read(&path, Some(&map)).unwrap();
    let mut m = Model::new(spec, cpu()).unwrap();
    let e = error_of(p.load_into(&mut m, 2));
    assert!(
        e.contains("tensors that match no parameter")
            && e.contains("'net.layers.0.scale' [4] (as 'layers.0.scale')"),
        "{e}"
    );
    assert!(!e.contains("found no tensor"), "{e}");
    // A name outside `layers.{i}` is reported even when only layer 0 is kept.
    let map = NameMap::parse(
        r#"
        "net.layers.{i}.linear.weight" = "layers.{i}.linear.weight"
        "net.layers.{i}.linear.bias" = "layers.{i}.linear.bias"
        "net.layers.0.scale" = "scale"
        "#,
    )
    .unwrap();
    let p = Pretrained::read(&path, Some(&map)).unwrap();
    let e = error_of(p.load_into(&mut m, 1));
    assert!(e.contains("'net.layers.0.scale' [4] (as 'scale')"), "{e}");
}

/// steadygrad's own names load without the `steadygrad.config` metadata.
#[test]
fn own_layout_without_metadata() {
    let tmp = TempDir::new("import-own");
    let spec = MlpSpec::new(3, &[4, 4], 2)
        .batch_norm(BatchNorm::default())
        .seed(8);
    let mut source = Model::new(spec.clone(), cpu()).unwrap();
    source
        .train_batch(&common::random(12, 1)[..12], &[0.0, 1.0, 1.0, 0.0])
        .unwrap();
    let path = save(tmp.path(), "bare.safetensors", source.state_dict().unwrap());
    assert!(checkpoint::load_checkpoint(&path).is_err(), "no metadata");
    let p = Pretrained::read(&path, None).unwrap();
    assert_eq!(p.layout, Layout::Steadygrad);
    assert_eq!(p.layer_sizes().unwrap(), vec![3, 4, 4, 2]);
    let mut m = Model::new(spec.seed(1), cpu()).unwrap();
    p.load_into(&mut m, 3).unwrap();
    let x = common::random(15, 3);
    assert_eq!(m.predict(&x).unwrap(), source.predict(&x).unwrap());
}

/// Names in no known layout, without a name map, are listed.
#[test]
fn unknown_layout_lists_the_tensors() {
    let tmp = TempDir::new("import-unknown");
    let path = save(
        tmp.path(),
        "odd.safetensors",
        vec![NamedTensor {
            name: "encoder.fc.weight".into(),
            shape: vec![2, 2],
            values: vec![0.0; 4],
        }],
    );
    let e = error_of(Pretrained::read(&path, None));
    assert!(
        e.contains("'encoder.fc.weight'") && e.contains("--name-map"),
        "{e}"
    );
}

/// Runs the binary on the CPU backend in `cwd`; returns (success, stdout + stderr).
fn steadygrad(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_steadygrad"))
        .args(["--backend", "cpu"])
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// 40 rows of 4 features and a class label (0 to 2), as the fixtures' input and output.
fn write_csv(path: &Path) {
    let x = inputs(40);
    let mut s = String::from("a,b,c,d,label\n");
    for (r, row) in x.chunks(4).enumerate() {
        s += &format!("{},{},{},{},{}\n", row[0], row[1], row[2], row[3], r % 3);
    }
    std::fs::write(path, s).unwrap();
}

/// `train --init-from` takes an nn.Sequential file without metadata: the widths must
/// agree with --depth/--width, and a mismatch names the tensor and both shapes.
#[test]
fn cli_init_from_sequential() {
    let tmp = TempDir::new("import-cli");
    let d = tmp.path();
    write_csv(&d.join("x.csv"));
    let file = fixture("sequential_mlp.safetensors");
    let file = file.to_str().unwrap();
    let common = [
        "train",
        "--data",
        "x.csv",
        "--epochs",
        "1",
        "--init-from",
        file,
        "--depth",
        "2",
        "--width",
        "6",
        "--batch-norm",
        "before",
    ];
    // By default all but the output layer are kept, and layer 1 is 6 → 5 in the file.
    let (ok, out) = steadygrad(&common, d);
    assert!(!ok, "{out}");
    assert!(
        out.contains("'3.weight'") && out.contains("[5, 6]") && out.contains("[6, 6]"),
        "{out}"
    );
    let (ok, out) = steadygrad(&[&common[..], &["--keep-layers", "1"]].concat(), d);
    assert!(
        ok && out.contains("kept layers 0..1") && out.contains("nn.Sequential layout"),
        "{out}"
    );
    // No batch norm in the flags: the file's BatchNorm1d is named.
    let (ok, out) = steadygrad(&[&common[..11], &["--keep-layers", "1"]].concat(), d);
    assert!(
        !ok && out.contains("'1.weight'") && out.contains("--batch-norm before"),
        "{out}"
    );
}

/// `--name-map FILE` renames the tensors; a file that is not a TOML table of strings
/// is a clear error naming it.
#[test]
fn cli_name_map() {
    let tmp = TempDir::new("import-cli-map");
    let d = tmp.path();
    write_csv(&d.join("x.csv"));
    let mut source = Model::new(MlpSpec::new(4, &[8, 8], 3).seed(3), cpu()).unwrap();
    let theirs = renamed(&source.state_dict().unwrap(), |n| {
        n.replace("layers.", "body.").replace(".linear.", ".fc.")
    });
    save(d, "theirs.safetensors", theirs);
    std::fs::write(
        d.join("map.toml"),
        "\"body.{i}.fc.weight\" = \"layers.{i}.linear.weight\"\n\
         \"body.{i}.fc.bias\" = \"layers.{i}.linear.bias\"\n",
    )
    .unwrap();
    std::fs::write(d.join("bad.toml"), "\"body.{i}.fc.weight\" = 3\n").unwrap();
    let args = |map: &'static str| {
        [
            "train",
            "--data",
            "x.csv",
            "--epochs",
            "1",
            "--init-from",
            "theirs.safetensors",
            "--depth",
            "2",
            "--width",
            "8",
            "--name-map",
            map,
        ]
    };
    let (ok, out) = steadygrad(&args("map.toml"), d);
    assert!(
        ok && out.contains("kept layers 0..2") && out.contains("name map layout"),
        "{out}"
    );
    let (ok, out) = steadygrad(&args("bad.toml"), d);
    assert!(
        !ok && out.contains("bad.toml") && out.contains("must be a string"),
        "{out}"
    );
    // Without the map the names are in no known layout.
    let (ok, out) = steadygrad(&args("map.toml")[..11], d);
    assert!(
        !ok && out.contains("'body.0.fc.weight'") && out.contains("--name-map"),
        "{out}"
    );
}

/// A PReLU module's slope (a lone 1-D `weight` in nn.Sequential) is that layer's
/// activation parameter; a Sequential without batch norm loads into a model without it.
#[test]
fn sequential_prelu_slopes() {
    let tmp = TempDir::new("import-prelu");
    let spec = MlpSpec::new(3, &[4, 4], 2)
        .activation(Activation::Prelu {
            per_unit: true,
            init: 0.25,
        })
        .seed(6);
    let mut source = Model::new(spec.clone(), cpu()).unwrap();
    // Slopes away from their initial 0.25, so that dropping them would show.
    for l in 0..2 {
        source
            .set_parameter(&format!("layers.{l}.act.weight"), &[0.1, -0.3, 0.7, 0.05])
            .unwrap();
    }
    // nn.Sequential(Linear, PReLU, Linear, PReLU, Linear).
    let seq = renamed(&source.state_dict().unwrap(), |n| {
        let rest = n.strip_prefix("layers.").unwrap();
        let (l, attr) = rest.split_once('.').unwrap();
        let l: usize = l.parse().unwrap();
        match attr {
            "act.weight" => format!("{}.weight", 2 * l + 1),
            _ => format!("{}.{}", 2 * l, attr.strip_prefix("linear.").unwrap()),
        }
    });
    let path = save(tmp.path(), "prelu.safetensors", seq);
    let p = Pretrained::read(&path, None).unwrap();
    assert_eq!(p.source("layers.1.act.weight"), "3.weight");
    let mut m = Model::new(spec.seed(7), cpu()).unwrap();
    p.load_into(&mut m, 3).unwrap();
    let x = common::random(15, 4);
    assert_eq!(m.predict(&x).unwrap(), source.predict(&x).unwrap());
}
