//! scikit-learn's handwritten digits (`data/digits_*.csv`, see `data/make_digits.py`),
//! standardized with the training split's statistics as the CLI does: real data for
//! checks of what the diagnosis tells a user.

use steadygrad::data::Standardizer;
use steadygrad::Dataset;

fn read(name: &str) -> Dataset {
    let path = format!("{}/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let v: Vec<f32> = line.split(',').map(|f| f.parse().unwrap()).collect();
        let (label, x) = v.split_last().unwrap();
        features.extend_from_slice(x);
        labels.push(*label as usize);
    }
    Dataset::classification(features, &labels, 64, 10).unwrap()
}

/// `(train, valid)`: 1,438 and 359 rows of 64 features, 10 classes.
pub fn load() -> (Dataset, Dataset) {
    let (mut train, mut valid) = (read("digits_train.csv"), read("digits_valid.csv"));
    let s = Standardizer::fit(&train).unwrap();
    s.apply(&mut train).unwrap();
    s.apply(&mut valid).unwrap();
    (train, valid)
}
