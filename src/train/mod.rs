//! Supernet training: data, sampler, losses, AdamW, checkpoints, resume.
//!
//! Every source of randomness is derived from the recipe seed: the
//! initialisation, the per-epoch data order `(seed, epoch)`, and per step
//! `(seed, step)` the augmentation and the sampled subnets. A resumed run
//! therefore replays exactly what an uninterrupted run would have done.

pub mod checkpoint;
pub mod loss;
pub mod optim;
pub mod recipe;
pub mod sampler;
pub mod standalone;
pub mod step;

use crate::data::batch::{epoch_order, make_batch, Normalize};
use crate::data::{self, Dataset, Format, Split, FASHION_MNIST_DIRS};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalResult};
use crate::init::{seeded_var_builder, InitScheme};
use crate::models::vit::Vit;
use crate::rundir::{self, Artifact, RunLock};
use crate::space::{flops, Arch, Space};
use crate::supernet::Supernet;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use checkpoint::{read_safetensors, to_safetensors_bytes, write_atomic, TrainState, STATE_KEY};
use optim::{lr_at, AdamW};
use rand::{rngs::StdRng, SeedableRng};
use recipe::{NonFinite, Recipe};
use sampler::{Plan, Sampler};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use step::{accumulate, Forward, Params};

pub const RECIPE_FILE: &str = "recipe.toml";
pub const SPACE_FILE: &str = "space.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SUPERNET_FILE: &str = "supernet.safetensors";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const SPLIT_FILE: &str = "data-split.json";

/// The RNG of step `step`: augmentation and sampling draw from it.
pub fn step_rng(seed: u64, step: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (step as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn data_dir(recipe: &Recipe) -> Result<PathBuf> {
    let candidates: &[&str] = if recipe.data.format == Format::Idx {
        FASHION_MNIST_DIRS
    } else {
        &[]
    };
    data::resolve_dir(recipe.data.path.as_deref(), candidates)
}

/// Which examples of the training file a run trains and validates on,
/// written to the run directory as `data-split.json` (so that another
/// implementation, e.g. evaluate/parity.py, can train on the same split).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataSplit {
    /// The data directory, absolute.
    pub data_dir: PathBuf,
    /// Indices into the training file: the training examples (in file
    /// order, after `train_limit`) and the held-out validation examples.
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// Training and validation splits (validation carved from train, seeded),
/// the normalisation in use and the split's indices.
pub fn load_train_val(
    recipe: &Recipe,
    space: &Space,
) -> Result<(Dataset, Dataset, Normalize, DataSplit)> {
    let dir = data_dir(recipe)?;
    let i = &space.input;
    let full = data::load(
        recipe.data.format,
        &dir,
        Split::Train,
        i.image_size,
        i.channels,
    )?;
    full.check_fits(space)?;
    let (mut train, val) = full.split_validation(recipe.data.val_size, recipe.seed)?;
    let (mut train_idx, val_idx) =
        data::validation_split(full.len(), recipe.data.val_size, recipe.seed);
    if let Some(n) = recipe.data.train_limit {
        train = train.head(n);
        train_idx.truncate(n);
    }
    let split = DataSplit {
        data_dir: std::path::absolute(&dir).unwrap_or(dir),
        train: train_idx,
        val: val_idx,
    };
    let norm = match &recipe.data.normalize {
        Some(n) if n.mean.len() != i.channels || n.std.len() != i.channels => {
            return Err(Error::InvalidRecipe {
                file: format!("recipe `{}`", recipe.name),
                field: "data.normalize".into(),
                message: format!(
                    "{} mean and {} std values for {}-channel images",
                    n.mean.len(),
                    n.std.len(),
                    i.channels
                ),
            })
        }
        Some(n) => n.clone(),
        None => {
            let (mean, std) = train.channel_stats();
            Normalize { mean, std }
        }
    };
    Ok((train, val, norm, split))
}

/// The test split, for final reports only.
pub fn load_test(recipe: &Recipe, space: &Space) -> Result<Dataset> {
    let dir = data_dir(recipe)?;
    let i = &space.input;
    let test = data::load(
        recipe.data.format,
        &dir,
        Split::Test,
        i.image_size,
        i.channels,
    )?;
    test.check_fits(space)?;
    Ok(test)
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub total_steps: usize,
    pub skipped_steps: usize,
    pub wall_s: f64,
    /// Stopped by a signal before the end (a checkpoint was written).
    pub interrupted: bool,
    /// Supernet runs: the largest and smallest subnets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_largest: Option<EvalResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_smallest: Option<EvalResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_largest: Option<EvalResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_smallest: Option<EvalResult>,
    /// Standalone runs: the one model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_model: Option<EvalResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_model: Option<EvalResult>,
    /// Why a finished run has no test results (the test split is missing
    /// or unusable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_error: Option<String>,
}

impl Summary {
    fn set(&mut self, split: &str, which: &str, r: EvalResult) {
        let slot = match (split, which) {
            ("val", "largest") => &mut self.val_largest,
            ("val", "smallest") => &mut self.val_smallest,
            ("val", _) => &mut self.val_model,
            (_, "largest") => &mut self.test_largest,
            (_, "smallest") => &mut self.test_smallest,
            _ => &mut self.test_model,
        };
        *slot = Some(r);
    }
}

/// What a run trains.
#[derive(Debug, Clone, PartialEq)]
pub enum RunKind {
    /// The supernet of the recipe's space, subnets drawn by its sampler.
    Supernet,
    /// One architecture as a plain static model (retrain, finetune).
    Standalone { arch: Arch, init: standalone::Init },
}

/// The model being trained, built from a [`RunKind`].
enum Trainee {
    Supernet {
        net: Supernet,
        sampler: Box<dyn Sampler>,
    },
    Standalone {
        model: Vit,
        arch: Arch,
    },
}

impl Trainee {
    fn net(&self) -> &dyn Forward {
        match self {
            Trainee::Supernet { net, .. } => net,
            Trainee::Standalone { model, .. } => model,
        }
    }

    fn plan(&self, space: &Space, step: usize, rng: &mut StdRng) -> Plan {
        match self {
            Trainee::Supernet { sampler, .. } => sampler.plan(space, step, rng),
            Trainee::Standalone { arch, .. } => Plan {
                archs: vec![arch.clone()],
                teacher_first: false,
            },
        }
    }

    /// The architectures reported at every epoch's end and at the end.
    fn reported(&self, space: &Space) -> Vec<(&'static str, Arch)> {
        match self {
            Trainee::Supernet { .. } => {
                vec![("largest", space.largest()), ("smallest", space.smallest())]
            }
            Trainee::Standalone { arch, .. } => vec![("model", arch.clone())],
        }
    }

    /// The subnet `arch` (or the static model) ready for inference by the
    /// engine: built once per evaluation, not per batch.
    fn inference_model(&self, arch: &Arch) -> Result<crate::engine::Model> {
        match self {
            Trainee::Supernet { net, .. } => crate::engine::Model::from_vit(&net.extract(arch)?),
            Trainee::Standalone { model, .. } => crate::engine::Model::from_vit(model),
        }
    }
}

/// Where and how to run.
pub struct RunOptions<'a> {
    /// Continue the run in `recipe.output_dir` from its checkpoint.
    pub resume: bool,
    /// Set (e.g. by Ctrl-C) to finish the current step, checkpoint and return.
    pub stop: &'a AtomicBool,
    /// Show a progress bar (when stderr is a terminal) or plain log lines.
    pub progress: bool,
    /// Stop after this many steps in total, overriding the recipe's
    /// `train.max_steps` (also when resuming).
    pub max_steps: Option<usize>,
    /// Start a run in a non-empty directory that is not a run (never over
    /// an existing run).
    pub force: bool,
}

/// Starts a supernet run from a recipe: creates the run directory with the
/// resolved recipe and the space, then trains.
pub fn train(recipe: &Recipe, opts: &RunOptions) -> Result<Summary> {
    if opts.resume {
        return resume(&recipe.output_dir, opts);
    }
    let space = Space::from_file(&recipe.space)?;
    start(recipe, &space, RunKind::Supernet, opts)
}

/// Starts a run of `kind` in `recipe.output_dir`.
pub(crate) fn start(
    recipe: &Recipe,
    space: &Space,
    kind: RunKind,
    opts: &RunOptions,
) -> Result<Summary> {
    let dir = &recipe.output_dir;
    if opts.resume {
        return resume(dir, opts);
    }
    recipe.validate(Path::new(&format!(
        "recipe `{}` (with command-line overrides)",
        recipe.name
    )))?;
    rundir::check_output(dir, Artifact::TrainingRun, opts.force)?;
    let (train, val, norm, split) = load_train_val(recipe, space)?;
    let mut resolved = recipe.clone();
    resolved.data.normalize = Some(norm);
    // The data directory as found, so that a resume from anywhere reads
    // the same files.
    resolved.data.path = Some(split.data_dir.clone());
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let _lock = RunLock::acquire(dir)?;
    // Checked again under the lock: another process may have started here.
    if dir.join(CHECKPOINT_FILE).exists() || dir.join(METRICS_FILE).exists() {
        rundir::check_output(dir, Artifact::TrainingRun, opts.force)?;
    }
    write_atomic(&dir.join(RECIPE_FILE), resolved.to_toml_string().as_bytes())?;
    write_atomic(&dir.join(SPACE_FILE), space.to_toml_string().as_bytes())?;
    write_atomic(
        &dir.join(SPLIT_FILE),
        serde_json::to_string(&split)
            .expect("a split serializes")
            .as_bytes(),
    )?;
    std::fs::write(dir.join(METRICS_FILE), b"")
        .map_err(|e| Error::io(dir.join(METRICS_FILE), e))?;
    run(&resolved, space, kind, &train, &val, None, opts)
}

/// Continues the run in `dir` from its last checkpoint, writing into `dir`
/// (wherever the run has moved; the recipe's `output_dir` is where it
/// started and is not used).
pub fn resume(dir: &Path, opts: &RunOptions) -> Result<Summary> {
    if !dir.join(CHECKPOINT_FILE).is_file() {
        return Err(Error::Checkpoint {
            path: dir.join(CHECKPOINT_FILE),
            message: "not found: nothing to resume (is this a run directory?)".into(),
        });
    }
    let _lock = RunLock::acquire(dir)?;
    let mut recipe = Recipe::from_file(dir.join(RECIPE_FILE))?;
    recipe.output_dir = dir.to_path_buf();
    let space = Space::from_file(dir.join(SPACE_FILE))?;
    let (train, val, _, _) = load_train_val(&recipe, &space)?;
    let ckpt = dir.join(CHECKPOINT_FILE);
    let (tensors, meta) = read_safetensors(&ckpt, &Device::Cpu)?;
    let state: TrainState = meta
        .get(STATE_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| Error::Checkpoint {
            path: ckpt.clone(),
            message: format!("metadata `{STATE_KEY}` missing or invalid"),
        })?;
    truncate_metrics(&dir.join(METRICS_FILE), state.step)?;
    let kind = match &state.arch {
        None => RunKind::Supernet,
        Some(arch) => RunKind::Standalone {
            arch: arch.clone(),
            init: standalone::Init::Scratch(recipe.init),
        },
    };
    run(
        &recipe,
        &space,
        kind,
        &train,
        &val,
        Some((tensors, state)),
        opts,
    )
}

/// Drops metric lines written after the checkpoint a run resumes from.
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

struct Checkpointer<'a> {
    dir: &'a Path,
    recipe: &'a Recipe,
    space: &'a Space,
    norm: &'a Normalize,
}

impl Checkpointer<'_> {
    fn save(
        &self,
        trainee: &Trainee,
        params: &Params,
        opt: &AdamW,
        state: &TrainState,
    ) -> Result<()> {
        let weights = params.tensors();
        let mut all = weights.clone();
        let dev = Device::Cpu;
        for (k, name) in params.names.iter().enumerate() {
            let shape = params.vars[k].shape().clone();
            all.push((
                format!("optimizer.m.{name}"),
                candle_core::Tensor::from_slice(&opt.m[k], shape.clone(), &dev)?,
            ));
            all.push((
                format!("optimizer.v.{name}"),
                candle_core::Tensor::from_slice(&opt.v[k], shape, &dev)?,
            ));
        }
        let state_json = serde_json::to_string(state).expect("state serializes");
        let meta = [(STATE_KEY.to_string(), state_json.clone())]
            .into_iter()
            .collect();
        write_atomic(
            &self.dir.join(CHECKPOINT_FILE),
            &to_safetensors_bytes(&all, Some(meta))?,
        )?;
        match trainee {
            Trainee::Supernet { .. } => {
                let meta = [("vitnas.recipe".to_string(), self.recipe.name.clone())]
                    .into_iter()
                    .collect();
                write_atomic(
                    &self.dir.join(SUPERNET_FILE),
                    &to_safetensors_bytes(&weights, Some(meta))?,
                )?;
            }
            Trainee::Standalone { model, arch } => {
                crate::models::export::export(model, self.space, arch, Some(self.norm), self.dir)?;
            }
        }
        write_atomic(&self.dir.join(STATE_FILE), state_json.as_bytes())
    }
}

fn metrics_line(path: &Path, v: serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
}

/// Builds the seeded supernet of a space and its sorted parameters.
pub fn build_supernet(
    space: &Space,
    seed: u64,
    init: InitScheme,
) -> Result<(Supernet, VarMap, Params)> {
    let vm = VarMap::new();
    let net = Supernet::with_init(
        space,
        init,
        seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu),
    )?;
    let params = Params::from_varmap(&vm);
    Ok((net, vm, params))
}

fn run(
    recipe: &Recipe,
    space: &Space,
    kind: RunKind,
    train: &Dataset,
    val: &Dataset,
    restore: Option<(
        std::collections::HashMap<String, candle_core::Tensor>,
        TrainState,
    )>,
    opts: &RunOptions,
) -> Result<Summary> {
    let dev = Device::Cpu;
    let dir = recipe.output_dir.as_path();
    let metrics = dir.join(METRICS_FILE);
    let norm = recipe
        .data
        .normalize
        .clone()
        .expect("resolved recipe has normalisation");
    let (trainee, params) = match &kind {
        RunKind::Supernet => {
            let (net, _vm, params) = build_supernet(space, recipe.seed, recipe.init)?;
            let sampler = sampler::from_config(&recipe.sampler);
            (Trainee::Supernet { net, sampler }, params)
        }
        RunKind::Standalone { arch, init } => {
            // A resumed run's weights come from its checkpoint.
            let init = match restore {
                Some(_) => standalone::Init::Scratch(recipe.init),
                None => init.clone(),
            };
            let (model, _vm, params) = standalone::build(space, arch, recipe.seed, &init)?;
            let arch = arch.clone();
            (Trainee::Standalone { model, arch }, params)
        }
    };
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
    let warmup = (recipe.optimizer.warmup_epochs * spe as f64).round() as usize;
    let peak = recipe.peak_lr();
    let mut opt = AdamW::new(&params.names, &params.sizes(), recipe.optimizer.clone());
    let mut state = TrainState {
        step: 0,
        adam_t: 0,
        skipped_steps: 0,
        total_steps: total,
        recipe: recipe.name.clone(),
        arch: match &kind {
            RunKind::Supernet => None,
            RunKind::Standalone { arch, .. } => Some(arch.clone()),
        },
    };
    if let Some((tensors, st)) = restore {
        let path = dir.join(CHECKPOINT_FILE);
        if st.step > total || st.total_steps != total || st.adam_t > st.step as u64 {
            return Err(Error::Checkpoint {
                path,
                message: format!(
                    "state step {} of {} total (Adam count {}) does not fit this run's {total} steps ({} epochs of {spe}): the checkpoint is not this run's",
                    st.step, st.total_steps, st.adam_t, recipe.train.epochs
                ),
            });
        }
        checkpoint::load_into_vars(&path, &tensors, &params.names, &params.vars)?;
        for (k, name) in params.names.iter().enumerate() {
            for (which, buf) in [("m", &mut opt.m[k]), ("v", &mut opt.v[k])] {
                let key = format!("optimizer.{which}.{name}");
                let t = tensors.get(&key).ok_or_else(|| Error::Checkpoint {
                    path: path.clone(),
                    message: format!("tensor `{key}` is missing"),
                })?;
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                if v.len() != buf.len() {
                    return Err(Error::Checkpoint {
                        path: path.clone(),
                        message: format!(
                            "tensor `{key}`: {} values, expected {}",
                            v.len(),
                            buf.len()
                        ),
                    });
                }
                *buf = v;
            }
        }
        opt.t = st.adam_t;
        state = st;
    } else if let (Some(spec), RunKind::Supernet) = (&recipe.init_from, &kind) {
        let dir = crate::hub::resolve(spec)?;
        let report = crate::hub::load_vit_into(&params, &dir, space.supernet.head_dim)?;
        std::fs::write(
            recipe.output_dir.join("init-report.txt"),
            report.to_string(),
        )
        .map_err(|e| Error::io(recipe.output_dir.join("init-report.txt"), e))?;
        if opts.progress {
            eprint!("init from {}: {report}", dir.display());
        }
    }
    let distill = loss::from_config(&recipe.loss.distill);
    let ckpt = Checkpointer {
        dir,
        recipe,
        space,
        norm: &norm,
    };
    let end = opts
        .max_steps
        .or(recipe.train.max_steps)
        .map_or(total, |m| m.min(total));
    let bar = (opts.progress && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                .expect("valid template"),
        );
        b.set_position(state.step as u64);
        b
    });
    let started = Instant::now();
    let mut images_done = 0usize;
    let mut grads = params.zero_grads();
    let mut order: Option<(usize, Vec<usize>)> = None;
    let mut last_val: Vec<(&'static str, EvalResult)> = Vec::new();
    let mut interrupted = false;
    while state.step < end {
        let step = state.step;
        let (epoch, pos) = (step / spe, step % spe);
        if order.as_ref().map(|o| o.0) != Some(epoch) {
            order = Some((epoch, epoch_order(train.len(), recipe.seed, epoch)));
        }
        let idx = &order.as_ref().unwrap().1[pos * bs..(pos + 1) * bs];
        let mut rng = step_rng(recipe.seed, step);
        let (x, y) = make_batch(
            train,
            idx,
            &norm,
            Some((&recipe.data.augment, &mut rng)),
            &dev,
        )?;
        let plan = trainee.plan(space, step, &mut rng);
        grads.iter_mut().for_each(|g| g.fill(0.0));
        let out = accumulate(
            trainee.net(),
            &params,
            &plan,
            &x,
            &y,
            recipe.loss.label_smoothing,
            distill.as_deref(),
            &mut grads,
        )?;
        let lr = lr_at(step, total, warmup, peak, &recipe.optimizer);
        if let Some(k) = out.nonfinite {
            let which = format!("subnet {k} of the step ({:?})", plan.archs[k].to_json());
            match recipe.train.on_nonfinite_loss {
                NonFinite::Stop => {
                    metrics_line(
                        &metrics,
                        json!({"step": step + 1, "nonfinite_loss": out.losses[k], "stopped": true}),
                    )?;
                    return Err(Error::NonFiniteLoss {
                        step: step + 1,
                        which,
                        value: out.losses[k],
                    });
                }
                NonFinite::Skip => {
                    state.skipped_steps += 1;
                    tracing::warn!(
                        "step {}: non-finite loss in {which}; step skipped",
                        step + 1
                    );
                    metrics_line(
                        &metrics,
                        json!({"step": step + 1, "skipped": true, "nonfinite_loss": out.losses[k], "skipped_steps": state.skipped_steps}),
                    )?;
                }
            }
        } else {
            let grad_norm = opt.step(&params.vars, &grads, lr)?;
            state.adam_t = opt.t;
            let flops: Vec<u64> = plan.archs.iter().map(|a| flops(space, a)).collect();
            metrics_line(
                &metrics,
                json!({"step": step + 1, "epoch": epoch, "lr": lr, "losses": out.losses, "flops": flops, "grad_norm": grad_norm}),
            )?;
        }
        state.step += 1;
        images_done += bs;
        let rate = images_done as f64 / started.elapsed().as_secs_f64();
        let loss0 = out.losses.first().copied().unwrap_or(f32::NAN);
        if let Some(b) = &bar {
            b.set_position(state.step as u64);
            b.set_message(format!(
                "epoch {} loss {loss0:.4} lr {lr:.2e} {rate:.0} img/s",
                epoch + 1
            ));
        } else if opts.progress && (state.step % recipe.train.log_every == 0 || state.step == end) {
            eprintln!(
                "step {}/{total} epoch {} loss {loss0:.4} lr {lr:.2e} {rate:.0} img/s",
                state.step,
                epoch + 1
            );
        }
        let epoch_end = state.step % spe == 0;
        if epoch_end {
            last_val = Vec::new();
            let mut line = json!({"step": state.step, "epoch_end": epoch + 1});
            let mut msg = format!("epoch {} val acc", epoch + 1);
            for (which, arch) in trainee.reported(space) {
                let model = trainee.inference_model(&arch)?;
                let r = evaluate(val, &norm, recipe.data.eval_batch_size, &dev, |x| {
                    model.logits(x)
                })?;
                line[format!("val_{which}")] = json!(r);
                msg += &format!(" {which} {:.4}", r.accuracy);
                last_val.push((which, r));
            }
            metrics_line(&metrics, line)?;
            match &bar {
                Some(b) => b.println(msg),
                None if opts.progress => eprintln!("{msg}"),
                None => {}
            }
        }
        let stop = opts.stop.load(Ordering::SeqCst);
        if epoch_end || state.step % recipe.train.checkpoint_every == 0 || stop || state.step == end
        {
            ckpt.save(&trainee, &params, &opt, &state)?;
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let mut summary = Summary {
        run_dir: dir.to_path_buf(),
        steps: state.step,
        total_steps: total,
        skipped_steps: state.skipped_steps,
        wall_s: started.elapsed().as_secs_f64(),
        interrupted,
        val_largest: None,
        val_smallest: None,
        test_largest: None,
        test_smallest: None,
        val_model: None,
        test_model: None,
        test_error: None,
    };
    for (which, r) in last_val {
        summary.set("val", which, r);
    }
    if state.step == total && !interrupted {
        match load_test(recipe, space) {
            Err(e) => {
                // Said plainly, in the summary and the metrics: a finished
                // run without test results must not look like a complete one.
                let note = format!("no test results: the test split could not be used: {e}");
                tracing::warn!("{note}");
                if opts.progress {
                    eprintln!("{note}");
                }
                metrics_line(
                    &metrics,
                    json!({"step": state.step, "final_test_error": note}),
                )?;
                summary.test_error = Some(note);
            }
            Ok(test) => {
                let mut line = json!({"step": state.step});
                for (which, arch) in trainee.reported(space) {
                    let model = trainee.inference_model(&arch)?;
                    let r = evaluate(&test, &norm, recipe.data.eval_batch_size, &dev, |x| {
                        model.logits(x)
                    })?;
                    line[format!("final_test_{which}")] = json!(r);
                    summary.set("test", which, r);
                }
                metrics_line(&metrics, line)?;
            }
        }
    }
    Ok(summary)
}

/// A finished (or checkpointed) training run, loaded for evaluation,
/// search or export: its resolved recipe, its space and its supernet.
pub struct TrainedRun {
    pub dir: PathBuf,
    pub recipe: Recipe,
    pub space: Space,
    pub net: Supernet,
}

impl TrainedRun {
    /// Loads a run directory, or a supernet `.safetensors` file inside one.
    pub fn load(path: &Path) -> Result<Self> {
        let (dir, file) = if path.is_dir() {
            (path.to_path_buf(), path.join(SUPERNET_FILE))
        } else {
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            (dir, path.to_path_buf())
        };
        let recipe = Recipe::from_file(dir.join(RECIPE_FILE))?;
        let space = Space::from_file(dir.join(SPACE_FILE))?;
        let (tensors, _) = read_safetensors(&file, &Device::Cpu)?;
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let net = Supernet::new(&space, vb).map_err(|e| Error::Checkpoint {
            path: file.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            dir,
            recipe,
            space,
            net,
        })
    }

    /// `largest`, `smallest`, or an architecture JSON file that fits the supernet.
    pub fn arch(&self, spec: &str) -> Result<crate::space::Arch> {
        self.space.arch_from_spec(spec)
    }

    /// The validation split of the run and the normalisation it trained with.
    pub fn validation(&self) -> Result<(Dataset, Normalize)> {
        let (_, val, norm, _) = load_train_val(&self.recipe, &self.space)?;
        Ok((val, self.recipe.data.normalize.clone().unwrap_or(norm)))
    }
}
