//! One optimizer step's forward/backward work: every subnet of a [`Plan`]
//! in turn, gradients accumulated into flat per-parameter buffers.

use super::loss::{cross_entropy, Distill};
use super::sampler::Plan;
use crate::engine::{self, Weights};
use crate::error::Result;
use crate::models::vit::Vit;
use crate::space::Arch;
use crate::supernet::Supernet;
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;

/// The supernet's trainable variables, sorted by name (a stable order for
/// the optimizer state and checkpoints).
#[derive(Debug, Clone)]
pub struct Params {
    pub names: Vec<String>,
    pub vars: Vec<Var>,
}

impl Params {
    pub fn from_varmap(vm: &VarMap) -> Self {
        let data = vm.data().lock().expect("varmap poisoned");
        let mut named: Vec<(String, Var)> =
            data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, vars) = named.into_iter().unzip();
        Params { names, vars }
    }

    pub fn sizes(&self) -> Vec<usize> {
        self.vars.iter().map(|v| v.elem_count()).collect()
    }

    pub fn zero_grads(&self) -> Vec<Vec<f32>> {
        self.sizes().into_iter().map(|n| vec![0.0; n]).collect()
    }

    /// Sets every variable from flat buffers in the same order (after
    /// optimizer steps on the engine's copy, before candle reads them).
    pub fn store(&self, data: &[Vec<f32>]) -> Result<()> {
        for (var, d) in self.vars.iter().zip(data) {
            var.set(&Tensor::from_slice(d, var.shape(), var.device())?)?;
        }
        Ok(())
    }

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

    /// `(name, tensor)` pairs of the current values.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .cloned()
            .zip(self.vars.iter().map(|v| v.as_tensor().clone()))
            .collect()
    }
}

/// What a step trains: logits of architecture `arch` in training mode.
pub trait Forward {
    fn forward_train(&self, images: &Tensor, arch: &Arch) -> Result<Tensor>;
    /// The shapes the [`engine`] needs to run this model's forward and
    /// backward itself; `None` leaves the step to candle's autograd.
    fn engine_config(&self) -> Option<engine::Config>;
}

impl Forward for Supernet {
    fn forward_train(&self, images: &Tensor, arch: &Arch) -> Result<Tensor> {
        self.forward(images, arch, true)
    }
    fn engine_config(&self) -> Option<engine::Config> {
        Some(engine::Config::from_space(&self.space))
    }
}

/// A static model has one architecture: `arch` only labels it.
impl Forward for Vit {
    fn forward_train(&self, images: &Tensor, _arch: &Arch) -> Result<Tensor> {
        Ok(Vit::forward(self, images)?)
    }
    fn engine_config(&self) -> Option<engine::Config> {
        Some(engine::Config::from_vit(&self.config))
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
}

/// How a training step computes its gradients. All three compute the same
/// gradients up to float rounding (tested); the caller chooses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// The CPU [`engine`] for the f32 models it runs (every vitnas ViT),
    /// candle's autograd for anything else (e.g. other dtypes).
    #[default]
    Engine,
    /// candle's autograd over vitnas's fused kernels (via [`crate::ops`]): the
    /// reference path.
    Autograd,
    /// candle's autograd over the unfused candle composites
    /// ([`crate::ops::composite`]): the reference of the fused kernels.
    Composite,
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
    if backend == Backend::Engine && images.dtype() == DType::F32 {
        if let Some((w, cfg)) = params.engine_weights(net)? {
            return accumulate_on_engine(
                &w,
                &cfg,
                plan,
                images,
                labels,
                label_smoothing,
                distill,
                grads,
            );
        }
    }
    let mut autograd = || {
        accumulate_autograd(
            net,
            params,
            plan,
            images,
            labels,
            label_smoothing,
            distill,
            grads,
        )
    };
    match backend {
        Backend::Composite => crate::ops::with_composite(autograd),
        _ => autograd(),
    }
}

/// The loss of one subnet of a step and its reported value: distillation
/// from the step's teacher when there is one, else label-smoothed CE.
fn subnet_loss(
    logits: &Tensor,
    teacher: Option<&Tensor>,
    distill: Option<&dyn Distill>,
    labels: &Tensor,
    label_smoothing: f64,
) -> Result<(Tensor, f32)> {
    Ok(match (teacher, distill) {
        (Some(t), Some(d)) => d.loss(logits, t)?,
        _ => {
            let l = cross_entropy(logits, labels, label_smoothing)?;
            let v = l.to_scalar::<f32>()?;
            (l, v)
        }
    })
}

/// [`accumulate`] by the engine on weights it already holds (see
/// [`Params::engine_weights`]): candle computes only the losses and their
/// gradients with respect to the logits.
#[allow(clippy::too_many_arguments)]
pub fn accumulate_on_engine(
    w: &Weights,
    cfg: &engine::Config,
    plan: &Plan,
    images: &Tensor,
    labels: &Tensor,
    label_smoothing: f64,
    distill: Option<&dyn Distill>,
    grads: &mut [Vec<f32>],
) -> Result<StepLosses> {
    let batch = engine::check_images(cfg, images)?;
    let x = images.flatten_all()?.to_vec1::<f32>()?;
    let chunks = engine::split(batch);
    // Gradients of chunks 1.. (chunk 0 adds into `grads`), summed at the end.
    let mut extra: Vec<Vec<Vec<f32>>> = (1..chunks.len()).map(|_| w.zero_grads()).collect();
    let mut teacher: Option<Tensor> = None;
    let mut losses = Vec::with_capacity(plan.archs.len());
    for (k, arch) in plan.archs.iter().enumerate() {
        w.check(cfg, arch)?;
        let (logits, tapes) = engine::forward_chunks(w, cfg, arch, &x, &chunks, true);
        let logits = Var::from_vec(logits, (batch, cfg.classes), images.device())?;
        let lt = logits.as_tensor();
        let (loss, value) = subnet_loss(lt, teacher.as_ref(), distill, labels, label_smoothing)?;
        losses.push(value);
        if !value.is_finite() {
            return Ok(StepLosses {
                losses,
                nonfinite: Some(k),
            });
        }
        if k == 0 && plan.teacher_first {
            teacher = Some(lt.detach());
        }
        let g = loss.backward()?;
        let dlogits = match g.get(lt) {
            Some(d) => d.flatten_all()?.to_vec1::<f32>()?,
            None => continue,
        };
        engine::backward_chunks(w, cfg, arch, &tapes, &dlogits, &chunks, grads, &mut extra);
    }
    for e in &extra {
        for (g, e) in grads.iter_mut().zip(e) {
            g.iter_mut().zip(e).for_each(|(g, e)| *g += e);
        }
    }
    Ok(StepLosses {
        losses,
        nonfinite: None,
    })
}

/// [`accumulate`] by candle's autograd through the model's own forward.
#[allow(clippy::too_many_arguments)]
fn accumulate_autograd(
    net: &dyn Forward,
    params: &Params,
    plan: &Plan,
    images: &Tensor,
    labels: &Tensor,
    label_smoothing: f64,
    distill: Option<&dyn Distill>,
    grads: &mut [Vec<f32>],
) -> Result<StepLosses> {
    let mut teacher: Option<Tensor> = None;
    let mut losses = Vec::with_capacity(plan.archs.len());
    for (k, arch) in plan.archs.iter().enumerate() {
        let logits = net.forward_train(images, arch)?;
        let (loss, value) =
            subnet_loss(&logits, teacher.as_ref(), distill, labels, label_smoothing)?;
        losses.push(value);
        if !value.is_finite() {
            return Ok(StepLosses {
                losses,
                nonfinite: Some(k),
            });
        }
        if k == 0 && plan.teacher_first {
            teacher = Some(logits.detach());
        }
        let g = loss.backward()?;
        for (var, acc) in params.vars.iter().zip(grads.iter_mut()) {
            if let Some(t) = g.get(var.as_tensor()) {
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                for (a, b) in acc.iter_mut().zip(&v) {
                    *a += b;
                }
            }
        }
    }
    Ok(StepLosses {
        losses,
        nonfinite: None,
    })
}
