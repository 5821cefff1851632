//! `vitnas eval --supernet <run dir> --arch <largest|smallest|arch.json>`,
//! or `vitnas eval --model <exported dir> --data <test data>`: accuracy,
//! loss, macro-F1, a per-class table (stderr) and the confusion counts
//! (JSON on stdout), for ViT (image) and BERT (text) alike.

use anyhow::Context;
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use vitnas::models::export_bert;
use vitnas::space::{flops, params};
use vitnas::train::eval::{evaluate_with, Confusion, EvalResult};
use vitnas::train::text::{evaluate_text_with, TextRun};
use vitnas::train::{self, TrainedRun};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SplitArg {
    Val,
    Test,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A training run directory (holding recipe.toml, space.toml and
    /// supernet.safetensors), a supernet .safetensors file inside one, or a
    /// few-shot directory (the sub-supernet holding --arch is used).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    supernet: Option<PathBuf>,
    /// An exported model directory (`vitnas export`); needs --data: an IDX
    /// directory (its test split) for a ViT, a JSON-lines / CSV file or a
    /// directory with test.jsonl for a BERT.
    #[arg(long)]
    model: Option<PathBuf>,
    /// `largest`, `smallest`, or an architecture JSON file.
    #[arg(long, default_value = "largest")]
    arch: String,
    /// Accept an architecture whose values lie outside the space's choice
    /// lists but fit the supernet.
    #[arg(long)]
    off_grid: bool,
    /// Validation split (carved from train) or the test split [default:
    /// val for --supernet, test for --model].
    #[arg(long, value_enum)]
    split: Option<SplitArg>,
    /// With --model: evaluate only the first N examples.
    #[arg(long, requires = "model")]
    limit: Option<usize>,
    /// With --model: also write the model's inputs and its logits
    /// (`logits`) to this safetensors file, for comparing with another
    /// implementation (e.g. transformers; see evaluate/hf_check.py). Image
    /// models write the normalised `pixel_values`; text models
    /// `input_ids` and `attention_mask` (padded to the longest example).
    /// The logits are gathered batch by batch: memory holds what is
    /// written, not the model's activations.
    #[arg(long, requires = "model")]
    dump: Option<PathBuf>,
    /// Override the data directory of the run's recipe; with --model, the
    /// test data: an IDX directory (image models) or a JSON-lines / CSV
    /// file, or a directory holding test.jsonl (text models).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Text supernets: also time the extracted subnet at batch 1 on a
    /// sequence of the space's stated length (HAT's protocol: 5 warm-up
    /// runs, 20 timed, top and bottom 10 % trimmed).
    #[arg(long)]
    latency: bool,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    if let Some(d) = &a.dump {
        // Never over the model read, into a training run or an exported
        // model (a previous dump is rewritten).
        let model_files: Vec<std::path::PathBuf> = a
            .model
            .iter()
            .flat_map(|m| ["model.safetensors", "config.json"].map(|f| m.join(f)))
            .collect();
        let inputs: Vec<&std::path::Path> = model_files.iter().map(|p| p.as_path()).collect();
        vitnas::train::rundir::check_output_file(d, &inputs, false, true)?;
    }
    if let Some(m) = a.model.as_deref().filter(|m| export_bert::is_bert_dir(m)) {
        return eval_text_model(m, a.data.as_deref(), a.limit, a.dump.as_deref());
    }
    if let Some(run) = a.supernet.as_deref().filter(|s| TextRun::is_text_run(s)) {
        return eval_text_supernet(run, &a);
    }
    if let Some(m) = &a.model {
        return eval_model(
            m,
            a.data.as_deref(),
            a.split.unwrap_or(SplitArg::Test),
            a.limit,
            a.dump.as_deref(),
        );
    }
    let supernet = a
        .supernet
        .clone()
        .expect("clap requires --supernet or --model");
    let (mut run, arch) = TrainedRun::load_with_arch(&supernet, &a.arch, a.off_grid)?;
    if let Some(d) = a.data {
        run.recipe.data.path = Some(d);
    }
    let (val, norm) = run.validation()?;
    let (split, ds) = match a.split.unwrap_or(SplitArg::Val) {
        SplitArg::Val => ("val", val),
        SplitArg::Test => ("test", train::load_test(&run.recipe, &run.space)?),
    };
    let (net, space) = (&run.net, &run.space);
    let model = vitnas::engine::Model::from_vit(&net.extract(&arch)?)?;
    let mut confusion = Confusion::new(class_names(space.num_classes()));
    let r = evaluate_with(
        &ds,
        &norm,
        run.recipe.data.eval_batch_size,
        &Device::Cpu,
        |x| model.logits(x),
        |y, logits| confusion.add_batch(y, logits),
    )?;
    eprint!("{}", confusion.table());
    println!("{}", subnet_line(split, &r, &confusion, space, &arch));
    Ok(())
}

/// The JSON line of a supernet subnet's evaluation: the split, its scores
/// and per-class report, the architecture and its size.
fn subnet_line(
    split: &str,
    r: &EvalResult,
    confusion: &Confusion,
    space: &vitnas::Space,
    arch: &vitnas::Arch,
) -> serde_json::Value {
    serde_json::json!({
        "split": split, "examples": r.examples, "accuracy": r.accuracy, "loss": r.loss,
        "classes": confusion.report(),
        "arch": arch, "params": params(space, arch), "flops_macs": flops(space, arch),
    })
}

fn eval_model(
    dir: &std::path::Path,
    data: Option<&std::path::Path>,
    split: SplitArg,
    limit: Option<usize>,
    dump: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let (model, norm) = vitnas::models::export::load_dir(dir)?;
    let data = data.context("an exported ViT needs --data <IDX directory>")?;
    let c = &model.config;
    let split_name = match split {
        SplitArg::Val => {
            anyhow::bail!("an exported model has no validation split: use --split test")
        }
        SplitArg::Test => "test",
    };
    let mut ds = vitnas::data::load(
        vitnas::data::Format::Idx,
        data,
        vitnas::data::Split::Test,
        c.image_size,
        c.num_channels,
    )?;
    if let Some(n) = limit {
        ds = ds.head(n);
    }
    // The normalisation the model was trained with: its `vitnas` block,
    // else a Hugging Face preprocessor_config.json; only without either,
    // the data's own statistics, said on stderr and in the report.
    let (norm, norm_source) = match norm {
        Some(n) => (n, "config.json vitnas.normalize".to_string()),
        None => match hf_normalize(dir, c.num_channels)? {
            Some(n) => (n, "preprocessor_config.json".to_string()),
            None => {
                let (mean, std) = ds.channel_stats();
                eprintln!(
                    "warning: {} records no input normalisation (no `vitnas` block in \
                     config.json, no preprocessor_config.json): normalising with the \
                     evaluated split's own statistics (mean {mean:?}, std {std:?}), which may \
                     not be what the model was trained with",
                    dir.display()
                );
                (
                    vitnas::data::batch::Normalize { mean, std },
                    "statistics of the evaluated split (the model records none)".to_string(),
                )
            }
        },
    };
    let mut dumped: Vec<(Tensor, Tensor)> = Vec::new();
    let fast = vitnas::engine::Model::from_vit(&model)?;
    let mut confusion = Confusion::new(class_names(c.num_labels));
    let r = evaluate_with(
        &ds,
        &norm,
        500,
        &Device::Cpu,
        |x| {
            let logits = fast.logits(x)?;
            if dump.is_some() {
                dumped.push((x.clone(), logits.clone()));
            }
            Ok(logits)
        },
        |y, logits| confusion.add_batch(y, logits),
    )?;
    eprint!("{}", confusion.table());
    if let Some(path) = dump {
        let (xs, ls): (Vec<Tensor>, Vec<Tensor>) = dumped.into_iter().unzip();
        let tensors = vec![
            ("pixel_values".to_string(), Tensor::cat(&xs, 0)?),
            ("logits".to_string(), Tensor::cat(&ls, 0)?),
        ];
        vitnas::train::checkpoint::write_safetensors(path, &tensors, None)?;
    }
    println!(
        "{}",
        serde_json::json!({"model": dir, "split": split_name, "examples": r.examples, "accuracy": r.accuracy, "loss": r.loss,
            "classes": confusion.report(), "params": model.num_params(),
            "normalize": {"mean": norm.mean, "std": norm.std, "source": norm_source}})
    );
    Ok(())
}

/// `image_mean` / `image_std` of a Hugging Face `preprocessor_config.json`
/// in `dir`, when there is one (checked: one finite mean and positive std
/// per channel).
fn hf_normalize(
    dir: &std::path::Path,
    channels: usize,
) -> anyhow::Result<Option<vitnas::data::batch::Normalize>> {
    let path = dir.join("preprocessor_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    let list = |k: &str| -> Option<Vec<f32>> {
        v.get(k)?
            .as_array()?
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect()
    };
    let (Some(mean), Some(std)) = (list("image_mean"), list("image_std")) else {
        return Ok(None);
    };
    if mean.len() != channels
        || std.len() != channels
        || !mean.iter().all(|m| m.is_finite())
        || !std.iter().all(|s| s.is_finite() && *s > 0.0)
    {
        anyhow::bail!(
            "{}: image_mean {mean:?} / image_std {std:?} are not one finite mean and positive \
             std per channel ({channels})",
            path.display()
        );
    }
    Ok(Some(vitnas::data::batch::Normalize { mean, std }))
}

/// A trained text supernet's subnet on its validation or test split.
fn eval_text_supernet(path: &std::path::Path, a: &EvalArgs) -> anyhow::Result<()> {
    let mut run = TextRun::load(path)?;
    if let Some(d) = &a.data {
        run.recipe.data.path = Some(d.clone());
    }
    let arch = run.space.arch_from_spec(&a.arch, a.off_grid)?;
    let (split, ds) = match a.split.unwrap_or(SplitArg::Val) {
        SplitArg::Val => ("val", run.validation()?),
        SplitArg::Test => ("test", run.test()?),
    };
    let mut confusion = Confusion::new(run.labels.clone());
    let r = run.evaluate_with(&arch, &ds, |b, logits| {
        confusion.add_batch(&b.labels, logits)
    })?;
    eprint!("{}", confusion.table());
    let space = &run.space;
    let latency = match a.latency {
        true => {
            let judge = vitnas::search::TextJudge {
                run: &run,
                val: &ds,
            };
            Some(vitnas::search::Judge::latency_ms(&judge, &arch, 1)?)
        }
        false => None,
    };
    let mut line = subnet_line(split, &r, &confusion, space, &arch);
    line["flops_at_tokens"] = serde_json::json!(space.seq_len());
    line["latency_ms_batch1"] = serde_json::json!(latency);
    line["threads"] = serde_json::json!(rayon::current_num_threads());
    println!("{line}");
    Ok(())
}

/// An exported BERT on a JSON-lines or CSV file (`--data`: the file, or a
/// directory holding test.jsonl / test.csv), labels by the model's names.
fn eval_text_model(
    dir: &std::path::Path,
    data: Option<&std::path::Path>,
    limit: Option<usize>,
    dump: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let (model, labels) = export_bert::load_dir(dir)?;
    let data =
        data.context("--model needs --data <JSONL or CSV file, or a directory with test.jsonl>")?;
    let file = match data.is_dir() {
        true => vitnas::train::text::split_file(data, "test")?,
        false => data.to_path_buf(),
    };
    // The length the model was trained at (the exported recipe), else its
    // position table's.
    let max_len = vitnas::train::recipe::Recipe::from_file(dir.join(vitnas::train::RECIPE_FILE))
        .ok()
        .and_then(|r| r.data.text.map(|t| t.max_len))
        .unwrap_or(model.config.max_position_embeddings);
    let tok = vitnas::models::text::TextTokenizer::from_file(&dir.join("tokenizer.json"), max_len)?;
    let fields = vitnas::data::text::TextFields::default();
    let mut texts = vitnas::data::text::load_text(&file, &fields, Some(&labels))?;
    if let Some(n) = limit {
        let idx: Vec<usize> = (0..n.min(texts.len())).collect();
        texts = texts.subset(&idx);
    }
    let ds = vitnas::data::text::TokenizedDataset::new(&texts, &tok)?;
    let m = vitnas::engine::Model::from_bert(&model)?;
    // The dump holds what it writes (ids and mask padded to the longest
    // example, and the logits, a few KB per example), never a batch of
    // every example's activations.
    let width = ds.ids.iter().map(Vec::len).max().unwrap_or(0);
    let mut logits_dump: Vec<f32> = Vec::new();
    let mut confusion = Confusion::new(labels.clone());
    let r = evaluate_text_with(&m.weights, &m.cfg, &m.arch, &ds, 64, |b, logits| {
        confusion.add_batch(&b.labels, logits)?;
        if dump.is_some() {
            logits_dump.extend(logits.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    })?;
    eprint!("{}", confusion.table());
    if let Some(path) = dump {
        let n = ds.len();
        let mut ids = vec![ds.pad_id as i64; n * width];
        let mut mask = vec![0i64; n * width];
        for (row, seq) in ds.ids.iter().enumerate() {
            for (k, &id) in seq.iter().enumerate() {
                ids[row * width + k] = id as i64;
                mask[row * width + k] = 1;
            }
        }
        let classes = logits_dump.len() / n.max(1);
        let dev = &Device::Cpu;
        let tensors = vec![
            (
                "input_ids".to_string(),
                Tensor::from_vec(ids, (n, width), dev)?,
            ),
            (
                "attention_mask".to_string(),
                Tensor::from_vec(mask, (n, width), dev)?,
            ),
            (
                "logits".to_string(),
                Tensor::from_vec(logits_dump, (n, classes), dev)?,
            ),
        ];
        vitnas::train::checkpoint::write_safetensors(path, &tensors, None)?;
    }
    println!(
        "{}",
        serde_json::json!({"model": dir, "data": file, "examples": r.examples,
            "accuracy": r.accuracy, "loss": r.loss, "classes": confusion.report()})
    );
    Ok(())
}

/// Class names for a space that records none: the class ids.
fn class_names(n: usize) -> Vec<String> {
    (0..n).map(|c| c.to_string()).collect()
}
