//! What data-parallel training (`mpirun -np N vitnas train`) adds to the
//! training loop, on the run's [`Collective`]:
//!
//! - each rank takes its shard of every global batch (rank `r` of `N`: the
//!   examples `r·B/N .. (r+1)·B/N`), so the global batch is the recipe's at
//!   any `N`; `N` must divide the batch size;
//! - every rank samples the same subnets: every random draw comes from the
//!   step's RNG `(seed, step)`, and each rank draws the augmentation of the
//!   whole batch (keeping only its shard's), so the sampler's draws follow
//!   the same state everywhere;
//! - each rank's loss is the mean over its shard, so the mean over ranks of
//!   the shard gradients is the gradient of the global batch's mean loss:
//!   one all-reduce per step (sum, then `1/N`) of every gradient group,
//!   before the gradient strategy combines the groups and before the
//!   optimizer's global-norm clipping, which then see the global gradient
//!   on every rank;
//! - the same all-reduce carries each step's losses and stop requests: the
//!   ranks agree on the losses (the mean over ranks), on a non-finite loss
//!   (any rank's) and on stopping (any rank asked);
//! - rank 0 alone writes checkpoints, metrics and progress; the ranks
//!   compare a checksum of their weights at every checkpoint.
//!
//! With one rank every function here returns its input unchanged: an
//! ordinary run computes exactly what it computed before.

use super::recipe::Recipe;
use super::step::StepLosses;
use crate::dist::{self, Collective};
use crate::error::{Error, Result};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Values per all-reduce bucket (256 KB of f32): the step's buffers are
/// packed into buckets of this size, one all-reduce each. Chosen by
/// measurement (`evaluate/studies/2026-11-29-mpi.md`;
/// `vitnas bench allreduce`, 2 ranks on OpenMPI's shared memory): against
/// one bucket for the whole gradient, 1.2 instead of 1.9 ms for the
/// fmnist-tiny supernet (4.8 MB), 13 instead of 42 ms for autoformer-tiny
/// (46 MB); 16K- and 1M-value buckets were slower than 64K.
pub const GRAD_BUCKET_ELEMS: usize = 1 << 16;

/// The data-parallel side of a run: the collective and what it measured.
pub(crate) struct DataParallel<'a> {
    c: &'a dyn Collective,
    /// Seconds spent in the step's all-reduce (packing, the sum, the mean),
    /// and calls.
    pub(crate) allreduce_s: f64,
    pub(crate) allreduces: usize,
}

impl<'a> DataParallel<'a> {
    /// Refuses a batch size the ranks cannot share equally, and a ranking
    /// loss on several ranks.
    pub(crate) fn new(c: &'a dyn Collective, recipe: &Recipe) -> Result<Self> {
        check_batch(c, recipe)?;
        check_ranking(c, recipe)?;
        Ok(DataParallel {
            c,
            allreduce_s: 0.0,
            allreduces: 0,
        })
    }

    pub(crate) fn size(&self) -> usize {
        self.c.size()
    }

    /// Rank 0 writes the run's files and reports progress.
    pub(crate) fn is_root(&self) -> bool {
        dist::is_root(self.c)
    }

    /// This rank's positions in a global batch of `batch` examples.
    pub(crate) fn shard(&self, batch: usize) -> Range<usize> {
        let (r, n) = (self.c.rank(), self.c.size());
        batch * r / n..batch * (r + 1) / n
    }

    /// The one all-reduce of a step: every gradient group and the step's
    /// losses and stop request, in one sum over the ranks. Returns the
    /// losses as all ranks agree on them (each subnet's mean over the
    /// ranks; the first subnet whose loss is non-finite on any rank: then
    /// the gradients are to be discarded) and whether any rank has been
    /// asked to stop (`None` with one rank, where nothing is touched: the
    /// caller reads its flag when it decides). The gradients become their
    /// mean over the ranks.
    pub(crate) fn reduce_step(
        &mut self,
        out: StepLosses,
        groups: &mut [Vec<Vec<f32>>],
        subnets: usize,
        stop: &AtomicBool,
    ) -> Result<(StepLosses, Option<bool>)> {
        let n = self.c.size();
        if n == 1 {
            return Ok((out, None));
        }
        let t = Instant::now();
        // A subnet a rank did not reach (it stopped at a non-finite loss)
        // counts as non-finite: NaN poisons the sum.
        let mut tail = vec![f32::NAN; subnets + 1];
        tail[..out.losses.len()].copy_from_slice(&out.losses);
        tail[subnets] = f32::from(u8::from(stop.load(Ordering::SeqCst)));
        {
            let mut views: Vec<&mut [f32]> = groups
                .iter_mut()
                .flat_map(|g| g.iter_mut().map(|b| &mut b[..]))
                .chain(std::iter::once(&mut tail[..]))
                .collect();
            dist::all_reduce_slices(self.c, &mut views, GRAD_BUCKET_ELEMS)?;
        }
        let scale = 1.0 / n as f32;
        let means: Vec<f32> = tail[..subnets].iter().map(|s| s * scale).collect();
        let nonfinite = means.iter().position(|l| !l.is_finite());
        if nonfinite.is_none() {
            for b in groups.iter_mut().flat_map(|g| g.iter_mut()) {
                b.iter_mut().for_each(|x| *x *= scale);
            }
        }
        self.allreduce_s += t.elapsed().as_secs_f64();
        self.allreduces += 1;
        let losses = match nonfinite {
            Some(k) => means[..=k].to_vec(),
            None => means,
        };
        let stop = Some(tail[subnets] > 0.0);
        let ranking = out.ranking;
        Ok((
            StepLosses {
                losses,
                nonfinite,
                ranking,
            },
            stop,
        ))
    }

    /// Waits until rank 0 has written its checkpoint (or validated), then
    /// checks that every rank holds the same weights after `step` steps.
    pub(crate) fn check_weights(&self, step: usize, weights: &[Vec<f32>]) -> Result<()> {
        if self.c.size() == 1 {
            return Ok(());
        }
        self.c.wait_for_all()?;
        let sum = dist::checksum_f32(weights);
        tracing::info!(
            "rank {} of {}: weights checksum {sum:016x} after step {step}",
            self.c.rank(),
            self.c.size()
        );
        dist::check_same(
            self.c,
            &format!("set of weights after step {step}"),
            &sum.to_le_bytes(),
            "the ranks have diverged (different builds, SIMD levels or data?)",
        )
    }

    /// What the run measured, for its summary (`None` with one rank).
    pub(crate) fn report(&self, steps: usize) -> Option<super::summary::DataParallelReport> {
        (self.c.size() > 1).then(|| super::summary::DataParallelReport {
            world_size: self.c.size(),
            allreduce_s: self.allreduce_s,
            allreduces: self.allreduces,
            steps,
        })
    }
}

/// Refuses a batch size the ranks of `c` cannot share equally (the rule:
/// the number of ranks divides `train.batch_size`).
pub(crate) fn check_batch(c: &dyn Collective, recipe: &Recipe) -> Result<()> {
    let (n, bs) = (c.size(), recipe.train.batch_size);
    if bs.is_multiple_of(n) {
        return Ok(());
    }
    Err(Error::InvalidRecipe {
        file: format!("recipe `{}`", recipe.name),
        field: "train.batch_size".into(),
        message: format!(
            "{bs} is not a multiple of the {n} ranks: every rank takes an equal share of each \
             batch (the global batch is the recipe's at any number of ranks); choose a batch \
             size divisible by {n}, or another number of ranks"
        ),
    })
}

/// Refuses a ranking loss on several ranks: its hinge compares the
/// subnets' losses on the whole batch, which no rank sees (a rank's shard
/// losses would rank differently, and the mean of the ranks' hinge
/// gradients is not the hinge's gradient).
pub(crate) fn check_ranking(c: &dyn Collective, recipe: &Recipe) -> Result<()> {
    let on = recipe.ranking.as_ref().is_some_and(|r| r.is_on());
    if c.size() == 1 || !on {
        return Ok(());
    }
    Err(Error::InvalidRecipe {
        file: format!("recipe `{}`", recipe.name),
        field: "ranking.weight".into(),
        message: format!(
            "the ranking loss is not supported on {} ranks yet (it needs the subnets' losses \
             over the whole batch before the backward passes): train on one process, or set \
             weight = 0",
            c.size()
        ),
    })
}

/// Refuses to start unless every rank runs the same build on the same
/// resolved recipe and space (compared by hash; rank 0's is broadcast).
pub(crate) fn check_same_run(c: &dyn Collective, recipe: &Recipe, space_toml: &str) -> Result<()> {
    if c.size() == 1 {
        return Ok(());
    }
    c.wait_for_all()?;
    let what = format!(
        "{}\n{}\n{space_toml}",
        dist::build_identity(),
        recipe.to_toml_string()
    );
    dist::check_same(
        c,
        "build, resolved recipe or space",
        what.as_bytes(),
        "every rank must run the same vitnas build (same SIMD level) with the same recipe, \
         overrides and data (`mpirun -np N vitnas train <recipe>`)",
    )
}
