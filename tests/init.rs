//! Weight initialisation: the default per activation, PyTorch's scales, per-layer
//! overrides, bias init, determinism and identical start on both backends.

mod common;

use steadygrad::cpu::CpuEngine;
use steadygrad::gpu::GpuEngine;
use steadygrad::{Activation, Init, MlpSpec, Model};

fn std_of(v: &[f32]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

fn weights(spec: &MlpSpec, layer: usize) -> Vec<f32> {
    let name = format!("layers.{layer}.linear.weight");
    spec.persistent()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap()
        .init
}

#[test]
fn default_init_per_activation() {
    for act in Activation::ALL {
        let want = match act {
            Activation::Selu => Init::LecunNormal,
            Activation::Identity | Activation::Sigmoid | Activation::Tanh => Init::GlorotUniform,
            // The ReLU family, ELU and GELU.
            _ => Init::HeNormal,
        };
        assert_eq!(Init::default_for(act), want, "{act}");
        // Auto draws exactly what the default draws.
        let auto = MlpSpec::new(9, &[17, 17], 3).activation(act).seed(5);
        let explicit = auto.clone().init(want);
        assert_eq!(auto.persistent().len(), explicit.persistent().len());
        for (a, e) in auto.persistent().iter().zip(explicit.persistent()) {
            assert_eq!(a.init, e.init, "{act}: {}", a.name);
        }
    }
}

/// Sample standard deviations of a 256×256 weight (65,536 draws) against the
/// distribution's: the estimate's own relative std is 1/√(2n) ≈ 0.3%, so 2% is a
/// seven-sigma bound that still catches a wrong gain (√2 is 41%, PReLU's
/// √(1/(1+0.25²)) is 3%).
#[test]
fn scales_follow_pytorch() {
    let (fan_in, fan_out) = (256usize, 256usize);
    let n = fan_in as f64;
    let cases: &[(Init, Activation, f64)] = &[
        (Init::HeNormal, Activation::Relu, (2.0 / n).sqrt()),
        // kaiming_normal_(a=0.25, nonlinearity='leaky_relu'): gain² = 2/(1+a²).
        (
            Init::HeNormal,
            Activation::PRELU,
            (2.0 / (1.0625 * n)).sqrt(),
        ),
        (
            Init::HeNormal,
            Activation::LeakyRelu { slope: 0.5 },
            (2.0 / (1.25 * n)).sqrt(),
        ),
        // U(±b) has std b/√3.
        (
            Init::HeUniform,
            Activation::LeakyRelu { slope: 0.5 },
            (6.0 / (1.25 * n)).sqrt() / 3f64.sqrt(),
        ),
        (
            Init::HeNormal,
            Activation::Elu { alpha: 1.0 },
            (2.0 / n).sqrt(),
        ),
        (Init::LecunNormal, Activation::Selu, (1.0 / n).sqrt()),
        (
            Init::LecunUniform,
            Activation::Selu,
            (3.0 / n).sqrt() / 3f64.sqrt(),
        ),
        (
            Init::GlorotUniform,
            Activation::Tanh,
            (6.0 / (2.0 * n)).sqrt() / 3f64.sqrt(),
        ),
        (
            Init::GlorotNormal,
            Activation::Sigmoid,
            (2.0 / (2.0 * n)).sqrt(),
        ),
    ];
    for &(init, act, want) in cases {
        let w = init.sample(act, fan_in, fan_out, 11);
        assert_eq!(w.len(), fan_in * fan_out);
        let got = std_of(&w);
        assert!(
            (got / want - 1.0).abs() < 0.02,
            "{init:?} for {act}: std {got}, expected {want}"
        );
    }
}

#[test]
fn per_layer_override() {
    let base = MlpSpec::new(64, &[64, 64, 64], 4)
        .activation(Activation::Selu)
        .seed(3);
    let wide = Init::Normal {
        mean: 0.0,
        std: 0.5,
    };
    let spec = base
        .clone()
        .layer_init(1, Init::HeNormal)
        .layer_init(1, wide); // the later one wins
    assert_eq!(spec.init_of_layer(1), wide);
    assert_eq!(spec.init_of_layer(0), Init::Auto);
    // 4096 draws: the std estimate is good to about 1.1%; 5% bound.
    let got = std_of(&weights(&spec, 1));
    assert!((got / 0.5 - 1.0).abs() < 0.05, "layer 1 std {got}");
    for l in [0, 2, 3] {
        assert_eq!(weights(&spec, l), weights(&base, l), "layer {l} untouched");
    }
}

#[test]
fn deterministic_from_the_seed() {
    let spec = MlpSpec::new(5, &[7, 7], 2)
        .activation(Activation::PRELU_UNIT)
        .bias_init(Init::Uniform {
            low: -0.1,
            high: 0.1,
        })
        .seed(9);
    let a: Vec<Vec<f32>> = spec.persistent().into_iter().map(|p| p.init).collect();
    let b: Vec<Vec<f32>> = spec.persistent().into_iter().map(|p| p.init).collect();
    assert_eq!(a, b);
    let c: Vec<Vec<f32>> = spec
        .clone()
        .seed(10)
        .persistent()
        .into_iter()
        .map(|p| p.init)
        .collect();
    assert_ne!(a, c);
}

#[test]
fn biases_zero_unless_asked() {
    let spec = MlpSpec::new(6, &[9, 9], 3).seed(4);
    for p in spec.persistent() {
        if p.name.ends_with(".bias") {
            assert!(p.init.iter().all(|&v| v == 0.0), "{}", p.name);
        }
    }
    let constant = spec.clone().bias_init(Init::Uniform {
        low: 0.1,
        high: 0.1,
    });
    for p in constant.persistent() {
        if p.name.ends_with(".bias") {
            assert!(p.init.iter().all(|&v| v == 0.1), "{}", p.name);
        }
    }
    // Drawing biases does not move the weights: they come from another stream.
    let drawn = spec.clone().bias_init(Init::HeNormal);
    for l in 0..3 {
        assert_eq!(weights(&drawn, l), weights(&spec, l));
    }
    let b = &drawn.persistent()[1];
    assert_eq!(b.name, "layers.0.linear.bias");
    assert_eq!(b.init.len(), 9);
    assert!(b.init.iter().any(|&v| v != 0.0));
}

/// Both backends start from bit-identical parameters (drawn once on the host).
#[test]
fn identical_on_both_backends() {
    for act in [Activation::Selu, Activation::PRELU_UNIT, Activation::RRELU] {
        let spec = MlpSpec::new(7, &[33, 7], 3)
            .activation(act)
            .layer_init(2, Init::LecunUniform)
            .bias_init(Init::Normal {
                mean: 0.0,
                std: 0.1,
            })
            .seed(8);
        let mut g = Model::new(spec.clone(), Box::new(GpuEngine::new(common::gpu()))).unwrap();
        let mut c = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
        assert_eq!(g.parameters().unwrap(), c.parameters().unwrap(), "{act}");
    }
}

#[test]
fn bad_init_configuration() {
    let spec = MlpSpec::new(3, &[5], 2);
    let e = format!(
        "{:#}",
        spec.clone()
            .layer_init(2, Init::HeNormal)
            .validate()
            .unwrap_err()
    );
    assert!(
        e.contains("layer_init(2, ..): the model has 2 linear layers (0 to 1)"),
        "{e}"
    );
    let bad = Init::Normal {
        mean: 0.0,
        std: f32::NAN,
    };
    let e = format!(
        "{:#}",
        spec.clone().layer_init(1, bad).validate().unwrap_err()
    );
    assert!(e.contains("layer 1: init normal"), "{e}");
    let e = format!(
        "{:#}",
        spec.clone()
            .bias_init(Init::Uniform {
                low: 1.0,
                high: 0.0
            })
            .validate()
            .unwrap_err()
    );
    assert!(e.contains("bias init: init uniform(1, 0)"), "{e}");
    let e = format!(
        "{:#}",
        Model::new(
            spec.layer_init(7, Init::HeNormal),
            Box::new(CpuEngine::new())
        )
        .err()
        .unwrap()
    );
    assert!(e.contains("layer_init(7"), "{e}");
}
