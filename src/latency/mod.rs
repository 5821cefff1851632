//! Hardware-aware search (HAT, Wang et al., ACL 2020): latency datasets
//! measured on this machine, learned latency predictors with a measured
//! error, and the predictor a latency-constrained search consults instead
//! of timing every candidate.
//!
//! * [`dataset`]: `vitnas latency measure`: architectures sampled across the
//!   space's FLOPs range, extracted as static models and timed with the
//!   engine inference that `eval` and export use; a resumable CSV whose
//!   header records the space and the machine.
//! * [`export_archs`]: `vitnas latency export-archs`: the same stratified
//!   architectures as ONNX files with a manifest, for timing on another
//!   machine (`evaluate/ort_latency.py`, ONNX Runtime).
//! * [`features`]: what a predictor sees of an architecture: HAT's
//!   architecture features, or per-layer cost terms of the engine's work.
//! * [`fit`]: HAT's MLP and an additive per-layer cost model, fitted on a
//!   seeded split and compared on the held-out part; the better is kept.
//! * [`Predictor`]: the fitted file (space, machine, features, errors).

pub mod dataset;
pub mod export_archs;
pub mod features;
pub mod fit;

use crate::error::{Error, Result};
use crate::space::{Arch, Space};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Format tag of predictor files.
pub const PREDICTOR_FORMAT: &str = "vitnas-latency-predictor/1";

/// The machine a latency was measured on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name (from /proc/cpuinfo where there is one).
    pub cpu: String,
    /// Vector-math SIMD level ([`crate::kernels::simd::level`]).
    pub simd: String,
    /// Whether gemm's AVX-512 kernels are built in.
    pub gemm_avx512: bool,
    /// Threads of the measurement.
    pub threads: usize,
}

impl Machine {
    /// This machine, measuring with `threads` threads.
    pub fn current(threads: usize) -> Machine {
        Machine {
            cpu: cpu_model(),
            simd: crate::kernels::simd::level().name().to_string(),
            gemm_avx512: crate::kernels::simd::GEMM_AVX512,
            threads,
        }
    }

    /// The differences from `other`, one line each (empty when the same).
    pub fn differences(&self, other: &Machine) -> Vec<String> {
        let mut d = Vec::new();
        if self.cpu != other.cpu {
            d.push(format!("CPU {:?} vs {:?}", self.cpu, other.cpu));
        }
        if self.simd != other.simd || self.gemm_avx512 != other.gemm_avx512 {
            d.push(format!(
                "SIMD {} (gemm AVX-512 {}) vs {} (gemm AVX-512 {})",
                self.simd, self.gemm_avx512, other.simd, other.gemm_avx512
            ));
        }
        if self.threads != other.threads {
            d.push(format!("{} threads vs {}", self.threads, other.threads));
        }
        d
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// A stable hash of a space's definition (FNV-1a over its TOML form): a
/// dataset or predictor is only valid for the space it was made on. Which
/// of the supernet's layers a shallower subnet runs (`[supernet]
/// depth_layers`) is left out: every layer has the same shape, so a
/// subnet's cost, hence its latency, does not depend on it.
pub fn space_hash(space: &Space) -> String {
    let mut cost = space.clone();
    cost.supernet.depth_layers = Default::default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cost.to_toml_string().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// HAT's timing protocol: warm-up runs, timed runs, the slowest and fastest
/// `trim` fraction dropped.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Protocol {
    pub warmup: usize,
    pub runs: usize,
    pub trim: f64,
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol {
            warmup: 5,
            runs: 20,
            trim: 0.1,
        }
    }
}

/// One architecture's timing, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Trimmed mean.
    pub mean_ms: f64,
    /// Standard deviation of the kept runs.
    pub std_ms: f64,
    pub median_ms: f64,
}

/// Times `f` under `p`.
pub fn time(p: &Protocol, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..p.warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(p.runs);
    for _ in 0..p.runs.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    let cut = ((t.len() as f64) * p.trim).floor() as usize;
    let kept = if t.len() > 2 * cut {
        &t[cut..t.len() - cut]
    } else {
        &t[..]
    };
    let mean = kept.iter().sum::<f64>() / kept.len() as f64;
    let var = kept.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / kept.len() as f64;
    Ok(Timing {
        mean_ms: mean,
        std_ms: var.sqrt(),
        median_ms: t[t.len() / 2],
    })
}

/// A supernet of either modality, whose subnets are timed.
pub enum Timed {
    Image(crate::Supernet),
    Text(crate::supernet::bert::BertSupernet),
}

impl Timed {
    /// The seeded supernet of `space` (timing does not depend on values).
    pub fn build(space: &Space, seed: u64) -> Result<Timed> {
        Ok(match space.is_text() {
            false => Timed::Image(crate::train::build_supernet(space, seed, Default::default())?.0),
            true => {
                let vm = candle_nn::VarMap::new();
                let vb = crate::supernet::init::seeded_var_builder(
                    &vm,
                    seed,
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                );
                Timed::Text(crate::supernet::bert::BertSupernet::with_init(
                    space,
                    Default::default(),
                    vb,
                )?)
            }
        })
    }

    /// Timing of `arch` extracted as the static model `eval` and export
    /// run: images of zeros, or token sequences of the space's stated
    /// length, `batch` of them.
    pub fn time(&self, arch: &Arch, batch: usize, protocol: &Protocol) -> Result<Timing> {
        match self {
            Timed::Image(net) => time_arch(net, arch, batch, protocol),
            Timed::Text(net) => time_text_arch(net, arch, batch, protocol),
        }
    }
}

/// Timing of the text subnet `arch` extracted from `net` as the static
/// engine model that `eval` and export run, on `batch` sequences of the
/// space's stated length (no padding).
pub fn time_text_arch(
    net: &crate::supernet::bert::BertSupernet,
    arch: &Arch,
    batch: usize,
    protocol: &Protocol,
) -> Result<Timing> {
    time_text_model(&net.extract(arch)?, net.space.seq_len(), batch, protocol)
}

/// Timing of the static BERT `bert` (a subnet extracted from a supernet)
/// on the engine, on `batch` sequences of `seq_len` tokens (no padding).
pub fn time_text_model(
    bert: &crate::models::bert::Bert,
    seq_len: usize,
    batch: usize,
    protocol: &Protocol,
) -> Result<Timing> {
    let model = crate::engine::Model::from_bert(bert)?;
    let shape = (batch, seq_len);
    let ids = candle_core::Tensor::ones(shape, candle_core::DType::U32, &candle_core::Device::Cpu)?;
    time(protocol, || model.token_logits(&ids, &ids).map(|_| ()))
}

/// Timing of `arch` extracted from `net` as the static engine model that
/// `eval` and export run, on zero images of `batch`.
pub fn time_arch(
    net: &crate::Supernet,
    arch: &Arch,
    batch: usize,
    protocol: &Protocol,
) -> Result<Timing> {
    let model = crate::engine::Model::from_vit(&net.extract(arch)?)?;
    let i = &net.space.image();
    let x = candle_core::Tensor::zeros(
        (batch, i.channels, i.image_size, i.image_size),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )?;
    time(protocol, || model.logits(&x).map(|_| ()))
}

/// Held-out error of a predictor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Errors {
    /// Mean of |predicted − measured| / measured.
    pub mean_rel: f64,
    /// 95th percentile of the relative error.
    pub p95_rel: f64,
    pub rmse_ms: f64,
    /// Held-out rows.
    pub n: usize,
}

impl Errors {
    pub fn of(pred: &[f64], truth: &[f64]) -> Errors {
        let mut rel: Vec<f64> = pred
            .iter()
            .zip(truth)
            .map(|(p, t)| (p - t).abs() / t)
            .collect();
        rel.sort_by(|a, b| a.total_cmp(b));
        let n = rel.len().max(1);
        let p95 = rel
            .get(((rel.len() as f64 * 0.95).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0);
        let mse = pred
            .iter()
            .zip(truth)
            .map(|(p, t)| (p - t).powi(2))
            .sum::<f64>()
            / n as f64;
        Errors {
            mean_rel: rel.iter().sum::<f64>() / n as f64,
            p95_rel: p95,
            rmse_ms: mse.sqrt(),
            n: rel.len(),
        }
    }
}

/// Fewest rows [`Predictor::recalibrate`] accepts.
pub const MIN_RECALIBRATION_ROWS: usize = 20;

/// A fitted latency predictor and what it was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predictor {
    pub format: String,
    pub space_name: String,
    pub space_hash: String,
    /// The space's definition, so that the file stands alone.
    pub space_toml: String,
    pub machine: Machine,
    pub batch: usize,
    /// Rows of the dataset (training + held out).
    pub samples: usize,
    /// Measured latency range of the dataset (ms).
    pub range_ms: [f64; 2],
    /// Held-out error of every model fitted, by name.
    pub heldout: BTreeMap<String, Errors>,
    /// Why the kept model was kept.
    pub chosen_because: String,
    pub model: fit::Model,
    /// A later rescaling of every prediction to a fresh measurement (see
    /// [`Predictor::recalibrate`]); `None` as fitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recalibration: Option<Recalibration>,
}

/// How a predictor was rescaled to a fresh measurement of the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recalibration {
    /// Every prediction is multiplied by this.
    pub scale: f64,
    /// Rows of the measurement it was fitted on.
    pub rows: usize,
    /// The predictor's error on those rows before and after.
    pub before: Errors,
    pub after: Errors,
}

impl Predictor {
    /// The predictor of `fitted` (its best model) on dataset `d`.
    pub fn from_fit(d: &dataset::Dataset, fitted: &fit::Fitted) -> Predictor {
        let (lo, hi) = d
            .samples
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), s| (lo.min(s.ms), hi.max(s.ms)));
        Predictor {
            format: PREDICTOR_FORMAT.into(),
            space_name: d.header.space_name.clone(),
            space_hash: d.header.space_hash.clone(),
            space_toml: d.header.space_toml.clone(),
            machine: d.header.machine.clone(),
            batch: d.header.batch,
            samples: d.samples.len(),
            range_ms: [lo, hi],
            heldout: fitted
                .models
                .iter()
                .map(|(m, e)| (m.name().to_string(), *e))
                .collect(),
            chosen_because: fitted.why.clone(),
            model: fitted.models[0].0.clone(),
            recalibration: None,
        }
    }

    pub fn load(path: &Path) -> Result<Predictor> {
        let p: Predictor = crate::io::read_json_format(
            path,
            (PREDICTOR_FORMAT, "a latency predictor"),
            |p: &Predictor| &p.format,
            |message| Error::Latency {
                path: path.into(),
                message,
            },
        )?;
        p.validate(path)?;
        Ok(p)
    }

    /// Checks a predictor as strictly as a recipe, naming the field: its
    /// space parses; the batch, thread count, latency range and any
    /// recalibration scale are finite and positive; the model has exactly
    /// one finite weight (or layer shape) per feature it names, and those
    /// are the features this build computes; and it predicts a finite,
    /// positive latency for the space's smallest and largest subnets and
    /// for a seeded sample of 64 others.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, message: String| Error::InvalidConfig {
            file: path.display().to_string(),
            field: field.into(),
            message,
        };
        let space = self.space()?;
        if self.batch == 0 {
            return Err(bad("batch", "must be at least 1".into()));
        }
        if self.machine.threads == 0 {
            return Err(bad("machine.threads", "must be at least 1".into()));
        }
        let [lo, hi] = self.range_ms;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return Err(bad(
                "range_ms",
                format!("[{lo}, {hi}] is not a finite, positive range"),
            ));
        }
        if let Some(r) = &self.recalibration {
            if !(r.scale.is_finite() && r.scale > 0.0) {
                return Err(bad(
                    "recalibration.scale",
                    format!("{} is not a finite, positive factor", r.scale),
                ));
            }
        }
        let names = |want: &[&str], got: &[String], field: &str| {
            if got.iter().map(String::as_str).ne(want.iter().copied()) {
                return Err(bad(
                    field,
                    format!("{got:?} are not the features this build computes ({want:?})"),
                ));
            }
            Ok(())
        };
        let finite = |field: &str, v: &mut dyn Iterator<Item = f64>| match v
            .enumerate()
            .find(|(_, x)| !x.is_finite() || x.abs() > 1e150)
        {
            Some((i, x)) => Err(bad(
                &format!("{field}[{i}]"),
                format!("{x} is not a finite weight of a sane size"),
            )),
            None => Ok(()),
        };
        match &self.model {
            fit::Model::Additive { features, weights } => {
                names(&features::COST, features, "model.features")?;
                if weights.len() != features.len() {
                    return Err(bad(
                        "model.weights",
                        format!("{} weights for {} features", weights.len(), features.len()),
                    ));
                }
                finite("model.weights", &mut weights.iter().copied())?;
            }
            fit::Model::HatMlp {
                features,
                input_scale,
                output_scale,
                layers,
            } => {
                names(&features::HAT, features, "model.features")?;
                if input_scale.len() != features.len() {
                    return Err(bad(
                        "model.input_scale",
                        format!(
                            "{} scales for {} features",
                            input_scale.len(),
                            features.len()
                        ),
                    ));
                }
                if let Some(s) = input_scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                    return Err(bad(
                        "model.input_scale",
                        format!("{s} is not a finite, positive scale"),
                    ));
                }
                if !(output_scale.is_finite() && *output_scale > 0.0) {
                    return Err(bad(
                        "model.output_scale",
                        format!("{output_scale} is not a finite, positive scale"),
                    ));
                }
                if layers.is_empty() {
                    return Err(bad("model.layers", "no layers".into()));
                }
                let mut n_in = features.len();
                for (k, (w, b)) in layers.iter().enumerate() {
                    let field = format!("model.layers[{k}]");
                    if b.is_empty() || w.len() != b.len() * n_in {
                        return Err(bad(
                            &field,
                            format!(
                                "{} weights and {} biases do not make a layer from {n_in} inputs",
                                w.len(),
                                b.len()
                            ),
                        ));
                    }
                    finite(&field, &mut w.iter().chain(b).map(|&x| x as f64))?;
                    n_in = b.len();
                }
                if n_in != 1 {
                    return Err(bad(
                        "model.layers",
                        format!("the last layer has {n_in} outputs, not 1"),
                    ));
                }
            }
        }
        if let Some((what, ms)) = fit::first_implausible(&self.model, &space) {
            return Err(bad(
                "model",
                format!(
                    "predicts {ms} ms for {what} of space `{}`: a latency must be finite and \
                     positive; refit it (`vitnas latency fit`)",
                    space.name
                ),
            ));
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("predictor serializes");
        crate::train::checkpoint::write_atomic(path, text.as_bytes())
    }

    /// The space it was fitted on.
    pub fn space(&self) -> Result<Space> {
        Space::from_toml_str(
            &self.space_toml,
            &format!("predictor of {}", self.space_name),
        )
    }

    /// Refuses `space` unless it is the predictor's; returns warnings about
    /// the machine when it differs from the one measured.
    pub fn check(&self, path: &Path, space: &Space, machine: &Machine) -> Result<Vec<String>> {
        let h = space_hash(space);
        if h != self.space_hash {
            return Err(Error::Latency {
                path: path.into(),
                message: format!(
                    "fitted on space `{}` ({}), not on `{}` ({h}): measure and fit this space \
                     (`vitnas latency measure`, `vitnas latency fit`)",
                    self.space_name, self.space_hash, space.name
                ),
            });
        }
        Ok(self
            .machine
            .differences(machine)
            .into_iter()
            .map(|d| {
                format!(
                    "{}: measured on another machine kind ({d}); its predictions may be off here",
                    path.display()
                )
            })
            .collect())
    }

    /// Predicted latency of `arch` (ms).
    pub fn predict(&self, space: &Space, arch: &Arch) -> f64 {
        let scale = self.recalibration.as_ref().map_or(1.0, |r| r.scale);
        scale * self.model.predict(space, arch)
    }

    /// Predicted and measured latency of every row of `d`.
    pub fn on(&self, d: &dataset::Dataset) -> (Vec<f64>, Vec<f64>) {
        let pred = d
            .samples
            .iter()
            .map(|s| self.predict(&d.space, &s.arch))
            .collect();
        (pred, d.samples.iter().map(|s| s.ms).collect())
    }

    /// Rescales every prediction to a fresh measurement `d` of the same
    /// space (a short one: a machine that drifted as a whole, faster or
    /// slower, shifts every latency by about the same factor): the scale is
    /// the median of measured / predicted over `d`'s rows, as fitted
    /// (earlier recalibrations are replaced). Needs at least
    /// [`MIN_RECALIBRATION_ROWS`] rows.
    pub fn recalibrate(&mut self, d: &dataset::Dataset, csv: &Path) -> Result<&Recalibration> {
        if d.samples.len() < MIN_RECALIBRATION_ROWS {
            return Err(Error::Latency {
                path: csv.into(),
                message: format!(
                    "{} measured architectures; recalibrating needs at least \
                     {MIN_RECALIBRATION_ROWS} (`vitnas latency measure --n 100`)",
                    d.samples.len()
                ),
            });
        }
        self.recalibration = None;
        let (pred, truth) = self.on(d);
        let mut ratio: Vec<f64> = truth.iter().zip(&pred).map(|(t, p)| t / p).collect();
        ratio.sort_by(|a, b| a.total_cmp(b));
        let scale = ratio[ratio.len() / 2];
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::Latency {
                path: csv.into(),
                message: format!(
                    "the measured / predicted ratio's median is {scale}, not a finite, positive \
                     scale: the predictor does not fit this measurement; refit it"
                ),
            });
        }
        let scaled: Vec<f64> = pred.iter().map(|p| scale * p).collect();
        Ok(self.recalibration.insert(Recalibration {
            scale,
            rows: d.samples.len(),
            before: Errors::of(&pred, &truth),
            after: Errors::of(&scaled, &truth),
        }))
    }

    /// The kept model's held-out error.
    pub fn error(&self) -> Option<&Errors> {
        self.heldout.get(self.model.name())
    }
}

/// Refuses a latency budget that no architecture of `space` meets by
/// prediction: below the smallest subnet's predicted latency (the fastest
/// the predictor knows), naming the predicted range.
pub fn check_budget(p: &Predictor, path: &Path, space: &Space, max_ms: f64) -> Result<()> {
    let lo = p.predict(space, &space.smallest());
    let hi = p.predict(space, &space.largest());
    if max_ms < lo {
        return Err(Error::Latency {
            path: path.into(),
            message: format!(
                "latency budget {max_ms} ms is below the smallest subnet's predicted latency: \
                 predictions range from {lo:.3} ms (smallest) to {hi:.3} ms (largest) at batch {}",
                p.batch
            ),
        });
    }
    Ok(())
}
