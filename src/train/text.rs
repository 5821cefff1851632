//! Training a text (BERT) supernet: the same recipe sections, samplers,
//! in-place distillation, gradient strategies, optimizer, checkpoints and
//! metrics as the image trainer, on token sequences. The [`crate::engine`]
//! computes every subnet's forward and backward on the supernet's flat
//! weights (the step loop of [`super::step`] with
//! [`Path::Engine`](super::step::Path::Engine)), and evaluates subnets on
//! them without extracting a copy.
//!
//! A run directory holds, besides the image trainer's files, the label
//! names (`labels.json`) and the tokenizer (`tokenizer.json`), so that
//! search, evaluation and export need nothing else.

use super::checkpoint::{read_weights, write_atomic, write_checkpoint, TrainState, STATE_KEY};
use super::flat::FlatWeights;
use super::gradient::{self, Agreement};
use super::loss::{self, cross_entropy};
use super::optim::{lr_at, AdamW};
use super::recipe::{NonFinite, Recipe, TextDataConfig};
use super::sampler;
use super::step::{accumulate_groups, Batch, Input, Params, Path as StepPath};
use super::summary::{EvalSplit, Reported, Summary};
use super::{step_rng, RunOptions};
use super::{CHECKPOINT_FILE, METRICS_FILE, RECIPE_FILE, SPACE_FILE, STATE_FILE, SUPERNET_FILE};
use crate::data::batch::epoch_order;
use crate::data::text::{load_text, TextDataset, TokenizedDataset};
use crate::engine::{self, Weights};
use crate::error::{Error, Result};
use crate::eval::EvalResult;
use crate::init::seeded_var_builder;
use crate::models::text::TextTokenizer;
use crate::rundir::{self, Artifact, RunLock};
use crate::space::{flops, Arch, Space};
use crate::supernet::bert::{BertSupernet, Tokens};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The label names of a text run, in id order.
pub const LABELS_FILE: &str = "labels.json";
/// The tokenizer a text run was trained with.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// `<dir>/<split>.{jsonl,jsonl.gz,csv,csv.gz}`, the first that exists.
pub fn split_file(dir: &Path, split: &str) -> Result<PathBuf> {
    let names = ["jsonl", "jsonl.gz", "csv", "csv.gz"].map(|e| format!("{split}.{e}"));
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Data {
            source_name: dir.display().to_string(),
            message: format!("no {split} file here (looked for {})", names.join(", ")),
        })
}

fn text_config(recipe: &Recipe) -> Result<&TextDataConfig> {
    recipe
        .data
        .text
        .as_ref()
        .ok_or_else(|| Error::InvalidRecipe {
            file: format!("recipe `{}`", recipe.name),
            field: "data.text".into(),
            message: "a text space needs [data.text] (fields, max_len, tokenizer)".into(),
        })
}

/// The tokenizer of a recipe: `data.text.tokenizer` (a tokenizer.json, or
/// a directory or hub id holding one), else that of `init_from`.
pub fn tokenizer_of(recipe: &Recipe) -> Result<TextTokenizer> {
    let cfg = text_config(recipe)?;
    let spec = cfg
        .tokenizer
        .as_deref()
        .or(recipe.init_from.as_deref())
        .ok_or_else(|| Error::InvalidRecipe {
            file: format!("recipe `{}`", recipe.name),
            field: "data.text.tokenizer".into(),
            message: "no tokenizer: give data.text.tokenizer or init_from".into(),
        })?;
    let path = Path::new(spec);
    let file = if path.is_file() {
        path.to_path_buf()
    } else {
        crate::hub::resolve(spec)?.join(TOKENIZER_FILE)
    };
    TextTokenizer::from_file(&file, cfg.max_len)
}

/// The data of a text run: tokenised training and validation splits, the
/// label names, and the tokenizer.
pub struct TextData {
    pub train: TokenizedDataset,
    pub val: TokenizedDataset,
    pub label_names: Vec<String>,
    pub tokenizer: TextTokenizer,
    pub data_dir: PathBuf,
}

/// Reads, splits (seeded) and tokenises a recipe's training file.
pub fn load_train_val(recipe: &Recipe, space: &Space) -> Result<TextData> {
    let cfg = text_config(recipe)?;
    let dir = crate::data::resolve_dir(recipe.data.path.as_deref(), &[])?;
    let full = load_text(&split_file(&dir, "train")?, &cfg.fields, None)?;
    check_classes(&full, space)?;
    let (mut train_idx, val_idx) = full.validation_indices(
        recipe.data.val_size,
        recipe.data.split_seed.unwrap_or(recipe.seed),
    )?;
    if let Some(n) = recipe.data.train_limit {
        train_idx.truncate(n);
    }
    let tokenizer = tokenizer_of(recipe)?;
    Ok(TextData {
        train: TokenizedDataset::new(&full.subset(&train_idx), &tokenizer)?,
        val: TokenizedDataset::new(&full.subset(&val_idx), &tokenizer)?,
        label_names: full.label_names.clone(),
        tokenizer,
        data_dir: std::path::absolute(&dir).unwrap_or(dir),
    })
}

/// The test split, labelled with the training file's names.
pub fn load_test(
    recipe: &Recipe,
    labels: &[String],
    tok: &TextTokenizer,
) -> Result<TokenizedDataset> {
    let cfg = text_config(recipe)?;
    let dir = crate::data::resolve_dir(recipe.data.path.as_deref(), &[])?;
    let test = load_text(&split_file(&dir, "test")?, &cfg.fields, Some(labels))?;
    TokenizedDataset::new(&test, tok)
}

fn check_classes(data: &TextDataset, space: &Space) -> Result<()> {
    let n = data.label_names.len();
    if n != space.num_classes() {
        return Err(Error::Data {
            source_name: data.source.clone(),
            message: format!(
                "{n} labels ({:?}) but the space `{}` has {} classes (text.num_classes)",
                data.label_names,
                space.name,
                space.num_classes()
            ),
        });
    }
    Ok(())
}

/// Accuracy and mean cross-entropy of subnet `arch` of the engine weights
/// `w` (a supernet's, or a static model's own: see [`engine::Model`]) on
/// every example of `data`.
pub fn evaluate_text(
    w: &Weights,
    cfg: &engine::Config,
    arch: &Arch,
    data: &TokenizedDataset,
    batch_size: usize,
) -> Result<EvalResult> {
    let (mut correct, mut loss_sum) = (0usize, 0f64);
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let b = data.batch(chunk, &Device::Cpu)?;
        let logits = engine::token_logits(w, cfg, arch, &b.ids, &b.attention_mask)?;
        correct += logits
            .argmax(D::Minus1)?
            .eq(&b.labels)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
        loss_sum +=
            cross_entropy(&logits, &b.labels, 0.0)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
    }
    let n = data.len().max(1) as f64;
    Ok(EvalResult {
        accuracy: correct as f64 / n,
        loss: loss_sum / n,
        examples: data.len(),
    })
}

/// [`evaluate_text`] of a static model.
pub fn evaluate_model(
    model: &engine::Model,
    data: &TokenizedDataset,
    batch_size: usize,
) -> Result<EvalResult> {
    evaluate_text(&model.weights, &model.cfg, &model.arch, data, batch_size)
}

/// Starts a text supernet run in `recipe.output_dir` (or resumes it).
pub fn start(recipe: &Recipe, space: &Space, opts: &RunOptions) -> Result<Summary> {
    single_process(opts)?;
    let dir = &recipe.output_dir;
    if opts.resume {
        return resume(dir, opts);
    }
    recipe.validate(Path::new(&format!(
        "recipe `{}` (with command-line overrides)",
        recipe.name
    )))?;
    rundir::check_output(dir, Artifact::TrainingRun, opts.force)?;
    let data = load_train_val(recipe, space)?;
    let mut resolved = recipe.clone();
    resolved.data.path = Some(data.data_dir.clone());
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let _lock = RunLock::acquire(dir)?;
    write_atomic(&dir.join(RECIPE_FILE), resolved.to_toml_string().as_bytes())?;
    write_atomic(&dir.join(SPACE_FILE), space.to_toml_string().as_bytes())?;
    let labels = serde_json::to_string(&data.label_names).expect("names serialize");
    write_atomic(&dir.join(LABELS_FILE), labels.as_bytes())?;
    let tok =
        std::fs::read(data.tokenizer.path()).map_err(|e| Error::io(data.tokenizer.path(), e))?;
    write_atomic(&dir.join(TOKENIZER_FILE), &tok)?;
    std::fs::write(dir.join(METRICS_FILE), b"")
        .map_err(|e| Error::io(dir.join(METRICS_FILE), e))?;
    run(&resolved, space, &data, None, opts)
}

/// Continues the text run in `dir` from its last checkpoint.
pub fn resume(dir: &Path, opts: &RunOptions) -> Result<Summary> {
    single_process(opts)?;
    let ckpt = dir.join(CHECKPOINT_FILE);
    if !ckpt.is_file() {
        return Err(Error::Checkpoint {
            path: ckpt,
            message: "not found: nothing to resume (is this a run directory?)".into(),
        });
    }
    let _lock = RunLock::acquire(dir)?;
    let mut recipe = Recipe::from_file(dir.join(RECIPE_FILE))?;
    recipe.output_dir = dir.to_path_buf();
    let space = Space::from_file(dir.join(SPACE_FILE))?;
    let data = load_train_val(&recipe, &space)?;
    let (tensors, meta) = read_weights(&ckpt, &Device::Cpu)?;
    let state: TrainState = meta
        .get(STATE_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| Error::Checkpoint {
            path: ckpt.clone(),
            message: format!("metadata `{STATE_KEY}` missing or invalid"),
        })?;
    super::session::truncate_metrics(&dir.join(METRICS_FILE), state.step)?;
    run(&recipe, &space, &data, Some((tensors, state)), opts)
}

/// Text runs train in one process (data-parallel ranks are the image
/// trainer's so far).
fn single_process(opts: &RunOptions) -> Result<()> {
    match opts.collective.size() {
        1 => Ok(()),
        n => Err(Error::Distributed {
            message: format!(
                "text supernets train in one process so far, not on {n} ranks: run `vitnas train` \
                 without mpirun"
            ),
        }),
    }
}

/// The seeded BERT supernet of a text space and its sorted parameters.
pub fn build(space: &Space, recipe: &Recipe) -> Result<(BertSupernet, Params)> {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, recipe.seed, DType::F32, &Device::Cpu);
    let net = BertSupernet::with_init(space, recipe.init, vb)?;
    Ok((net, Params::from_varmap(&vm)))
}

fn run(
    recipe: &Recipe,
    space: &Space,
    data: &TextData,
    restore: Option<(HashMap<String, Tensor>, TrainState)>,
    opts: &RunOptions,
) -> Result<Summary> {
    let dir = recipe.output_dir.as_path();
    let (net, params) = build(space, recipe)?;
    let bs = recipe.train.batch_size;
    let spe = data.train.len() / bs;
    if spe == 0 {
        return Err(Error::Data {
            source_name: data.train.source.clone(),
            message: format!(
                "{} training examples make no batch of {bs}",
                data.train.len()
            ),
        });
    }
    let total = recipe.train.epochs * spe;
    let warmup = (recipe.optimizer.warmup_epochs * spe as f64).round() as usize;
    let mut opt = AdamW::new(&params.names, &params.sizes(), recipe.optimizer.clone());
    let mut state = TrainState {
        step: 0,
        adam_t: 0,
        skipped_steps: 0,
        agreement: None,
        total_steps: total,
        recipe: recipe.name.clone(),
        arch: None,
    };
    match restore {
        Some((tensors, st)) => {
            let path = dir.join(CHECKPOINT_FILE);
            if st.total_steps != total || st.step > total {
                return Err(Error::Checkpoint {
                    path,
                    message: format!(
                        "state step {} of {} does not fit this run's {total} steps",
                        st.step, st.total_steps
                    ),
                });
            }
            super::checkpoint::restore(&path, &tensors, &params, &mut opt)?;
            opt.t = st.adam_t;
            state = st;
        }
        None => {
            if let Some(spec) = &recipe.init_from {
                let model_dir = crate::hub::resolve(spec)?;
                let report =
                    crate::hub::load_bert_into(&params, &model_dir, space.supernet.head_dim)?;
                let path = dir.join("init-report.txt");
                std::fs::write(&path, report.to_string()).map_err(|e| Error::io(&path, e))?;
                if opts.progress {
                    eprint!("init from {}: {report}", model_dir.display());
                }
            }
            let n = text_config(recipe)?.rewire_batches;
            if n > 0 {
                rewire(&net, &params, data, recipe, n, dir, opts.progress)?;
            }
        }
    }
    // The engine's flat weights own the values between steps (see
    // `FlatWeights`); candle's variables are refreshed for checkpoints.
    let mut flat = FlatWeights::new(&params, &net)?;
    engine_of(&flat)?;
    let sampler = sampler::from_config(&recipe.sampler);
    let distill = loss::from_config(&recipe.loss.distill);
    let strategy = gradient::from_config(&recipe.gradient);
    let metrics = dir.join(METRICS_FILE);
    let end = opts
        .max_steps
        .or(recipe.train.max_steps)
        .map_or(total, |m| m.min(total));
    let started = Instant::now();
    let mut groups = vec![params.zero_grads()];
    let mut last_val = Vec::new();
    let mut interrupted = false;
    let mut order: Option<(usize, Vec<usize>)> = None;
    while state.step < end {
        let step = state.step;
        let epoch = step / spe;
        let mut rng = step_rng(recipe.seed, step);
        if order.as_ref().map(|o| o.0) != Some(epoch) {
            order = Some((epoch, epoch_order(data.train.len(), recipe.seed, epoch)));
        }
        let idx = &order.as_ref().expect("set above").1[(step % spe) * bs..][..bs];
        let b = data.train.batch(idx, &Device::Cpu)?;
        let plan = sampler.plan(space, step, &mut rng);
        let group_of = strategy.groups(&plan);
        let n_groups = group_of.iter().max().map_or(1, |g| g + 1);
        while groups.len() < n_groups {
            groups.push(params.zero_grads());
        }
        for g in &mut groups[..n_groups] {
            g.iter_mut().for_each(|g| g.fill(0.0));
        }
        let batch = Batch {
            input: Input::Tokens(Tokens {
                ids: &b.ids,
                mask: &b.attention_mask,
            }),
            labels: &b.labels,
            label_smoothing: recipe.loss.label_smoothing,
            distill: distill.as_deref(),
        };
        let (weights, config) = engine_of(&flat)?;
        let path = StepPath::Engine { weights, config };
        let out = {
            let mut targets: Vec<&mut [Vec<f32>]> =
                groups[..n_groups].iter_mut().map(|g| &mut g[..]).collect();
            accumulate_groups(path, &plan, batch, &group_of, &mut targets)?
        };
        let lr = lr_at(step, total, warmup, recipe.peak_lr(), &recipe.optimizer);
        match out.nonfinite {
            Some(k) if recipe.train.on_nonfinite_loss == NonFinite::Stop => {
                line(
                    &metrics,
                    json!({"step": step + 1, "nonfinite_loss": out.losses[k], "stopped": true}),
                )?;
                return Err(Error::NonFiniteLoss {
                    step: step + 1,
                    which: format!("subnet {k} of the step ({})", plan.archs[k].to_json()),
                    value: out.losses[k],
                    kept: "the last checkpoint is kept".into(),
                });
            }
            Some(k) => {
                state.skipped_steps += 1;
                line(
                    &metrics,
                    json!({"step": step + 1, "skipped": true, "nonfinite_loss": out.losses[k]}),
                )?;
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
                line(
                    &metrics,
                    json!({
                        "step": step + 1, "epoch": epoch, "lr": lr, "losses": out.losses,
                        "flops": flops, "grad_norm": grad_norm, "tokens": b.ids.dims()[1],
                    }),
                )?;
            }
        }
        state.step += 1;
        if opts.progress && (state.step.is_multiple_of(recipe.train.log_every) || state.step == end)
        {
            eprintln!(
                "step {}/{total} epoch {} loss {:.4} lr {lr:.2e} {:.2} steps/s",
                state.step,
                epoch + 1,
                out.losses.first().copied().unwrap_or(f32::NAN),
                state.step as f64 / started.elapsed().as_secs_f64().max(1e-9)
            );
        }
        let epoch_end = state.step.is_multiple_of(spe);
        if epoch_end {
            let agreement = state.agreement.take();
            last_val = validate(
                engine_of(&flat)?,
                space,
                &data.val,
                recipe,
                &metrics,
                (state.step, epoch),
                agreement,
                opts.progress,
            )?;
        }
        let stop = opts.stop.load(Ordering::SeqCst);
        if epoch_end
            || state.step.is_multiple_of(recipe.train.checkpoint_every)
            || stop
            || state.step == end
        {
            flat.sync(&params)?;
            save(dir, recipe, &params, &opt, &state)?;
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    flat.sync(&params)?;
    let mut summary = Summary::new(dir.to_path_buf());
    summary.steps = state.step;
    summary.total_steps = total;
    summary.skipped_steps = state.skipped_steps;
    summary.wall_s = started.elapsed().as_secs_f64();
    summary.interrupted = interrupted;
    for (which, r) in last_val {
        summary.set(EvalSplit::Val, which, r);
    }
    if state.step == total && !interrupted {
        let test = load_test(recipe, &data.label_names, &data.tokenizer)?;
        let mut l = json!({"step": state.step, "test": true});
        let (w, cfg) = engine_of(&flat)?;
        for (which, arch) in reported(space) {
            let r = evaluate_text(w, cfg, &arch, &test, recipe.data.eval_batch_size)?;
            l[format!("test_{}", which.name())] = json!(r);
            summary.set(EvalSplit::Test, which, r);
        }
        line(&metrics, l)?;
    }
    Ok(summary)
}

/// The engine's weights and configuration of a run's flat weights.
fn engine_of(flat: &FlatWeights) -> Result<(&Weights, &engine::Config)> {
    flat.engine
        .as_ref()
        .map(|(w, c)| (w, c))
        .ok_or_else(|| Error::Tensor {
            name: "supernet".into(),
            message: "the text supernet does not run on the engine".into(),
        })
}

fn reported(space: &Space) -> [(Reported, Arch); 2] {
    [
        (Reported::Largest, space.largest()),
        (Reported::Smallest, space.smallest()),
    ]
}

#[allow(clippy::too_many_arguments)]
fn validate(
    (w, cfg): (&Weights, &engine::Config),
    space: &Space,
    val: &TokenizedDataset,
    recipe: &Recipe,
    metrics: &Path,
    (step, epoch): (usize, usize),
    agreement: Option<Agreement>,
    progress: bool,
) -> Result<Vec<(Reported, EvalResult)>> {
    let mut l = json!({"step": step, "epoch_end": epoch + 1});
    if let Some(a) = agreement {
        let mut r = a.report();
        r["strategy"] = json!(recipe.gradient);
        l["gradient"] = r;
    }
    let mut msg = format!("epoch {} val acc", epoch + 1);
    let mut out = Vec::new();
    for (which, arch) in reported(space) {
        let r = evaluate_text(w, cfg, &arch, val, recipe.data.eval_batch_size)?;
        l[format!("val_{}", which.name())] = json!(r);
        msg += &format!(" {} {:.4}", which.name(), r.accuracy);
        out.push((which, r));
    }
    line(metrics, l)?;
    if progress {
        eprintln!("{msg}");
    }
    Ok(out)
}

/// The checkpoint (weights, optimizer, state), `supernet.safetensors` and
/// `state.json`, each written atomically.
fn save(
    dir: &Path,
    recipe: &Recipe,
    params: &Params,
    opt: &AdamW,
    state: &TrainState,
) -> Result<()> {
    let state_json = write_checkpoint(dir, params, opt, state)?;
    let meta = [("vitnas.recipe".to_string(), recipe.name.clone())]
        .into_iter()
        .collect();
    write_atomic(
        &dir.join(SUPERNET_FILE),
        &super::checkpoint::to_safetensors_bytes(&params.tensors(), Some(meta))?,
    )?;
    write_atomic(&dir.join(STATE_FILE), state_json.as_bytes())
}

/// DynaBERT rewiring on the first `n` training batches, reported in
/// `rewire-report.json`.
fn rewire(
    net: &BertSupernet,
    params: &Params,
    data: &TextData,
    recipe: &Recipe,
    n: usize,
    dir: &Path,
    progress: bool,
) -> Result<()> {
    let bs = recipe.train.batch_size;
    let order = epoch_order(data.train.len(), recipe.seed, 0);
    let batches = order
        .chunks(bs)
        .take(n)
        .map(|c| data.train.batch(c, &Device::Cpu))
        .collect::<Result<Vec<_>>>()?;
    let imp = crate::supernet::rewire::importance(net, &batches)?;
    let report = crate::supernet::rewire::rewire(net, params, &imp)?;
    report.write(dir)?;
    let path = dir.join("rewire-report.json");
    if progress {
        eprintln!(
            "rewired heads and FFN neurons by importance on {n} batches ({})",
            path.display()
        );
    }
    Ok(())
}

fn line(path: &Path, v: serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
}

/// A trained text supernet, loaded from its run directory.
pub struct TextRun {
    pub dir: PathBuf,
    pub recipe: Recipe,
    pub space: Space,
    pub net: BertSupernet,
    /// The supernet's weights as the engine reads them (evaluation runs on
    /// them, with the architecture as argument, without extracting).
    pub weights: Weights,
    pub cfg: engine::Config,
    /// Label names in id order (`labels.json`).
    pub labels: Vec<String>,
}

impl TextRun {
    /// Whether `dir` (a run directory, or a file inside one) holds a text run.
    pub fn is_text_run(path: &Path) -> bool {
        let dir = if path.is_dir() {
            path
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        Space::from_file(dir.join(SPACE_FILE)).is_ok_and(|s| s.is_text())
    }

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
        let labels_path = dir.join(LABELS_FILE);
        let text = std::fs::read_to_string(&labels_path).map_err(|e| Error::io(&labels_path, e))?;
        let labels: Vec<String> = serde_json::from_str(&text).map_err(|error| Error::Json {
            path: labels_path.clone(),
            error,
        })?;
        let (tensors, _) = read_weights(&file, &Device::Cpu)?;
        let mut named: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let weights = Weights::from_tensors(&named).map_err(|e| Error::Checkpoint {
            path: file.clone(),
            message: e.to_string(),
        })?;
        let cfg = engine::Config::from_space(&space);
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let net =
            BertSupernet::with_init(&space, recipe.init, vb).map_err(|e| Error::Checkpoint {
                path: file.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            dir,
            recipe,
            space,
            net,
            weights,
            cfg,
            labels,
        })
    }

    /// The run's tokenizer (`tokenizer.json` in the run directory).
    pub fn tokenizer(&self) -> Result<TextTokenizer> {
        TextTokenizer::from_file(
            &self.dir.join(TOKENIZER_FILE),
            text_config(&self.recipe)?.max_len,
        )
    }

    /// The run's validation split, tokenised.
    pub fn validation(&self) -> Result<TokenizedDataset> {
        Ok(load_train_val(&self.recipe, &self.space)?.val)
    }

    /// The test split, tokenised.
    pub fn test(&self) -> Result<TokenizedDataset> {
        load_test(&self.recipe, &self.labels, &self.tokenizer()?)
    }

    /// Accuracy and loss of subnet `arch` on `data` (by the engine, on the
    /// supernet's weights).
    pub fn evaluate(&self, arch: &Arch, data: &TokenizedDataset) -> Result<EvalResult> {
        self.weights.check(&self.cfg, arch)?;
        evaluate_text(
            &self.weights,
            &self.cfg,
            arch,
            data,
            self.recipe.data.eval_batch_size,
        )
    }
}

/// Text: subnets of a trained BERT supernet scored by the engine on a
/// tokenised validation set; latency of the extracted static BERT on the
/// engine ([`crate::latency::time_text_arch`]).
pub struct TextJudge<'a> {
    pub run: &'a TextRun,
    pub val: &'a TokenizedDataset,
}

impl crate::search::Judge for TextJudge<'_> {
    fn examples(&self) -> usize {
        self.val.len()
    }

    fn score(
        &self,
        arch: &Arch,
        range: std::ops::Range<usize>,
        batch: usize,
    ) -> Result<EvalResult> {
        let idx: Vec<usize> = range.collect();
        let r = self.run;
        evaluate_text(&r.weights, &r.cfg, arch, &self.val.subset(&idx), batch)
    }

    fn latency_ms(&self, arch: &Arch, batch: usize) -> Result<f64> {
        let p = crate::latency::Protocol::default();
        Ok(crate::latency::time_text_arch(&self.run.net, arch, batch, &p)?.mean_ms)
    }
}
