//! The `steadygrad` command line: a thin layer over the library.

use anyhow::{Context, Result};
use clap::FromArgMatches;
use std::path::PathBuf;
use std::time::Instant;
use steadygrad::check::Tolerance;
use steadygrad::checkpoint;
use steadygrad::config::Config;
use steadygrad::gpu::{describe_adapter, list_adapters};
use steadygrad::model::import::{NameMap, Pretrained};
use steadygrad::model::optim::{EarlyStopping, Monitor};
use steadygrad::{BackendChoice, EpochReport, FitOptions, Loss, MlpSpec, Model};

mod cli;
use cli::args::{spec_from, Cli, Command};
use cli::checks::{check_model_size, conflicting_flags, ignored_model_flags};
use cli::inference::model_from_checkpoint;
use cli::schedule::Span;

/// Returned by the training hook to end the run when early stopping says so; not a
/// failure.
#[derive(Debug)]
struct EarlyStopped;

impl std::fmt::Display for EarlyStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped early")
    }
}

impl std::error::Error for EarlyStopped {}

pub(crate) fn print_epoch(r: &EpochReport) {
    let v = r.valid.expect("validation data was given");
    let metric = |m: &steadygrad::Metrics| match m.accuracy {
        Some(a) => format!("acc {:5.1}%", 100.0 * a),
        None => format!("rmse {:.4}", m.loss.sqrt()),
    };
    // The data loss stays comparable with runs without regularization; the penalty,
    // which Keras folds into its loss, is shown beside it.
    let penalty = r
        .penalty
        .map_or(String::new(), |p| format!("  penalty {p:.4}"));
    println!(
        "epoch {:>3}  loss {:.4}{penalty}  {}  val loss {:.4}  val {}  lr {:.4e}  {:>8.0} samples/s",
        r.epoch,
        r.train.loss,
        metric(&r.train),
        v.loss,
        metric(&v),
        r.lr,
        r.samples_per_sec
    );
}

/// What `run` needs from the parsed command line beyond [`Cli`].
struct Extra {
    /// `train --plots` and `--log`, private to the health flags, checked before training.
    plots: Option<PathBuf>,
    log: Option<PathBuf>,
    /// Model flags given on the command line beside `--resume` or `--config`:
    /// `(argument id, "--flag value")`.
    ignored: Vec<(String, String)>,
    /// `bench` with a model flag typed: the model they describe is the default workload.
    bench_model: bool,
}

fn main() {
    let matches = cli::args::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The plots directory is private to the health flags; it is read here so that a
    // directory that cannot be written fails before training rather than after it.
    let train = matches.subcommand_matches("train");
    let path_of =
        |id: &str| train.and_then(|m| m.try_get_one::<PathBuf>(id).ok().flatten().cloned());
    let extra = Extra {
        plots: path_of("plots"),
        log: path_of("log"),
        ignored: train.map(ignored_model_flags).unwrap_or_default(),
        bench_model: (matches.subcommand_matches("bench"))
            .is_some_and(cli::bench::model_flags_typed),
    };
    if let Err(e) = cli::distributed::leave(run(cli, extra)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli, extra: Extra) -> Result<()> {
    let choice = BackendChoice::parse(&cli.backend, cli.adapter.as_deref())?;
    match cli.command {
        Command::Devices => {
            let adapters = list_adapters(wgpu::Backends::all());
            if adapters.is_empty() {
                println!("no GPU adapters found (on Linux: apt-get install mesa-vulkan-drivers libvulkan1)");
            }
            for (i, a) in adapters.iter().enumerate() {
                println!("{i}: {}", describe_adapter(a));
            }
            println!("select with --backend vulkan|metal|dx12|gl|cpu and --adapter INDEX|NAME (or STEADYGRAD_BACKEND / STEADYGRAD_ADAPTER)");
            Ok(())
        }
        Command::Diagnose(args) => cli::health::diagnose(&args, &choice),
        Command::Bench(args) => cli::bench::run(&args, &choice, extra.bench_model),
        Command::Experiment { which } => cli::experiment::experiment(&which, &choice),
        Command::Train {
            model,
            data: data_args,
            epochs,
            batch,
            spiral_classes,
            points,
            config,
            print_config,
            save,
            resume,
            init_from,
            keep_layers,
            refit_standardizer,
            allow_activation_change,
            name_map,
            freeze,
            unfreeze_at_epoch,
            unfreeze_lr,
            cache_frozen,
            drop_last,
            early_stop,
            monitor,
            min_delta,
            save_best,
            restore_best,
            dist,
            run,
        } => {
            if print_config {
                match &config {
                    Some(p) => print!("{}", Config::load(p)?.to_toml()),
                    None => print!("{}", Config::commented_default()),
                }
                return Ok(());
            }
            let statistics = run.statistics_flags();
            let (mut dist, choice) = match cli::distributed::join(&dist, &choice, &statistics)? {
                Some((d, c)) => (Some(d), c),
                None => (None, choice),
            };
            // Only rank 0 writes checkpoints and prints epochs: the replicas hold the same weights,
            // and every rank takes rank 0's validation figures.
            let root = dist.as_ref().is_none_or(|d| d.rank() == 0);
            // Every rank still reads the best checkpoint so far, so early stopping decides
            // alike on all of them.
            let best_so_far = save_best.clone();
            let (save, save_best) = (save.filter(|_| root), save_best.filter(|_| root));
            // Flags are checked before any data is read or any epoch runs, so a mistake
            // costs nothing.
            anyhow::ensure!(epochs != Some(0), "--epochs must be at least 1");
            anyhow::ensure!(batch != Some(0), "--batch must be at least 1");
            anyhow::ensure!(
                unfreeze_at_epoch != Some(0),
                "--unfreeze-at-epoch counts epochs from 1; 0 would never freeze (omit --freeze \
                 instead)"
            );
            // Nothing the run writes may be a file it reads or another of its outputs; a
            // checkpoint saved over the one it resumed from is the usual way to continue.
            let mut inputs = data_args.inputs();
            let more = [
                ("--config", &config),
                ("--init-from", &init_from),
                ("--name-map", &name_map),
            ];
            inputs.extend(more.iter().filter_map(|(f, p)| Some((*f, p.as_deref()?))));
            let mut outputs: Vec<(&str, &std::path::Path)> = run.output_files();
            outputs.extend(save.as_deref().map(|p| ("--save", p)));
            outputs.extend(save_best.as_deref().map(|p| ("--save-best", p)));
            for (i, &(flag, path)) in outputs.iter().enumerate() {
                let mut others = inputs.clone();
                others.extend(outputs[..i].iter().copied());
                if !flag.starts_with("--save") {
                    others.extend(resume.as_deref().map(|p| ("--resume", p)));
                }
                checkpoint::check_not_overwriting(path, flag, &others)?;
            }
            // Held until the process ends, so a second run saving to the same file is
            // refused before it trains.
            let _lock = match &save {
                Some(path) => {
                    checkpoint::check_writable(path, "--save")?;
                    Some(checkpoint::lock_for_writing(path)?)
                }
                None => None,
            };
            let _best_lock = match &save_best {
                Some(path) => {
                    checkpoint::check_writable(path, "--save-best")?;
                    Some(checkpoint::lock_for_writing(path)?)
                }
                None => None,
            };
            let monitor = monitor.monitor();
            let mut stopping = (early_stop.is_some() || best_so_far.is_some() || restore_best)
                .then(|| EarlyStopping::new(monitor, early_stop, min_delta))
                .transpose()?;
            if let Some(dir) = &extra.plots {
                checkpoint::check_writable_dir(dir, "--plots")?;
            }
            if let Some(path) = &extra.log {
                checkpoint::check_writable(path, "--log")?;
            }
            let file_config = config.as_deref().map(Config::load).transpose()?;
            let resumed = resume
                .as_deref()
                .map(|p| model_from_checkpoint(p, &choice))
                .transpose()?;
            // The one precedence rule, checked before any data is read: model flags typed
            // beside a checkpoint or config file must agree with what it holds.
            if !extra.ignored.is_empty() {
                let source = match (&resumed, &file_config) {
                    (Some((m, ckpt)), _) => Some((
                        m.spec().clone(),
                        ckpt.state.config.as_ref().map_or(20, |c| c.training.epochs),
                    )),
                    (None, Some(c)) => Some((c.to_spec()?, c.training.epochs)),
                    (None, None) => None,
                };
                if let Some((spec, file_epochs)) = source {
                    // The data is not read yet; one-cycle's default total steps, the one
                    // setting that depends on it, is compared per step of the file's run.
                    let steps_per_epoch = match &spec.schedule {
                        steadygrad::LrSchedule::OneCycle(c) => {
                            (c.total_steps / file_epochs.max(1)).max(1)
                        }
                        _ => 1,
                    };
                    let span = Span {
                        epochs: epochs.unwrap_or(file_epochs),
                        steps_per_epoch,
                    };
                    let mut flags = spec_from(&model, spec.input, spec.output, span)?;
                    flags.frozen_layers = freeze.unwrap_or(0);
                    let conflicts = conflicting_flags(&extra.ignored, &flags, &spec);
                    anyhow::ensure!(
                        conflicts.is_empty(),
                        "{} conflict{} with {}, which holds the model and its training settings: \
                         drop {}, or {}",
                        conflicts.join("; "),
                        if conflicts.len() == 1 { "s" } else { "" },
                        if resume.is_some() {
                            "the checkpoint given to --resume"
                        } else {
                            "the --config file"
                        },
                        if conflicts.len() == 1 {
                            "the flag"
                        } else {
                            "the flags"
                        },
                        if resume.is_some() {
                            "start a new run (--init-from reuses the weights)"
                        } else {
                            "change the file"
                        }
                    );
                }
            }
            // A resumed run splits and shuffles the data with the seed it started with, so
            // its validation rows stay out of training.
            let seed = match (&resumed, &file_config) {
                (Some((_, ckpt)), _) => ckpt
                    .state
                    .config
                    .as_ref()
                    .map_or(model.seed, |c| c.training.seed),
                (None, Some(c)) => c.training.seed,
                (None, None) => model.seed,
            };
            let pretrained = match &init_from {
                Some(path) => {
                    let map = name_map.as_deref().map(NameMap::load).transpose()?;
                    Some((path, Pretrained::read(path, map.as_ref())?))
                }
                None => None,
            };
            // The reused layers were trained on inputs scaled by their model's standardizer,
            // so new data is scaled the same way unless the user asks for a refit.
            let reuse = match (&pretrained, refit_standardizer) {
                (Some((_, pre)), false) => pre.standardizer.clone(),
                _ => None,
            };
            if let Some(lr) = unfreeze_lr {
                anyhow::ensure!(
                    lr.is_finite() && lr > 0.0,
                    "--unfreeze-lr must be a finite number > 0, got {lr}"
                );
            }
            let reused = reuse.is_some();
            let (train, valid, standardizer) =
                data_args.train_valid(seed, points, spiral_classes, reuse)?;
            let (input, output) = (train.input_dim, train.classes.unwrap_or(train.target_dim));
            let loss = if train.classes.is_some() {
                Loss::SoftmaxCrossEntropy
            } else {
                Loss::MeanSquaredError
            };
            let mut inline_lavapipe = false;
            let (mut m, epochs, batch, run_config) = if let (Some(path), Some((m, ckpt))) =
                (&resume, resumed)
            {
                let (e, b) = ckpt
                    .state
                    .config
                    .as_ref()
                    .map_or((20, 32), |c| (c.training.epochs, c.training.batch_size));
                let (e, b) = (epochs.unwrap_or(e), batch.unwrap_or(b));
                println!("resuming '{}' after epoch {}", path.display(), m.epoch());
                let mut m = m;
                for part in ckpt.missing_for_resume(&mut m)? {
                    eprintln!(
                        "warning: '{}' has no {part}; the run continues, but not exactly \
                             as the uninterrupted one would have",
                        path.display()
                    );
                }
                let cfg = ckpt.state.config.clone();
                (m, e, b, cfg)
            } else {
                let (mut spec, e, b) = match &file_config {
                    Some(c) => (
                        c.to_spec()?,
                        epochs.unwrap_or(c.training.epochs),
                        batch.unwrap_or(c.training.batch_size),
                    ),
                    None => {
                        let (e, b) = (epochs.unwrap_or(20), batch.unwrap_or(32));
                        // A data-parallel step takes `b` rows on every rank.
                        let world = dist.as_ref().map_or(1, |d| d.size());
                        let span = Span::new(e, train.rows, b * world, drop_last);
                        let spec = spec_from(&model, input, output, span)?.loss(loss);
                        (spec, e, b)
                    }
                };
                spec.frozen_layers = freeze.unwrap_or(0);
                check_model_size(&spec)?;
                let cfg = Config::from_spec(&spec, e, b);
                // Not with MPI, whose threads may read the environment meanwhile.
                inline_lavapipe = dist.is_none()
                    && choice != BackendChoice::Cpu
                    && steadygrad::backend::lavapipe_inline_for_small_steps(&spec.layer_sizes(), b);
                (Model::with_backend(spec, &choice)?, e, b, Some(cfg))
            };
            let spec = m.spec().clone();
            anyhow::ensure!(
                spec.input == input && spec.output == output && spec.loss == loss,
                "the model takes {} inputs and gives {} outputs ({}), but the data has {input} features and {output} {}",
                spec.input,
                spec.output,
                spec.loss.name(),
                if loss == Loss::SoftmaxCrossEntropy { "classes" } else { "targets" }
            );
            if let Some(e) = unfreeze_at_epoch {
                anyhow::ensure!(
                    e <= epochs,
                    "--unfreeze-at-epoch {e} is after the last epoch ({epochs}), so the layers \
                     would never be unfrozen"
                );
            }
            if let Some((path, pre)) = &pretrained {
                let keep = match (keep_layers, &pre.config) {
                    (Some(k), _) => k,
                    (None, Some(c)) => c.hidden.len(),
                    // Without metadata the layer count comes from the linear weights.
                    (None, None) => pre
                        .num_layers()
                        .with_context(|| format!("--init-from '{}'", path.display()))?
                        .saturating_sub(1),
                };
                if let Some(c) = &pre.config {
                    let theirs = c
                        .to_spec(MlpSpec::new(c.input, &c.hidden, c.output))
                        .with_context(|| format!("--init-from '{}'", path.display()))?;
                    for l in 0..keep.min(theirs.hidden.len()).min(spec.hidden.len()) {
                        let (was, now) = (theirs.activation_of(l), spec.activation_of(l));
                        anyhow::ensure!(
                            was == now || allow_activation_change,
                            "--init-from '{}' trained hidden layer {l} with the {was} \
                             activation, but this model uses {now} there: its layers would \
                             compute something else. Pass --activation {was} (or the file's \
                             per-layer settings in --config), or --allow-activation-change \
                             to reuse them anyway",
                            path.display()
                        );
                    }
                }
                pre.load_into(&mut m, keep)
                    .with_context(|| format!("--init-from '{}'", path.display()))?;
                println!(
                    "kept layers 0..{keep} of '{}' ({} layout){}",
                    path.display(),
                    pre.layout,
                    if reused {
                        "; inputs standardized as its training data was"
                    } else {
                        ""
                    }
                );
            }
            m.cache_frozen_outputs(cache_frozen);
            println!("device: {}", m.device());
            if inline_lavapipe && m.device().contains("llvmpipe") {
                println!(
                    "lavapipe runs this small model's dispatches on this thread \
                     (LP_NUM_THREADS=0), faster than its worker threads here; set \
                     LP_NUM_THREADS to choose"
                );
            }
            if let Some(d) = &dist {
                println!(
                    "data-parallel: rank {} of {}, {} rows per rank, global batch {}",
                    d.rank(),
                    d.size(),
                    batch,
                    batch * d.size()
                );
            }
            println!(
                "model: {} → {} ({}) → {}, {}, batch {batch}; {} train / {} validation rows{}",
                spec.input,
                spec.hidden_summary(),
                spec.activation_summary(),
                spec.output,
                spec.optimizer,
                train.rows,
                valid.rows,
                if spec.frozen_layers > 0 {
                    format!("; layers 0..{} frozen", spec.frozen_layers)
                } else {
                    String::new()
                }
            );
            for line in steadygrad::model::regularize::describe(&spec.regularization) {
                println!("regularization: {line}");
            }
            if spec.schedule != steadygrad::LrSchedule::Constant {
                // One-cycle replaces the optimizer's rate shown above.
                println!("schedule: {:?}", spec.schedule);
            }
            let from = match (&resume, &config) {
                (Some(p), _) => format!(" (from the checkpoint '{}')", p.display()),
                (None, Some(p)) => format!(" (from '{}')", p.display()),
                (None, None) => String::new(),
            };
            anyhow::ensure!(
                epochs >= 1,
                "the number of epochs must be at least 1, got {epochs}{from}"
            );
            anyhow::ensure!(
                batch >= 1,
                "the batch size must be at least 1, got {batch}{from}"
            );
            let remaining = epochs.saturating_sub(m.epoch());
            anyhow::ensure!(
                remaining > 0,
                "the run already completed {} of {epochs} epochs",
                m.epoch()
            );
            let opts = FitOptions {
                epochs: remaining,
                batch_size: batch,
                shuffle_seed: seed,
                drop_last,
            };
            let state = checkpoint::TrainingState {
                config: run_config,
                epoch: 0,
                standardizer,
                plateau: None,
            };
            anyhow::ensure!(
                stopping.is_none()
                    || monitor != Monitor::ValAccuracy
                    || m.spec().loss == Loss::SoftmaxCrossEntropy,
                "--monitor val-accuracy needs a classification task; regression has no accuracy \
                 (use --monitor val-loss)"
            );
            let monitored = |v: &steadygrad::Metrics| match monitor {
                Monitor::ValLoss => v.loss,
                Monitor::ValAccuracy => v.accuracy.unwrap_or(f32::NAN),
            } as f64;
            let mut best_weights = None;
            // A resumed run must not replace a better epoch kept before it stopped: the
            // best checkpoint so far sets the value to beat.
            if let (Some(stop), Some(_), Some(path)) = (&mut stopping, &resume, &best_so_far) {
                if path.exists() {
                    let (mut b, ckpt) = model_from_checkpoint(path, &choice)
                        .with_context(|| format!("--save-best '{}'", path.display()))?;
                    anyhow::ensure!(
                        b.spec().layer_sizes() == m.spec().layer_sizes()
                            && ckpt.state.epoch <= m.epoch(),
                        "--save-best '{}' is not a checkpoint of this run (a different \
                         architecture, or epoch {} after the resumed epoch {}); name a new file",
                        path.display(),
                        ckpt.state.epoch,
                        m.epoch()
                    );
                    let value = monitored(&b.evaluate(&valid, batch)?);
                    stop.seed(ckpt.state.epoch, value);
                    if restore_best {
                        best_weights = Some(b.state_dict()?);
                    }
                    println!(
                        "best so far: epoch {} in '{}', {} {value:.6}",
                        ckpt.state.epoch,
                        path.display(),
                        monitor.name()
                    );
                }
            }
            let mut trained = 0;
            let start = Instant::now();
            if let Some(d) = dist.take() {
                m.set_distributed(d)?;
            }
            let bar = run.attach(&mut m)?;
            let result = m.fit_with_hook(&train, Some(&valid), &opts, |m, r| {
                trained += 1;
                if !run.quiet() && root {
                    bar.suspend(|| print_epoch(r));
                }
                if let Some(path) = &save {
                    // After the epoch succeeded only: a diverged run never overwrites the
                    // last good checkpoint.
                    checkpoint::save_checkpoint(m, path, &state)?;
                }
                if unfreeze_at_epoch.is_some_and(|e| r.epoch + 1 >= e) && m.spec().frozen_layers > 0
                {
                    bar.suspend(|| {
                        println!(
                            "unfreezing all layers from epoch {}{}",
                            r.epoch + 1,
                            unfreeze_lr.map_or(String::new(), |lr| format!(", learning rate {lr}"))
                        )
                    });
                    m.set_frozen_layers(0)?;
                    if let Some(lr) = unfreeze_lr {
                        m.set_learning_rate(Some(lr))?;
                    }
                }
                if let Some(stop) = &mut stopping {
                    let v = r.valid.expect("validation data was given");
                    let d = stop.update(r.epoch, monitored(&v));
                    if d.improved {
                        if let Some(path) = &save_best {
                            checkpoint::save_checkpoint(m, path, &state)?;
                        }
                        if restore_best {
                            best_weights = Some(m.state_dict()?);
                        }
                    }
                    if d.stop {
                        return Err(EarlyStopped.into());
                    }
                }
                Ok(())
            });
            bar.finish_and_clear();
            let stopped = matches!(&result, Err(e) if e.downcast_ref::<EarlyStopped>().is_some());
            // The report shows the op a NaN stop names, so it gets fit's result; stopping
            // early is not a failure.
            let failure = if stopped { None } else { result.as_ref().err() };
            run.finish_after(&mut m, "train", failure)?;
            if !stopped {
                result?;
            }
            if !root {
                return Ok(());
            }
            println!(
                "trained {trained} epochs in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            if let Some(x) = m.exchange_stats().filter(|x| x.steps > 0) {
                let per_step = |v: u64| v as f64 / x.steps as f64;
                println!(
                    "data-parallel: {} steps, {:.1} gradient buckets and {:.1} batch-norm \
                     exchanges per step, all-reduce {:.1} ms per step",
                    x.steps,
                    per_step(x.buckets),
                    per_step(x.bn_exchanges),
                    x.all_reduce.as_secs_f64() * 1e3 / x.steps as f64
                );
            }
            if let Some(stop) = &stopping {
                if let Some((epoch, value)) = stop.best() {
                    if stopped {
                        println!(
                            "early stopping after epoch {}: {} did not improve by more than {} \
                             for {} epochs",
                            m.epoch(),
                            monitor.name(),
                            min_delta,
                            early_stop.unwrap_or_default()
                        );
                    }
                    println!("best epoch {epoch}: {} {value:.6}", monitor.name());
                }
            }
            if let Some(weights) = &best_weights {
                m.load_state_dict(weights)?;
                let v = m.evaluate(&valid, batch)?;
                let (epoch, _) = stopping.as_ref().and_then(|s| s.best()).unwrap_or_default();
                println!(
                    "restored the weights of epoch {epoch}: val loss {:.6}{}",
                    v.loss,
                    v.accuracy
                        .map_or(String::new(), |a| format!(", val accuracy {:.4}", a))
                );
            }
            if let Some(path) = &save_best {
                println!("saved the best epoch to '{}'", path.display());
            }
            if let Some(path) = &save {
                println!("saved '{}'", path.display());
            }
            Ok(())
        }
        Command::Eval {
            checkpoint: path,
            data: data_args,
            batch,
        } => cli::inference::eval(&path, &data_args, batch, &choice),
        Command::Predict {
            checkpoint: path,
            data: data_args,
            out,
            mc_samples,
            seed,
        } => cli::inference::predict(&path, &data_args, &out, mc_samples, seed, &choice),
        Command::Export {
            checkpoint: path,
            onnx,
            decompose,
        } => cli::inference::export(&path, &onnx, decompose),
        Command::Check {
            model,
            batch,
            loss,
            rtol,
            atol,
        } => cli::check::check(&model, batch, loss, Tolerance { atol, rtol }, &choice),
    }
}
