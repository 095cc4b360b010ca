//! Checks of a `train` command line before and around building the model: model flags
//! typed beside `--resume` or `--config` against what those hold (one precedence rule),
//! and a model too large for the host's memory.

use anyhow::Result;
use steadygrad::MlpSpec;

/// With `--resume` or `--config` the model, optimizer and training flags come from the
/// checkpoint or the file; the ones typed anyway, to be checked against it (see
/// [`conflicting_flags`]).
pub fn ignored_model_flags(m: &clap::ArgMatches) -> Vec<(String, String)> {
    let source = |id: &str| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let from_file = source("resume") || source("config");
    if !from_file {
        return Vec::new();
    }
    let model = <super::args::ModelArgs as clap::Args>::augment_args(clap::Command::new("model"));
    let mut ids: Vec<String> = model
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .collect();
    if source("resume") {
        ids.push("freeze".to_string());
    }
    ids.into_iter()
        .filter(|id| source(id))
        .map(|id| {
            let value: Vec<String> = m
                .get_raw(&id)
                .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let flag = format!("--{}", id.replace('_', "-"));
            let typed = if value.is_empty() || value == ["true"] {
                flag
            } else {
                format!("{flag} {}", value.join(","))
            };
            (id, typed)
        })
        .collect()
}

/// One precedence rule for a model that comes from a checkpoint or a config file: a model
/// flag typed beside it must describe the same setting, or the run is refused with both
/// values named. Silently training with another learning rate than the one typed, or
/// applying half of the flags over the file, would both surprise; typing the same command
/// line again with `--resume` added stays fine.
pub fn conflicting_flags(
    typed: &[(String, String)],
    flags: &MlpSpec,
    file: &MlpSpec,
) -> Vec<String> {
    typed
        .iter()
        .filter_map(|(id, shown)| {
            let field = |s: &MlpSpec| -> String {
                // Each flag against its own part of the setting: `--depth 2` typed alone
                // agrees with a 2 × 8 checkpoint, whatever `--width` defaults to.
                match id.as_str() {
                    "depth" => format!("{} hidden layers", s.hidden.len()),
                    "width" => {
                        let mut w = s.hidden.clone();
                        w.dedup();
                        format!(
                            "width {}",
                            w.iter()
                                .map(|v| v.to_string())
                                .collect::<Vec<_>>()
                                .join("/")
                        )
                    }
                    "lr" => format!("lr {}", s.optimizer.lr()),
                    "optimizer" => {
                        let shown = s.optimizer.to_string();
                        shown.split('(').next().unwrap_or(&shown).to_string()
                    }
                    "activation" => s.activation.to_string(),
                    "init" => s.init.to_string(),
                    "seed" => s.seed.to_string(),
                    "dropout" => format!("dropout {:?}", s.dropout),
                    "warmup_steps" => format!("{} warm-up steps", s.warmup_steps),
                    "clip_norm" | "clip_value" => format!("clip {:?}", s.clip),
                    "l1" | "l2" | "max_norm" => format!("regularization {:?}", s.regularization),
                    "batch_norm" | "bn_momentum" => format!("batch norm {:?}", s.batch_norm),
                    "residual" => format!("residual {:?}", s.residual_every),
                    "freeze" => format!("{} frozen layers", s.frozen_layers),
                    "schedule" | "step_size" | "gamma" | "t_max" | "eta_min" | "total_iters"
                    | "power" | "milestones" | "max_lr" | "total_steps" | "pct_start"
                    | "anneal" | "div_factor" | "final_div_factor" | "three_phase"
                    | "no_cycle_momentum" | "base_momentum" | "max_momentum" | "plateau_factor"
                    | "plateau_patience" | "plateau_threshold" | "threshold_mode" | "cooldown"
                    | "min_lr" | "plateau_eps" => {
                        format!("{:?}", s.schedule)
                    }
                    _ => s.optimizer.to_string(),
                }
            };
            let (mine, theirs) = (field(flags), field(file));
            (mine != theirs).then(|| format!("{shown} ({mine}; it has {theirs})"))
        })
        .collect()
}

/// The memory a model's parameters, gradients and optimizer state take, in bytes, is
/// checked against the memory available, so an oversized `--width` is an error rather than
/// an allocation failure that aborts the process.
pub fn check_model_size(spec: &MlpSpec) -> Result<()> {
    let sizes: Vec<usize> = std::iter::once(spec.input)
        .chain(spec.hidden.iter().copied())
        .chain(std::iter::once(spec.output))
        .collect();
    let params = sizes.windows(2).try_fold(0usize, |acc, w| {
        w[0].checked_mul(w[1])?.checked_add(w[1])?.checked_add(acc)
    });
    // Parameters, gradients and up to two optimizer states, f32 each.
    let bytes = params.and_then(|p| p.checked_mul(16));
    let available = steadygrad::engine::available_memory();
    let fits = match (bytes, available) {
        (Some(b), Some(a)) => b as u64 <= a,
        (Some(b), None) => (b as u64) < 1 << 40,
        (None, _) => false,
    };
    let (Some(params), Some(bytes)) = (params, bytes) else {
        anyhow::bail!(
            "the model is too large: its parameter count overflows a {}-bit number; reduce \
             --width or --depth",
            usize::BITS
        );
    };
    anyhow::ensure!(
        fits,
        "the model is too large: {params} parameters need about {:.1} GB of memory for \
         weights, gradients and optimizer state{}; make the hidden layers fewer or narrower \
         (--depth, --width, or `hidden` in --config)",
        bytes as f64 / 1e9,
        available.map_or(String::new(), |a| format!(
            ", but {:.1} GB is available",
            a as f64 / 1e9
        ))
    );
    Ok(())
}
