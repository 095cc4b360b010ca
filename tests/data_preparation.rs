//! Preparing loaded data: standardization statistics, the train/validation split, and a
//! file all the way to a trained model.

mod common;

use common::files::*;
use common::TempDir;
use steadygrad::cpu::CpuEngine;
use steadygrad::data::{load, split, Dataset, LoadOptions, Standardizer};
use steadygrad::{FitOptions, MlpSpec, Model, Optimizer};

// ---------------------------------------------------------------------------------- preparation

#[test]
fn standardizer_statistics() {
    // Columns: 1..4 (mean 2.5, population std √1.25), constant 7, and 0,0,0,10
    // (mean 2.5, std √18.75).
    let train = Dataset::classification(
        vec![1., 7., 0., 2., 7., 0., 3., 7., 0., 4., 7., 10.],
        &[0, 1, 0, 1],
        3,
        2,
    )
    .unwrap();
    let s = Standardizer::fit(&train).unwrap();
    assert_eq!(s.mean, [2.5, 7.0, 2.5]);
    assert!((s.std[0] - 1.25f32.sqrt()).abs() < 1e-6, "{:?}", s.std);
    assert_eq!(s.std[1], 0.0);
    assert!((s.std[2] - 18.75f32.sqrt()).abs() < 1e-6, "{:?}", s.std);

    let mut t = train.clone();
    s.apply(&mut t).unwrap();
    let col = |d: &Dataset, j: usize| -> Vec<f32> {
        d.features.iter().skip(j).step_by(3).copied().collect()
    };
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    for j in [0, 2] {
        let c = col(&t, j);
        let var = c.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(
            mean(&c).abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
            "column {j}: {c:?}"
        );
    }
    // The constant column is centered, not divided by zero.
    assert_eq!(col(&t, 1), [0.0; 4]);
    assert_eq!(t.targets, train.targets);

    // Validation rows use the training statistics, not their own.
    let mut valid =
        Dataset::classification(vec![2.5, 9.0, 2.5 + 18.75f32.sqrt()], &[1], 3, 2).unwrap();
    s.apply(&mut valid).unwrap();
    assert_eq!(valid.features[0], 0.0);
    assert_eq!(valid.features[1], 2.0);
    assert!((valid.features[2] - 1.0).abs() < 1e-6);

    // Saved and restored statistics give the same transform.
    let r = Standardizer::from_parts(s.mean.clone(), s.std.clone()).unwrap();
    let mut row = vec![4.0, 7.0, 10.0];
    r.transform(&mut row).unwrap();
    assert!((row[0] - 1.5 / 1.25f32.sqrt()).abs() < 1e-6);

    assert!(err_of(Standardizer::from_parts(vec![0.0], vec![-1.0])).contains("std >= 0"));
    assert!(
        err_of(Standardizer::from_parts(vec![0.0, 1.0], vec![1.0])).contains("2 means and 1 stds")
    );
    assert!(err_of(s.transform(&mut [1.0, 2.0])).contains("not whole rows of the 3 features"));
    let mut two = Dataset::classification(vec![1.0, 2.0], &[0], 2, 2).unwrap();
    assert!(err_of(s.apply(&mut two)).contains("2 features per row"));
    let tiny = Standardizer::from_parts(vec![0.0], vec![1e-30]).unwrap();
    assert!(err_of(tiny.transform(&mut [1e30])).contains("far outside the range"));
}

fn numbered(rows: usize) -> Dataset {
    let features = (0..rows).map(|r| r as f32).collect();
    let labels: Vec<usize> = (0..rows).map(|r| r % 3).collect();
    Dataset::classification(features, &labels, 1, 5).unwrap()
}

#[test]
fn split_sizes_and_determinism() {
    let data = numbered(10);
    for (fraction, valid_rows) in [(0.2, 2), (0.25, 3), (0.5, 5), (0.04, 1), (0.99, 9)] {
        let (t, v) = split(&data, fraction, 7).unwrap();
        assert_eq!(
            (t.rows, v.rows),
            (10 - valid_rows, valid_rows),
            "{fraction}"
        );
        assert_eq!((t.classes, v.classes), (Some(5), Some(5)));
        // Every row lands in exactly one part, in file order, its label with it.
        let mut all: Vec<f32> = t.features.iter().chain(&v.features).copied().collect();
        assert!(t.features.is_sorted() && v.features.is_sorted());
        for d in [&t, &v] {
            for (x, y) in d.features.iter().zip(&d.targets) {
                assert_eq!(*x as usize % 3, *y as usize);
            }
        }
        all.sort_by(f32::total_cmp);
        assert_eq!(all, data.features);
    }
    let a = split(&data, 0.3, 1).unwrap();
    assert_eq!(a, split(&data, 0.3, 1).unwrap());
    let b = split(&numbered(1000), 0.3, 1).unwrap();
    assert_ne!(b.1, split(&numbered(1000), 0.3, 2).unwrap().1);

    for bad in [0.0, 1.0, -0.1, f64::NAN] {
        assert!(
            err_of(split(&data, bad, 1)).contains("between 0 and 1"),
            "{bad}"
        );
    }
    assert!(err_of(split(&numbered(1), 0.5, 1)).contains("1 row cannot be split"));
}

/// A file all the way to a trained model: load, split, standardize (fitted on the
/// training rows), fit on the CPU reference.
#[test]
fn csv_to_trained_model() {
    let dir = TempDir::new("fit");
    let mut text = String::from("x,y,class\n");
    for i in 0..60 {
        let (x, y) = (1000.0 + (i % 10) as f32, (i / 10) as f32 * 0.001);
        text += &format!("{x},{y},{}\n", (i % 10 >= 5) as u8);
    }
    let p = dir.write("blobs.csv", text.as_bytes());
    let data = load(&p, &LoadOptions::default()).unwrap();
    let (mut train, mut valid) = split(&data, 0.25, 3).unwrap();
    let s = Standardizer::fit(&train).unwrap();
    s.apply(&mut train).unwrap();
    s.apply(&mut valid).unwrap();
    let spec = MlpSpec::new(2, &[8], 2)
        .optimizer(Optimizer::sgd(0.2))
        .seed(1);
    let mut m = Model::new(spec, Box::new(CpuEngine::new())).unwrap();
    let opts = FitOptions {
        epochs: 60,
        batch_size: 8,
        shuffle_seed: 1,
        drop_last: false,
    };
    let last = m
        .fit(&train, Some(&valid), &opts, |_| {})
        .unwrap()
        .pop()
        .unwrap();
    assert!(last.valid.unwrap().accuracy.unwrap() > 0.9, "{last:?}");
}
