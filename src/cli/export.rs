//! `vitnas export --supernet <run> --arch <arch.json> --out <dir> [--hf-pad]
//! [--format safetensors|onnx] [--check-batch N]`.

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use vitnas::models::{export, onnx};
use vitnas::space::flops;
use vitnas::train::rundir;
use vitnas::train::text::TextRun;
use vitnas::train::TrainedRun;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A training run directory (recipe.toml, space.toml, supernet.safetensors),
    /// or a few-shot directory (the sub-supernet holding --arch is used).
    #[arg(long)]
    supernet: PathBuf,
    /// `largest`, `smallest`, or an architecture JSON file (e.g. from `vitnas search`).
    #[arg(long)]
    arch: String,
    /// Output directory: model.safetensors, config.json, arch.json.
    #[arg(long)]
    out: PathBuf,
    /// Zero-pad heads and MLP units to the per-model maximum so that the
    /// subnet is a plain Hugging Face ViT or BERT, as the space is
    /// (identical outputs, more FLOPs).
    #[arg(long)]
    hf_pad: bool,
    /// Accept an architecture whose values lie outside the space's choice
    /// lists but fit the supernet.
    #[arg(long)]
    off_grid: bool,
    /// Replace an exported model already in --out, or write into a
    /// non-empty directory that is not one (never into a training run).
    #[arg(long)]
    force: bool,
    /// `safetensors`: model.safetensors + config.json (Hugging Face layout
    /// when representable). `onnx`: model.onnx (opset 17, dynamic batch and,
    /// for text, sequence length; any subnet, scaling layers folded in; the
    /// architecture, labels and preprocessing in its metadata).
    #[arg(long, value_enum, default_value_t = Format::Safetensors)]
    format: Format,
    /// With --format onnx: also write check.json, N seeded inputs and
    /// vitnas's outputs for them (evaluate/onnx_check.py runs the ONNX file
    /// in ONNX Runtime on them and prints the largest difference).
    #[arg(long, default_value_t = 0)]
    check_batch: usize,
}

/// What `vitnas export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Safetensors,
    Onnx,
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    // Checked, and written, where --out resolves: `runs/b/x/..` is run b.
    rundir::check_distinct(&a.supernet, &a.out)?;
    let out = rundir::check_output(&a.out, rundir::Artifact::ExportedModel, a.force)?;
    if a.format == Format::Onnx && a.hf_pad {
        anyhow::bail!(
            "--hf-pad pads a subnet for transformers; ONNX holds any subnet as it is: leave --hf-pad out"
        );
    }
    if a.format == Format::Safetensors && a.check_batch > 0 {
        anyhow::bail!(
            "--check-batch writes the inputs for checking an ONNX file: add --format onnx"
        );
    }
    if TextRun::is_text_run(&a.supernet) {
        return export_text(&a, &out);
    }
    let (run, arch) = TrainedRun::load_with_arch(&a.supernet, &a.arch, a.off_grid)?;
    let (space, net) = (&run.space, &run.net);
    let mut model = net.extract(&arch)?;
    if a.format == Format::Onnx {
        let normalize = run.recipe.data.normalize.as_ref();
        let bytes = onnx::vit_to_onnx(&model, &arch, &[], normalize)?;
        let check = match a.check_batch {
            0 => None,
            n => Some(onnx::vit_check_batch(&model, n, 0)?),
        };
        write_onnx(&out, &bytes, check, space, &arch, &run.recipe)?;
        say_onnx_exported(&a.out, bytes.len(), "");
        return Ok(());
    }
    if a.hf_pad {
        let before = flops(space, &arch);
        model = export::pad_uniform(&model)?;
        let c = &model.config;
        let padded = c.arch();
        let after = flops(space, &padded);
        eprintln!(
            "--hf-pad: padded to {} heads and MLP width {} in every layer: {} → {} multiply-adds per image (+{:.1}%)",
            c.num_heads[0],
            c.intermediate_sizes[0],
            before,
            after,
            100.0 * (after as f64 / before as f64 - 1.0)
        );
    }
    let note = export::export(
        &model,
        space,
        &arch,
        run.recipe.data.normalize.as_ref(),
        &out,
    )?;
    // The run's resolved recipe: `vitnas finetune` defaults to its data and
    // normalisation.
    vitnas::train::checkpoint::write_atomic(
        &out.join(vitnas::train::RECIPE_FILE),
        run.recipe.to_toml_string().as_bytes(),
    )?;
    match note {
        None => println!("exported {} (Hugging Face ViTForImageClassification layout)", a.out.display()),
        Some(o) => println!(
            "exported {} (vitnas layout; not representable as a Hugging Face ViT: {o}; --hf-pad makes it one when heads × head_dim can equal the hidden size)",
            a.out.display()
        ),
    }
    Ok(())
}

/// A text subnet in `BertForSequenceClassification` layout, with the run's
/// tokenizer and label names.
fn export_text(a: &ExportArgs, out: &std::path::Path) -> anyhow::Result<()> {
    use vitnas::models::export_bert;
    let run = TextRun::load(&a.supernet)?;
    let space = &run.space;
    let arch = space.arch_from_spec(&a.arch, a.off_grid)?;
    let mut model = run.extract(&arch)?;
    if a.format == Format::Onnx {
        let tok_file = run.dir.join(vitnas::train::text::TOKENIZER_FILE);
        let tokenizer = run.tokenizer()?;
        let text = onnx::TextPreprocessing {
            tokenizer: vitnas::train::text::TOKENIZER_FILE.into(),
            max_length: tokenizer.max_len(),
            pad_token_id: tokenizer.pad_id(),
        };
        let bytes = onnx::bert_to_onnx(&model, &arch, &run.labels, Some(&text))?;
        let check = match a.check_batch {
            0 => None,
            n => Some(onnx::bert_check_batch(&model, n, text.pad_token_id, 0)?),
        };
        write_onnx(out, &bytes, check, space, &arch, &run.recipe)?;
        let tok = std::fs::read(&tok_file).map_err(|e| vitnas::Error::io(&tok_file, e))?;
        vitnas::train::rundir::write_atomic(&out.join(vitnas::train::text::TOKENIZER_FILE), &tok)?;
        say_onnx_exported(&a.out, bytes.len(), "; tokenizer.json beside it");
        return Ok(());
    }
    if a.hf_pad && export_bert::hf_obstacle(&model.config).is_some() {
        model = export_bert::pad_uniform(&model)?;
        let c = &model.config;
        eprintln!(
            "--hf-pad: padded to {} heads and FFN width {} in every layer",
            c.num_heads[0], c.intermediate_sizes[0]
        );
    }
    let tokenizer = run.dir.join(vitnas::train::text::TOKENIZER_FILE);
    let note = export_bert::export(&model, space, &arch, &run.labels, &tokenizer, out)?;
    vitnas::train::checkpoint::write_atomic(
        &out.join(vitnas::train::RECIPE_FILE),
        run.recipe.to_toml_string().as_bytes(),
    )?;
    match note {
        None => println!(
            "exported {} (Hugging Face BertForSequenceClassification layout)",
            a.out.display()
        ),
        Some(o) => println!(
            "exported {} (vitnas layout; transformers cannot load it: {o}; --hf-pad makes it \
             loadable when the hidden size holds every layer's heads)",
            a.out.display()
        ),
    }
    Ok(())
}

/// Says where an ONNX export went (`out`), its opset and size (`bytes`),
/// and `beside`: what was written with it.
fn say_onnx_exported(out: &std::path::Path, bytes: usize, beside: &str) {
    println!(
        "exported {} (model.onnx, opset {}, {:.1} MB{beside})",
        out.display(),
        onnx::OPSET,
        bytes as f64 / 1e6
    );
}

/// An ONNX export directory: model.onnx, arch.json (the architecture, its
/// space, params and FLOPs), the run's recipe and, when asked, check.json.
fn write_onnx(
    out: &std::path::Path,
    bytes: &[u8],
    check: Option<serde_json::Value>,
    space: &vitnas::Space,
    arch: &vitnas::Arch,
    recipe: &vitnas::train::recipe::Recipe,
) -> anyhow::Result<()> {
    use vitnas::train::rundir::write_atomic;
    std::fs::create_dir_all(out).map_err(|e| vitnas::Error::io(out, e))?;
    write_atomic(&out.join("model.onnx"), bytes)?;
    let arch_json = serde_json::json!({
        "arch": arch, "space": space.name, "params": vitnas::space::params(space, arch),
        "flops_macs": flops(space, arch), "format": "onnx", "opset": onnx::OPSET,
    });
    write_atomic(
        &out.join("arch.json"),
        serde_json::to_string_pretty(&arch_json)?.as_bytes(),
    )?;
    write_atomic(
        &out.join(vitnas::train::RECIPE_FILE),
        recipe.to_toml_string().as_bytes(),
    )?;
    if let Some(c) = check {
        write_atomic(
            &out.join("check.json"),
            serde_json::to_string(&c)?.as_bytes(),
        )?;
    }
    Ok(())
}
