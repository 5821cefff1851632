//! A fixed teacher (`[loss] teacher`, DynaBERT's first stage): a trained
//! vitnas run, usually the largest model fine-tuned alone, whose largest
//! subnet teaches every subnet of every step (logits, and hidden states
//! with `[loss] hidden_distill`) instead of the step's own largest subnet.
//! Its weights stay fixed; it runs on the engine, without a tape.

use super::recipe::Recipe;
use super::step::TeacherModel;
use super::{run_paths, LABELS_FILE, RECIPE_FILE, SPACE_FILE};
use crate::engine::{self, Weights};
use crate::error::{Error, Result};
use crate::space::{Arch, Space};
use std::path::{Path, PathBuf};

/// The teacher: the largest subnet of a trained run's supernet, as the
/// engine runs it.
pub struct FixedTeacher {
    /// The run directory it was loaded from.
    pub dir: PathBuf,
    pub weights: Weights,
    pub cfg: engine::Config,
    /// The largest subnet of the run's space: what teaches.
    pub arch: Arch,
}

impl FixedTeacher {
    /// Loads run `path` (a run directory, or its supernet file) as the
    /// teacher of a run of `space` whose labels are `labels` (text: the
    /// names in id order, checked against the teacher's `labels.json`;
    /// `None` for images). Its input (patches or vocabulary) and classes
    /// must be the student's; with `hidden` (hidden-state distillation),
    /// its embedding width must be at least the student space's widest.
    pub fn load(
        path: &Path,
        space: &Space,
        labels: Option<&[String]>,
        hidden: bool,
    ) -> Result<Self> {
        let (dir, file) = run_paths(path);
        let bad = |message: String| Error::InvalidRecipe {
            file: dir.display().to_string(),
            field: "loss.teacher".into(),
            message,
        };
        if !file.is_file() {
            return Err(bad(format!(
                "{} not found: the teacher is a trained vitnas run directory (recipe.toml, \
                 space.toml, supernet.safetensors)",
                file.display()
            )));
        }
        let ts = Space::from_file(dir.join(SPACE_FILE))?;
        let recipe = Recipe::from_file(dir.join(RECIPE_FILE))?;
        let cfg = engine::Config {
            scaling: recipe.scaling.rows(&ts),
            ..engine::Config::from_space(&ts)
        };
        let weights = Weights::read(&file)?;
        let student = engine::Config::from_space(space);
        if cfg.stem != student.stem || cfg.family != student.family {
            return Err(bad(format!(
                "the teacher's space {:?} reads other inputs ({:?}) than this run's {:?} ({:?})",
                ts.name, cfg.stem, space.name, student.stem
            )));
        }
        if cfg.classes != student.classes {
            return Err(bad(format!(
                "the teacher has {} classes and this run's space {:?} {}",
                cfg.classes, space.name, student.classes
            )));
        }
        if let Some(labels) = labels {
            let path = dir.join(LABELS_FILE);
            let theirs: Vec<String> = crate::io::read_json(&path)?;
            super::check_labels(&path, "loss.teacher", &theirs, labels)?;
        }
        let arch = ts.largest();
        let widest = space.largest().embed_dim;
        if hidden && arch.embed_dim < widest {
            return Err(bad(format!(
                "hidden-state distillation compares the teacher's leading channels: its \
                 embed_dim {} is narrower than this space's widest, {widest}",
                arch.embed_dim
            )));
        }
        weights.check(&cfg, &arch)?;
        Ok(Self {
            dir,
            weights,
            cfg,
            arch,
        })
    }

    /// What a step reads of it.
    pub fn model(&self) -> TeacherModel<'_> {
        TeacherModel {
            weights: &self.weights,
            cfg: &self.cfg,
            arch: &self.arch,
        }
    }
}
