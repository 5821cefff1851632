//! Hidden-state distillation (TinyBERT, DynaBERT): besides the logits, a
//! distilled subnet learns the teacher's hidden states, a mean squared
//! error per layer boundary between its states and those of the teacher's
//! mapped layer (`[loss] hidden_distill`, [`HiddenDistillConfig`]).
//!
//! The states are the engine's (`crate::engine::Tape::hidden`): rows of
//! the tokens it computes (a text batch's unmasked tokens), so the mean is
//! over non-padding tokens. Weight entanglement keeps a narrower subnet's
//! channels the leading ones of the supernet's, so a student of embedding
//! width `d_s` is compared with the teacher's first `d_s` channels.
//! DynaBERT sums the layers' errors (`rep_loss += mse(s, t)` over the
//! hidden states, embeddings included); so does this, times `weight`.

use super::config::{HiddenDistillConfig, LayerMap};
use super::Distill;
use crate::error::{Error, Result};
use candle_core::Tensor;

/// The teacher boundary that student boundary `j` (0: the embeddings,
/// `i + 1`: the output of layer `i`) of a depth-`d` student learns from,
/// under a depth-`l` teacher: `ceil(j · l / d)` (student layer `i` ↔
/// teacher layer `ceil((i + 1) · l / d) − 1`; the last meets the last,
/// the embeddings the embeddings).
pub fn teacher_boundary(map: LayerMap, j: usize, d: usize, l: usize) -> usize {
    match map {
        LayerMap::Uniform if d == 0 => 0,
        LayerMap::Uniform => (j * l).div_ceil(d),
    }
}

/// A logits distillation loss with a hidden-state term beside it: the
/// logits part is `logits`'s, the hidden part is [`hidden_mse`] with
/// `config` (the step computes it: it needs the engine's states).
pub struct WithHidden {
    pub logits: Box<dyn Distill>,
    pub config: HiddenDistillConfig,
}

impl Distill for WithHidden {
    fn loss(&self, student: &Tensor, teacher: &Tensor) -> candle_core::Result<(Tensor, f32)> {
        self.logits.loss(student, teacher)
    }

    fn diagnose(
        &self,
        student: &Tensor,
        teacher: &Tensor,
    ) -> candle_core::Result<Option<serde_json::Value>> {
        self.logits.diagnose(student, teacher)
    }

    fn hidden(&self) -> Option<&HiddenDistillConfig> {
        Some(&self.config)
    }
}

/// The hidden states of one forward, one entry per chunk of the
/// batch, each one `[rows, embed]` buffer per layer boundary.
pub type HiddenStates = Vec<Vec<Vec<f32>>>;

/// `weight · Σ_j mean((s_j − t_{m(j)}[.., :d_s])²)` over the student's
/// boundaries `j` (the embeddings only with `config.embeddings`), the mean
/// over every row of every chunk and the student's `d_s` channels; `m` is
/// [`teacher_boundary`]. Returns the value and its gradient with respect
/// to each student state (laid out as `student`; an unused boundary's is
/// empty). The teacher's states are constants.
pub fn hidden_mse(
    config: &HiddenDistillConfig,
    student: &[Vec<Vec<f32>>],
    student_embed: usize,
    teacher: &[Vec<Vec<f32>>],
    teacher_embed: usize,
) -> Result<(f32, HiddenStates)> {
    let bad = |message: String| Error::Tensor {
        name: "hidden states".into(),
        message,
    };
    if student_embed > teacher_embed {
        return Err(bad(format!(
            "a student of embed_dim {student_embed} cannot learn the states of a teacher of \
             embed_dim {teacher_embed} (it compares the teacher's leading channels)"
        )));
    }
    if student.len() != teacher.len() || student.is_empty() {
        return Err(bad(format!(
            "{} chunks of student states against {} of the teacher's",
            student.len(),
            teacher.len()
        )));
    }
    let (ds, dt) = (student_embed, teacher_embed);
    let depth = student[0].len().saturating_sub(1);
    let t_depth = teacher[0].len().saturating_sub(1);
    let rows: usize = student
        .iter()
        .map(|c| c.first().map_or(0, |h| h.len() / ds.max(1)))
        .sum();
    let n = (rows * ds).max(1) as f64;
    let scale = config.weight / n;
    let mut value = 0f64;
    let mut grads: HiddenStates = Vec::with_capacity(student.len());
    for (c, (s, t)) in student.iter().zip(teacher).enumerate() {
        if s.len() != depth + 1 || t.len() != t_depth + 1 {
            return Err(bad(format!(
                "chunk {c}: {} student and {} teacher boundaries, expected {} and {}",
                s.len(),
                t.len(),
                depth + 1,
                t_depth + 1
            )));
        }
        let mut g = vec![Vec::new(); depth + 1];
        for (j, g) in g.iter_mut().enumerate() {
            if j == 0 && !config.embeddings {
                continue;
            }
            let (sj, tj) = (
                &s[j],
                &t[teacher_boundary(config.layer_map, j, depth, t_depth)],
            );
            if sj.len() / ds.max(1) * dt != tj.len() {
                return Err(bad(format!(
                    "chunk {c}, boundary {j}: {} student values ({ds} wide) and {} teacher \
                     values ({dt} wide) are not the same rows",
                    sj.len(),
                    tj.len()
                )));
            }
            g.resize(sj.len(), 0.0);
            for ((gs, ss), ts) in g.chunks_mut(ds).zip(sj.chunks(ds)).zip(tj.chunks(dt)) {
                for ((g, &s), &t) in gs.iter_mut().zip(ss).zip(&ts[..ds]) {
                    let r = (s - t) as f64;
                    value += r * r;
                    *g = (2.0 * scale * r) as f32;
                }
            }
        }
        grads.push(g);
    }
    Ok(((value * scale) as f32, grads))
}
