//! The training loop. Each step: take the step's batch, sample the step's
//! architectures, accumulate their gradients, take one optimizer step, log,
//! and (at epoch ends and every `checkpoint_every` steps) validate and
//! checkpoint.

use super::checkpoint::{self, Checkpointer, TrainState};
use super::data::load_test;
use super::data_parallel::DataParallel;
use super::flat::FlatWeights;
use super::gradient::{self, Agreement};
use super::loss;
use super::optim::{lr_at, AdamW};
use super::recipe::{NonFinite, Recipe};
use super::step::{accumulate_groups, Batch, Input, Params, Path as StepPath, StepLosses};
use super::summary::{EvalSplit, Reported, Summary};
use super::trainee::{RunKind, Trainee};
use super::{standalone, step_rng, RunOptions, CHECKPOINT_FILE, METRICS_FILE};
use crate::data::batch::{epoch_order, make_batch_part, Normalize};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalResult};
use crate::space::{flops, Arch, Space};
use candle_core::{Device, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A checkpoint to continue from: its tensors and its state.
pub(crate) type Restore = (HashMap<String, Tensor>, TrainState);

/// Trains `kind` with `recipe` in `recipe.output_dir` (prepared by
/// [`super::session`]), from scratch or from `restore`.
pub(crate) fn run(
    recipe: &Recipe,
    space: &Space,
    kind: RunKind,
    train: &Dataset,
    val: &Dataset,
    restore: Option<Restore>,
    opts: &RunOptions,
) -> Result<Summary> {
    let dir = recipe.output_dir.as_path();
    let norm = recipe
        .data
        .normalize
        .clone()
        .expect("resolved recipe has normalisation");
    // A resumed standalone run's weights come from its checkpoint.
    let origin = restore
        .as_ref()
        .map(|_| standalone::Init::Scratch(recipe.init));
    let (trainee, params) = Trainee::build(&kind, space, recipe, origin)?;
    let schedule = Schedule::new(recipe, train)?;
    // Several ranks (mpirun): each its shard of every batch; rank 0 alone
    // writes. One rank: nothing changes.
    let mut dp = DataParallel::new(opts.collective, recipe)?;
    let root = dp.is_root();
    let mut opt = AdamW::new(&params.names, &params.sizes(), recipe.optimizer.clone());
    let mut state = TrainState {
        step: 0,
        adam_t: 0,
        skipped_steps: 0,
        agreement: None,
        total_steps: schedule.total,
        recipe: recipe.name.clone(),
        arch: match &kind {
            RunKind::Supernet => None,
            RunKind::Standalone { arch, .. } => Some(arch.clone()),
        },
    };
    // The step of the last checkpoint on disk (a resumed run starts from one).
    let mut last_checkpoint = None;
    match restore {
        Some((tensors, st)) => {
            let path = dir.join(CHECKPOINT_FILE);
            schedule.check_resumable(&path, &st, recipe)?;
            checkpoint::restore(&path, &tensors, &params, &mut opt)?;
            opt.t = st.adam_t;
            last_checkpoint = Some(st.step);
            state = st;
        }
        None => {
            if let (Some(spec), RunKind::Supernet) = (&recipe.init_from, &kind) {
                let say = opts.progress && root;
                init_from_pretrained(spec, root.then_some(dir), &params, space, say)?;
            }
        }
    }
    // One owner of the weights between steps: the engine's flat buffers,
    // updated in place by the optimizer. candle's variables are refreshed
    // from them only when candle reads them (validation, checkpoints, the
    // end). Models the engine does not run train through candle's autograd.
    let mut flat = FlatWeights::new(&params, trainee.net())?;
    let distill = loss::from_config(&recipe.loss.distill);
    let ckpt = Checkpointer {
        dir,
        recipe,
        space,
        norm: &norm,
    };
    let metrics = Metrics(root.then(|| dir.join(METRICS_FILE)));
    let end = opts
        .max_steps
        .or(recipe.train.max_steps)
        .map_or(schedule.total, |m| m.min(schedule.total));
    let mut progress = Progress::new(opts.progress && root, &schedule, state.step, recipe);
    let shard = dp.shard(recipe.train.batch_size);
    let mut batches = Batches::new(train, &norm, recipe, shard);
    if dp.size() > 1 {
        dp.check_weights(state.step, &flat.values(&params)?)?;
    }
    let first_step = state.step;
    let started = Instant::now();
    let strategy = gradient::from_config(&recipe.gradient);
    // One set of gradient buffers per group of the strategy; group 0 holds
    // the update after `combine`.
    let mut groups = vec![params.zero_grads()];
    let mut last_val = Vec::new();
    let mut interrupted = false;
    while state.step < end {
        let step = state.step;
        let epoch = step / schedule.steps_per_epoch;
        let mut rng = step_rng(recipe.seed, step);
        // The batch draws its augmentation from the step's RNG first, then
        // the sampler draws the step's architectures from it.
        let (x, y) = batches.get(step, &mut rng)?;
        let plan = trainee.plan(space, step, &mut rng);
        let group_of = strategy.groups(&plan);
        let n_groups = group_of.iter().max().map_or(1, |g| g + 1);
        while groups.len() < n_groups {
            groups.push(params.zero_grads());
        }
        for g in &mut groups[..n_groups] {
            g.iter_mut().for_each(|g| g.fill(0.0));
        }
        let path = match &flat.engine {
            Some((weights, config)) => StepPath::Engine { weights, config },
            None => StepPath::Autograd {
                net: trainee.net(),
                params: &params,
            },
        };
        let batch = Batch {
            input: Input::Images(&x),
            labels: &y,
            label_smoothing: recipe.loss.label_smoothing,
            distill: distill.as_deref(),
        };
        let out = {
            let mut targets: Vec<&mut [Vec<f32>]> =
                groups[..n_groups].iter_mut().map(|g| &mut g[..]).collect();
            accumulate_groups(path, &plan, batch, &group_of, &mut targets)?
        };
        let subnets = plan.archs.len();
        let (out, agreed_stop) =
            dp.reduce_step(out, &mut groups[..n_groups], subnets, opts.stop)?;
        let lr = schedule.lr(step, recipe);
        match out.nonfinite {
            Some(k) => {
                let arch = &plan.archs[k];
                on_nonfinite(recipe, &metrics, &mut state, &out, k, arch, last_checkpoint)?;
            }
            None => {
                if let Some(a) = strategy.combine(&mut groups[..n_groups], epoch) {
                    state
                        .agreement
                        .get_or_insert_with(Agreement::default)
                        .add(&a);
                }
                let grad_norm = flat.optimizer_step(&mut opt, &params, &groups[0], lr)?;
                state.adam_t = opt.t;
                let flops: Vec<u64> = plan.archs.iter().map(|a| flops(space, a)).collect();
                metrics.line(json!({
                    "step": step + 1, "epoch": epoch, "lr": lr, "losses": out.losses,
                    "flops": flops, "grad_norm": grad_norm,
                }))?;
            }
        }
        state.step += 1;
        progress.step(state.step, end, epoch, &out, lr);
        let epoch_end = state.step.is_multiple_of(schedule.steps_per_epoch);
        if epoch_end {
            flat.sync(&params)?;
            // How the step's gradient groups agreed over the epoch.
            let agreement = state.agreement.take().map(|a| {
                let mut r = a.report();
                r["strategy"] = json!(recipe.gradient);
                r
            });
            if root {
                last_val = validate(
                    &trainee,
                    space,
                    val,
                    &norm,
                    recipe,
                    &metrics,
                    (state.step, epoch),
                    agreement,
                    &progress,
                )?;
            }
        }
        let stop = agreed_stop.unwrap_or_else(|| opts.stop.load(Ordering::SeqCst));
        if epoch_end
            || state.step.is_multiple_of(recipe.train.checkpoint_every)
            || stop
            || state.step == end
        {
            flat.sync(&params)?;
            if root {
                ckpt.save(&trainee, &params, &opt, &state)?;
            }
            last_checkpoint = Some(state.step);
            if dp.size() > 1 {
                dp.check_weights(state.step, &flat.values(&params)?)?;
            }
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    progress.finish();
    flat.sync(&params)?;
    let mut summary = Summary::new(dir.to_path_buf());
    summary.steps = state.step;
    summary.total_steps = schedule.total;
    summary.skipped_steps = state.skipped_steps;
    summary.wall_s = started.elapsed().as_secs_f64();
    summary.interrupted = interrupted;
    summary.data_parallel = dp.report(state.step - first_step);
    for (which, r) in last_val {
        summary.set(EvalSplit::Val, which, r);
    }
    if state.step == schedule.total && !interrupted && root {
        test(&trainee, space, recipe, &norm, &metrics, &mut summary, opts)?;
    }
    Ok(summary)
}

/// Steps per epoch, total steps, warmup and peak learning rate of a run.
struct Schedule {
    steps_per_epoch: usize,
    total: usize,
    warmup: usize,
    peak: f64,
}

impl Schedule {
    fn new(recipe: &Recipe, train: &Dataset) -> Result<Self> {
        let bs = recipe.train.batch_size;
        let spe = train.len() / bs;
        if spe == 0 {
            return Err(Error::Data {
                source_name: train.source.clone(),
                message: format!("{} training examples make no batch of {bs}", train.len()),
            });
        }
        let total = recipe
            .train
            .epochs
            .checked_mul(spe)
            .ok_or_else(|| Error::InvalidRecipe {
                file: format!("recipe `{}`", recipe.name),
                field: "train.epochs".into(),
                message: format!(
                    "{} epochs of {spe} steps overflow the step count",
                    recipe.train.epochs
                ),
            })?;
        Ok(Schedule {
            steps_per_epoch: spe,
            total,
            warmup: (recipe.optimizer.warmup_epochs * spe as f64).round() as usize,
            peak: recipe.peak_lr(),
        })
    }

    fn lr(&self, step: usize, recipe: &Recipe) -> f64 {
        lr_at(step, self.total, self.warmup, self.peak, &recipe.optimizer)
    }

    /// Refuses a checkpoint whose state cannot belong to this run.
    fn check_resumable(&self, path: &Path, st: &TrainState, recipe: &Recipe) -> Result<()> {
        if st.step > self.total || st.total_steps != self.total || st.adam_t > st.step as u64 {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "state step {} of {} total (Adam count {}) does not fit this run's {} steps ({} epochs of {}): the checkpoint is not this run's",
                    st.step, st.total_steps, st.adam_t, self.total, recipe.train.epochs, self.steps_per_epoch
                ),
            });
        }
        Ok(())
    }
}

/// The batches of a run: a seeded order per epoch, augmentation per step;
/// this rank's `shard` of each (all of it with one rank).
struct Batches<'a> {
    train: &'a Dataset,
    norm: &'a Normalize,
    recipe: &'a Recipe,
    order: Option<(usize, Vec<usize>)>,
    shard: std::ops::Range<usize>,
}

impl<'a> Batches<'a> {
    fn new(
        train: &'a Dataset,
        norm: &'a Normalize,
        recipe: &'a Recipe,
        shard: std::ops::Range<usize>,
    ) -> Self {
        Batches {
            train,
            norm,
            recipe,
            order: None,
            shard,
        }
    }

    /// Images and labels of this rank's shard of step `step`.
    fn get(&mut self, step: usize, rng: &mut rand::rngs::StdRng) -> Result<(Tensor, Tensor)> {
        let bs = self.recipe.train.batch_size;
        let spe = self.train.len() / bs;
        let (epoch, pos) = (step / spe, step % spe);
        if self.order.as_ref().map(|o| o.0) != Some(epoch) {
            self.order = Some((
                epoch,
                epoch_order(self.train.len(), self.recipe.seed, epoch),
            ));
        }
        let order = &self.order.as_ref().expect("set above").1;
        make_batch_part(
            self.train,
            &order[pos * bs..(pos + 1) * bs],
            self.shard.clone(),
            self.norm,
            Some((&self.recipe.data.augment, rng)),
            &Device::Cpu,
        )
    }
}

/// Appends JSON lines to a run's metrics.jsonl (none on ranks other than 0).
struct Metrics(Option<PathBuf>);

impl Metrics {
    fn line(&self, v: serde_json::Value) -> Result<()> {
        let Some(path) = &self.0 else {
            return Ok(());
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        writeln!(f, "{v}").map_err(|e| Error::io(path, e))
    }
}

/// A progress bar on a terminal, plain log lines otherwise, or silence.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    log: bool,
    log_every: usize,
    total: usize,
    started: Instant,
    images: usize,
    batch: usize,
}

impl Progress {
    fn new(show: bool, schedule: &Schedule, step: usize, recipe: &Recipe) -> Self {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(schedule.total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
                )
                .expect("valid template"),
            );
            b.set_position(step as u64);
            b
        });
        Progress {
            bar,
            log: show,
            log_every: recipe.train.log_every,
            total: schedule.total,
            started: Instant::now(),
            images: 0,
            batch: recipe.train.batch_size,
        }
    }

    fn step(&mut self, done: usize, end: usize, epoch: usize, out: &StepLosses, lr: f64) {
        self.images += self.batch;
        let rate = self.images as f64 / self.started.elapsed().as_secs_f64();
        let loss0 = out.losses.first().copied().unwrap_or(f32::NAN);
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            b.set_message(format!(
                "epoch {} loss {loss0:.4} lr {lr:.2e} {rate:.0} img/s",
                epoch + 1
            ));
        } else if self.log && (done.is_multiple_of(self.log_every) || done == end) {
            eprintln!(
                "step {done}/{} epoch {} loss {loss0:.4} lr {lr:.2e} {rate:.0} img/s",
                self.total,
                epoch + 1
            );
        }
    }

    fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None if self.log => eprintln!("{msg}"),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Loads a pretrained Hugging Face ViT into the supernet's leading slices
/// and records what was loaded in `dir`'s `init-report.txt` (rank 0's; the
/// other ranks of a data-parallel run load the same weights, silently).
fn init_from_pretrained(
    spec: &str,
    dir: Option<&Path>,
    params: &Params,
    space: &Space,
    progress: bool,
) -> Result<()> {
    let model_dir = crate::hub::resolve(spec)?;
    let report = crate::hub::load_vit_into(params, &model_dir, space.supernet.head_dim)?;
    let Some(dir) = dir else {
        return Ok(());
    };
    let path = dir.join("init-report.txt");
    std::fs::write(&path, report.to_string()).map_err(|e| Error::io(&path, e))?;
    if progress {
        eprint!("init from {}: {report}", model_dir.display());
    }
    Ok(())
}

/// A step whose loss was NaN or infinite: stop the run, or skip the step.
fn on_nonfinite(
    recipe: &Recipe,
    metrics: &Metrics,
    state: &mut TrainState,
    out: &StepLosses,
    k: usize,
    arch: &Arch,
    last_checkpoint: Option<usize>,
) -> Result<()> {
    let step = state.step;
    let which = format!("subnet {k} of the step ({:?})", arch.to_json());
    match recipe.train.on_nonfinite_loss {
        NonFinite::Stop => {
            metrics.line(
                json!({"step": step + 1, "nonfinite_loss": out.losses[k], "stopped": true}),
            )?;
            Err(Error::NonFiniteLoss {
                step: step + 1,
                which,
                value: out.losses[k],
                kept: match last_checkpoint {
                    Some(s) => format!("the checkpoint of step {s} is kept"),
                    None => "no checkpoint was written yet".into(),
                },
            })
        }
        NonFinite::Skip => {
            state.skipped_steps += 1;
            tracing::warn!(
                "step {}: non-finite loss in {which}; step skipped",
                step + 1
            );
            metrics.line(json!({
                "step": step + 1, "skipped": true, "nonfinite_loss": out.losses[k],
                "skipped_steps": state.skipped_steps,
            }))
        }
    }
}

/// Accuracy of the reported architectures on the validation split, logged
/// to metrics.jsonl (with the epoch's gradient agreement, when the
/// strategy measures it) and the progress display.
#[allow(clippy::too_many_arguments)]
fn validate(
    trainee: &Trainee,
    space: &Space,
    val: &Dataset,
    norm: &Normalize,
    recipe: &Recipe,
    metrics: &Metrics,
    (step, epoch): (usize, usize),
    gradient: Option<serde_json::Value>,
    progress: &Progress,
) -> Result<Vec<(Reported, EvalResult)>> {
    let mut line = json!({"step": step, "epoch_end": epoch + 1});
    if let Some(g) = gradient {
        line["gradient"] = g;
    }
    let mut msg = format!("epoch {} val acc", epoch + 1);
    let mut out = Vec::new();
    for (which, arch) in trainee.reported(space) {
        let model = trainee.inference_model(&arch)?;
        let r = evaluate(val, norm, recipe.data.eval_batch_size, &Device::Cpu, |x| {
            model.logits(x)
        })?;
        line[format!("val_{}", which.name())] = json!(r);
        msg += &format!(" {} {:.4}", which.name(), r.accuracy);
        out.push((which, r));
    }
    metrics.line(line)?;
    progress.println(&msg);
    Ok(out)
}

/// Test accuracy of the reported architectures at the end of a run; when
/// the test split cannot be used, the summary and metrics say why.
fn test(
    trainee: &Trainee,
    space: &Space,
    recipe: &Recipe,
    norm: &Normalize,
    metrics: &Metrics,
    summary: &mut Summary,
    opts: &RunOptions,
) -> Result<()> {
    let test = match load_test(recipe, space) {
        Ok(t) => t,
        Err(e) => {
            let note = format!("no test results: the test split could not be used: {e}");
            tracing::warn!("{note}");
            if opts.progress {
                eprintln!("{note}");
            }
            metrics.line(json!({"step": summary.steps, "final_test_error": note}))?;
            summary.test_error = Some(note);
            return Ok(());
        }
    };
    let mut line = json!({"step": summary.steps});
    for (which, arch) in trainee.reported(space) {
        let model = trainee.inference_model(&arch)?;
        let r = evaluate(
            &test,
            norm,
            recipe.data.eval_batch_size,
            &Device::Cpu,
            |x| model.logits(x),
        )?;
        line[format!("final_test_{}", which.name())] = json!(r);
        summary.set(EvalSplit::Test, which, r);
    }
    metrics.line(line)
}
