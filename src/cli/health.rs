//! The gradient-health parts of the command line: statistics, logs, plots, reports and
//! progress for `train`, and the `diagnose` command (`experiment` is in `experiment.rs`).

use super::args::{spec_from, DataArgs, ModelArgs};
use super::experiment::{command_line, engine_factory};
use super::schedule::Span;
use crate::print_epoch;
use anyhow::{Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::PathBuf;
use steadygrad::health::detect::layer_list;
use steadygrad::health::log::MetricsLog;
use steadygrad::health::plot::{self, Run};
use steadygrad::health::progress::TrainProgress;
use steadygrad::health::remedy::{self, Change, Trial, TrialOptions, TrialReport};
use steadygrad::health::report::{self, Report, ReportObserver, SharedReport};
use steadygrad::health::table::layer_table;
use steadygrad::health::tensorboard::TensorBoardLog;
use steadygrad::health::{
    DetectorConfig, NonFiniteError, Observers, StepStats, TrainObserver, Warning,
};
use steadygrad::{data, BackendChoice, EpochReport, FitOptions, Loss, Model};

/// What `--on-spike` does.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSpike {
    Stop,
}

/// Statistics, logging, plots and progress of a training run.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// No progress bar and no per-epoch lines.
    #[arg(long, short)]
    quiet: bool,
    /// Write gradient-health statistics to FILE, one row per statistics step: CSV for
    /// .csv, JSON Lines for .jsonl.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Gather gradient-health statistics on the device every N steps (0: never) [default:
    /// 10 with --log or --plots, else 0; diagnose: 5].
    #[arg(long, value_name = "N")]
    stats_every: Option<usize>,
    /// Write plots of the run (SVG and PNG) into DIR.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Write the run as one self-contained HTML page to FILE: model and device, loss and
    /// accuracy curves, per-layer gradient and activation heatmaps, the verdicts, a
    /// non-finite stop and (diagnose) the remedy trials. Rewritten after every epoch.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write TensorBoard event files into DIR: batch loss and accuracy, learning rate,
    /// per-layer ‖∇W‖ and update ratios and histograms of each layer's weights, gradients
    /// and activations at each statistics step, and each epoch's training and validation
    /// loss and accuracy. View with `tensorboard --logdir DIR`.
    #[arg(long, value_name = "DIR")]
    tensorboard: Option<PathBuf>,
    /// `stop`: end training when a statistics step's total gradient norm is
    /// --spike-threshold times the median of the records before it (checked at statistics
    /// steps: every 5 steps unless --stats-every says otherwise). Skipping the update
    /// instead is not offered.
    #[arg(long, value_enum, value_name = "ACTION")]
    on_spike: Option<OnSpike>,
    /// With --on-spike: how many times the running median a gradient norm must reach.
    #[arg(long, default_value_t = 10.0, value_name = "FACTOR")]
    spike_threshold: f32,
    /// What `--report` shows, filled in during `fit` and completed by `finish`.
    #[arg(skip)]
    shown: SharedReport,
}

impl RunArgs {
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// Sets up statistics, the metric log and the progress bar on `m`; returns the bar,
    /// which `fit`'s epoch lines print above.
    pub fn attach(&self, m: &mut Model) -> Result<ProgressBar> {
        self.attach_with(m, 0, "train", DetectorConfig::default())
    }

    /// The files these flags write (--log, --report), by flag.
    pub fn output_files(&self) -> Vec<(&'static str, &std::path::Path)> {
        [("--log", &self.log), ("--report", &self.report)]
            .into_iter()
            .filter_map(|(flag, p)| Some((flag, p.as_deref()?)))
            .collect()
    }

    /// The statistics flags given (--log, --plots, --report, --tensorboard, --on-spike,
    /// --stats-every above 0), by name.
    pub fn statistics_flags(&self) -> Vec<&'static str> {
        [
            ("--log", self.log.is_some()),
            ("--plots", self.plots.is_some()),
            ("--report", self.report.is_some()),
            ("--tensorboard", self.tensorboard.is_some()),
            ("--on-spike", self.on_spike.is_some()),
            ("--stats-every", self.stats_every.is_some_and(|n| n > 0)),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }

    /// As [`RunArgs::attach`], gathering statistics every `default_every` steps unless
    /// told otherwise (with 0, every 10 steps when a log or plots need them).
    fn attach_with(
        &self,
        m: &mut Model,
        default_every: usize,
        title: &str,
        cfg: DetectorConfig,
    ) -> Result<ProgressBar> {
        let needed = self.log.is_some()
            || self.plots.is_some()
            || self.report.is_some()
            || self.tensorboard.is_some();
        let every = self.stats_every.unwrap_or(match default_every {
            0 if needed => 10,
            0 if self.on_spike.is_some() => 5,
            d => d,
        });
        anyhow::ensure!(
            every > 0 || !needed,
            "--log, --plots, --report and --tensorboard need statistics: --stats-every must \
             be at least 1"
        );
        anyhow::ensure!(
            every > 0 || self.on_spike.is_none(),
            "--on-spike watches statistics records: --stats-every must be at least 1"
        );
        m.gather_stats_every(every);
        let progress = TrainProgress::new(!self.quiet);
        let bar = progress.bar();
        let mut observers: Vec<Box<dyn TrainObserver>> = vec![Box::new(progress)];
        if let Some(path) = &self.log {
            observers.push(Box::new(MetricsLog::create(path)?));
        }
        if self.on_spike == Some(OnSpike::Stop) {
            observers.push(Box::new(steadygrad::health::spike::SpikeStop::new(
                self.spike_threshold,
            )?));
        }
        if let Some(dir) = &self.tensorboard {
            let tb = TensorBoardLog::create(dir, m.spec())?;
            if !self.quiet {
                eprintln!("tensorboard: writing '{}'", tb.path().display());
            }
            observers.push(Box::new(tb));
            m.gather_histograms(true);
        }
        if let Some(path) = &self.report {
            *self.shown.borrow_mut() = Report {
                title: title.to_string(),
                command: command_line(),
                device: m.device(),
                model: report::model_summary(m.spec()),
                ..Report::default()
            };
            // Written now, before any training, so a path that cannot be written fails
            // the command at once rather than after the first epoch.
            self.shown
                .borrow()
                .write(path)
                .context("writing the --report page")?;
            observers.push(Box::new(ReportObserver::new(
                path,
                self.shown.clone(),
                m.spec(),
                cfg,
            )));
        }
        m.set_observer(Some(Box::new(Observers(observers))));
        Ok(bar)
    }

    /// After a `fit` that returned `error` (if any): writes the plots and the report when
    /// asked, and closes the log and the event file; a non-finite stop goes into the
    /// report with the op that produced it.
    pub fn finish_after(
        &self,
        m: &mut Model,
        label: &str,
        error: Option<&anyhow::Error>,
    ) -> Result<()> {
        let stopped = error.and_then(|e| e.downcast_ref::<NonFiniteError>());
        self.finish_with(m, label, stopped, &DetectorConfig::default())
    }

    fn finish_with(
        &self,
        m: &mut Model,
        label: &str,
        stopped: Option<&NonFiniteError>,
        cfg: &DetectorConfig,
    ) -> Result<()> {
        m.set_observer(None);
        if self.report.is_some() {
            let mut r = self.shown.borrow_mut();
            // The model's history is complete: records that arrived after the last epoch
            // (the one a non-finite stop ended) are in it too.
            r.stats = m.stats_history().to_vec();
            r.stopped = stopped.cloned();
            r.warnings = steadygrad::health::detect_run(m.spec(), &r.stats, &r.epochs, cfg);
            r.window = cfg.window;
            r.finished = true;
        }
        self.update_report(|_| {})?;
        if let Some(dir) = &self.plots {
            let files = plot::write_all(
                dir,
                &[Run {
                    label,
                    stats: m.stats_history(),
                }],
            )?;
            if !self.quiet {
                eprintln!("plots: {}", list(&files));
            }
        }
        if let (Some(path), false) = (&self.report, self.quiet) {
            eprintln!("report: {}", path.display());
        }
        Ok(())
    }

    /// Changes the report with `change` and rewrites it; nothing without `--report`.
    fn update_report(&self, change: impl FnOnce(&mut Report)) -> Result<()> {
        let Some(path) = &self.report else {
            return Ok(());
        };
        change(&mut self.shown.borrow_mut());
        self.shown
            .borrow()
            .write(path)
            .context("writing the --report page")
    }
}

pub(crate) fn list(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Thresholds of the detectors.
#[derive(clap::Args, Clone)]
struct DetectArgs {
    /// Statistics records a condition is judged over.
    #[arg(long, default_value_t = DetectorConfig::default().window)]
    window: usize,
    /// Vanishing when the first layer's ‖∇W‖ is below this fraction of the output layer's.
    #[arg(long, default_value_t = DetectorConfig::default().vanishing_ratio)]
    vanishing_ratio: f32,
    /// Exploding when the total gradient norm grows by this factor over the window.
    #[arg(long, default_value_t = DetectorConfig::default().exploding_factor)]
    exploding_factor: f32,
    /// Dying ReLU when this fraction of a layer's units is dead.
    #[arg(long, default_value_t = DetectorConfig::default().dead_fraction)]
    dead_fraction: f32,
    /// Saturation when this fraction of a sigmoid or tanh layer's outputs is saturated.
    #[arg(long, default_value_t = DetectorConfig::default().saturated_fraction)]
    saturated_fraction: f32,
    /// Loss spike when a batch loss is this many times the median of the records before it.
    #[arg(long, default_value_t = DetectorConfig::default().spike_factor)]
    spike_factor: f32,
    /// Rising validation loss when the last epoch's is this many times the best earlier one.
    #[arg(long, default_value_t = DetectorConfig::default().rising_factor)]
    rising_factor: f32,
}

impl DetectArgs {
    fn config(&self) -> Result<DetectorConfig> {
        let c = DetectorConfig {
            window: self.window,
            vanishing_ratio: self.vanishing_ratio,
            exploding_factor: self.exploding_factor,
            dead_fraction: self.dead_fraction,
            saturated_fraction: self.saturated_fraction,
            spike_factor: self.spike_factor,
            rising_factor: self.rising_factor,
        };
        c.validate()?;
        Ok(c)
    }
}

#[derive(clap::Args, Clone)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Spiral arms (classes) of the built-in data.
    #[arg(long, default_value_t = 3)]
    spiral_classes: usize,
    /// Points per spiral arm; 20% of them are held out for validation.
    #[arg(long, default_value_t = 300)]
    points: usize,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    detect: DetectArgs,
    /// Print a machine-readable summary (JSON) instead of the table.
    #[arg(long)]
    json: bool,
    /// Training steps of each remedy trial [default: as many as the diagnosis run, epochs
    /// × batches per epoch].
    #[arg(long, value_name = "N")]
    trial_steps: Option<usize>,
    /// Wall-clock budget in seconds for all remedy trials together; a trial that runs out
    /// of its share stops early and is marked cut short.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    trial_budget: f64,
    /// Do not try remedies: print the detectors' unmeasured suggestions instead.
    #[arg(long)]
    no_trials: bool,
}

#[derive(Serialize)]
struct EpochRow {
    epoch: usize,
    loss: f32,
    accuracy: Option<f32>,
    val_loss: Option<f32>,
    val_accuracy: Option<f32>,
    /// The regularization penalty apart from the data loss `loss`.
    #[serde(skip_serializing_if = "Option::is_none")]
    penalty: Option<f32>,
}

impl From<&EpochReport> for EpochRow {
    fn from(r: &EpochReport) -> Self {
        EpochRow {
            epoch: r.epoch,
            loss: r.train.loss,
            accuracy: r.train.accuracy,
            val_loss: r.valid.map(|v| v.loss),
            val_accuracy: r.valid.and_then(|v| v.accuracy),
            penalty: r.penalty,
        }
    }
}

#[derive(Serialize)]
struct ModelSummary {
    layer_sizes: Vec<usize>,
    activation: String,
    init: String,
    batch_norm: bool,
    residual_every: Option<usize>,
    lr: f32,
    batch: usize,
}

#[derive(Serialize)]
struct DiagnoseSummary<'a> {
    device: String,
    model: ModelSummary,
    epochs: Vec<EpochRow>,
    stopped: Option<NonFiniteError>,
    first: Option<&'a StepStats>,
    last: Option<&'a StepStats>,
    warnings: Vec<Warning>,
    healthy: bool,
    /// The remedies tried on this model and data, ranked; `None` when none were tried.
    trials: Option<&'a TrialReport>,
    /// The best measured remedy; `None` when none beat the unchanged model or none were
    /// tried.
    recommendation: Option<RecommendationJson<'a>>,
    /// The recommendation in words, or why no remedies were tried.
    advice: String,
}

#[derive(Serialize)]
struct RecommendationJson<'a> {
    label: &'a str,
    flags: &'a str,
    change: Option<Change>,
}

/// Runs `fit` and turns a non-finite stop into a finding rather than an error.
fn fit_catching(
    m: &mut Model,
    train: &data::Dataset,
    valid: &data::Dataset,
    opts: &FitOptions,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<(Vec<EpochReport>, Option<NonFiniteError>)> {
    let mut reports = Vec::new();
    let result = m.fit(train, Some(valid), opts, |r| {
        on_epoch(r);
        reports.push(r.clone());
    });
    match result {
        Ok(_) => Ok((reports, None)),
        Err(e) => match e.downcast_ref::<NonFiniteError>() {
            Some(nf) => Ok((reports, Some(nf.clone()))),
            None => Err(e),
        },
    }
}

pub fn diagnose(args: &DiagnoseArgs, choice: &BackendChoice) -> Result<()> {
    let cfg = args.detect.config()?;
    anyhow::ensure!(args.epochs >= 1, "--epochs must be at least 1");
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(
        args.run.stats_every != Some(0),
        "diagnose needs statistics: --stats-every must be at least 1"
    );
    let (train, valid, _) =
        args.data
            .train_valid(args.model.seed, args.points, args.spiral_classes, None)?;
    let (input, output) = (train.input_dim, train.classes.unwrap_or(train.target_dim));
    let loss = if train.classes.is_some() {
        Loss::SoftmaxCrossEntropy
    } else {
        Loss::MeanSquaredError
    };
    let span = Span::new(args.epochs, train.rows, args.batch, false);
    let spec = spec_from(&args.model, input, output, span)?.loss(loss);
    let trial_options = TrialOptions {
        steps: args
            .trial_steps
            .unwrap_or(args.epochs * train.rows.div_ceil(args.batch)),
        batch_size: args.batch,
        shuffle_seed: args.model.seed,
        stats_every: args.run.stats_every.unwrap_or(5),
        budget: trial_budget(args.trial_budget)?,
        ..TrialOptions::default()
    };
    anyhow::ensure!(trial_options.steps >= 1, "--trial-steps must be at least 1");
    let mut make = engine_factory(choice)?;
    let mut m = Model::new(spec.clone(), make()?)?;
    let opts = FitOptions {
        epochs: args.epochs,
        batch_size: args.batch,
        shuffle_seed: args.model.seed,
        drop_last: false,
    };
    let quiet = args.json;
    if !quiet {
        println!("device: {}", m.device());
        println!(
            "model: {} → {} hidden × {} ({}, init {}{}) → {}, {}, batch {}; {} epochs on {} training rows",
            spec.input,
            args.model.depth,
            args.model.width,
            spec.activation,
            spec.init,
            if spec.has_batch_norm() { ", batch norm" } else { "" },
            spec.output,
            spec.optimizer,
            args.batch,
            args.epochs,
            train.rows
        );
    }
    let run = RunArgs {
        quiet: args.run.quiet || args.json,
        ..args.run.clone()
    };
    let bar = run.attach_with(&mut m, 5, "diagnose", cfg.clone())?;
    let result = fit_catching(&mut m, &train, &valid, &opts, |r| {
        if !quiet {
            bar.suspend(|| print_epoch(r));
        }
    });
    bar.finish_and_clear();
    let stopped_early = result.as_ref().ok().and_then(|(_, s)| s.as_ref());
    run.finish_with(&mut m, "diagnose", stopped_early, &cfg)?;
    let (reports, stopped) = result?;
    let history = m.stats_history();
    let warnings = steadygrad::health::detect_run(m.spec(), m.stats_history(), &reports, &cfg);
    let healthy = warnings.is_empty() && stopped.is_none();
    if !args.json {
        print_findings(history, &warnings, stopped.as_ref(), &cfg, args.no_trials)?;
    }
    let trials = if healthy || args.no_trials {
        None
    } else {
        let mut remedies = remedy::candidates(&spec);
        let kinds: Vec<_> = warnings.iter().map(|w| w.kind).collect();
        remedies.extend(remedy::schedule_candidates(
            &spec,
            &kinds,
            valid.rows > 0,
            args.epochs,
        ));
        let n = remedies.len() + 1;
        let mut i = 0;
        let talk = !quiet && !args.run.quiet;
        if talk {
            eprintln!(
                "\ntrying {} remedies against the unchanged model, {} steps each (budget {} s)",
                remedies.len(),
                trial_options.steps,
                args.trial_budget
            );
        }
        Some(remedy::run_trials(
            &spec,
            &remedies,
            &train,
            Some(&valid),
            &trial_options,
            &mut make,
            |t| {
                i += 1;
                if talk {
                    eprintln!("[{i}/{n}] {}", trial_line(t));
                }
            },
        )?)
    };
    if trials.is_some() {
        run.update_report(|r| r.trials = trials.clone())?;
    }
    let advice = match &trials {
        Some(r) => r.recommendation(),
        None if args.no_trials => "no remedies tried (--no-trials)".to_string(),
        None => "no problem found, so no remedies were tried".to_string(),
    };
    if args.json {
        let summary = DiagnoseSummary {
            device: m.device(),
            model: ModelSummary {
                layer_sizes: spec.layer_sizes(),
                activation: spec.activation.to_string(),
                init: spec.init.to_string(),
                batch_norm: spec.has_batch_norm(),
                residual_every: spec.residual_every,
                lr: spec.optimizer.lr(),
                batch: args.batch,
            },
            epochs: reports.iter().map(EpochRow::from).collect(),
            healthy,
            stopped,
            first: history.first(),
            last: history.last(),
            warnings,
            recommendation: trials
                .as_ref()
                .and_then(|r| r.best())
                .map(|t| RecommendationJson {
                    label: &t.label,
                    flags: &t.flags,
                    change: t.change,
                }),
            trials: trials.as_ref(),
            advice,
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    if let Some(r) = &trials {
        println!(
            "\nremedy trials: the unchanged model and {} remedies, {} steps each from the same \
             seed on the same batches, ranked by {}; {:.1} s (budget {} s)",
            r.trials.len() - 1,
            r.steps,
            r.measure.name(),
            r.seconds,
            args.trial_budget
        );
        print!("{}", r.table());
        for t in r.trials.iter().filter(|t| t.error.is_some()) {
            println!(
                "- {} failed: {}",
                t.label,
                t.error.as_deref().unwrap_or_default()
            );
        }
        println!("\nrecommendation: {advice}");
    } else if healthy {
        println!("{advice}");
    }
    Ok(())
}

fn trial_budget(seconds: f64) -> Result<std::time::Duration> {
    anyhow::ensure!(
        seconds.is_finite() && seconds > 0.0,
        "--trial-budget must be a finite number of seconds > 0, got {seconds}"
    );
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// A trial's figures in one line, for progress.
fn trial_line(t: &Trial) -> String {
    let what = if let Some(d) = &t.diverged {
        format!("NaN at step {}", d.step)
    } else if let Some(e) = &t.error {
        format!("failed: {e}")
    } else if t.steps == 0 {
        "skipped: the budget is spent".to_string()
    } else {
        let acc = t
            .val_accuracy
            .map_or(String::new(), |a| format!(", val acc {:.1}%", 100.0 * a));
        format!(
            "loss {:.4}{acc}, {} steps{}",
            t.loss_end.unwrap_or(f32::NAN),
            t.steps,
            if t.cut_short { " (cut short)" } else { "" }
        )
    };
    format!("{}: {what} ({:.1} s)", t.label, t.seconds)
}

/// The last record's per-layer table and the detectors' findings. Their suggested
/// remedies are shown only when no trials will measure them.
fn print_findings(
    history: &[StepStats],
    warnings: &[Warning],
    stopped: Option<&NonFiniteError>,
    cfg: &DetectorConfig,
    unmeasured: bool,
) -> Result<()> {
    if let Some(nf) = stopped {
        println!("\nstopped: {nf}");
    }
    let Some(last) = history.last() else {
        anyhow::bail!("no statistics were gathered: training stopped before the first one arrived");
    };
    println!(
        "\nper-layer health at step {} (batch loss {:.4}; ‖∇W₀‖/‖∇Wₗ‖ = {}):",
        last.step,
        last.loss,
        last.first_last_ratio()
            .map_or("-".to_string(), |r| format!("{r:.2e}"))
    );
    print!("{}", layer_table(last));
    println!();
    if warnings.is_empty() && stopped.is_none() {
        println!(
            "verdict: healthy — the loss fell, no loss spikes, no vanishing or exploding \
             gradients, dead or saturated units over \
             the last {} statistics records",
            cfg.window.min(history.len())
        );
    } else {
        let n = warnings.len().max(1);
        println!("verdict: {n} problem{}", if n == 1 { "" } else { "s" });
        for w in warnings {
            if unmeasured {
                println!("- {w}");
            } else {
                println!(
                    "- {} in {}: {}",
                    w.kind.name(),
                    layer_list(&w.layers),
                    w.evidence
                );
            }
        }
        if unmeasured && warnings.iter().any(|w| !w.remedies.is_empty()) {
            println!("(suggestions, not measured on this model: drop --no-trials to try each one)");
        }
    }
    Ok(())
}
