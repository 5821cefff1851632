//! One optimizer step's forward/backward work: every subnet of a [`Plan`]
//! in turn, gradients accumulated into flat per-parameter buffers, one set
//! per group of subnets (a gradient strategy, [`super::gradient`], says
//! which subnets share a group and combines the groups).
//!
//! One loop serves both ways of computing a subnet's gradients: the
//! [`engine`] or candle's autograd, chosen by the [`Path`] value the caller
//! passes.

use super::loss::{
    cross_entropy, hidden_mse, Distill, HiddenDistillConfig, HiddenStates, Ranking, RankingTerms,
};
use super::sampler::Plan;
use crate::engine::{self, Weights};
use crate::error::Result;
use crate::models::vit::Vit;
use crate::space::Arch;
use crate::supernet::bert::{BertSupernet, Tokens};
use crate::supernet::Supernet;
use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

pub use crate::supernet::params::Params;

// The step's view of the variables; `Params` itself lives with the
// supernet, below training.
impl Params {
    /// The engine's flat copy of the current values, when `net` runs on the
    /// engine (f32 parameters): the trainer keeps it between steps and
    /// updates it in place.
    pub fn engine_weights(&self, net: &dyn Forward) -> Result<Option<(Weights, engine::Config)>> {
        let f32_params = self.vars.iter().all(|v| v.dtype() == DType::F32);
        match net.engine_config() {
            Some(cfg) if f32_params => Ok(Some((Weights::from_tensors(&self.tensors())?, cfg))),
            _ => Ok(None),
        }
    }
}

/// What a step's models read: images, or token sequences with their mask.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// `[B, C, H, W]` f32.
    Images(&'a Tensor),
    Tokens(Tokens<'a>),
}

impl<'a> Input<'a> {
    /// The images, or an error naming what the model reads instead.
    pub fn images(self) -> Result<&'a Tensor> {
        match self {
            Input::Images(x) => Ok(x),
            Input::Tokens(_) => Err(crate::error::Error::Tensor {
                name: "input".into(),
                message: "an image model was given token sequences".into(),
            }),
        }
    }

    /// The token sequences, or an error naming what the model reads instead.
    pub fn tokens(self) -> Result<Tokens<'a>> {
        match self {
            Input::Tokens(x) => Ok(x),
            Input::Images(_) => Err(crate::error::Error::Tensor {
                name: "input".into(),
                message: "a text model was given images".into(),
            }),
        }
    }
}

/// What a step trains: logits of architecture `arch` in training mode.
pub trait Forward {
    fn forward_train(&self, input: Input, arch: &Arch) -> Result<Tensor>;
    /// The shapes the [`engine`] needs to run this model's forward and
    /// backward itself; `None` leaves the step to candle's autograd.
    fn engine_config(&self) -> Option<engine::Config>;
}

impl Forward for Supernet {
    fn forward_train(&self, input: Input, arch: &Arch) -> Result<Tensor> {
        self.forward(input.images()?, arch, true)
    }
    fn engine_config(&self) -> Option<engine::Config> {
        Some(engine::Config::from_supernet(self))
    }
}

/// A static model has one architecture: `arch` only labels it.
impl Forward for Vit {
    fn forward_train(&self, input: Input, _arch: &Arch) -> Result<Tensor> {
        Ok(Vit::forward(self, input.images()?)?)
    }
    fn engine_config(&self) -> Option<engine::Config> {
        Some(engine::Config::from_vit(&self.config))
    }
}

impl Forward for BertSupernet {
    fn forward_train(&self, input: Input, arch: &Arch) -> Result<Tensor> {
        self.forward(input.tokens()?, arch, true)
    }
    fn engine_config(&self) -> Option<engine::Config> {
        Some(engine::Config::from_space(&self.space))
    }
}

/// What the subnets of a step reported.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLosses {
    /// Reported loss of each subnet, in plan order.
    pub losses: Vec<f32>,
    /// The first subnet whose loss was NaN or infinite (its index); the
    /// accumulated gradients must then be discarded.
    pub nonfinite: Option<usize>,
    /// The step's ranking term, when the batch had one (and every loss was
    /// finite).
    pub ranking: Option<RankingTerms>,
}

/// How a training step computes its gradients. All three compute the same
/// gradients up to float rounding (tested); the caller chooses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// The CPU [`engine`] for the f32 models it runs (every vitnas ViT),
    /// candle's autograd for anything else (e.g. other dtypes).
    #[default]
    Engine,
    /// candle's autograd over vitnas's fused kernels (via [`crate::engine::ops`]): the
    /// reference path.
    Autograd,
    /// candle's autograd over the unfused candle composites
    /// ([`crate::engine::ops::composite`]): the reference of the fused kernels.
    Composite,
}

/// Which code computes the forward and backward passes of a step's
/// subnets. Both give the same gradients up to float rounding (tested).
#[derive(Clone, Copy)]
pub enum Path<'a> {
    /// The [`engine`] on weights it holds ([`Params::engine_weights`]):
    /// candle computes only the losses and their gradients with respect to
    /// the logits.
    Engine {
        weights: &'a Weights,
        config: &'a engine::Config,
        /// What the forward keeps of each block for the backward
        /// (`[train] recompute`).
        recompute: engine::Recompute,
    },
    /// candle's autograd through the model's own forward.
    Autograd {
        net: &'a dyn Forward,
        params: &'a Params,
    },
}

/// What a step trains on and how each subnet's loss is made.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    pub input: Input<'a>,
    pub labels: &'a Tensor,
    pub label_smoothing: f64,
    /// In-place distillation of the subnets after the plan's teacher (with
    /// its hidden-state term, [`Distill::hidden`], on the engine only).
    pub distill: Option<&'a dyn Distill>,
    /// The ranking-consistency term between the plan's subnets (none:
    /// each subnet's loss alone, as without it).
    pub ranking: Option<Ranking<'a>>,
    /// A fixed teacher (`[loss] teacher`): every subnet of the plan, the
    /// first included, distills from it rather than from the plan's first
    /// subnet (on the engine only).
    pub teacher: Option<TeacherModel<'a>>,
}

/// A fixed teacher as a step runs it: the largest subnet of a trained
/// run, on its own weights ([`crate::train::teacher::FixedTeacher`]).
#[derive(Clone, Copy)]
pub struct TeacherModel<'a> {
    pub weights: &'a Weights,
    pub cfg: &'a engine::Config,
    pub arch: &'a Arch,
}

/// Forward and backward of every subnet in `plan`, adding gradients into
/// `grads` (same order as `params`), computed by `backend`.
#[allow(clippy::too_many_arguments)]
pub fn accumulate(
    net: &dyn Forward,
    params: &Params,
    plan: &Plan,
    images: &Tensor,
    labels: &Tensor,
    label_smoothing: f64,
    distill: Option<&dyn Distill>,
    grads: &mut [Vec<f32>],
    backend: Backend,
) -> Result<StepLosses> {
    let batch = Batch {
        input: Input::Images(images),
        labels,
        label_smoothing,
        distill,
        ranking: None,
        teacher: None,
    };
    let one_group = vec![0; plan.archs.len()];
    if backend == Backend::Engine && images.dtype() == DType::F32 {
        if let Some((weights, config)) = params.engine_weights(net)? {
            let path = Path::Engine {
                weights: &weights,
                config: &config,
                recompute: engine::Recompute::None,
            };
            return accumulate_groups(path, plan, batch, &one_group, &mut [grads]);
        }
    }
    let path = Path::Autograd { net, params };
    let mut autograd = || accumulate_groups(path, plan, batch, &one_group, &mut [&mut *grads]);
    match backend {
        Backend::Composite => crate::engine::ops::with_composite(autograd),
        _ => autograd(),
    }
}

/// [`accumulate`] by the engine on weights it already holds (see
/// [`Params::engine_weights`]).
#[allow(clippy::too_many_arguments)]
pub fn accumulate_on_engine(
    w: &Weights,
    cfg: &engine::Config,
    plan: &Plan,
    images: &Tensor,
    labels: &Tensor,
    label_smoothing: f64,
    distill: Option<&dyn Distill>,
    recompute: engine::Recompute,
    grads: &mut [Vec<f32>],
) -> Result<StepLosses> {
    let path = Path::Engine {
        weights: w,
        config: cfg,
        recompute,
    };
    let batch = Batch {
        input: Input::Images(images),
        labels,
        label_smoothing,
        distill,
        ranking: None,
        teacher: None,
    };
    accumulate_groups(path, plan, batch, &vec![0; plan.archs.len()], &mut [grads])
}

/// Forward and backward of every subnet of `plan` by `path`, in plan
/// order: the gradients of subnet `k` are added into
/// `groups[group_of[k]]` (each a set of buffers in the order of the
/// parameters). With one group this is the plain sum over the subnets.
pub fn accumulate_groups(
    path: Path,
    plan: &Plan,
    batch: Batch,
    group_of: &[usize],
    groups: &mut [&mut [Vec<f32>]],
) -> Result<StepLosses> {
    assert_eq!(group_of.len(), plan.archs.len(), "one group per subnet");
    match path {
        Path::Engine {
            weights,
            config,
            recompute,
        } => {
            let mut pass = EnginePass::new(weights, config, batch.input, recompute)?;
            run_subnets(&mut pass, plan, batch, group_of, groups)
        }
        Path::Autograd { net, params } => {
            let mut pass = AutogradPass {
                net,
                params,
                input: batch.input,
            };
            run_subnets(&mut pass, plan, batch, group_of, groups)
        }
    }
}

/// The loss of one subnet of a step and its reported value: distillation
/// from the step's teacher when there is one, else label-smoothed CE.
fn subnet_loss(logits: &Tensor, teacher: Option<&Tensor>, batch: &Batch) -> Result<(Tensor, f32)> {
    Ok(match (teacher, batch.distill) {
        (Some(t), Some(d)) => d.loss(logits, t)?,
        _ => {
            let l = cross_entropy(logits, batch.labels, batch.label_smoothing)?;
            let v = l.to_scalar::<f32>()?;
            (l, v)
        }
    })
}

/// One subnet's forward and backward, by one [`Path`].
trait Pass {
    /// What a forward keeps for its backward (the engine's activations;
    /// nothing for candle, whose logits hold their graph).
    type Tape;
    /// Logits of `arch` as a tensor that `loss.backward()` differentiates,
    /// and what the backward of `arch` needs; with `hidden`, the tape also
    /// keeps the hidden states ([`Pass::take_hidden`]).
    fn forward(&mut self, arch: &Arch, hidden: bool) -> Result<(Tensor, Self::Tape)>;
    /// The hidden states a `hidden` forward kept, moved out of its tape.
    fn take_hidden(&self, tape: &mut Self::Tape) -> HiddenStates;
    /// The fixed teacher's logits on the step's input (constants), and
    /// with `hidden` its hidden states, laid out as [`Pass::take_hidden`]'s.
    fn teacher(&mut self, teacher: TeacherModel, hidden: bool) -> Result<(Tensor, HiddenStates)>;
    /// Adds the gradients of `loss` (a function of `logits`, from the
    /// forward that returned `tape`), plus those of a hidden-state term
    /// given by `dhidden` (its gradient with respect to the states, as
    /// [`Pass::take_hidden`] lays them out; empty: none), into `grads`, or
    /// sets them aside to be added by [`Pass::flush`].
    fn backward(
        &mut self,
        arch: &Arch,
        tape: &Self::Tape,
        logits: &Tensor,
        loss: &Tensor,
        dhidden: &[Vec<Vec<f32>>],
        grads: &mut [Vec<f32>],
    ) -> Result<()>;
    /// Adds what was set aside since the last flush into `grads`; `last`:
    /// no backward follows.
    fn flush(&mut self, grads: &mut [Vec<f32>], last: bool);
}

/// A subnet between its forward and its backward.
struct Forwarded<T> {
    logits: Tensor,
    tape: T,
    loss: Tensor,
    /// The hidden-state term's gradient (empty: none).
    dhidden: HiddenStates,
}

/// The teacher's hidden states of a step: its embedding width and states.
type TeacherStates = Option<(usize, HiddenStates)>;

/// Hidden-state distillation of one subnet's forward: the teacher's
/// states are kept (first subnet of a teacher-first plan), a student's
/// compared with them: the term's value and gradient (zero and empty for
/// the teacher or without the term).
fn hidden_term<P: Pass>(
    pass: &P,
    config: Option<&HiddenDistillConfig>,
    arch: &Arch,
    tape: &mut P::Tape,
    teacher: &mut TeacherStates,
    is_teacher: bool,
) -> Result<(f32, HiddenStates)> {
    let Some(config) = config else {
        return Ok((0.0, Vec::new()));
    };
    let states = pass.take_hidden(tape);
    if is_teacher {
        *teacher = Some((arch.embed_dim, states));
        return Ok((0.0, Vec::new()));
    }
    match teacher {
        Some((te, ts)) => hidden_mse(config, &states, arch.embed_dim, ts, *te),
        None => Ok((0.0, Vec::new())),
    }
}

/// Where a step's subnets learn from: the fixed teacher's logits and
/// states when there is one (computed here), else none yet (the plan's
/// first subnet, when teacher-first, sets them). Also the hidden-state
/// term to apply, and whether the first subnet teaches.
struct StepTeacher<'a> {
    logits: Option<Tensor>,
    states: TeacherStates,
    hidden: Option<&'a HiddenDistillConfig>,
    in_place: bool,
}

impl<'a> StepTeacher<'a> {
    fn new<P: Pass>(pass: &mut P, plan: &Plan, batch: &Batch<'a>) -> Result<Self> {
        let distill = batch
            .distill
            .filter(|_| plan.teacher_first || batch.teacher.is_some());
        let hidden = distill.and_then(|d| d.hidden());
        let Some(t) = batch.teacher.filter(|_| distill.is_some()) else {
            return Ok(Self {
                logits: None,
                states: None,
                hidden,
                in_place: plan.teacher_first,
            });
        };
        let (logits, states) = pass.teacher(t, hidden.is_some())?;
        Ok(Self {
            logits: Some(logits),
            states: hidden.map(|_| (t.arch.embed_dim, states)),
            hidden,
            in_place: false,
        })
    }

    /// Whether subnet `k` of the plan teaches the rest.
    fn teaches(&self, k: usize) -> bool {
        k == 0 && self.in_place
    }
}

/// The step loop, the same for every path: each subnet's forward, its loss
/// (the first of a teacher-first plan teaches the rest), its backward into
/// its group. With a ranking term, every subnet's forward comes first (the
/// term needs every subnet's label loss), then the backward passes in plan
/// order, each subnet's loss with its share of the term added: the step
/// then holds every subnet's activations at once, instead of one
/// subnet's, but computes nothing twice.
fn run_subnets<P: Pass>(
    pass: &mut P,
    plan: &Plan,
    batch: Batch,
    group_of: &[usize],
    groups: &mut [&mut [Vec<f32>]],
) -> Result<StepLosses> {
    let n = plan.archs.len();
    let mut st = StepTeacher::new(pass, plan, &batch)?;
    let mut losses = Vec::with_capacity(n);
    let mut held = Vec::new();
    let mut backward = |pass: &mut P, k: usize, f: Forwarded<P::Tape>| -> Result<()> {
        let g = group_of[k];
        let (arch, tape) = (&plan.archs[k], &f.tape);
        pass.backward(arch, tape, &f.logits, &f.loss, &f.dhidden, groups[g])?;
        if group_of.get(k + 1) != Some(&g) {
            pass.flush(groups[g], k + 1 == n);
        }
        Ok(())
    };
    for (k, arch) in plan.archs.iter().enumerate() {
        let (logits, mut tape) = pass.forward(arch, st.hidden.is_some())?;
        let (loss, mut value) = subnet_loss(&logits, st.logits.as_ref(), &batch)?;
        let teaches = st.teaches(k);
        let (h, dhidden) = hidden_term(pass, st.hidden, arch, &mut tape, &mut st.states, teaches)?;
        value += h;
        losses.push(value);
        if !value.is_finite() {
            return Ok(StepLosses {
                losses,
                nonfinite: Some(k),
                ranking: None,
            });
        }
        if teaches {
            st.logits = Some(logits.detach());
        }
        let f = Forwarded {
            logits,
            tape,
            loss,
            dhidden,
        };
        match batch.ranking {
            Some(_) => held.push(f),
            None => backward(pass, k, f)?,
        }
    }
    let Some(ranking) = batch.ranking else {
        return Ok(StepLosses {
            losses,
            nonfinite: None,
            ranking: None,
        });
    };
    let ces = held
        .iter()
        .map(|f| cross_entropy(&f.logits, batch.labels, batch.label_smoothing))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let values = ces
        .iter()
        .map(|ce| Ok(ce.to_scalar::<f32>()? as f64))
        .collect::<Result<Vec<f64>>>()?;
    let terms = ranking.terms(&values);
    for (k, (mut f, ce)) in held.into_iter().zip(ces).enumerate() {
        let c = terms.weight * terms.coefficients[k];
        if c != 0.0 {
            f.loss = (f.loss + (ce * c)?)?;
        }
        backward(pass, k, f)?;
    }
    Ok(StepLosses {
        losses,
        nonfinite: None,
        ranking: Some(terms),
    })
}

/// One subnet's gradients on a diagnosed step (see [`diagnose_subnets`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubnetDiagnosis {
    /// The subnet's reported loss, as in the step.
    pub loss: f32,
    /// Whether it learned from the step's teacher (distillation) rather
    /// than from the labels.
    pub distilled: bool,
    /// `‖∂loss/∂θ‖` over every parameter: this subnet's share of the
    /// step's summed gradient, before any gradient strategy or clipping.
    pub grad_norm: f64,
    /// `‖∂loss/∂logits‖` (of the batch-mean loss).
    pub logit_grad_norm: f64,
    /// Mean entropy (nats) of its predicted distribution: how confident
    /// it is (`ln classes` is uniform).
    pub entropy: f64,
    /// Its accuracy on the batch's labels.
    pub batch_accuracy: f64,
    /// For a distilled subnet: the label-smoothed cross-entropy it would
    /// have had on the same batch, and how its gradient compares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ce: Option<CeComparison>,
    /// The distillation loss's own statistics ([`Distill::diagnose`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distill: Option<serde_json::Value>,
}

/// A distilled subnet's distillation gradient against the cross-entropy
/// gradient the labels would give it on the same batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CeComparison {
    /// The label-smoothed cross-entropy's value.
    pub loss: f32,
    /// `‖∂CE/∂θ‖`.
    pub grad_norm: f64,
    /// `‖∂CE/∂logits‖`.
    pub logit_grad_norm: f64,
    /// Cosine between the distillation and the CE parameter gradients.
    pub cosine: f64,
}

/// Diagnosis of a step, for `[train] diagnose_gradients`: every subnet of
/// `plan` is run again on the same batch and weights by `path`, and its
/// gradient computed alone (its own loss, without the ranking term) into
/// scratch buffers; for each distilled subnet, also the cross-entropy
/// gradient the labels would give it. Nothing is added to any update: a
/// run trains the same with and without it, at about twice the work on
/// the steps it diagnoses.
pub fn diagnose_subnets(path: Path, plan: &Plan, batch: Batch) -> Result<Vec<SubnetDiagnosis>> {
    match path {
        Path::Engine {
            weights,
            config,
            recompute,
        } => {
            let mut pass = EnginePass::new(weights, config, batch.input, recompute)?;
            diagnose(&mut pass, plan, batch, weights.zero_grads())
        }
        Path::Autograd { net, params } => {
            let mut pass = AutogradPass {
                net,
                params,
                input: batch.input,
            };
            diagnose(&mut pass, plan, batch, params.zero_grads())
        }
    }
}

/// `‖∂f(z)/∂z‖` at `z = logits` (detached: only the loss's own gradient).
fn logit_grad(logits: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Vec<f32>> {
    let z = Var::from_tensor(&logits.detach())?;
    let g = f(z.as_tensor())?.backward()?;
    Ok(match g.get(z.as_tensor()) {
        Some(d) => d.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; z.elem_count()],
    })
}

/// Mean entropy of `softmax(logits)` and accuracy against `labels`.
fn entropy_accuracy(logits: &Tensor, labels: &Tensor) -> Result<(f64, f64)> {
    let logp = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    let h = (logp.exp()? * &logp)?.sum(candle_core::D::Minus1)?.neg()?;
    let hit = logits
        .argmax(candle_core::D::Minus1)?
        .eq(&labels.to_dtype(DType::U32)?)?
        .to_dtype(DType::F32)?;
    let mean = |t: Tensor| -> Result<f64> { Ok(t.mean_all()?.to_scalar::<f32>()? as f64) };
    Ok((mean(h)?, mean(hit)?))
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

/// `(⟨a, b⟩, ‖a‖², ‖b‖²)` over every parameter's buffer.
fn dot_all(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f64, f64, f64) {
    a.iter().zip(b).fold((0.0, 0.0, 0.0), |(d, x, y), (a, b)| {
        let (d2, x2, y2) = super::gradient::dot3(a, b);
        (d + d2, x + x2, y + y2)
    })
}

fn diagnose<P: Pass>(
    pass: &mut P,
    plan: &Plan,
    batch: Batch,
    mut scratch: Vec<Vec<f32>>,
) -> Result<Vec<SubnetDiagnosis>> {
    let mut ce_scratch = scratch.clone();
    let mut st = StepTeacher::new(pass, plan, &batch)?;
    let mut out = Vec::with_capacity(plan.archs.len());
    let ce = |z: &Tensor| Ok(cross_entropy(z, batch.labels, batch.label_smoothing)?);
    for (k, arch) in plan.archs.iter().enumerate() {
        let (logits, mut tape) = pass.forward(arch, st.hidden.is_some())?;
        let (loss, mut value) = subnet_loss(&logits, st.logits.as_ref(), &batch)?;
        let teaches = st.teaches(k);
        let (h, dhidden) = hidden_term(pass, st.hidden, arch, &mut tape, &mut st.states, teaches)?;
        value += h;
        if !value.is_finite() {
            break;
        }
        scratch.iter_mut().for_each(|g| g.fill(0.0));
        pass.backward(arch, &tape, &logits, &loss, &dhidden, &mut scratch)?;
        pass.flush(&mut scratch, false);
        let own = |z: &Tensor| Ok(subnet_loss(z, st.logits.as_ref(), &batch)?.0);
        let dz = logit_grad(&logits, own)?;
        let (entropy, batch_accuracy) = entropy_accuracy(&logits.detach(), batch.labels)?;
        let mut d = SubnetDiagnosis {
            loss: value,
            distilled: false,
            grad_norm: dot_all(&scratch, &scratch).1.sqrt(),
            logit_grad_norm: norm(&dz),
            entropy,
            batch_accuracy,
            ce: None,
            distill: None,
        };
        if let (Some(t), Some(distill)) = (&st.logits, batch.distill) {
            let ce_loss = ce(&logits)?;
            ce_scratch.iter_mut().for_each(|g| g.fill(0.0));
            pass.backward(arch, &tape, &logits, &ce_loss, &[], &mut ce_scratch)?;
            pass.flush(&mut ce_scratch, false);
            let (dot, aa, bb) = dot_all(&scratch, &ce_scratch);
            d.distilled = true;
            d.ce = Some(CeComparison {
                loss: ce_loss.to_scalar::<f32>()?,
                grad_norm: bb.sqrt(),
                logit_grad_norm: norm(&logit_grad(&logits, ce)?),
                cosine: if aa > 0.0 && bb > 0.0 {
                    dot / (aa * bb).sqrt()
                } else {
                    0.0
                },
            });
            d.distill = distill.diagnose(&logits.detach(), t)?;
        }
        if teaches {
            st.logits = Some(logits.detach());
        }
        out.push(d);
    }
    Ok(out)
}

/// A step's input as flat buffers the engine reads.
enum Flat {
    Images(Vec<f32>),
    Tokens {
        ids: Vec<u32>,
        mask: Vec<u32>,
        t: usize,
    },
}

impl Flat {
    fn input(&self) -> engine::Input<'_> {
        match self {
            Flat::Images(x) => engine::Input::Images(x),
            Flat::Tokens { ids, mask, t } => engine::Input::Tokens { ids, mask, t: *t },
        }
    }
}

/// The engine's pass: the batch split into chunks, one per thread.
struct EnginePass<'a> {
    w: &'a Weights,
    cfg: &'a engine::Config,
    device: Device,
    batch: usize,
    x: Flat,
    chunks: Vec<std::ops::Range<usize>>,
    recompute: engine::Recompute,
    /// Gradients of chunks 1.. (chunk 0 adds into the group's buffers),
    /// added in at each flush.
    extra: Vec<Vec<Vec<f32>>>,
}

impl<'a> EnginePass<'a> {
    fn new(
        w: &'a Weights,
        cfg: &'a engine::Config,
        input: Input,
        recompute: engine::Recompute,
    ) -> Result<Self> {
        let (batch, x, device) = match input {
            Input::Images(images) => (
                engine::check_images(cfg, images)?,
                Flat::Images(images.flatten_all()?.to_vec1::<f32>()?),
                images.device().clone(),
            ),
            Input::Tokens(tok) => {
                let (ids, mask, t) = engine::token_buffers(cfg, tok.ids, tok.mask)?;
                (
                    ids.len() / t,
                    Flat::Tokens { ids, mask, t },
                    tok.ids.device().clone(),
                )
            }
        };
        let chunks = engine::split(batch);
        Ok(EnginePass {
            w,
            cfg,
            device,
            batch,
            x,
            extra: (1..chunks.len()).map(|_| w.zero_grads()).collect(),
            chunks,
            recompute,
        })
    }
}

impl Pass for EnginePass<'_> {
    /// One tape per chunk of the batch.
    type Tape = Vec<engine::Tape>;

    fn forward(&mut self, arch: &Arch, hidden: bool) -> Result<(Tensor, Self::Tape)> {
        self.w.check(self.cfg, arch)?;
        let (w, cfg, x, chunks) = (self.w, self.cfg, self.x.input(), &self.chunks);
        let (logits, tapes) =
            engine::forward_chunks_train(w, cfg, arch, x, chunks, hidden, self.recompute);
        let logits = Var::from_vec(logits, (self.batch, self.cfg.classes), &self.device)?;
        Ok((logits.as_tensor().clone(), tapes))
    }

    fn take_hidden(&self, tapes: &mut Self::Tape) -> HiddenStates {
        tapes.iter_mut().map(engine::Tape::take_hidden).collect()
    }

    /// On the same chunks as the subnets, so that its states line up
    /// with theirs.
    fn teacher(&mut self, t: TeacherModel, hidden: bool) -> Result<(Tensor, HiddenStates)> {
        let (x, chunks) = (self.x.input(), &self.chunks);
        let (logits, mut tapes) = match hidden {
            true => engine::forward_chunks_infer_hidden(t.weights, t.cfg, t.arch, x, chunks),
            false => engine::forward_chunks(t.weights, t.cfg, t.arch, x, chunks, false),
        };
        let states = tapes.iter_mut().map(engine::Tape::take_hidden).collect();
        let logits = Tensor::from_vec(logits, (self.batch, t.cfg.classes), &self.device)?;
        Ok((logits, states))
    }

    fn backward(
        &mut self,
        arch: &Arch,
        tapes: &Self::Tape,
        logits: &Tensor,
        loss: &Tensor,
        dhidden: &[Vec<Vec<f32>>],
        grads: &mut [Vec<f32>],
    ) -> Result<()> {
        let g = loss.backward()?;
        let dlogits = match g.get(logits) {
            Some(d) => d.flatten_all()?.to_vec1::<f32>()?,
            None if dhidden.is_empty() => return Ok(()),
            None => vec![0.0; self.batch * self.cfg.classes],
        };
        engine::backward_chunks_hidden(
            self.w,
            self.cfg,
            arch,
            tapes,
            &dlogits,
            dhidden,
            &self.chunks,
            grads,
            &mut self.extra,
        );
        Ok(())
    }

    fn flush(&mut self, grads: &mut [Vec<f32>], last: bool) {
        for e in &mut self.extra {
            for (g, e) in grads.iter_mut().zip(e.iter_mut()) {
                g.iter_mut().zip(e.iter()).for_each(|(g, e)| *g += e);
                if !last {
                    e.fill(0.0);
                }
            }
        }
    }
}

/// candle's autograd through the model's own forward.
struct AutogradPass<'a> {
    net: &'a dyn Forward,
    params: &'a Params,
    input: Input<'a>,
}

impl Pass for AutogradPass<'_> {
    type Tape = ();

    fn forward(&mut self, arch: &Arch, hidden: bool) -> Result<(Tensor, ())> {
        if hidden {
            return Err(crate::error::Error::InvalidRecipe {
                file: "the recipe".into(),
                field: "loss.hidden_distill".into(),
                message: "hidden-state distillation runs on the engine (f32 models), and this \
                          step runs on candle's autograd"
                    .into(),
            });
        }
        Ok((self.net.forward_train(self.input, arch)?, ()))
    }

    fn take_hidden(&self, _tape: &mut ()) -> HiddenStates {
        Vec::new()
    }

    fn teacher(&mut self, _t: TeacherModel, _hidden: bool) -> Result<(Tensor, HiddenStates)> {
        Err(crate::error::Error::InvalidRecipe {
            file: "the recipe".into(),
            field: "loss.teacher".into(),
            message: "a fixed teacher runs on the engine (f32 models), and this step runs on \
                      candle's autograd"
                .into(),
        })
    }

    fn backward(
        &mut self,
        _arch: &Arch,
        _tape: &(),
        _logits: &Tensor,
        loss: &Tensor,
        _dhidden: &[Vec<Vec<f32>>],
        grads: &mut [Vec<f32>],
    ) -> Result<()> {
        let g = loss.backward()?;
        for (var, acc) in self.params.vars.iter().zip(grads.iter_mut()) {
            if let Some(t) = g.get(var.as_tensor()) {
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                for (a, b) in acc.iter_mut().zip(&v) {
                    *a += b;
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self, _grads: &mut [Vec<f32>], _last: bool) {}
}
