//! The one training loop, for every modality (a [`TrainTask`] supplies
//! the batches, the evaluation and the checkpoint files). Each step: take
//! the step's batch, sample the step's architectures, accumulate their
//! gradients, take one optimizer step, log, and (at epoch ends and every
//! `checkpoint_every` steps) validate and checkpoint; at the end of a
//! finished run, test.

use super::checkpoint::{self, TrainState};
use super::data_parallel::DataParallel;
use super::flat::FlatWeights;
use super::gradient::{self, Agreement};
use super::loss;
use super::optim::{lr_at, AdamW};
use super::recipe::{NonFinite, Recipe};
use super::step::{
    accumulate_groups, diagnose_subnets, Batch, Params, Path as StepPath, StepLosses,
};
use super::summary::{EvalSplit, Reported, Summary};
use super::task::{Metrics, Restore, TrainTask};
use super::teacher::FixedTeacher;
use super::{step_rng, RunOptions, CHECKPOINT_FILE, METRICS_FILE};
use crate::data::batch::epoch_order;
use crate::error::{Error, Result};
use crate::space::{flops, Arch, Space};
use crate::train::eval::EvalResult;
use serde_json::json;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Trains `task`'s model, whose parameters are `params`, with `recipe` in
/// `recipe.output_dir` (prepared by the caller), from scratch or from
/// `restore`.
pub(super) fn run(
    recipe: &Recipe,
    space: &Space,
    task: &dyn TrainTask,
    params: &Params,
    restore: Option<Restore>,
    opts: &RunOptions,
) -> Result<Summary> {
    let dir = recipe.output_dir.as_path();
    let schedule = Schedule::new(recipe, task.train_len(), task.train_source())?;
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
        arch: task.standalone_arch().cloned(),
    };
    // The step of the last checkpoint on disk (a resumed run starts from one).
    let mut last_checkpoint = None;
    match restore {
        Some((tensors, st)) => {
            let path = dir.join(CHECKPOINT_FILE);
            schedule.check_resumable(&path, &st, recipe)?;
            checkpoint::restore(&path, &tensors, params, &mut opt)?;
            opt.t = st.adam_t;
            last_checkpoint = Some(st.step);
            state = st;
        }
        None => task.init(params, root.then_some(dir), opts.progress && root)?,
    }
    // One owner of the weights between steps: the engine's flat buffers,
    // updated in place by the optimizer. candle's variables are refreshed
    // from them only when candle reads them (validation, checkpoints, the
    // end). Models the engine does not run train through candle's autograd.
    let mut flat = FlatWeights::new(params, task.net())?;
    if flat.engine.is_none() && recipe.train.recompute != crate::engine::Recompute::None {
        tracing::warn!(
            "[train] recompute applies to the CPU engine; this model trains through candle's \
             autograd, which keeps its whole graph"
        );
    }
    let distill = loss::from_loss_config(&recipe.loss);
    let teacher = match &recipe.loss.teacher {
        Some(dir) => {
            let hidden = recipe.loss.hidden_distill.is_some();
            let t = FixedTeacher::load(dir, space, task.label_names(), hidden)?;
            if opts.progress && root {
                eprintln!("teacher: {} (largest subnet)", t.dir.display());
            }
            Some(t)
        }
        None => None,
    };
    let metrics = Metrics::new(root.then(|| dir.join(METRICS_FILE)));
    let end = opts
        .max_steps
        .or(recipe.train.max_steps)
        .map_or(schedule.total, |m| m.min(schedule.total));
    let mut progress = Progress::new(
        opts.progress && root,
        &schedule,
        state.step,
        recipe,
        task.unit(),
    );
    let shard = dp.shard(recipe.train.batch_size);
    let mut order = EpochOrder::new(task.train_len(), recipe);
    if dp.size() > 1 {
        dp.check_weights(state.step, &flat.values(params)?)?;
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
        let examples = task.examples(order.batch(step), shard.clone(), &mut rng)?;
        let plan = task.plan(space, step, &mut rng);
        let group_of = strategy.groups(&plan);
        let n_groups = group_of.iter().max().map_or(1, |g| g + 1);
        while groups.len() < n_groups {
            groups.push(params.zero_grads());
        }
        for g in &mut groups[..n_groups] {
            g.iter_mut().for_each(|g| g.fill(0.0));
        }
        let path = match &flat.engine {
            Some((weights, config)) => StepPath::Engine {
                weights,
                config,
                recompute: recipe.train.recompute,
            },
            None => StepPath::Autograd {
                net: task.net(),
                params,
            },
        };
        // The ranking term's prior scores of the step's subnets (plan order).
        let ranking = recipe.ranking.as_ref().filter(|r| r.is_on());
        let prior: Vec<f64> = match ranking {
            Some(r) => plan.archs.iter().map(|a| r.prior.score(space, a)).collect(),
            None => Vec::new(),
        };
        let batch = Batch {
            input: examples.input(),
            labels: examples.labels(),
            label_smoothing: recipe.loss.label_smoothing,
            distill: distill.as_deref(),
            ranking: ranking.map(|r| r.at(step, schedule.steps_per_epoch, &prior)),
            teacher: teacher.as_ref().map(FixedTeacher::model),
        };
        // Gradient diagnosis (before the update, on the step's weights and
        // batch): changes nothing the step computes.
        let diagnosis = if recipe.train.diagnose_gradients
            && root
            && (step == 0 || (step + 1).is_multiple_of(recipe.train.log_every))
        {
            Some(diagnose_subnets(path, &plan, batch)?)
        } else {
            None
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
                let grad_norm = flat.optimizer_step(&mut opt, params, &groups[0], lr)?;
                state.adam_t = opt.t;
                let flops: Vec<u64> = plan.archs.iter().map(|a| flops(space, a)).collect();
                let mut line = json!({
                    "step": step + 1, "epoch": epoch, "lr": lr, "losses": out.losses,
                    "flops": flops, "grad_norm": grad_norm,
                });
                if let Some(t) = examples.tokens() {
                    line["tokens"] = json!(t);
                }
                if let Some(d) = &diagnosis {
                    line["diagnosis"] = json!(d);
                }
                if let Some(r) = &out.ranking {
                    line["ranking"] = json!({
                        "loss": r.loss, "weight": r.weight, "pairs": r.pairs,
                        "active": r.active_fraction(),
                    });
                }
                metrics.line(line)?;
            }
        }
        state.step += 1;
        progress.step(state.step, end, epoch, &out, lr);
        let epoch_end = state.step.is_multiple_of(schedule.steps_per_epoch);
        if epoch_end {
            flat.sync(params)?;
            // How the step's gradient groups agreed over the epoch.
            let agreement = state.agreement.take().map(|a| {
                let mut r = a.report();
                r["strategy"] = json!(recipe.gradient);
                r
            });
            if root {
                last_val = validate(
                    task,
                    space,
                    &flat,
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
            flat.sync(params)?;
            if root {
                task.save(params, &opt, &state)?;
            }
            last_checkpoint = Some(state.step);
            if dp.size() > 1 {
                dp.check_weights(state.step, &flat.values(params)?)?;
            }
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    progress.finish();
    flat.sync(params)?;
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
        task.test(&flat, &metrics, &mut summary, opts)?;
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
    /// The schedule of `examples` training examples (from `source`).
    fn new(recipe: &Recipe, examples: usize, source: &str) -> Result<Self> {
        let bs = recipe.train.batch_size;
        let spe = examples / bs;
        if spe == 0 {
            return Err(Error::Data {
                source_name: source.to_string(),
                message: format!("{examples} training examples make no batch of {bs}"),
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

/// The seeded order of the training examples, one permutation per epoch
/// (kept for the epoch's steps), cut into the steps' batches.
struct EpochOrder {
    examples: usize,
    batch_size: usize,
    seed: u64,
    epoch: Option<(usize, Vec<usize>)>,
}

impl EpochOrder {
    fn new(examples: usize, recipe: &Recipe) -> Self {
        EpochOrder {
            examples,
            batch_size: recipe.train.batch_size,
            seed: recipe.seed,
            epoch: None,
        }
    }

    /// The examples of step `step`'s (global) batch.
    fn batch(&mut self, step: usize) -> &[usize] {
        let bs = self.batch_size;
        let spe = self.examples / bs;
        let (epoch, pos) = (step / spe, step % spe);
        if self.epoch.as_ref().map(|o| o.0) != Some(epoch) {
            self.epoch = Some((epoch, epoch_order(self.examples, self.seed, epoch)));
        }
        &self.epoch.as_ref().expect("set above").1[pos * bs..(pos + 1) * bs]
    }
}

/// A progress bar on a terminal, plain log lines otherwise, or silence.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    log: bool,
    log_every: usize,
    total: usize,
    started: Instant,
    /// The step this process started at (a resumed run's earlier steps
    /// do not count in its rate or ETA).
    first: usize,
    /// Examples trained since this process started, and per step.
    examples: usize,
    batch: usize,
    /// What an example is called in the rate (`img`, `seq`).
    unit: &'static str,
}

impl Progress {
    fn new(
        show: bool,
        schedule: &Schedule,
        step: usize,
        recipe: &Recipe,
        unit: &'static str,
    ) -> Self {
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
            first: step,
            examples: 0,
            batch: recipe.train.batch_size,
            unit,
        }
    }

    fn step(&mut self, done: usize, end: usize, epoch: usize, out: &StepLosses, lr: f64) {
        self.examples += self.batch;
        let rate = self.examples as f64 / self.started.elapsed().as_secs_f64();
        let unit = self.unit;
        let loss0 = out.losses.first().copied().unwrap_or(f32::NAN);
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            b.set_message(format!(
                "epoch {} loss {loss0:.4} lr {lr:.2e} {rate:.0} {unit}/s",
                epoch + 1
            ));
        } else if self.log && (done.is_multiple_of(self.log_every) || done == end) {
            eprintln!(
                "step {done}/{} epoch {} loss {loss0:.4} lr {lr:.2e} {rate:.0} {unit}/s ({})",
                self.total,
                epoch + 1,
                crate::train::progress::elapsed_eta(
                    self.started,
                    done.saturating_sub(self.first),
                    end.saturating_sub(self.first)
                )
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
fn validate(
    task: &dyn TrainTask,
    space: &Space,
    flat: &FlatWeights,
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
    for (which, arch) in task.reported(space) {
        let r = task.validate(&arch, flat)?;
        line[format!("val_{}", which.name())] = json!(r);
        msg += &format!(" {} {:.4}", which.name(), r.accuracy);
        out.push((which, r));
    }
    metrics.line(line)?;
    progress.println(&msg);
    Ok(out)
}
