//! Every op, and whole models, on the GPU against the CPU reference at sizes that are not
//! multiples of the workgroup size. Tolerance: `max|gpu-cpu| <= 1e-6 + 1e-4·max|cpu|`
//! (see `steadygrad::check::Tolerance` for why).

mod common;

use common::{assert_close, gpu, random, OpCase, ODD_SIZES, VEC4_SIZES};
use steadygrad::ops::*;
use steadygrad::ops::{Activation, Loss, Op, METRICS_LEN};
use steadygrad::{cross_check, MlpSpec, Optimizer, Tolerance};

#[test]
fn matmul_all_forms_and_odd_sizes() {
    for &m in &ODD_SIZES {
        for &k in &ODD_SIZES {
            for &n in &ODD_SIZES {
                for (ta, tb) in [(false, true), (false, false), (true, false), (true, true)] {
                    let accumulate = (m + k + n) % 2 == 1;
                    let case = OpCase::new(&[("a", m * k), ("b", k * n), ("c", m * n)]).op(
                        Op::MatMul(MatMul {
                            a: 0,
                            b: 1,
                            c: 2,
                            m,
                            k,
                            n,
                            trans_a: ta,
                            trans_b: tb,
                            accumulate,
                        }),
                    );
                    let seed = (m * 1000 + k * 10 + n) as u64;
                    let inputs = [
                        ("a", random(m * k, seed)),
                        ("b", random(k * n, seed + 1)),
                        ("c", random(m * n, seed + 2)),
                    ];
                    assert_close(
                        &case.both(&inputs, 0.0),
                        &format!("matmul {m}x{k}x{n} ta={ta} tb={tb} acc={accumulate}"),
                    );
                }
            }
        }
    }
}

#[test]
fn bias_add_and_column_sums() {
    let shapes = [
        (1, 1),
        (7, 33),
        (257, 7),
        (33, 257),
        (1000, 1),
        (3, 1000),
        (1, 257),
        // Column counts that divide by 4 take the vector `sum_rows4`.
        (1, 4),
        (7, 36),
        (257, 260),
        (1000, 4),
    ];
    for (rows, cols) in shapes {
        let case = OpCase::new(&[("y", rows * cols), ("bias", cols)]).op(Op::AddBias(AddBias {
            y: 0,
            bias: 1,
            rows,
            cols,
        }));
        let inputs = [("y", random(rows * cols, 1)), ("bias", random(cols, 2))];
        assert_close(&case.both(&inputs, 0.0), &format!("add_bias {rows}x{cols}"));
        for accumulate in [false, true] {
            let case = OpCase::new(&[("x", rows * cols), ("out", cols)]).op(Op::SumRows(SumRows {
                x: 0,
                out: 1,
                rows,
                cols,
                accumulate,
            }));
            let inputs = [("x", random(rows * cols, 3)), ("out", random(cols, 4))];
            assert_close(
                &case.both(&inputs, 0.0),
                &format!("sum_rows {rows}x{cols} acc={accumulate}"),
            );
        }
    }
}

#[test]
fn activations_forward_and_backward() {
    for act in Activation::ALL {
        for len in ODD_SIZES.into_iter().chain(VEC4_SIZES).chain([70_001]) {
            // Scale inputs to cover the saturating tails of sigmoid and tanh too.
            let x: Vec<f32> = random(len, 5).iter().map(|v| v * 20.0).collect();
            let case = OpCase::new(&[("x", len), ("y", len)]).op(Op::Activate(Activate {
                act,
                x: 0,
                y: 1,
                len,
            }));
            let fwd = case.both(&[("x", x.clone())], 0.0);
            assert_close(&fwd, &format!("{act} forward, len {len}"));
            let y = fwd[1].2.clone();
            let case = OpCase::new(&[("x", len), ("y", len), ("dy", len), ("dx", len)]).op(
                Op::ActivateBackward(ActivateBackward {
                    act,
                    x: 0,
                    y: 1,
                    dy: 2,
                    dx: 3,
                    len,
                }),
            );
            let inputs = [("x", x), ("y", y), ("dy", random(len, 6))];
            assert_close(
                &case.both(&inputs, 0.0),
                &format!("{act} backward, len {len}"),
            );
        }
    }
}

#[test]
fn losses_and_metrics() {
    for &rows in &ODD_SIZES {
        for cols in [2, 7, 33] {
            for loss in [Loss::SoftmaxCrossEntropy, Loss::MeanSquaredError] {
                let tlen = steadygrad::ops::target_len(loss, rows, cols);
                let case = OpCase::new(&[
                    ("pred", rows * cols),
                    ("target", tlen),
                    ("dpred", rows * cols),
                    ("row_loss", rows),
                    ("row_correct", rows),
                    ("metrics", METRICS_LEN),
                ])
                .op(Op::LossGrad(LossGrad {
                    loss,
                    pred: 0,
                    target: 1,
                    dpred: 2,
                    row_loss: 3,
                    row_correct: 4,
                    rows,
                    cols,
                }))
                .op(Op::AccumulateMetrics(AccumulateMetrics {
                    row_loss: 3,
                    row_correct: 4,
                    metrics: 5,
                    rows,
                }));
                let target: Vec<f32> = match loss {
                    Loss::SoftmaxCrossEntropy => {
                        (0..rows).map(|r| ((r * 5) % cols) as f32).collect()
                    }
                    Loss::MeanSquaredError => random(tlen, 8),
                };
                // Large logits exercise the max-subtraction that keeps softmax finite.
                let pred: Vec<f32> = random(rows * cols, 7).iter().map(|v| v * 50.0).collect();
                let inputs = [
                    ("pred", pred),
                    ("target", target),
                    ("metrics", vec![1.0, 2.0, 3.0]),
                ];
                assert_close(&case.both(&inputs, 0.0), &format!("{loss:?} {rows}x{cols}"));
            }
        }
    }
}

#[test]
fn sgd_update() {
    for len in ODD_SIZES.into_iter().chain(VEC4_SIZES) {
        let case = OpCase::new(&[("param", len), ("grad", len)]).op(Op::Sgd(Sgd {
            param: 0,
            grad: 1,
            len,
            momentum: None,
            weight_decay: 0.0,
        }));
        let inputs = [("param", random(len, 9)), ("grad", random(len, 10))];
        let out = case.both(&inputs, 0.37);
        assert_close(&out, &format!("sgd len {len}"));
        // And the update is the right one, not merely the same on both sides.
        let expect: Vec<f32> = inputs[0]
            .1
            .iter()
            .zip(&inputs[1].1)
            .map(|(p, g)| p - 0.37 * g)
            .collect();
        for (a, b) in out[0].2.iter().zip(&expect) {
            assert!((a - b).abs() <= 1e-6, "cpu sgd {a} vs {b}");
        }
    }
}

/// Grouped column sums (the bias gradients) for every group size, with shapes of one
/// group differing, against the CPU.
#[test]
fn column_sum_groups() {
    let shapes = [
        (1, 1),
        (7, 33),
        (257, 7),
        (33, 257),
        (7, 36),
        (33, 4),
        (3, 1000),
    ];
    for n in 1..=SUM_ROWS_GROUP {
        for first in 0..shapes.len() {
            let picked: Vec<(usize, usize)> = (0..n)
                .map(|i| shapes[(first + 2 * i) % shapes.len()])
                .collect();
            let names: Vec<(String, usize)> = picked
                .iter()
                .enumerate()
                .flat_map(|(i, &(r, c))| [(format!("x{i}"), r * c), (format!("out{i}"), c)])
                .collect();
            let refs: Vec<(&str, usize)> = names.iter().map(|(s, l)| (s.as_str(), *l)).collect();
            let sums = picked
                .iter()
                .enumerate()
                .map(|(i, &(rows, cols))| ColumnSum {
                    x: 2 * i,
                    out: 2 * i + 1,
                    rows,
                    cols,
                })
                .collect();
            let case = OpCase::new(&refs).op(Op::SumRowsGroup(SumRowsGroup { sums }));
            let inputs: Vec<(&str, Vec<f32>)> = refs
                .iter()
                .enumerate()
                .map(|(i, &(name, len))| (name, random(len, 70 + i as u64)))
                .collect();
            assert_close(&case.both(&inputs, 0.0), &format!("column sums {picked:?}"));
        }
    }
}

/// The grouped SGD against the CPU and against the formula, for every group size, with
/// lengths of one group differing (each place has its own bound) and with weight decay.
#[test]
fn sgd_group_update() {
    let sizes: Vec<usize> = ODD_SIZES.into_iter().chain(VEC4_SIZES).collect();
    for n in 1..=SGD_GROUP {
        for first in 0..sizes.len() {
            let lens: Vec<usize> = (0..n)
                .map(|i| sizes[(first + 3 * i) % sizes.len()])
                .collect();
            let names: Vec<(String, usize)> = lens
                .iter()
                .enumerate()
                .flat_map(|(i, &len)| [(format!("p{i}"), len), (format!("g{i}"), len)])
                .collect();
            let refs: Vec<(&str, usize)> = names.iter().map(|(s, l)| (s.as_str(), *l)).collect();
            let tensors = (0..n).map(|i| (2 * i, 2 * i + 1, lens[i])).collect();
            let weight_decay = if first % 2 == 0 { 0.0 } else { 0.01 };
            let case = OpCase::new(&refs).op(Op::SgdGroup(SgdGroup {
                tensors,
                weight_decay,
            }));
            let inputs: Vec<(&str, Vec<f32>)> = refs
                .iter()
                .enumerate()
                .map(|(i, &(name, len))| (name, random(len, 40 + i as u64)))
                .collect();
            let out = case.both(&inputs, 0.37);
            assert_close(&out, &format!("sgd group {lens:?}"));
            for i in 0..n {
                let (p, g) = (&inputs[2 * i].1, &inputs[2 * i + 1].1);
                let got = &out.iter().find(|o| o.0 == format!("p{i}")).unwrap().1;
                for ((a, p), g) in got.iter().zip(p).zip(g) {
                    let want = p - 0.37 * (g + weight_decay * p);
                    assert!((a - want).abs() <= 1e-5, "gpu sgd group {a} vs {want}");
                }
            }
        }
    }
}

/// One full training step of several models: outputs, loss, every gradient and every
/// updated parameter agree.
#[test]
fn whole_model_one_step() {
    type Case<'a> = (usize, &'a [usize], usize, Activation, Loss, usize);
    let cases: &[Case] = &[
        (
            7,
            &[33, 7, 257],
            7,
            Activation::Relu,
            Loss::SoftmaxCrossEntropy,
            33,
        ),
        (
            33,
            &[7; 5],
            2,
            Activation::Tanh,
            Loss::SoftmaxCrossEntropy,
            257,
        ),
        (
            1,
            &[33, 33],
            7,
            Activation::Sigmoid,
            Loss::MeanSquaredError,
            7,
        ),
        (
            257,
            &[1, 33],
            1,
            Activation::Identity,
            Loss::MeanSquaredError,
            1,
        ),
        (
            2,
            &[64; 8],
            3,
            Activation::Relu,
            Loss::SoftmaxCrossEntropy,
            64,
        ),
    ];
    for &(input, hidden, output, act, loss, batch) in cases {
        let spec = MlpSpec::new(input, hidden, output)
            .activation(act)
            .loss(loss)
            .optimizer(Optimizer::sgd(0.1))
            .seed(batch as u64);
        let x = random(batch * input, 11);
        let y: Vec<f32> = match loss {
            Loss::SoftmaxCrossEntropy => (0..batch).map(|r| (r % output) as f32).collect(),
            Loss::MeanSquaredError => random(batch * output, 12),
        };
        let report = cross_check(&spec, &x, &y, gpu(), Tolerance::default()).unwrap();
        assert!(
            report.passed(),
            "{spec:?} batch {batch}:\n{}",
            report.table()
        );
        assert!(
            report.tensors.len() >= 2 + 4 * spec.num_layers(),
            "every tensor was compared"
        );
    }
}

/// The comparison itself must be able to fail.
#[test]
fn compare_detects_differences() {
    let tol = Tolerance::default();
    assert!(steadygrad::check::compare("x", &[1.0, 2.0], &[1.0, 2.0], tol).pass);
    assert!(!steadygrad::check::compare("x", &[1.0, 2.01], &[1.0, 2.0], tol).pass);
    assert!(!steadygrad::check::compare("x", &[f32::NAN], &[0.0], tol).pass);
    assert!(!steadygrad::check::compare("x", &[1.0], &[1.0, 2.0], tol).pass);
}
