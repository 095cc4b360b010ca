//! Central finite differences against the CPU reference's analytic gradients: each
//! backward op, and a whole 5-layer MLP.
//!
//! The reference stores `f32`, so differences use a step of `H = 1e-2` on smooth
//! functions: truncation error is O(H²) ≈ 1e-4 relative and `f32` rounding of the
//! objective contributes about 1e-7/H = 1e-5. Tolerance: `|fd - analytic| <= 2e-3 +
//! 2e-2·|analytic|`.

mod common;

use common::fd::{assert_grad, central, dot, H};
use common::random;
use steadygrad::ops::{Activation, Loss};
use steadygrad::{MlpSpec, Model, Optimizer};

/// Forward `Y = X·Wᵀ` (the NT form); backward uses the NN and TN forms, as the MLP does.
#[test]
fn matmul_backward_forms() {
    let (m, k, n) = (3, 5, 4);
    let (x, w, r) = (random(m * k, 1), random(n * k, 2), random(m * n, 3));
    let loss = |x: &[f32], w: &[f32]| {
        let mut y = vec![0.0; m * n];
        steadygrad::ops::matmul::cpu::matmul(x, w, &mut y, m, k, n, false, true, false);
        dot(&y, &r)
    };
    let mut dx = vec![0.0; m * k];
    steadygrad::ops::matmul::cpu::matmul(&r, &w, &mut dx, m, n, k, false, false, false); // dX = R·W
    let mut dw = vec![0.0; n * k];
    steadygrad::ops::matmul::cpu::matmul(&r, &x, &mut dw, n, m, k, true, false, false); // dW = Rᵀ·X
    assert_grad("dX", &dx, |i| central(&x, i, |p| loss(p, &w)));
    assert_grad("dW", &dw, |i| central(&w, i, |p| loss(&x, p)));
}

#[test]
fn bias_backward_is_column_sum() {
    let (rows, cols) = (6, 4);
    let (y0, b, r) = (
        random(rows * cols, 4),
        random(cols, 5),
        random(rows * cols, 6),
    );
    let loss = |b: &[f32]| {
        let mut y = y0.clone();
        steadygrad::ops::bias::cpu::add_bias(&mut y, b, rows, cols);
        dot(&y, &r)
    };
    let mut db = vec![0.0; cols];
    steadygrad::ops::bias::cpu::sum_rows(&r, &mut db, rows, cols, false);
    assert_grad("db", &db, |i| central(&b, i, loss));
}

#[test]
fn activation_derivatives() {
    for act in Activation::ALL {
        // Keep ReLU inputs away from its kink, where a finite difference is meaningless.
        let x: Vec<f32> = random(40, 7)
            .iter()
            .map(|v| {
                if act == Activation::Relu && v.abs() < 0.05 {
                    v + 0.1
                } else {
                    v * 3.0
                }
            })
            .collect();
        let r = random(40, 8);
        let loss = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            steadygrad::ops::activation::cpu::activate(act, x, &mut y);
            dot(&y, &r)
        };
        let mut y = vec![0.0; 40];
        steadygrad::ops::activation::cpu::activate(act, &x, &mut y);
        let mut dx = vec![0.0; 40];
        steadygrad::ops::activation::cpu::activate_backward(act, &x, &y, &r, &mut dx);
        assert_grad(act.name(), &dx, |i| central(&x, i, loss));
    }
}

#[test]
fn loss_gradients() {
    let (rows, cols) = (5, 4);
    for loss in [Loss::SoftmaxCrossEntropy, Loss::MeanSquaredError] {
        let pred: Vec<f32> = random(rows * cols, 9).iter().map(|v| v * 3.0).collect();
        let target: Vec<f32> = match loss {
            Loss::SoftmaxCrossEntropy => (0..rows).map(|r| (r % cols) as f32).collect(),
            Loss::MeanSquaredError => random(rows * cols, 10),
        };
        let mean_loss = |p: &[f32]| {
            let (mut l, mut c) = (vec![0.0; rows], vec![0.0; rows]);
            steadygrad::ops::loss::cpu::loss(loss, p, &target, None, &mut l, &mut c, rows, cols);
            l.iter().map(|&v| v as f64).sum::<f64>() / rows as f64
        };
        let mut d = vec![0.0; rows * cols];
        let (mut l, mut c) = (vec![0.0; rows], vec![0.0; rows]);
        steadygrad::ops::loss::cpu::loss(
            loss,
            &pred,
            &target,
            Some(&mut d),
            &mut l,
            &mut c,
            rows,
            cols,
        );
        assert_grad(loss.name(), &d, |i| central(&pred, i, mean_loss));
    }
}

/// A whole 5-layer MLP: every gradient the plan computes matches finite differences of
/// the model's own loss, for every parameter tensor (a strided sample of entries).
#[test]
fn whole_mlp_gradients() {
    for (act, loss) in [
        (Activation::Tanh, Loss::SoftmaxCrossEntropy),
        (Activation::Sigmoid, Loss::MeanSquaredError),
    ] {
        let spec = MlpSpec::new(3, &[6, 5, 4, 5], 3)
            .activation(act)
            .loss(loss)
            .optimizer(Optimizer::sgd(1e-3))
            .seed(3);
        let rows = 4;
        let x = random(rows * 3, 11);
        let y: Vec<f32> = match loss {
            Loss::SoftmaxCrossEntropy => vec![0.0, 2.0, 1.0, 2.0],
            Loss::MeanSquaredError => random(rows * 3, 12),
        };
        let mut model = Model::new(spec, Box::new(steadygrad::cpu::CpuEngine::new())).unwrap();
        let before = model.parameters().unwrap();
        model.train_batch(&x, &y).unwrap();
        assert_eq!(
            model.gradient_names(rows).unwrap().len(),
            10,
            "5 layers × (weight, bias)"
        );
        let ctx = format!("{act}/{loss:?}");
        common::assert_model_gradients(&mut model, rows, &before, H, 3, &ctx, |m| {
            m.batch_loss(&x, &y).unwrap() as f64
        });
    }
}

/// The finite-difference harness itself catches a wrong gradient.
#[test]
#[should_panic(expected = "finite difference")]
fn gradcheck_can_fail() {
    let x = random(4, 13);
    let wrong: Vec<f32> = x.iter().map(|v| 3.0 * v).collect(); // d/dx Σx² is 2x, not 3x
    assert_grad("wrong", &wrong, |i| {
        central(&x, i, |p| p.iter().map(|&v| (v * v) as f64).sum())
    });
}
