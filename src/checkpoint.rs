//! safetensors files: atomic writes and validated reads.
//!
//! Tensors use PyTorch `state_dict()` names and layouts (`layers.{i}.linear.weight` is
//! `[out, in]`), so a file written here loads into the matching PyTorch module and back.

use crate::config::{ModelConfig, CONFIG_KEY};
use crate::model::NamedTensor;
use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one,
/// never a mix: write a temporary file in the same directory, flush it to disk, then
/// rename it over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("'{}' is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself; not every platform can open a directory, which is fine.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing '{}'", path.display()))
}

/// Saves `tensors` as f32 safetensors with `metadata` in the header, atomically.
pub fn save(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|t| {
            ensure!(
                t.values.len() == t.shape.iter().product::<usize>(),
                "tensor '{}' has {} values for shape {:?}",
                t.name,
                t.values.len(),
                t.shape
            );
            Ok((
                t.name.clone(),
                bytemuck::cast_slice(&t.values).to_vec(),
                t.shape.clone(),
            ))
        })
        .collect::<Result<_>>()?;
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            Ok((
                name.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let out = safetensors::serialize(views, Some(meta)).context("encoding safetensors")?;
    write_atomic(path, &out)
}

/// Reads every tensor of a safetensors file as f32 (f64, f16 and bf16 are converted),
/// with the header metadata. Errors name the file and the tensor.
pub fn load(path: &Path) -> Result<(Vec<NamedTensor>, BTreeMap<String, String>)> {
    let file = path.display();
    let buf = std::fs::read(path).with_context(|| format!("reading '{file}'"))?;
    let st = SafeTensors::deserialize(&buf)
        .with_context(|| format!("'{file}' is not a valid safetensors file"))?;
    let (_, header) =
        SafeTensors::read_metadata(&buf).with_context(|| format!("'{file}': bad header"))?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        // PyTorch's BatchNorm counts batches in an int64 buffer it only uses when
        // momentum is None; steadygrad always has a momentum, so the counter is dropped.
        if name.ends_with(".num_batches_tracked") {
            continue;
        }
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")) as f32)
                .collect(),
            Dtype::F16 => data.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            other => bail!("'{file}': tensor '{name}' has dtype {other:?}; expected a float type (F32, F64, F16, BF16)"),
        };
        tensors.push(NamedTensor {
            name,
            shape: view.shape().to_vec(),
            values,
        });
    }
    // safetensors keeps no order; sort so `layers.10` follows `layers.9`.
    tensors.sort_by_key(|t| natural_key(&t.name));
    Ok((tensors, metadata))
}

/// Orders `layers.10` after `layers.9`.
fn natural_key(name: &str) -> Vec<(u64, String)> {
    name.split('.')
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (u64::MAX, part.to_string()),
        })
        .collect()
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = frac · 2⁻²⁴.
            return f32::from_bits(sign)
                + (if sign != 0 { -1.0 } else { 1.0 }) * frac as f32 * 2f32.powi(-24);
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000,
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// Saves a model's parameters and buffers with its configuration in the metadata
/// (plus `extra` entries), atomically.
pub fn save_model(
    model: &mut crate::Model,
    path: &Path,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let mut meta = extra.clone();
    meta.insert(
        CONFIG_KEY.to_string(),
        ModelConfig::from_spec(model.spec()).to_json(),
    );
    // Hugging Face's convention for files holding PyTorch-layout tensors.
    meta.insert("format".to_string(), "pt".to_string());
    save(path, &model.state_dict()?, &meta)
}

/// Reads a checkpoint and the model configuration it carries.
pub fn load_with_config(
    path: &Path,
) -> Result<(ModelConfig, Vec<NamedTensor>, BTreeMap<String, String>)> {
    let (tensors, meta) = load(path)?;
    let json = meta.get(CONFIG_KEY).with_context(|| {
        format!(
            "'{}' has no '{CONFIG_KEY}' metadata, so the model architecture is unknown; \
             save it with steadygrad or add the key (see README)",
            path.display()
        )
    })?;
    let config = ModelConfig::from_json(json).with_context(|| format!("'{}'", path.display()))?;
    Ok((config, tensors, meta))
}

/// Prefix of optimizer-state tensors in a training checkpoint. PyTorch users load a
/// checkpoint's model part by skipping these names (see the README).
pub const OPTIMIZER_PREFIX: &str = "optimizer.";
/// The device's step counter in a training checkpoint (u32 bits in an f32).
const STEP_TENSOR: &str = "optimizer.step";
const EPOCH_KEY: &str = "steadygrad.epoch";
const STANDARDIZER_KEY: &str = "steadygrad.standardizer";

/// Everything a checkpoint holds besides the model's own tensors.
#[derive(Clone, Debug, Default)]
pub struct TrainingState {
    /// The whole configuration, to resume with the same optimizer and schedule.
    pub config: Option<crate::config::Config>,
    /// Epochs completed.
    pub epoch: usize,
    /// Input standardization fitted on the training data.
    pub standardizer: Option<crate::data::Standardizer>,
}

/// Saves the model, its optimizer state, step counter and epoch, and `state`, atomically:
/// a crash during the write leaves the previous checkpoint as it was.
pub fn save_checkpoint(model: &mut crate::Model, path: &Path, state: &TrainingState) -> Result<()> {
    let mut tensors = model.state_dict()?;
    for t in model.optimizer_state()? {
        tensors.push(NamedTensor {
            name: format!("{OPTIMIZER_PREFIX}{}", t.name),
            ..t
        });
    }
    tensors.push(NamedTensor {
        name: STEP_TENSOR.into(),
        shape: vec![1],
        values: vec![f32::from_bits(model.steps()? as u32)],
    });
    let mut meta = BTreeMap::new();
    meta.insert(
        CONFIG_KEY.to_string(),
        ModelConfig::from_spec(model.spec()).to_json(),
    );
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(EPOCH_KEY.to_string(), model.epoch().to_string());
    if let Some(c) = &state.config {
        meta.insert(
            crate::config::TRAINING_KEY.to_string(),
            serde_json::to_string(c).expect("configs serialize"),
        );
    }
    if let Some(s) = &state.standardizer {
        meta.insert(
            STANDARDIZER_KEY.to_string(),
            serde_json::to_string(&(&s.mean, &s.std)).expect("vectors serialize"),
        );
    }
    save(path, &tensors, &meta)
}

/// A checkpoint read back: the architecture, model tensors, optimizer tensors (names
/// without the prefix), the step counter and the training state.
pub struct Checkpoint {
    pub model: ModelConfig,
    pub tensors: Vec<NamedTensor>,
    pub optimizer: Vec<NamedTensor>,
    pub steps: Option<u32>,
    pub state: TrainingState,
}

pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let (model, all, meta) = load_with_config(path)?;
    let file = path.display();
    let mut tensors = Vec::new();
    let mut optimizer = Vec::new();
    let mut steps = None;
    for t in all {
        if t.name == STEP_TENSOR {
            steps = Some(t.values.first().copied().unwrap_or_default().to_bits());
        } else if let Some(name) = t.name.strip_prefix(OPTIMIZER_PREFIX) {
            optimizer.push(NamedTensor {
                name: name.to_string(),
                ..t
            });
        } else {
            tensors.push(t);
        }
    }
    let epoch = match meta.get(EPOCH_KEY) {
        Some(e) => e
            .parse()
            .with_context(|| format!("'{file}': bad epoch '{e}' in metadata"))?,
        None => 0,
    };
    let config = meta
        .get(crate::config::TRAINING_KEY)
        .map(|j| {
            serde_json::from_str(j).with_context(|| format!("'{file}': bad training configuration"))
        })
        .transpose()?;
    let standardizer = meta
        .get(STANDARDIZER_KEY)
        .map(|j| -> Result<crate::data::Standardizer> {
            let (mean, std): (Vec<f32>, Vec<f32>) =
                serde_json::from_str(j).with_context(|| format!("'{file}': bad standardizer"))?;
            crate::data::Standardizer::from_parts(mean, std)
        })
        .transpose()?;
    Ok(Checkpoint {
        model,
        tensors,
        optimizer,
        steps,
        state: TrainingState {
            config,
            epoch,
            standardizer,
        },
    })
}

impl Checkpoint {
    /// Loads this checkpoint into `model`: parameters and buffers, and, when present,
    /// optimizer state, step counter and epoch, so training continues where it stopped.
    pub fn restore(&self, model: &mut crate::Model) -> Result<()> {
        model.load_state_dict(&self.tensors)?;
        if !self.optimizer.is_empty() {
            model.load_optimizer_state(&self.optimizer)?;
        }
        if let Some(s) = self.steps {
            model.set_steps(s)?;
        }
        model.set_epoch(self.state.epoch);
        Ok(())
    }
}
