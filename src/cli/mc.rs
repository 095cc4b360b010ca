//! `predict --mc-samples`: the CSV of a Monte Carlo dropout prediction.

use steadygrad::McPrediction;

/// `mean_0..mean_{k-1}, std_0..std_{k-1}` per row, then for classification `class`, the
/// argmax of the mean probabilities.
pub fn csv(p: &McPrediction, classify: bool) -> String {
    let mut head: Vec<String> = (0..p.outputs).map(|j| format!("mean_{j}")).collect();
    head.extend((0..p.outputs).map(|j| format!("std_{j}")));
    if classify {
        head.push("class".into());
    }
    let mut out = head.join(",") + "\n";
    let rows = p.mean.chunks(p.outputs).zip(p.std.chunks(p.outputs));
    for ((mean, std), class) in rows.zip(p.argmax()) {
        let mut row: Vec<String> = mean.iter().chain(std).map(|v| v.to_string()).collect();
        if classify {
            row.push(class.to_string());
        }
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}
