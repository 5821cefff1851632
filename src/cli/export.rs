//! `vitnas export --supernet <run> --arch <arch.json> --out <dir> [--hf-pad]`.

use clap::Args;
use std::path::PathBuf;
use vitnas::models::export;
use vitnas::rundir;
use vitnas::space::flops;
use vitnas::train::text::TextRun;
use vitnas::train::TrainedRun;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A training run directory (recipe.toml, space.toml, supernet.safetensors).
    #[arg(long)]
    supernet: PathBuf,
    /// `largest`, `smallest`, or an architecture JSON file (e.g. from `vitnas search`).
    #[arg(long)]
    arch: String,
    /// Output directory: model.safetensors, config.json, arch.json.
    #[arg(long)]
    out: PathBuf,
    /// Zero-pad heads and MLP units to the per-model maximum so that the
    /// subnet is a Hugging Face ViT (identical outputs, more FLOPs).
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
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    // Checked, and written, where --out resolves: `runs/b/x/..` is run b.
    rundir::check_distinct(&a.supernet, &a.out)?;
    let out = rundir::check_output(&a.out, rundir::Artifact::ExportedModel, a.force)?;
    if TextRun::is_text_run(&a.supernet) {
        return export_text(&a, &out);
    }
    let run = TrainedRun::load(&a.supernet)?;
    let (space, net) = (&run.space, &run.net);
    let arch = run.arch(&a.arch, a.off_grid)?;
    let mut model = net.extract(&arch)?;
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
    let mut model = run.net.extract(&arch)?;
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
