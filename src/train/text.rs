//! Training a text (BERT) supernet: the image trainer's loop (`run.rs`)
//! with the same recipe sections, samplers, in-place distillation, gradient
//! strategies, optimizer, checkpoints and metrics, on token sequences (a
//! `TrainTask` here supplies them). The [`crate::engine`] computes every
//! subnet's forward and backward on the supernet's flat weights (the step
//! loop of [`super::step`] with
//! [`Path::Engine`](super::step::Path::Engine)), and evaluates subnets on
//! them without extracting a copy.
//!
//! A run directory holds, besides the image trainer's files, the label
//! names (`labels.json`) and the tokenizer (`tokenizer.json`), so that
//! search, evaluation and export need nothing else. Under MPI a text run
//! trains data-parallel as an image run does: rank 0 alone checks, locks
//! and writes the directory, and every rank reads the data and rewires
//! alike.
//!
//! The same task trains one text subnet alone (`vitnas retrain`,
//! `vitnas finetune`, the standalone side of `vitnas evaluate rank`): a
//! static BERT of that architecture, on the engine like the supernet,
//! whose run directory is also an exported model directory (see
//! [`super::standalone`]).

use super::checkpoint::{self, write_atomic, ModelFile, TrainState};
use super::data_parallel::{check_batch, check_same_run};
use super::flat::FlatWeights;
use super::loss::cross_entropy;
use super::optim::AdamW;
use super::recipe::{Recipe, TextDataConfig};
use super::sampler::{self, Plan, Sampler};
use super::standalone::Init;
use super::step::{Forward, Params};
use super::summary::{EvalSplit, Reported, Summary};
use super::task::{Examples, TrainTask};
use super::task::{Metrics, Restore};
use super::teacher::FixedTeacher;
use super::trainee::RunKind;
use super::RunOptions;
use super::{CHECKPOINT_FILE, METRICS_FILE, RECIPE_FILE, SPACE_FILE};
use crate::data::batch::epoch_order;
use crate::data::text::{load_text, TextDataset, TokenizedDataset};
use crate::dist;
use crate::engine::{self, Weights};
use crate::error::{Error, Result};
use crate::models::bert::Bert;
use crate::models::text::TextTokenizer;
use crate::space::{Arch, Space};
use crate::supernet::bert::BertSupernet;
use crate::supernet::init::seeded_var_builder;
use crate::train::eval::EvalResult;
use crate::train::rundir::{self, Artifact, RunLock};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use serde_json::json;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The label names of a text run, in id order.
pub use super::LABELS_FILE;
/// The tokenizer a text run was trained with.
pub use super::TOKENIZER_FILE;

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
    let missing = |message: String| Error::InvalidRecipe {
        file: format!("recipe `{}`", recipe.name),
        field: "data.text.tokenizer".into(),
        message,
    };
    let file = if path.is_file() {
        path.to_path_buf()
    } else if path.is_dir() {
        let f = path.join(TOKENIZER_FILE);
        if !f.is_file() {
            return Err(missing(format!(
                "{spec}: the directory has no {TOKENIZER_FILE}"
            )));
        }
        f
    } else if spec.ends_with(".json") || path.is_absolute() || spec.starts_with('.') {
        // A file path, not a hub id: say that the file is missing.
        return Err(missing(format!("{spec}: file not found")));
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
    let max_pos = space
        .text
        .as_ref()
        .map_or(usize::MAX, |t| t.max_position_embeddings);
    if cfg.max_len > max_pos {
        return Err(Error::InvalidRecipe {
            file: format!("recipe `{}`", recipe.name),
            field: "data.text.max_len".into(),
            message: format!(
                "{} exceeds the space's text.max_position_embeddings {max_pos}: sequences \
                 that long have no position embedding",
                cfg.max_len
            ),
        });
    }
    let dir = crate::data::resolve_dir(recipe.data.path.as_deref(), &[])?;
    let full = load_text(&split_file(&dir, "train")?, &cfg.fields, None)?;
    check_classes(&full, space, recipe)?;
    check_test_split(&dir, cfg, &full.label_names)?;
    let (train_idx, val_idx) = super::data::split_indices(recipe, full.len(), &full.source)?;
    let tokenizer = tokenizer_of(recipe)?;
    Ok(TextData {
        train: TokenizedDataset::new(&full.subset(&train_idx), &tokenizer)?,
        val: TokenizedDataset::new(&full.subset(&val_idx), &tokenizer)?,
        label_names: full.label_names.clone(),
        tokenizer,
        data_dir: std::path::absolute(&dir).unwrap_or(dir),
    })
}

/// Checks the test split before the first step, as far as the files
/// allow: a test file that exists must read with the training file's labels
/// (an unknown label, mixed label types or a malformed line is an error
/// naming the line now, not after training). A missing test file is not an
/// error: the run trains and its summary says why it has no test results,
/// as an image run's does.
fn check_test_split(dir: &Path, cfg: &TextDataConfig, labels: &[String]) -> Result<()> {
    match split_file(dir, "test") {
        Ok(path) => load_text(&path, &cfg.fields, Some(labels)).map(|_| ()),
        Err(e) => {
            tracing::warn!("{e}: the run will report no test results");
            Ok(())
        }
    }
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

/// Refuses data whose labels contradict the classes the space states (a
/// space that leaves them to the data, 0, takes any number), naming both
/// numbers and both files.
fn check_classes(data: &TextDataset, space: &Space, recipe: &Recipe) -> Result<()> {
    let n = data.label_names.len();
    if space.states_classes() && n != space.num_classes() {
        let mut names = data.label_names.clone();
        if names.len() > 20 {
            names.truncate(20);
            names.push("…".into());
        }
        return Err(Error::Data {
            source_name: data.source.clone(),
            message: format!(
                "the data has {n} classes ({}) but the space `{}` ({}) states text.num_classes \
                 = {}: leave num_classes out of the space to take it from the data, or make \
                 the two agree",
                names.join(", "),
                space.name,
                recipe.space.display(),
                space.num_classes()
            ),
        });
    }
    Ok(())
}

/// The space a text run trains and states costs with: the classes of the
/// data's labels (checked against the space's, when it states them) and
/// the recipe's `data.text.cost_seq_len`, when given, as `text.seq_len`.
pub fn resolve_space(recipe: &Recipe, space: &Space, data: &TextData) -> Result<Space> {
    let cfg = text_config(recipe)?;
    let mut resolved = space.clone();
    let t = resolved.text.as_mut().ok_or_else(|| Error::InvalidSpace {
        file: recipe.space.display().to_string(),
        field: "text".into(),
        message: "a text run needs a text space".into(),
    })?;
    t.num_classes = data.label_names.len();
    if let Some(len) = cfg.cost_seq_len {
        if len > t.max_position_embeddings {
            return Err(Error::InvalidRecipe {
                file: format!("recipe `{}`", recipe.name),
                field: "data.text.cost_seq_len".into(),
                message: format!(
                    "{len} exceeds the space's text.max_position_embeddings {}",
                    t.max_position_embeddings
                ),
            });
        }
        t.seq_len = len;
    }
    resolved.validate(&format!(
        "{} as resolved for the data",
        recipe.space.display()
    ))?;
    Ok(resolved)
}

/// What a text run trains on, said once at its start: examples, classes
/// (with counts), token lengths (percentiles, after truncation) and how
/// many texts reach `max_len`.
pub fn data_summary(data: &TextData) -> String {
    let train = &data.train;
    let mut lens: Vec<usize> = train.ids.iter().map(Vec::len).collect();
    lens.sort_unstable();
    let pct = |p: f64| match lens.len() {
        0 => 0,
        n => lens[((p / 100.0) * (n - 1) as f64).round() as usize],
    };
    let cut = lens.iter().filter(|&&l| l >= train.max_len).count();
    let mut counts = vec![0usize; train.num_classes()];
    for &l in &train.labels {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    let mut classes: Vec<String> = data
        .label_names
        .iter()
        .zip(&counts)
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    if classes.len() > 20 {
        let more = classes.len() - 20;
        classes.truncate(20);
        classes.push(format!("… {more} more"));
    }
    format!(
        "data: {} training and {} validation texts from {}; {} classes ({}); tokens per text \
         after truncation p50 {} / p90 {} / p99 {} / max {}; {cut} texts ({:.1} %) reach \
         max_len {} and are cut there (or are exactly that long)",
        train.len(),
        data.val.len(),
        data.data_dir.display(),
        data.label_names.len(),
        classes.join(", "),
        pct(50.0),
        pct(90.0),
        pct(99.0),
        lens.last().copied().unwrap_or(0),
        100.0 * cut as f64 / train.len().max(1) as f64,
        train.max_len
    )
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
    evaluate_text_with(w, cfg, arch, data, batch_size, |_, _| Ok(()))
}

/// [`evaluate_text`], handing each batch and its logits `[B, C]` to `seen`
/// as they are computed (for confusion counts, or a dump that holds only
/// what it writes).
pub fn evaluate_text_with(
    w: &Weights,
    cfg: &engine::Config,
    arch: &Arch,
    data: &TokenizedDataset,
    batch_size: usize,
    mut seen: impl FnMut(&crate::data::text::TextBatch, &Tensor) -> Result<()>,
) -> Result<EvalResult> {
    let (mut correct, mut loss_sum) = (0usize, 0f64);
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let b = data.batch(chunk, &Device::Cpu)?;
        let logits = engine::token_logits(w, cfg, arch, &b.ids, &b.attention_mask)?;
        seen(&b, &logits)?;
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
    start_kind(recipe, space, RunKind::Supernet, opts)
}

/// Starts a text run of `kind` (the supernet, or one subnet alone) in
/// `recipe.output_dir` (or resumes it).
pub(crate) fn start_kind(
    recipe: &Recipe,
    space: &Space,
    kind: RunKind,
    opts: &RunOptions,
) -> Result<Summary> {
    let dir = &recipe.output_dir;
    if opts.resume {
        return resume(dir, opts);
    }
    recipe.validate_resolved()?;
    check_batch(opts.collective, recipe)?;
    let root = dist::is_root(opts.collective);
    if root {
        rundir::check_output(dir, Artifact::TrainingRun, opts.force)?;
    }
    let data = load_train_val(recipe, space)?;
    check_start_labels(&kind, &data.label_names)?;
    let space = &resolve_space(recipe, space, &data)?;
    if let Some(t) = &recipe.loss.teacher {
        // Refused before the directory is written (training loads it again).
        let hidden = recipe.loss.hidden_distill.is_some();
        FixedTeacher::load(t, space, Some(&data.label_names), hidden)?;
    }
    if opts.progress && root {
        eprintln!("{}", data_summary(&data));
    }
    let mut resolved = recipe.clone();
    resolved.data.path = Some(data.data_dir.clone());
    resolved.resolve_teacher();
    check_same_run(opts.collective, &resolved, &space.to_toml_string())?;
    let _lock = match root {
        true => Some(write_run_dir(dir, &resolved, space, &data, opts)?),
        false => None,
    };
    run(&resolved, space, &data, kind, None, opts)
}

/// Creates the run directory under its lock and writes the resolved
/// recipe, the space, the label names, the tokenizer and an empty metrics
/// file (rank 0's work in a data-parallel run).
fn write_run_dir(
    dir: &Path,
    resolved: &Recipe,
    space: &Space,
    data: &TextData,
    opts: &RunOptions,
) -> Result<RunLock> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let lock = RunLock::acquire(dir)?;
    // Checked again under the lock: another process may have started here.
    if dir.join(CHECKPOINT_FILE).exists() || dir.join(METRICS_FILE).exists() {
        rundir::check_output(dir, Artifact::TrainingRun, opts.force)?;
    }
    write_atomic(&dir.join(RECIPE_FILE), resolved.to_toml_string().as_bytes())?;
    write_atomic(&dir.join(SPACE_FILE), space.to_toml_string().as_bytes())?;
    let labels = serde_json::to_string(&data.label_names).expect("names serialize");
    write_atomic(&dir.join(LABELS_FILE), labels.as_bytes())?;
    let tok =
        std::fs::read(data.tokenizer.path()).map_err(|e| Error::io(data.tokenizer.path(), e))?;
    write_atomic(&dir.join(TOKENIZER_FILE), &tok)?;
    std::fs::write(dir.join(METRICS_FILE), b"")
        .map_err(|e| Error::io(dir.join(METRICS_FILE), e))?;
    Ok(lock)
}

/// Continues the text run in `dir` from its last checkpoint.
pub fn resume(dir: &Path, opts: &RunOptions) -> Result<Summary> {
    let ckpt = dir.join(CHECKPOINT_FILE);
    if !ckpt.is_file() {
        return Err(Error::Checkpoint {
            path: ckpt,
            message: super::nothing_to_resume(dir),
        });
    }
    let root = dist::is_root(opts.collective);
    let _lock = root.then(|| RunLock::acquire(dir)).transpose()?;
    let mut recipe = Recipe::from_file(dir.join(RECIPE_FILE))?;
    recipe.output_dir = dir.to_path_buf();
    check_batch(opts.collective, &recipe)?;
    let space = Space::from_file(dir.join(SPACE_FILE))?;
    let data = load_train_val(&recipe, &space)?;
    if opts.progress && root {
        eprintln!("{}", data_summary(&data));
    }
    let (tensors, state) = checkpoint::read_checkpoint(&ckpt)?;
    check_same_run(opts.collective, &recipe, &space.to_toml_string())?;
    if root {
        super::session::truncate_metrics(&dir.join(METRICS_FILE), state.step)?;
    }
    // A standalone run's directory is its exported model: the shapes come
    // from there, the weights from the checkpoint.
    let kind = match &state.arch {
        None => RunKind::Supernet,
        Some(arch) => RunKind::Standalone {
            arch: arch.clone(),
            init: Init::Exported(dir.to_path_buf()),
        },
    };
    run(&recipe, &space, &data, kind, Some((tensors, state)), opts)
}

/// The seeded BERT supernet of a text space and its sorted parameters.
pub fn build(space: &Space, recipe: &Recipe) -> Result<(BertSupernet, Params)> {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, recipe.seed, DType::F32, &Device::Cpu);
    let net = BertSupernet::with_init(space, recipe.init, vb)?;
    Ok((net, Params::from_varmap(&vm)))
}

/// Trains `kind` (the BERT supernet of `space`, or one subnet alone) on
/// `data` through the training loop, from scratch or from `restore`.
fn run(
    recipe: &Recipe,
    space: &Space,
    data: &TextData,
    kind: RunKind,
    restore: Option<Restore>,
    opts: &RunOptions,
) -> Result<Summary> {
    let ranks = opts.collective.size();
    if ranks > 1 && recipe.loss.hidden_distill.is_some() && dist::is_root(opts.collective) {
        tracing::warn!(
            "loss.hidden_distill on {ranks} ranks: each rank averages it over its own share's \
             tokens, so it matches one process only where the shares hold as many tokens"
        );
    }
    let (net, params) = match kind {
        RunKind::Supernet => {
            let (net, params) = build(space, recipe)?;
            let sampler = sampler::from_config(&recipe.sampler, space)?;
            (TextNet::Supernet { net, sampler }, params)
        }
        RunKind::Standalone { arch, init } => {
            let root = dist::is_root(opts.collective);
            let say = opts.progress && restore.is_none() && root;
            let dir = root.then_some(recipe.output_dir.as_path());
            let start = standalone_start(recipe, space, data, &arch, &init, dir, say)?;
            let (model, params) = trainable(&start)?;
            let model_arch = model.config.arch();
            let model = Box::new(model);
            let net = TextNet::Static {
                model,
                arch,
                model_arch,
            };
            (net, params)
        }
    };
    let task = TextTask {
        net,
        recipe,
        space,
        data,
    };
    super::run::run(recipe, space, &task, &params, restore, opts)
}

/// What a text run trains. (One per run: the variants' size difference
/// costs nothing.)
#[allow(clippy::large_enum_variant)]
enum TextNet {
    /// The supernet, subnets drawn by the sampler.
    Supernet {
        net: BertSupernet,
        sampler: Box<dyn Sampler>,
    },
    /// One subnet alone, as a static BERT: `arch` is the space's
    /// architecture (recorded in the state and the export), `model_arch`
    /// the model's own dims, which the engine runs (the same values, as
    /// widths; a padded export's are wider).
    Static {
        model: Box<Bert>,
        arch: Arch,
        model_arch: Arch,
    },
}

/// A static model has one architecture: `arch` only labels it. (The
/// engine runs its forward and backward; candle's forward is the
/// reference the engine is tested against.)
impl Forward for Bert {
    fn forward_train(&self, input: super::step::Input, _arch: &Arch) -> Result<Tensor> {
        let t = input.tokens()?;
        Bert::forward(self, t.ids, t.mask)?
            .logits
            .ok_or_else(|| Error::Tensor {
                name: "classifier".into(),
                message: "a BERT without a classification head cannot be trained on labels".into(),
            })
    }
    fn engine_config(&self) -> Option<engine::Config> {
        Some(engine::Config::from_bert(&self.config))
    }
}

/// The static BERT of `arch` a standalone text run starts from: the
/// recipe's start (seeded supernet, then `init_from`'s pretrained weights
/// and rewiring as a supernet run does them, reports written in the run
/// directory `dir`, rank 0's) sliced to `arch`; a trained supernet run's slice
/// (inherited); or an exported model (labels checked by
/// `check_start_labels` before the run directory was written).
fn standalone_start(
    recipe: &Recipe,
    space: &Space,
    data: &TextData,
    arch: &Arch,
    init: &Init,
    dir: Option<&Path>,
    say: bool,
) -> Result<Bert> {
    arch.check_fits(space)?;
    match init {
        Init::Scratch(scheme) => {
            let vm = VarMap::new();
            let vb = seeded_var_builder(&vm, recipe.seed, DType::F32, &Device::Cpu);
            let net = BertSupernet::with_init(space, *scheme, vb)?;
            let params = Params::from_varmap(&vm);
            let task = TextTask {
                net: TextNet::Supernet {
                    net,
                    sampler: sampler::from_config(&recipe.sampler, space)?,
                },
                recipe,
                space,
                data,
            };
            task.init(&params, dir, say)?;
            match &task.net {
                TextNet::Supernet { net, .. } => net.extract(arch),
                TextNet::Static { .. } => unreachable!("built as a supernet above"),
            }
        }
        Init::Inherited(dir) => {
            let run = TextRun::load(dir)?;
            arch.check_fits(&run.space)?;
            run.extract(arch)
        }
        Init::Exported(dir) => Ok(crate::models::export_bert::load_dir(dir)?.0),
    }
}

/// Refuses, before anything is written, a standalone start whose weights
/// classify into other labels than the data's `labels` (the same names in
/// the same order: the classifier's rows are those labels), naming the
/// file that says so.
fn check_start_labels(kind: &RunKind, labels: &[String]) -> Result<()> {
    let (file, field, theirs) = match kind {
        RunKind::Standalone {
            init: Init::Inherited(dir),
            ..
        } => {
            let path = dir.join(LABELS_FILE);
            let theirs: Vec<String> = crate::io::read_json(&path)?;
            (path, "labels", theirs)
        }
        RunKind::Standalone {
            init: Init::Exported(dir),
            ..
        } => {
            let (_, theirs) = crate::models::export_bert::load_dir(dir)?;
            (dir.join("config.json"), "id2label", theirs)
        }
        _ => return Ok(()),
    };
    super::check_labels(&file, field, &theirs, labels)
}

/// `model` rebuilt on trainable variables (its tensors copied), and those
/// variables sorted by name (see [`super::standalone::varmap_of`]).
fn trainable(model: &Bert) -> Result<(Bert, Params)> {
    let vm = super::standalone::varmap_of(model.tensors())?;
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let trained = Bert::load(&model.config, vb, "bert")?;
    Ok((trained, Params::from_varmap(&vm)))
}

/// A text run's side of the loop: token batches in the seeded epoch order,
/// subnets evaluated by the engine on the run's flat weights.
struct TextTask<'a> {
    net: TextNet,
    recipe: &'a Recipe,
    space: &'a Space,
    data: &'a TextData,
}

impl TrainTask for TextTask<'_> {
    fn train_len(&self) -> usize {
        self.data.train.len()
    }

    fn train_source(&self) -> &str {
        &self.data.train.source
    }

    fn net(&self) -> &dyn Forward {
        match &self.net {
            TextNet::Supernet { net, .. } => net,
            TextNet::Static { model, .. } => model.as_ref(),
        }
    }

    fn standalone_arch(&self) -> Option<&Arch> {
        match &self.net {
            TextNet::Supernet { .. } => None,
            TextNet::Static { arch, .. } => Some(arch),
        }
    }

    /// The pretrained BERT of `init_from` in the supernet's leading
    /// slices, then DynaBERT rewiring (`data.text.rewire_batches`). A
    /// static model was given its first weights when built.
    fn init(&self, params: &Params, dir: Option<&Path>, say: bool) -> Result<()> {
        let TextNet::Supernet { net, .. } = &self.net else {
            return Ok(());
        };
        let recipe = self.recipe;
        if let Some(spec) = &recipe.init_from {
            let (model_dir, report) = if super::few_shot::is_supernet_run(spec) {
                // A trained vitnas text run (e.g. the largest fine-tuned
                // alone: DynaBERT's width stage starts from its teacher).
                let run = Path::new(spec);
                check_run_labels(run, &self.data.label_names)?;
                let report = super::few_shot::load_parent_into(params, run, self.space)?;
                (run.to_path_buf(), report)
            } else {
                let model_dir = crate::hub::resolve(spec)?;
                let report =
                    crate::hub::load_bert_into(params, &model_dir, self.space.supernet.head_dim)?;
                (model_dir, report)
            };
            if let Some(dir) = dir {
                let path = dir.join("init-report.txt");
                std::fs::write(&path, report.to_string()).map_err(|e| Error::io(&path, e))?;
            }
            if say {
                eprint!("init from {}: {report}", model_dir.display());
            }
        }
        let n = text_config(recipe)?.rewire_batches;
        if n > 0 {
            rewire(net, params, self.data, recipe, n, dir, say)?;
        }
        Ok(())
    }

    /// This rank's shard, padded to the shard's longest member; no draws.
    /// (Padding per shard leaves the per-sequence losses, cross-entropy
    /// and KL, the global batch's mean over the ranks; the hidden-state
    /// term, a mean over a shard's tokens, is weighted per shard instead:
    /// see `docs/text.md`.)
    fn examples(
        &self,
        indices: &[usize],
        shard: Range<usize>,
        _rng: &mut StdRng,
    ) -> Result<Examples> {
        Ok(Examples::Tokens(
            self.data.train.batch(&indices[shard], &Device::Cpu)?,
        ))
    }

    fn plan(&self, space: &Space, step: usize, rng: &mut StdRng) -> Plan {
        match &self.net {
            TextNet::Supernet { sampler, .. } => sampler.plan(space, step, rng),
            TextNet::Static { model_arch, .. } => Plan {
                archs: vec![model_arch.clone()],
                teacher_first: false,
            },
        }
    }

    fn reported(&self, space: &Space) -> Vec<(Reported, Arch)> {
        match &self.net {
            TextNet::Supernet { .. } => vec![
                (Reported::Largest, space.largest()),
                (Reported::Smallest, space.smallest()),
            ],
            TextNet::Static { model_arch, .. } => vec![(Reported::Model, model_arch.clone())],
        }
    }

    fn validate(&self, arch: &Arch, flat: &FlatWeights) -> Result<EvalResult> {
        let (w, cfg) = engine_of(flat)?;
        evaluate_text(
            w,
            cfg,
            arch,
            &self.data.val,
            self.recipe.data.eval_batch_size,
        )
    }

    /// When the test split cannot be used, the summary and metrics say why
    /// (as an image run's do), so that the run finishes and stays
    /// resumable; what could be checked was checked before the first step.
    fn test(
        &self,
        flat: &FlatWeights,
        metrics: &Metrics,
        summary: &mut Summary,
        opts: &RunOptions,
    ) -> Result<()> {
        let recipe = self.recipe;
        let test = match load_test(recipe, &self.data.label_names, &self.data.tokenizer) {
            Ok(t) => t,
            Err(e) => return metrics.no_test_results(e, summary, opts),
        };
        let mut line = json!({"step": summary.steps, "test": true});
        let (w, cfg) = engine_of(flat)?;
        for (which, arch) in self.reported(self.space) {
            let r = evaluate_text(w, cfg, &arch, &test, recipe.data.eval_batch_size)?;
            line[format!("test_{}", which.name())] = json!(r);
            summary.set(EvalSplit::Test, which, r);
        }
        metrics.line(line)
    }

    fn save(&self, params: &Params, opt: &AdamW, state: &TrainState) -> Result<()> {
        let dir = &self.recipe.output_dir;
        let model = match &self.net {
            TextNet::Supernet { .. } => ModelFile::Supernet,
            TextNet::Static { model, arch, .. } => ModelFile::TextStandalone {
                model,
                arch,
                space: self.space,
                labels: &self.data.label_names,
                tokenizer: self.data.tokenizer.path(),
            },
        };
        checkpoint::save(dir, self.recipe, model, params, opt, state)
    }

    fn unit(&self) -> &'static str {
        "seq"
    }

    fn label_names(&self) -> Option<&[String]> {
        Some(&self.data.label_names)
    }
}

/// That a trained run `dir` started from (`init_from`) has `labels`.
fn check_run_labels(dir: &Path, labels: &[String]) -> Result<()> {
    let path = dir.join(LABELS_FILE);
    let theirs: Vec<String> = crate::io::read_json(&path)?;
    super::check_labels(&path, "init_from", &theirs, labels)
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

/// DynaBERT rewiring on the first `n` training batches, reported in
/// `rewire-report.json`.
fn rewire(
    net: &BertSupernet,
    params: &Params,
    data: &TextData,
    recipe: &Recipe,
    n: usize,
    dir: Option<&Path>,
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
    let Some(dir) = dir else {
        return Ok(());
    };
    report.write(dir)?;
    if progress {
        eprintln!(
            "rewired heads and FFN neurons by importance on {n} batches ({})",
            dir.join("rewire-report.json").display()
        );
    }
    Ok(())
}

/// A trained text supernet, loaded from its run directory.
pub struct TextRun {
    pub dir: PathBuf,
    /// The supernet file [`TextRun::weights`] were read from.
    pub file: PathBuf,
    pub recipe: Recipe,
    pub space: Space,
    /// The supernet's weights as the engine reads them, its only copy in
    /// memory: evaluation runs on them, with the architecture as argument,
    /// without extracting; [`TextRun::supernet`] builds candle's supernet
    /// from them where a static subnet is extracted (export, latency).
    pub weights: Weights,
    pub cfg: engine::Config,
    /// Label names in id order (`labels.json`).
    pub labels: Vec<String>,
}

impl TextRun {
    /// Whether `dir` (a run directory, or a file inside one) holds a text run.
    pub fn is_text_run(path: &Path) -> bool {
        let (dir, _) = super::run_paths(path);
        Space::from_file(dir.join(SPACE_FILE)).is_ok_and(|s| s.is_text())
    }

    /// Loads a run directory, or a supernet `.safetensors` file inside one.
    pub fn load(path: &Path) -> Result<Self> {
        let (dir, file) = super::run_paths(path);
        let recipe = Recipe::from_file(dir.join(RECIPE_FILE))?;
        let space = Space::from_file(dir.join(SPACE_FILE))?;
        let labels_path = dir.join(LABELS_FILE);
        let labels: Vec<String> = crate::io::read_json(&labels_path)?;
        let weights = Weights::read(&file)?;
        let cfg = engine::Config::from_space(&space);
        Ok(Self {
            dir,
            file,
            recipe,
            space,
            weights,
            cfg,
            labels,
        })
    }

    /// Candle's supernet, built from a copy of [`TextRun::weights`] (the
    /// tensors the run directory's file holds), for extracting static
    /// subnets: drop it when done, as it doubles the supernet in memory.
    pub fn supernet(&self) -> Result<BertSupernet> {
        let w = &self.weights;
        let tensors = w
            .names
            .iter()
            .zip(&w.data)
            .zip(&w.dims)
            .map(|((n, d), dims)| {
                Ok((
                    n.clone(),
                    Tensor::from_slice(d, dims.as_slice(), &Device::Cpu)?,
                ))
            })
            .collect::<Result<std::collections::HashMap<String, Tensor>>>()?;
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        BertSupernet::with_init(&self.space, self.recipe.init, vb).map_err(|e| Error::Checkpoint {
            path: self.file.clone(),
            message: e.to_string(),
        })
    }

    /// Subnet `arch` as a static BERT, extracted from a supernet built for
    /// the purpose (see [`TextRun::supernet`]) and dropped after.
    pub fn extract(&self, arch: &Arch) -> Result<crate::models::bert::Bert> {
        self.supernet()?.extract(arch)
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
        self.evaluate_with(arch, data, |_, _| Ok(()))
    }

    /// [`TextRun::evaluate`], handing each batch and its logits to `seen`
    /// (see [`evaluate_text_with`]).
    pub fn evaluate_with(
        &self,
        arch: &Arch,
        data: &TokenizedDataset,
        seen: impl FnMut(&crate::data::text::TextBatch, &Tensor) -> Result<()>,
    ) -> Result<EvalResult> {
        self.weights.check(&self.cfg, arch)?;
        evaluate_text_with(
            &self.weights,
            &self.cfg,
            arch,
            data,
            self.recipe.data.eval_batch_size,
            seen,
        )
    }
}
