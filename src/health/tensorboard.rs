//! TensorBoard event files: the scalars of a training run, readable by `tensorboard
//! --logdir DIR` while it trains.
//!
//! The format is TensorFlow's TFRecord of `Event` protocol buffers. Each record is
//! `u64 length (LE) | u32 masked CRC32C of the length bytes | data | u32 masked CRC32C of
//! data`, with `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`. The first event holds
//! `file_version = "brain.Event:2"`; each later one a `Summary` of `simple_value` scalars.
//! The few protobuf fields needed are encoded here by hand: a protobuf crate and the
//! TensorFlow `.proto` files would be far more code than the encoder.
//!
//! Records are written whole and unbuffered, so a crash or a non-finite stop leaves a file
//! readable up to the last record written.

use super::{StepStats, TrainObserver};
use crate::model::{EpochReport, MlpSpec};
use crate::proto::{bytes_field, varint};
use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// CRC32C (Castagnoli) of `bytes`, masked as TFRecord stores it: a CRC of data that itself
/// holds CRCs is weak, so the stored value is rotated and offset.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord framing `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    r
}

/// What an event carries besides its time and step.
pub enum EventBody<'a> {
    FileVersion(&'a str),
    /// `(tag, value)` pairs of one `Summary`.
    Scalars(&'a [(String, f32)]),
}

/// The protobuf encoding of `Event { wall_time = 1, step = 2, file_version = 3 | summary
/// = 5 }`, with `Summary { repeated Value value = 1 }` and `Value { tag = 1,
/// simple_value = 2 }`.
pub fn encode_event(wall_time: f64, step: i64, body: &EventBody) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(1 << 3 | 1); // wall_time: double, 64-bit wire type
    e.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        // proto3 leaves default values out; readers take a missing step as 0.
        e.push(2 << 3);
        varint(&mut e, step as u64);
    }
    match body {
        EventBody::FileVersion(v) => bytes_field(&mut e, 3, v.as_bytes()),
        EventBody::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, v) in values.iter() {
                let mut value = Vec::new();
                bytes_field(&mut value, 1, tag.as_bytes());
                value.push(2 << 3 | 5); // simple_value: float, 32-bit wire type
                value.extend_from_slice(&v.to_le_bytes());
                bytes_field(&mut summary, 1, &value);
            }
            bytes_field(&mut e, 5, &summary);
        }
    }
    e
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An event file being written.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Creates `dir` when needed and a new event file in it, named
    /// `events.out.tfevents.<unix seconds>.<hostname>` as TensorFlow names them
    /// (TensorBoard reads only files whose names hold `tfevents`).
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the TensorBoard directory '{}'", dir.display()))?;
        let secs = now() as u64;
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        // A host name with a path separator would put the file elsewhere.
        let host: String = host
            .chars()
            .map(|c| if c == '/' || c == '\\' { '_' } else { c })
            .collect();
        let mut name = format!("events.out.tfevents.{secs}.{host}");
        // Two runs into one directory within a second must not share a file.
        let mut n = 1;
        while dir.join(&name).exists() {
            n += 1;
            name = format!("events.out.tfevents.{secs}.{host}.{n}");
        }
        let path = dir.join(name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating the event file '{}'", path.display()))?;
        let mut w = EventWriter { path, file };
        w.write_event(0, &EventBody::FileVersion("brain.Event:2"))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_event(&mut self, step: i64, body: &EventBody) -> Result<()> {
        // One write per record: a reader tailing the file sees whole records or a torn
        // last one, which TensorBoard skips.
        self.file
            .write_all(&record(&encode_event(now(), step, body)))
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing the event file '{}'", self.path.display()))
    }

    /// Several scalars at one step, in one event.
    pub fn scalars(&mut self, step: i64, values: &[(String, f32)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.write_event(step, &EventBody::Scalars(values))
    }
}

/// The scalars of one statistics record, at its training step: `train/batch_loss`,
/// `train/batch_accuracy`, `train/learning_rate`, `grad_norm/total`, and per layer
/// `grad_norm/layer_NN` (‖∇W‖) and `update_ratio/layer_NN` (‖ΔW‖/‖W‖). Layer numbers are
/// zero-padded to the width of the largest so TensorBoard's sorted tag list stays in
/// layer order.
pub fn stats_scalars(s: &StepStats, spec: &MlpSpec) -> Vec<(String, f32)> {
    let mut v = vec![("train/batch_loss".to_string(), s.loss)];
    if let Some(a) = s.accuracy {
        v.push(("train/batch_accuracy".to_string(), a));
    }
    // The record's epoch counts from 1 within fit; the schedule's from 0. A plateau
    // schedule's rate depends on validation losses the record does not carry: its rate is
    // `epoch/learning_rate`.
    if !matches!(spec.schedule, crate::model::LrSchedule::Plateau(_)) {
        v.push((
            "train/learning_rate".to_string(),
            spec.lr_at(s.epoch.saturating_sub(1), s.step),
        ));
    }
    v.push(("grad_norm/total".to_string(), s.total_grad_norm()));
    let width = s.layers.len().saturating_sub(1).to_string().len();
    for l in &s.layers {
        if let Some(g) = l.weight_grad_norm {
            v.push((format!("grad_norm/layer_{:0width$}", l.layer), g));
        }
        if let Some(r) = l.update_ratio {
            v.push((format!("update_ratio/layer_{:0width$}", l.layer), r));
        }
    }
    v
}

/// The scalars of one epoch, at the epoch number (as Keras writes them): `epoch/loss`,
/// `epoch/accuracy`, `epoch/val_loss`, `epoch/val_accuracy`, `epoch/learning_rate` (the
/// rate of the epoch's last step).
pub fn epoch_scalars(r: &EpochReport) -> Vec<(String, f32)> {
    let mut v = vec![
        ("epoch/loss".to_string(), r.train.loss),
        ("epoch/learning_rate".to_string(), r.lr),
    ];
    if let Some(p) = r.penalty {
        v.push(("epoch/penalty".to_string(), p));
    }
    if let Some(a) = r.train.accuracy {
        v.push(("epoch/accuracy".to_string(), a));
    }
    if let Some(m) = &r.valid {
        v.push(("epoch/val_loss".to_string(), m.loss));
        if let Some(a) = m.accuracy {
            v.push(("epoch/val_accuracy".to_string(), a));
        }
    }
    v
}

/// Writes a run's statistics records and epoch reports to an event file; use it as (part
/// of) a model's observer.
pub struct TensorBoardLog {
    writer: EventWriter,
    spec: MlpSpec,
}

impl TensorBoardLog {
    pub fn create(dir: &Path, spec: &MlpSpec) -> Result<TensorBoardLog> {
        Ok(TensorBoardLog {
            writer: EventWriter::create(dir)?,
            spec: spec.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        self.writer.path()
    }
}

impl TrainObserver for TensorBoardLog {
    fn on_stats(&mut self, s: &StepStats) -> Result<()> {
        self.writer
            .scalars(s.step as i64, &stats_scalars(s, &self.spec))
    }

    fn on_epoch(&mut self, r: &EpochReport) -> Result<()> {
        self.writer.scalars(r.epoch as i64, &epoch_scalars(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_check_value() {
        // The CRC-32C check value of "123456789" (RFC 3720, B.4).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // Masked by TensorBoard's own `masked_crc32c` (Python) to this.
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The bytes TensorBoard's Python protobuf classes and its record framing produce
    /// for the same events.
    #[test]
    fn records_match_tensorboards_bytes() {
        let scalars = [("loss".to_string(), 0.25f32)];
        let data = encode_event(1.5, 7, &EventBody::Scalars(&scalars));
        assert_eq!(
            hex(&record(&data)),
            "1a00000000000000129bd82d09000000000000f83f10072a0d0a0b0a046c6f7373150000803ec9d07b8d"
        );
        let version = encode_event(1.5, 0, &EventBody::FileVersion("brain.Event:2"));
        assert_eq!(
            hex(&version),
            "09000000000000f83f1a0d627261696e2e4576656e743a32"
        );
    }
}
