//! Metric logs: one row per statistics record, as CSV or JSON Lines (chosen by the file
//! extension), written as records arrive so a run can be followed with `tail -f`.
//! Non-finite values are `NaN`, `inf` and `-inf` in CSV and the strings `"nan"`, `"inf"`
//! and `"-inf"` in JSON Lines (see `json_float`), never empty or `null`, which mean "does
//! not apply".

use super::{StepStats, TrainObserver};
use crate::model::health::json_float;
use crate::EpochReport;
use anyhow::{Context, Result};
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Csv,
    JsonLines,
}

impl LogFormat {
    /// `.csv` is CSV; `.jsonl`, `.ndjson` and `.json` are JSON Lines.
    pub fn from_path(path: &Path) -> Result<LogFormat> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(LogFormat::Csv),
            Some("jsonl" | "ndjson" | "json") => Ok(LogFormat::JsonLines),
            _ => anyhow::bail!(
                "cannot tell the log format of '{}': name it .csv for CSV or .jsonl for JSON Lines",
                path.display()
            ),
        }
    }
}

/// Writes statistics records to a file; use it as (part of) a model's observer.
pub struct MetricsLog {
    path: PathBuf,
    format: LogFormat,
    out: BufWriter<File>,
    header_written: bool,
}

/// A JSON Lines row: the record plus values derived from it.
#[derive(Serialize)]
struct JsonRow<'a> {
    #[serde(flatten)]
    stats: &'a StepStats,
    #[serde(serialize_with = "json_float::f32")]
    total_grad_norm: f32,
    nonfinite: u64,
}

fn cell(v: Option<f32>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

impl MetricsLog {
    pub fn create(path: &Path) -> Result<MetricsLog> {
        let format = LogFormat::from_path(path)?;
        let file = File::create(path)
            .with_context(|| format!("creating log file '{}'", path.display()))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            format,
            out: BufWriter::new(file),
            header_written: false,
        })
    }

    pub fn write(&mut self, s: &StepStats) -> Result<()> {
        let line = match self.format {
            LogFormat::JsonLines => serde_json::to_string(&JsonRow {
                stats: s,
                total_grad_norm: s.total_grad_norm(),
                nonfinite: s.nonfinite(),
            })?,
            LogFormat::Csv => {
                if !self.header_written {
                    let mut h = vec![
                        "step".to_string(),
                        "epoch".into(),
                        "loss".into(),
                        "accuracy".into(),
                        "total_grad_norm".into(),
                        "nonfinite".into(),
                    ];
                    for l in &s.layers {
                        for what in [
                            "act_mean",
                            "act_std",
                            "weight_grad_norm",
                            "bias_grad_norm",
                            "update_ratio",
                            "dead",
                            "saturated",
                        ] {
                            h.push(format!("layer{}_{what}", l.layer));
                        }
                    }
                    writeln!(self.out, "{}", h.join(","))?;
                    self.header_written = true;
                }
                let mut row = vec![
                    s.step.to_string(),
                    s.epoch.to_string(),
                    s.loss.to_string(),
                    cell(s.accuracy),
                    s.total_grad_norm().to_string(),
                    s.nonfinite().to_string(),
                ];
                for l in &s.layers {
                    row.extend(
                        [
                            l.act_mean,
                            l.act_std,
                            l.weight_grad_norm,
                            l.bias_grad_norm,
                            l.update_ratio,
                            l.dead,
                            l.saturated,
                        ]
                        .map(cell),
                    );
                }
                row.join(",")
            }
        };
        self.emit(&line)
    }
}

impl MetricsLog {
    fn emit(&mut self, line: &str) -> Result<()> {
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .with_context(|| format!("writing log file '{}'", self.path.display()))
    }
}

impl TrainObserver for MetricsLog {
    fn on_stats(&mut self, stats: &StepStats) -> Result<()> {
        self.write(stats)
    }

    /// JSON lines get one epoch record when there is a regularization penalty, the only
    /// per-epoch value the step records lack; CSV keeps one row shape (the penalty is in
    /// the epoch report and TensorBoard's `epoch/penalty`).
    fn on_epoch(&mut self, r: &EpochReport) -> Result<()> {
        let (LogFormat::JsonLines, Some(penalty)) = (&self.format, r.penalty) else {
            return Ok(());
        };
        let line = serde_json::json!({
            "record": "epoch",
            "epoch": r.epoch,
            "loss": r.train.loss,
            "penalty": penalty,
            "loss_with_penalty": r.train.loss + penalty,
            "val_loss": r.valid.map(|v| v.loss),
        });
        self.emit(&line.to_string())
    }
}
