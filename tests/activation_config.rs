//! Activations configured by name: bad configurations as clear errors, names that round
//! trip, and PReLU's slope as a trained parameter.

mod common;

use common::{activation_variants, random};
use steadygrad::cpu::CpuEngine;
use steadygrad::ops::Activation;
use steadygrad::{Init, MlpSpec, Model};

// ---------------------------------------------------------------------------------------
// Bad configuration: a clear error, never a panic.

fn err_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_activation_configurations() {
    let e = err_of("swish".parse::<Activation>());
    assert!(
        e.contains("unknown activation 'swish'") && e.contains("leaky-relu[:SLOPE]"),
        "{e}"
    );
    let e = err_of("elu:-1".parse::<Activation>());
    assert!(
        e.contains("elu alpha must be a finite number >= 0, got -1"),
        "{e}"
    );
    let e = err_of("leaky-relu:-0.1".parse::<Activation>());
    assert!(e.contains("slope must be a finite number >= 0"), "{e}");
    let e = err_of("leaky-relu:nan".parse::<Activation>());
    assert!(e.contains("slope must be a finite number"), "{e}");
    let e = err_of("leaky-relu:abc".parse::<Activation>());
    assert!(e.contains("parameter 'abc' is not a number"), "{e}");
    let e = err_of("rrelu:0.5:0.1".parse::<Activation>());
    assert!(e.contains("lower 0.5 > upper 0.1"), "{e}");
    let e = err_of("rrelu:0.2".parse::<Activation>());
    assert!(e.contains("two parameters"), "{e}");
    let e = err_of("selu:1".parse::<Activation>());
    assert!(e.contains("selu takes no parameters"), "{e}");
    let e = err_of("prelu:inf".parse::<Activation>());
    assert!(e.contains("prelu initial slope"), "{e}");

    // Through the library API, the same checks run when the model is built.
    for (act, needle) in [
        (Activation::Elu { alpha: -1.0 }, "elu alpha"),
        (Activation::Elu { alpha: f32::NAN }, "elu alpha"),
        (Activation::LeakyRelu { slope: -0.5 }, "leaky-relu slope"),
        (
            Activation::Rrelu {
                lower: 0.4,
                upper: 0.2,
            },
            "lower <= upper",
        ),
        (
            Activation::Rrelu {
                lower: -0.1,
                upper: 0.2,
            },
            "rrelu bounds",
        ),
        (
            Activation::Prelu {
                per_unit: true,
                init: f32::NEG_INFINITY,
            },
            "prelu-unit initial slope",
        ),
    ] {
        let spec = MlpSpec::new(3, &[5], 2).activation(act);
        let e = err_of(spec.validate());
        assert!(e.contains(needle), "{act:?}: {e}");
        let e = err_of(Model::new(spec, Box::new(CpuEngine::new())));
        assert!(e.contains(needle), "{act:?}: {e}");
    }
}

/// Every name round-trips through `Display`, defaults included.
#[test]
fn activation_names_round_trip() {
    for act in activation_variants() {
        let s = act.to_string();
        assert_eq!(s.parse::<Activation>().unwrap(), act, "{s}");
    }
    assert_eq!(
        "leaky-relu".parse::<Activation>().unwrap(),
        Activation::LeakyRelu { slope: 0.01 }
    );
    assert_eq!(
        "Leaky_ReLU:0.2".parse::<Activation>().unwrap(),
        Activation::LeakyRelu { slope: 0.2 }
    );
    assert_eq!(
        "rrelu".parse::<Activation>().unwrap(),
        Activation::Rrelu {
            lower: 1.0 / 8.0,
            upper: 1.0 / 3.0
        }
    );
    assert_eq!(
        "prelu-unit".parse::<Activation>().unwrap(),
        Activation::Prelu {
            per_unit: true,
            init: 0.25
        }
    );
    assert_eq!(
        "elu:0.5".parse::<Activation>().unwrap(),
        Activation::Elu { alpha: 0.5 }
    );
    assert_eq!(
        "gelu-tanh".parse::<Activation>().unwrap(),
        Activation::GeluTanh
    );
}

/// PReLU's slope is a parameter named as in PyTorch's state_dict, shaped [1] or [units],
/// starting at `init`, and trained: it moves with a step and its gradient is reported.
#[test]
fn prelu_slope_is_a_trained_parameter() {
    for (act, shape) in [
        (Activation::PRELU, vec![1]),
        (Activation::PRELU_UNIT, vec![16]),
    ] {
        let spec = MlpSpec::new(4, &[16, 16], 3)
            .activation(act)
            .seed(2)
            .init(Init::HeNormal);
        let mut m = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
        let names: Vec<String> = m
            .parameters()
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(
            names,
            [
                "layers.0.linear.weight",
                "layers.0.linear.bias",
                "layers.0.act.weight",
                "layers.1.linear.weight",
                "layers.1.linear.bias",
                "layers.1.act.weight",
                "layers.2.linear.weight",
                "layers.2.linear.bias",
            ]
        );
        let p = m.parameters().unwrap();
        let slope = p.iter().find(|p| p.name == "layers.1.act.weight").unwrap();
        assert_eq!(slope.shape, shape);
        assert!(slope.values.iter().all(|&v| v == 0.25));
        let x = random(32 * 4, 50);
        let y: Vec<f32> = (0..32).map(|r| (r % 3) as f32).collect();
        m.train_batch(&x, &y).unwrap();
        let after = m.parameters().unwrap();
        let slope = after
            .iter()
            .find(|p| p.name == "layers.1.act.weight")
            .unwrap();
        assert!(
            slope.values.iter().any(|&v| v != 0.25),
            "the slope was updated"
        );
        let grads = m.gradient_names(32).unwrap();
        assert!(grads.contains(&(
            "layers.1.act.weight".into(),
            "layers.1.act.weight.grad".into()
        )));
    }
}
