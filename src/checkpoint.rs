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
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one,
/// never a mix: write a temporary file in the same directory, flush it to disk, then
/// rename it over the target. Temporary files that killed writers left beside `path`
/// are removed first (see [`remove_stale_temps`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = dir_and_name(path)?;
    remove_stale_temps(path);
    let tmp = dir.join(temp_name(&name, std::process::id()));
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

fn dir_and_name(path: &Path) -> Result<(PathBuf, String)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("'{}' is not a file path", path.display()))?;
    Ok((dir, name.to_string_lossy().into_owned()))
}

/// The writer's process id is in the name, so a later writer can tell whether the file
/// is still being written.
fn temp_name(name: &str, pid: u32) -> String {
    format!(".{name}.tmp-{pid}")
}

/// Where the process id cannot be checked, a temporary file untouched this long is taken
/// to be a dead writer's: a live one writes a checkpoint in seconds.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// Removes temporary files of earlier writes to `path` whose writer is gone (killed
/// mid-write, so its rename never happened), returning how many were removed. A writer
/// is gone when its process id no longer exists (Linux, through `/proc`) or, elsewhere,
/// when its file is older than an hour. Files it cannot remove are left; they are only
/// clutter.
pub fn remove_stale_temps(path: &Path) -> usize {
    let Ok((dir, name)) = dir_and_name(path) else {
        return 0;
    };
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || writer_alive(pid, &entry.path()) {
            continue;
        }
        if std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn writer_alive(pid: u32, temp: &Path) -> bool {
    let proc = Path::new("/proc");
    if proc.join("self").exists() {
        return proc.join(pid.to_string()).exists();
    }
    let age = std::fs::metadata(temp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    age.is_none_or(|a| a < STALE_TEMP_AGE)
}

/// The right to write one file, held from [`lock_for_writing`] until dropped (or the
/// process ends, however it ends: the operating system releases the lock).
#[derive(Debug)]
pub struct WriteLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl WriteLock {
    /// The lock file, `.NAME.lock` beside the locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Claims `path` for this process, so that two runs saving to the same checkpoint do not
/// overwrite each other's epochs: a second claim, by another process, is refused with an
/// error naming the file. The lock file `.NAME.lock` stays beside `path` afterwards;
/// removing it while a run holds it would let a second writer in, so it is never removed.
pub fn lock_for_writing(path: &Path) -> Result<WriteLock> {
    let (dir, name) = dir_and_name(path)?;
    let lock = dir.join(format!(".{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .with_context(|| {
            format!(
                "cannot create the lock file '{}' for '{}'",
                lock.display(),
                path.display()
            )
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "'{}' is being written by another steadygrad process (it holds '{}'); wait for it \
             to finish or save to another path",
            path.display(),
            lock.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking '{}'", lock.display()))
        }
    }
    Ok(WriteLock {
        _file: file,
        path: lock,
    })
}

/// Checks, before a long run, that `path` can be written at the end of it: its directory
/// exists and accepts new files, and `path` is not a directory.
pub fn check_writable(path: &Path, what: &str) -> Result<()> {
    let (dir, name) = dir_and_name(path)?;
    ensure!(
        !path.is_dir(),
        "{what} '{}' is a directory; give a file path",
        path.display()
    );
    ensure!(
        dir.is_dir(),
        "{what} '{}': the directory '{}' does not exist",
        path.display(),
        dir.display()
    );
    let probe = dir.join(format!(".{name}.probe-{}", std::process::id()));
    std::fs::File::create(&probe).with_context(|| {
        format!(
            "{what} '{}': cannot create files in '{}'",
            path.display(),
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Refuses an output that names a file this command reads (or another of its outputs):
/// writing it would destroy that input, a checkpoint or the data, during the run.
/// `others` pairs each flag with its path. Paths are compared resolved (symbolic links,
/// `..`), also for files that do not exist yet, and existing files by identity (hard
/// links).
pub fn check_not_overwriting(out: &Path, what: &str, others: &[(&str, &Path)]) -> Result<()> {
    let resolved = |p: &Path| {
        std::fs::canonicalize(p).ok().or_else(|| {
            let (dir, name) = dir_and_name(p).ok()?;
            Some(std::fs::canonicalize(dir).ok()?.join(name))
        })
    };
    let Some(real) = resolved(out) else {
        return Ok(());
    };
    for (flag, other) in others {
        anyhow::ensure!(
            resolved(other).as_ref() != Some(&real) && !same_inode(out, other),
            "{what} '{}' is the same file as {flag} '{}'; writing it would destroy that file; \
             give {what} another path",
            out.display(),
            other.display()
        );
    }
    Ok(())
}

/// Whether two existing paths are one file (hard links included).
#[cfg(unix)]
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_inode(_: &Path, _: &Path) -> bool {
    false
}

/// Checks that `dir` can hold output files: it is a writable directory, or it does not
/// exist yet and its nearest existing ancestor is one.
pub fn check_writable_dir(dir: &Path, what: &str) -> Result<()> {
    let mut existing = dir;
    while !existing.as_os_str().is_empty() && !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new(""));
    }
    let existing = if existing.as_os_str().is_empty() {
        Path::new(".")
    } else {
        existing
    };
    ensure!(
        existing.is_dir(),
        "{what} '{}': '{}' is not a directory",
        dir.display(),
        existing.display()
    );
    let probe = existing.join(format!(".steadygrad-probe-{}", std::process::id()));
    std::fs::File::create(&probe).with_context(|| {
        format!(
            "{what} '{}': cannot create files in '{}'",
            dir.display(),
            existing.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
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

/// The input standardization a checkpoint's metadata holds, if any.
pub fn standardizer_of(
    meta: &BTreeMap<String, String>,
) -> Result<Option<crate::data::Standardizer>> {
    meta.get(STANDARDIZER_KEY)
        .map(|j| -> Result<crate::data::Standardizer> {
            let (mean, std): (Vec<f32>, Vec<f32>) =
                serde_json::from_str(j).context("bad standardizer metadata")?;
            crate::data::Standardizer::from_parts(mean, std)
        })
        .transpose()
}

/// Prefix of optimizer-state tensors in a training checkpoint. PyTorch users load a
/// checkpoint's model part by skipping these names (see the README).
pub const OPTIMIZER_PREFIX: &str = "optimizer.";
/// The device's step counter in a training checkpoint (u32 bits in an f32).
const STEP_TENSOR: &str = "optimizer.step";
const EPOCH_KEY: &str = "steadygrad.epoch";
const STANDARDIZER_KEY: &str = "steadygrad.standardizer";
/// ReduceLROnPlateau's counters and rate (JSON), with a plateau schedule.
const PLATEAU_KEY: &str = "steadygrad.plateau";

/// Everything a checkpoint holds besides the model's own tensors.
#[derive(Clone, Debug, Default)]
pub struct TrainingState {
    /// The whole configuration, to resume with the same optimizer and schedule.
    pub config: Option<crate::config::Config>,
    /// Epochs completed.
    pub epoch: usize,
    /// Input standardization fitted on the training data.
    pub standardizer: Option<crate::data::Standardizer>,
    /// ReduceLROnPlateau's counters; read back by [`load_checkpoint`] (saving takes them
    /// from the model).
    pub plateau: Option<crate::model::plateau::PlateauState>,
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
    if let Some(p) = model.plateau_state() {
        meta.insert(
            PLATEAU_KEY.to_string(),
            serde_json::to_string(&p).expect("plateau state serializes"),
        );
    }
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
    let standardizer = standardizer_of(&meta).with_context(|| format!("'{file}'"))?;
    let plateau = meta
        .get(PLATEAU_KEY)
        .map(|j| {
            serde_json::from_str(j)
                .with_context(|| format!("'{file}': bad reduce-on-plateau state '{j}'"))
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
            plateau,
        },
    })
}

impl Checkpoint {
    /// Loads this checkpoint into `model`: parameters and buffers, and, when present,
    /// optimizer state, step counter and epoch, so training continues where it stopped.
    /// What a resumed run needs that this checkpoint lacks (a weights-only file, or one
    /// written by another tool): without it the run goes on, but not as the uninterrupted
    /// one would have.
    pub fn missing_for_resume(&self, model: &mut crate::Model) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        if self.optimizer.is_empty() {
            let state = model.optimizer_state()?;
            if !state.is_empty() {
                let mut kinds: Vec<&str> = state
                    .iter()
                    .map(|t| t.name.rsplit('.').next().unwrap_or(&t.name))
                    .collect();
                kinds.sort_unstable();
                kinds.dedup();
                missing.push(format!(
                    "optimizer state ({}), which starts again from zero",
                    kinds.join(", ")
                ));
            }
        }
        if self.steps.is_none() {
            missing.push(
                "step counter, so warm-up and bias correction start again from step 1".to_string(),
            );
        }
        if self.state.config.is_none() {
            missing.push(
                "training settings (optimizer, schedule, epochs, batch size, seed), so \
                 the flags typed now and their defaults apply"
                    .to_string(),
            );
        }
        Ok(missing)
    }

    pub fn restore(&self, model: &mut crate::Model) -> Result<()> {
        model.load_state_dict(&self.tensors)?;
        if !self.optimizer.is_empty() {
            model.load_optimizer_state(&self.optimizer)?;
        }
        if let Some(s) = self.steps {
            model.set_steps(s)?;
        }
        model.set_epoch(self.state.epoch);
        if let Some(p) = self.state.plateau {
            model.set_plateau_state(p)?;
        }
        Ok(())
    }
}
