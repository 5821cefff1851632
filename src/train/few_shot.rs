//! Few-shot supernets (local weight sharing; Zhao et al., ICML 2021): a
//! trained supernet (the parent) is split into K sub-supernets along one
//! global architecture choice (`embed_dim` or `depth`), one per option.
//! Each inherits all of the parent's weights and trains on, for the
//! recipe's budget, only the architectures that hold its option. A subnet
//! is then evaluated, searched and exported from the sub-supernet that
//! holds it ([`FewShot::part_for`]).
//!
//! The split is a recipe option (`[few_shot] split = "embed_dim"`), or
//! `"auto"`: GM-NAS's gradient-matching criterion (Hu et al., ICLR 2022),
//! which splits on the choice whose options' gradients on the shared
//! weights disagree most ([`gradient_match`]).
//!
//! Layout of a few-shot run directory:
//! - `few-shot.json` ([`Manifest`]): the parent, the choice split on, the
//!   criterion's scores, and one sub-run per option;
//! - `spaces/<choice>-<value>.toml`: each sub-supernet's space (the
//!   parent's, with that choice fixed);
//! - `<choice>-<value>/`: each sub-supernet, an ordinary training run
//!   (resumable by itself, or all together with `vitnas train --resume`).

use super::checkpoint::read_state;
use super::recipe::{FewShotConfig, Recipe, Split};
use super::{RunOptions, Summary, SPACE_FILE, SUPERNET_FILE};
use crate::error::{Error, Result};
use crate::space::{Arch, Space};
use crate::supernet::params::Params;
use candle_core::{DType, Device};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The manifest of a few-shot run directory.
pub const MANIFEST_FILE: &str = "few-shot.json";

/// A global choice a supernet can be split along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    EmbedDim,
    Depth,
}

impl Choice {
    pub const ALL: [Choice; 2] = [Choice::EmbedDim, Choice::Depth];

    pub fn name(self) -> &'static str {
        match self {
            Choice::EmbedDim => "embed_dim",
            Choice::Depth => "depth",
        }
    }

    /// The options of this choice in `space`.
    pub fn options(self, space: &Space) -> &[usize] {
        match self {
            Choice::EmbedDim => &space.choices.embed_dim,
            Choice::Depth => &space.choices.depth,
        }
    }

    /// The value `arch` takes for this choice.
    pub fn of(self, arch: &Arch) -> usize {
        match self {
            Choice::EmbedDim => arch.embed_dim,
            Choice::Depth => arch.depth,
        }
    }

    /// `space` with this choice fixed to `value` (the supernet's
    /// dimensions unchanged, so the parent's weights load as they are).
    pub fn restrict(self, space: &Space, value: usize) -> Space {
        let mut s = space.clone();
        s.name = format!("{}-{}-{value}", space.name, self.name());
        match self {
            Choice::EmbedDim => s.choices.embed_dim = vec![value],
            Choice::Depth => s.choices.depth = vec![value],
        }
        s
    }
}

/// `few-shot.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The few-shot recipe, resolved (what `--resume` continues).
    pub recipe: Recipe,
    /// The parent run the sub-supernets started from.
    pub parent: PathBuf,
    /// The space of the parent (and of the whole few-shot supernet).
    pub space: Space,
    pub choice: Choice,
    /// How the choice was made: `"recipe"` or `"gradient matching"`.
    pub chosen_by: String,
    /// Gradient matching: the mean pairwise cosine similarity of the
    /// options' gradients for each candidate choice (lowest is split on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gm_cosine: Vec<(Choice, f64)>,
    /// One sub-supernet per option: (value, run directory relative to the
    /// few-shot directory).
    pub parts: Vec<(usize, PathBuf)>,
}

/// A loaded few-shot directory: which sub-supernet holds which subnets.
#[derive(Debug, Clone)]
pub struct FewShot {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl FewShot {
    /// Is `dir` a few-shot run directory?
    pub fn is_few_shot(dir: &Path) -> bool {
        dir.join(MANIFEST_FILE).is_file()
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let manifest = crate::io::read_json(&path)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The run directory of the sub-supernet that holds `arch`, or an
    /// error naming the choice and the value no part holds.
    pub fn part_for(&self, arch: &Arch) -> Result<PathBuf> {
        let m = &self.manifest;
        let v = m.choice.of(arch);
        m.parts
            .iter()
            .find(|(value, _)| *value == v)
            .map(|(_, d)| self.dir.join(d))
            .ok_or_else(|| Error::Data {
                source_name: self.dir.join(MANIFEST_FILE).display().to_string(),
                message: format!(
                    "no sub-supernet holds {} = {v} (parts: {:?})",
                    m.choice.name(),
                    m.parts.iter().map(|p| p.0).collect::<Vec<_>>()
                ),
            })
    }
}

/// Is `spec` a vitnas training run (a supernet to start from) rather than
/// a Hugging Face model?
pub fn is_supernet_run(spec: &str) -> bool {
    let p = Path::new(spec);
    p.join(SUPERNET_FILE).is_file() && p.join(SPACE_FILE).is_file()
}

/// Copies the trained supernet of run `parent` into `params`. Its space
/// must allocate the same shapes as `space` (the same `[input]`/`[text]`
/// and `[supernet]`); tensors the parent lacks (e.g. scaling layers it did
/// not train) keep their initialisation and are listed in the report.
pub fn load_parent_into(
    params: &Params,
    parent: &Path,
    space: &Space,
) -> Result<crate::hub::LoadReport> {
    let parent_space_file = parent.join(SPACE_FILE);
    let ps = Space::from_file(&parent_space_file)?;
    // Which layers a shallower subnet runs changes no shape.
    let same_shapes = |a: &Space| {
        let mut d = a.supernet.clone();
        d.depth_layers = Default::default();
        d
    };
    if same_shapes(&ps) != same_shapes(space) || ps.input != space.input || ps.text != space.text {
        return Err(Error::InvalidConfig {
            file: parent_space_file.display().to_string(),
            field: "supernet".into(),
            message: format!(
                "the parent supernet's space {:?} allocates other shapes than this run's space \
                 {:?}: a sub-supernet keeps the parent's [input] and [supernet] tables",
                ps.name, space.name
            ),
        });
    }
    let file = parent.join(SUPERNET_FILE);
    let (tensors, _) = super::checkpoint::read_weights(&file, &Device::Cpu)?;
    crate::hub::fill(params, &file, tensors)
}

/// What a few-shot training returns.
#[derive(Debug, Clone, Serialize)]
pub struct FewShotSummary {
    pub dir: PathBuf,
    pub choice: Choice,
    pub chosen_by: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gm_cosine: Vec<(Choice, f64)>,
    /// The sub-runs trained by this call (finished ones are skipped).
    pub parts: Vec<Summary>,
    /// Stopped by a signal; `vitnas train --resume <dir>` continues.
    pub interrupted: bool,
}

fn bad(field: &str, message: String) -> Error {
    Error::InvalidRecipe {
        file: "recipe [few_shot]".into(),
        field: field.into(),
        message,
    }
}

/// Continues the few-shot run in `dir` (its manifest's recipe).
pub fn resume(dir: &Path, opts: &RunOptions) -> Result<FewShotSummary> {
    let mut recipe = FewShot::load(dir)?.manifest.recipe;
    recipe.output_dir = dir.to_path_buf();
    train(&recipe, opts)
}

/// Trains the few-shot supernet of `recipe` (which has `[few_shot]` and
/// `init_from` = the parent run) into `recipe.output_dir`, or continues it
/// (`opts.resume`, or the directory already holds its manifest): the
/// choice is made once and recorded, finished parts are skipped, a part in
/// progress resumes from its checkpoint.
pub fn train(recipe: &Recipe, opts: &RunOptions) -> Result<FewShotSummary> {
    let fs = recipe
        .few_shot
        .as_ref()
        .ok_or_else(|| bad("few_shot", "missing".into()))?;
    let out = &recipe.output_dir;
    let manifest = if FewShot::is_few_shot(out) {
        FewShot::load(out)?.manifest
    } else {
        let parent = recipe
            .init_from
            .as_deref()
            .filter(|s| is_supernet_run(s))
            .ok_or_else(|| {
                bad(
                    "init_from",
                    format!(
                        "{:?} is not a trained vitnas supernet run (supernet.safetensors and \
                         space.toml): a few-shot recipe splits such a parent",
                        recipe.init_from
                    ),
                )
            })?;
        let space = Space::from_file(&recipe.space)?;
        if space.is_text() {
            return Err(bad(
                "few_shot",
                "few-shot splitting is implemented for image spaces only".into(),
            ));
        }
        let (choice, chosen_by, gm_cosine) = match fs.split {
            Split::EmbedDim => (Choice::EmbedDim, "recipe".to_string(), vec![]),
            Split::Depth => (Choice::Depth, "recipe".to_string(), vec![]),
            Split::Auto => {
                let scores = gradient_match(recipe, &space, Path::new(parent), fs)?;
                let best = scores
                    .iter()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|s| s.0)
                    .ok_or_else(|| {
                        bad(
                            "split",
                            "no choice of the space has two or more options to split".into(),
                        )
                    })?;
                (best, "gradient matching".to_string(), scores)
            }
        };
        let options = choice.options(&space);
        if options.len() < 2 {
            return Err(bad(
                "split",
                format!(
                    "{} has {} option(s) in {}: nothing to split",
                    choice.name(),
                    options.len(),
                    recipe.space.display()
                ),
            ));
        }
        std::fs::create_dir_all(out.join("spaces")).map_err(|e| Error::io(out, e))?;
        let mut parts = Vec::new();
        for &v in options {
            let sub = choice.restrict(&space, v);
            let file = out
                .join("spaces")
                .join(format!("{}-{v}.toml", choice.name()));
            crate::io::write_atomic(&file, sub.to_toml_string().as_bytes())?;
            parts.push((v, PathBuf::from(format!("{}-{v}", choice.name()))));
        }
        let m = Manifest {
            recipe: recipe.clone(),
            parent: PathBuf::from(parent),
            space,
            choice,
            chosen_by,
            gm_cosine,
            parts,
        };
        let text = serde_json::to_string_pretty(&m).expect("manifest serialises");
        crate::io::write_atomic(&out.join(MANIFEST_FILE), text.as_bytes())?;
        m
    };
    let mut parts = Vec::new();
    let mut interrupted = false;
    for (v, rel) in &manifest.parts {
        let dir = out.join(rel);
        // As `rank` decides for a supernet: no checkpoint, train; a
        // checkpoint short of the last step, resume; else it is done.
        let sub = if !dir.join(super::CHECKPOINT_FILE).is_file() {
            let mut r = recipe.clone();
            r.few_shot = None;
            r.name = format!("{}-{}-{v}", recipe.name, manifest.choice.name());
            r.space = out
                .join("spaces")
                .join(format!("{}-{v}.toml", manifest.choice.name()));
            r.output_dir = dir.clone();
            r.init_from = Some(manifest.parent.display().to_string());
            let o = RunOptions {
                resume: false,
                stop: opts.stop,
                progress: opts.progress,
                max_steps: opts.max_steps,
                force: true,
                collective: opts.collective,
            };
            super::train(&r, &o)?
        } else if read_state(&dir)?.is_some_and(|s| s.step < s.total_steps) {
            super::resume(&dir, opts)?
        } else {
            continue;
        };
        interrupted = sub.interrupted;
        parts.push(sub);
        if interrupted {
            break;
        }
    }
    Ok(FewShotSummary {
        dir: out.clone(),
        choice: manifest.choice,
        chosen_by: manifest.chosen_by,
        gm_cosine: manifest.gm_cosine,
        parts,
        interrupted,
    })
}

/// GM-NAS's criterion on the parent supernet: for each global choice with
/// two or more options, the gradient of the cross-entropy on the parent's
/// weights is taken for each option (summed over `gm_archs` architectures
/// drawn from the space with that option fixed, on each of `gm_batches`
/// training batches), and the options' gradients are compared by cosine
/// similarity. Returns each choice's mean pairwise cosine (averaged over
/// batches): the lowest disagrees most and is split on. Seeded by the
/// recipe's seed.
pub fn gradient_match(
    recipe: &Recipe,
    space: &Space,
    parent: &Path,
    fs: &FewShotConfig,
) -> Result<Vec<(Choice, f64)>> {
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let net = crate::supernet::Supernet::with_scaling(space, recipe.init, &recipe.scaling, vb)?;
    let params = Params::from_varmap(&vm);
    load_parent_into(&params, parent, space)?;
    let data = super::load_train_val(recipe, space)?;
    let norm = recipe.data.normalize.clone().unwrap_or(data.norm);
    let mut rng = StdRng::seed_from_u64(recipe.seed ^ 0x6d5f_6e61_735f_676d);
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    order.shuffle(&mut rng);
    let bs = recipe.train.batch_size.min(order.len()).max(1);
    let mut scores = Vec::new();
    for choice in Choice::ALL {
        let options = choice.options(space);
        if options.len() < 2 {
            continue;
        }
        let mut cos_sum = 0.0;
        let mut batches = 0usize;
        for b in 0..fs.gm_batches.max(1) {
            let idx: Vec<usize> = order
                .iter()
                .cycle()
                .skip(b * bs)
                .take(bs)
                .copied()
                .collect();
            let (x, y) =
                crate::data::batch::make_batch(&data.train, &idx, &norm, None, &Device::Cpu)?;
            let mut grads: Vec<Vec<f32>> = Vec::new();
            for &v in options {
                let sub = choice.restrict(space, v);
                let mut g: Option<Vec<f32>> = None;
                for _ in 0..fs.gm_archs.max(1) {
                    let arch = sub.sample(&mut rng);
                    let loss = super::loss::cross_entropy(&net.forward(&x, &arch, true)?, &y, 0.0)?;
                    let store = loss.backward()?;
                    let flat = flatten(&params, &store)?;
                    match &mut g {
                        None => g = Some(flat),
                        Some(acc) => acc.iter_mut().zip(&flat).for_each(|(a, f)| *a += f),
                    }
                }
                grads.push(g.expect("at least one architecture"));
            }
            let mut pairs = 0usize;
            let mut sum = 0.0;
            for i in 0..grads.len() {
                for j in i + 1..grads.len() {
                    sum += cosine(&grads[i], &grads[j]);
                    pairs += 1;
                }
            }
            cos_sum += sum / pairs as f64;
            batches += 1;
        }
        scores.push((choice, cos_sum / batches as f64));
    }
    Ok(scores)
}

/// Every parameter's gradient, flattened in the order of `params` (zeros
/// where a parameter got none).
fn flatten(params: &Params, store: &candle_core::backprop::GradStore) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for v in &params.vars {
        match store.get(v.as_tensor()) {
            Some(g) => out.extend(g.flatten_all()?.to_vec1::<f32>()?),
            None => out.extend(std::iter::repeat_n(0.0, v.elem_count())),
        }
    }
    Ok(out)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    ab / (aa.sqrt() * bb.sqrt())
}
