//! The `experiment` command: the vanishing-gradient comparison on the user's data.

use super::args::DataArgs;
use super::health::list;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use steadygrad::cpu::CpuEngine;
use steadygrad::engine::Engine;
use steadygrad::gpu::{AdapterSelection, GpuContext, GpuEngine};
use steadygrad::health::experiment::{self, ExperimentOptions};
use steadygrad::health::plot::{self, Run};
use steadygrad::health::report::ExperimentReport;
use steadygrad::BackendChoice;

#[derive(clap::Subcommand, Clone)]
pub enum ExperimentKind {
    /// The same deep MLP trained on --data (or the built-in spirals) with sigmoid and
    /// N(0,1) init, tanh and Glorot, ReLU, ELU and SELU with their inits, sigmoid with
    /// batch norm and with skip connections, and ReLU at a high learning rate with and
    /// without clipping. Each configuration's claim from the literature is checked against
    /// what it did: gradient ratios, final loss, accuracy and verdicts side by side, and
    /// plots.
    Vanishing(VanishingArgs),
}

#[derive(clap::Args, Clone)]
pub struct VanishingArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Hidden layers.
    #[arg(long, default_value_t = ExperimentOptions::default().depth)]
    depth: usize,
    /// Units per hidden layer.
    #[arg(long, default_value_t = ExperimentOptions::default().width)]
    width: usize,
    #[arg(long, default_value_t = ExperimentOptions::default().batch)]
    batch: usize,
    #[arg(long, default_value_t = ExperimentOptions::default().epochs)]
    epochs: usize,
    /// Without --data: spiral points per class (3 classes); 20% are held out for
    /// validation.
    #[arg(long, default_value_t = 200)]
    points: usize,
    /// Learning rate of SGD.
    #[arg(long, default_value_t = ExperimentOptions::default().lr)]
    lr: f32,
    /// Learning-rate multiplier of the high-learning-rate runs.
    #[arg(long, default_value_t = ExperimentOptions::default().high_lr_scale)]
    high_lr_scale: f32,
    #[arg(long, default_value_t = ExperimentOptions::default().stats_every)]
    stats_every: usize,
    /// Seed for weights, the validation split and shuffling.
    #[arg(long, default_value_t = ExperimentOptions::default().seed)]
    seed: u64,
    /// Directory for the plots (SVG and PNG).
    #[arg(long, value_name = "DIR", default_value = "vanishing-plots")]
    plots: PathBuf,
    /// Skip the plots.
    #[arg(long)]
    no_plots: bool,
    /// Also write the table and verdicts as Markdown to FILE, with the command line, commit
    /// and device (atomic).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Write the experiment as one self-contained HTML page to FILE: the table, the claims,
    /// and each configuration's batch loss and gradient heatmap on one colour scale.
    /// Rewritten after every configuration.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print a machine-readable summary (JSON) instead of the table.
    #[arg(long)]
    json: bool,
    /// No per-configuration progress lines.
    #[arg(long, short)]
    quiet: bool,
}

pub(crate) type EngineFactory = Box<dyn FnMut() -> Result<Box<dyn Engine>>>;

/// Engines for several models on one device, opened once.
pub(crate) fn engine_factory(choice: &BackendChoice) -> Result<EngineFactory> {
    let gpu = |ctx: Arc<GpuContext>| -> EngineFactory {
        Box::new(move || Ok(Box::new(GpuEngine::new(ctx.clone())) as Box<dyn Engine>))
    };
    let cpu =
        || -> EngineFactory { Box::new(|| Ok(Box::new(CpuEngine::new()) as Box<dyn Engine>)) };
    Ok(match choice {
        BackendChoice::Cpu => cpu(),
        BackendChoice::Gpu(sel) => gpu(Arc::new(GpuContext::new(sel)?)),
        BackendChoice::Auto => match GpuContext::new(&AdapterSelection::default()) {
            Ok(ctx) => gpu(Arc::new(ctx)),
            Err(e) => {
                eprintln!("{e:#}; running on the CPU backend instead");
                cpu()
            }
        },
    })
}

#[derive(Serialize)]
struct ExperimentSummary<'a> {
    device: String,
    data: String,
    options: &'a ExperimentOptions,
    outcomes: &'a [experiment::Outcome],
    verdicts: &'a [experiment::Verdict],
    plots: Vec<PathBuf>,
    markdown: Option<&'a PathBuf>,
}

fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
}

/// The short hash of the checkout the command runs in, for the Markdown table's
/// provenance, marked when tracked files differ from it (the table may then come from code
/// no commit holds); "unknown" outside a git checkout.
fn git_commit() -> String {
    match git(&["rev-parse", "--short", "HEAD"]).filter(|s| !s.is_empty()) {
        Some(hash) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{hash} + uncommitted changes"),
            _ => hash,
        },
        None => "unknown".to_string(),
    }
}

/// The command line as typed, quoted where a shell would need it.
pub(crate) fn command_line() -> String {
    let mut args = std::env::args();
    // The program path differs between machines; its name does not.
    let program = args
        .next()
        .map(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map_or(p.clone(), |n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "steadygrad".to_string());
    std::iter::once(program)
        .chain(args.map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        }))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn experiment(which: &ExperimentKind, choice: &BackendChoice) -> Result<()> {
    let ExperimentKind::Vanishing(a) = which;
    let opts = ExperimentOptions {
        depth: a.depth,
        width: a.width,
        batch: a.batch,
        epochs: a.epochs,
        lr: a.lr,
        high_lr_scale: a.high_lr_scale,
        stats_every: a.stats_every,
        seed: a.seed,
    };
    opts.validate()?;
    let (train, valid, _) = a.data.train_valid(a.seed, a.points, 3, None)?;
    let data = match &a.data.data {
        Some(path) => format!(
            "{} ({} training rows{}, {} validation rows, {} features, {})",
            path.display(),
            train.rows,
            if a.data.no_standardize {
                ""
            } else {
                ", standardized"
            },
            valid.rows,
            train.input_dim,
            train
                .classes
                .map_or("regression".to_string(), |c| format!("{c} classes"))
        ),
        None => format!(
            "built-in spirals ({} training and {} validation points, 3 classes)",
            train.rows, valid.rows
        ),
    };
    let configs = experiment::vanishing_configs(opts.high_lr_scale);
    let mut make = engine_factory(choice)?;
    let device = make()?.describe();
    let talk = !a.quiet && !a.json;
    if talk {
        eprintln!("device: {device}");
        eprintln!("data: {data}");
        eprintln!(
            "{} configurations of {} → {} hidden × {} → {}, batch {}, {} epochs, SGD lr {}",
            configs.len(),
            train.input_dim,
            a.depth,
            a.width,
            train.classes.unwrap_or(train.target_dim),
            a.batch,
            a.epochs,
            a.lr
        );
    }
    let n = configs.len();
    let setup = format!(
        "{} → {} hidden × {} → {}, batch {}, {} epochs, SGD lr {} (×{} for the high-rate runs), \
         statistics every {} steps, seed {}",
        train.input_dim,
        a.depth,
        a.width,
        train.classes.unwrap_or(train.target_dim),
        a.batch,
        a.epochs,
        a.lr,
        a.high_lr_scale,
        a.stats_every,
        a.seed
    );
    let write_page = |outcomes: &[experiment::Outcome]| -> Result<()> {
        let Some(path) = &a.report else {
            return Ok(());
        };
        let verdicts = experiment::verdicts(&configs, outcomes);
        ExperimentReport {
            command: command_line(),
            device: device.clone(),
            data: data.clone(),
            setup: setup.clone(),
            planned: n,
            outcomes,
            verdicts: &verdicts,
        }
        .write(path)
        .context("writing the --report page")
    };
    // Before the first configuration, so a path that cannot be written fails at once.
    write_page(&[])?;
    let mut done = Vec::new();
    let mut page_error = None;
    let mut i = 0;
    let clock = std::time::Instant::now();
    let outcomes = experiment::run(&opts, &configs, &train, &valid, &mut make, |o| {
        if a.report.is_some() && page_error.is_none() {
            done.push(o.clone());
            page_error = write_page(&done).err();
        }
        i += 1;
        if talk {
            let end = match &o.diverged {
                Some(d) => format!("stopped at step {}: non-finite values", d.step),
                None => format!(
                    "loss {:.4}, val acc {:.1}%",
                    o.final_loss.unwrap_or(f32::NAN),
                    100.0 * o.accuracy.unwrap_or(f32::NAN)
                ),
            };
            eprintln!("[{i}/{n}] {}: {end} ({:.1} s)", o.label, o.seconds);
        }
    })?;
    let seconds = clock.elapsed().as_secs_f64();
    if let Some(e) = page_error {
        return Err(e);
    }
    write_page(&outcomes)?;
    let verdicts = experiment::verdicts(&configs, &outcomes);
    let files = if a.no_plots {
        Vec::new()
    } else {
        let runs: Vec<Run> = outcomes
            .iter()
            .map(|o| Run {
                label: &o.label,
                stats: &o.stats,
            })
            .collect();
        plot::write_all(&a.plots, &runs)
            .with_context(|| format!("plots in '{}'", a.plots.display()))?
    };
    if let Some(path) = &a.markdown {
        let from = experiment::Provenance {
            command: command_line(),
            commit: git_commit(),
            device: device.clone(),
            data: data.clone(),
        };
        let mut md = experiment::markdown(&opts, &outcomes, &verdicts, &from);
        md.push_str(&format!(
            "\nAll {n} configurations took {seconds:.0} s in total.\n"
        ));
        steadygrad::checkpoint::write_atomic(path, md.as_bytes())
            .context("writing the --markdown table")?;
    }
    if a.json {
        let summary = ExperimentSummary {
            device,
            data,
            options: &opts,
            outcomes: &outcomes,
            verdicts: &verdicts,
            plots: files,
            markdown: a.markdown.as_ref(),
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!();
    print!("{}", experiment::table(&outcomes, &verdicts));
    if !files.is_empty() {
        println!("\nplots: {}", list(&files));
    }
    if let Some(path) = &a.markdown {
        println!("markdown: {}", path.display());
    }
    if let Some(path) = &a.report {
        println!("report: {}", path.display());
    }
    Ok(())
}
