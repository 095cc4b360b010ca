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

use super::{Histogram, StepHistograms, StepStats, TrainObserver};
use crate::model::{EpochReport, MlpSpec};
use crate::proto::{bytes_field, double_field, packed_doubles, varint};
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

/// `HistogramProto { min = 1, max = 2, num = 3, sum = 4, sum_squares = 5, bucket_limit =
/// 6, bucket = 7 }`, all doubles, the last two packed.
fn encode_histogram(h: &Histogram) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + 16 * h.bucket.len());
    double_field(&mut out, 1, h.min);
    double_field(&mut out, 2, h.max);
    double_field(&mut out, 3, h.num as f64);
    double_field(&mut out, 4, h.sum);
    double_field(&mut out, 5, h.sum_squares);
    packed_doubles(&mut out, 6, &h.bucket_limit);
    packed_doubles(&mut out, 7, &h.bucket);
    out
}

/// What an event carries besides its time and step.
pub enum EventBody<'a> {
    FileVersion(&'a str),
    /// `(tag, value)` pairs of one `Summary`.
    Scalars(&'a [(String, f32)]),
    /// `(tag, histogram)` pairs of one `Summary`.
    Histograms(&'a [(String, Histogram)]),
}

/// The protobuf encoding of `Event { wall_time = 1, step = 2, file_version = 3 | summary
/// = 5 }`, with `Summary { repeated Value value = 1 }` and `Value { tag = 1,
/// simple_value = 2 | histo = 5 }`.
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
        EventBody::Histograms(values) => {
            let mut summary = Vec::new();
            for (tag, h) in values.iter() {
                let mut value = Vec::new();
                bytes_field(&mut value, 1, tag.as_bytes());
                bytes_field(&mut value, 5, &encode_histogram(h));
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

/// `(tag, value)` pairs of one summary.
pub type Tagged<T> = Vec<(String, T)>;

/// The histograms of one statistics step, tagged `layer_NN/weights`, `layer_NN/gradients`
/// and `layer_NN/activations` (numbered as [`stats_scalars`] numbers them, so each layer's
/// three sort together), and a scalar `layer_NN/<kind>_nonfinite` for each tensor holding
/// NaN or ±inf elements, which the histogram leaves out.
pub fn step_histograms(h: &StepHistograms, layers: usize) -> (Tagged<Histogram>, Tagged<f32>) {
    let width = layers.saturating_sub(1).to_string().len();
    let mut histos = Vec::with_capacity(h.layers.len());
    let mut nonfinite = Vec::new();
    for l in &h.layers {
        let tag = format!("layer_{:0width$}/{}", l.layer, l.kind.name());
        if l.histogram.nonfinite > 0 {
            nonfinite.push((format!("{tag}_nonfinite"), l.histogram.nonfinite as f32));
        }
        histos.push((tag, l.histogram.clone()));
    }
    (histos, nonfinite)
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

    fn on_histograms(&mut self, h: &StepHistograms) -> Result<()> {
        let (histos, nonfinite) = step_histograms(h, self.spec.num_layers());
        if !histos.is_empty() {
            self.writer
                .write_event(h.step as i64, &EventBody::Histograms(&histos))?;
        }
        self.writer.scalars(h.step as i64, &nonfinite)
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

    #[test]
    fn non_finite_elements_become_a_scalar() {
        use crate::model::health::histogram::{HistogramKind, LayerHistogram};
        let h = StepHistograms {
            step: 9,
            layers: [
                (3, &[1.0, f32::NAN, f32::INFINITY][..]),
                (12, &[2.0, 3.0][..]),
            ]
            .iter()
            .map(|&(layer, v)| LayerHistogram {
                layer,
                kind: HistogramKind::Gradients,
                histogram: Histogram::of(v, 4),
            })
            .collect(),
        };
        let (histos, nonfinite) = step_histograms(&h, 13);
        let tags: Vec<&str> = histos.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tags, ["layer_03/gradients", "layer_12/gradients"]);
        assert_eq!(histos[0].1.num, 1);
        assert_eq!(
            nonfinite,
            [("layer_03/gradients_nonfinite".to_string(), 2.0)]
        );
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
        let h = Histogram {
            min: -1.0,
            max: 2.0,
            num: 3,
            sum: 1.5,
            sum_squares: 5.25,
            bucket_limit: vec![0.5, 2.0],
            bucket: vec![1.0, 2.0],
            nonfinite: 0,
        };
        let histo = encode_event(1.5, 7, &EventBody::Histograms(&[("h".to_string(), h)]));
        assert_eq!(
            hex(&histo),
            "09000000000000f83f10072a580a560a01682a5109000000000000f0bf110000000000000040190000\
             00000000084021000000000000f83f2900000000000015403210000000000000e03f000000000000\
             00403a10000000000000f03f0000000000000040"
        );
        let version = encode_event(1.5, 0, &EventBody::FileVersion("brain.Event:2"));
        assert_eq!(
            hex(&version),
            "09000000000000f83f1a0d627261696e2e4576656e743a32"
        );
    }
}
