//! A search on several ranks (`mpirun -np N vitnas search …`): rank 0 runs
//! the evolution (or random sampling) and hands each generation's new
//! candidates out as a [`Job`]; every rank evaluates its share (candidate
//! `i` on rank `i % N`); rank 0 then records them in population order,
//! deciding early rejection exactly as one rank would, so the records are
//! the same as a one-rank search's. With early rejection on, every
//! candidate is scored on the whole subset (the decision needs the records
//! before it, which a shared evaluation does not have yet); a rejected
//! candidate's rest is discarded and counted in `images_evaluated`.

use super::{Evaluator, Measured, Search};
use crate::dist::{self, Collective};
use crate::error::Result;
use crate::space::{Arch, Space};
use crate::train::eval::EvalResult;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One generation's new candidates and how to score them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Job {
    genes: Vec<Vec<usize>>,
    /// Validation images per candidate.
    images: usize,
    /// The first `early` of them screen it (0: no screening).
    early: usize,
    batch: usize,
}

/// Values per candidate: screen (or whole) accuracy, loss, examples; rest
/// accuracy, loss, examples.
const WIDTH: usize = 6;

/// Rank 0 hands `job` to the other ranks (`None`: the search is over).
/// Waits without a bound first: rank 0 may have spent long on the
/// evolution (e.g. timing candidates' latency).
pub(super) fn dispatch(c: &dyn Collective, job: Option<&Job>) -> Result<()> {
    c.wait_for_all()?;
    dist::broadcast_json(c, Some(&job.cloned()))?;
    Ok(())
}

/// Ranks other than 0: evaluates their share of every job until rank 0
/// says the search is over.
pub(super) fn serve(space: &Space, ev: &Evaluator) -> Result<()> {
    let c = ev.collective;
    loop {
        c.wait_for_all()?;
        match dist::broadcast_json::<Option<Job>>(c, None)? {
            Some(job) => {
                run(space, ev, &job)?;
            }
            None => return Ok(()),
        }
    }
}

/// This rank's share of `job`, then everyone's results, in job order.
fn run(space: &Space, ev: &Evaluator, job: &Job) -> Result<Vec<(EvalResult, EvalResult)>> {
    let score = |i: usize| -> Result<Option<Vec<f64>>> {
        let arch = Arch::from_genes(space, &job.genes[i])?;
        let run = |r: std::ops::Range<usize>| ev.judge.score(&arch, r, job.batch);
        let (first, rest) = match job.early {
            0 => (run(0..job.images)?, None),
            e => (run(0..e)?, Some(run(e..job.images)?)),
        };
        let rest = rest.unwrap_or(EvalResult {
            accuracy: 0.0,
            loss: 0.0,
            examples: 0,
        });
        Ok(Some(vec![
            first.accuracy,
            first.loss,
            first.examples as f64,
            rest.accuracy,
            rest.loss,
            rest.examples as f64,
        ]))
    };
    let values = dist::share(ev.collective, job.genes.len(), WIDTH, score)?;
    Ok(values
        .into_iter()
        .map(|v| {
            let v = v.expect("every candidate is scored");
            let r = |k: usize| EvalResult {
                accuracy: v[k],
                loss: v[k + 1],
                examples: v[k + 2] as usize,
            };
            (r(0), r(3))
        })
        .collect())
}

impl Search<'_> {
    /// Rank 0: the candidates of `pop` not evaluated before, scored by all
    /// ranks, then recorded in order as [`Search::evaluate`] would.
    pub(super) fn evaluate_shared(&mut self, ev: &Evaluator, pop: &[Vec<usize>]) -> Result<()> {
        let started = Instant::now();
        let mut new: Vec<Vec<usize>> = Vec::new();
        for g in pop {
            if !self.index.contains_key(g) && !new.contains(g) {
                new.push(g.clone());
            }
        }
        let (n, early) = self.subset_sizes(ev);
        let job = Job {
            genes: new,
            images: n,
            early,
            batch: self.state.config.eval_batch_size,
        };
        dispatch(ev.collective, Some(&job))?;
        let results = run(self.space, ev, &job)?;
        self.state.eval_seconds += started.elapsed().as_secs_f64();
        for (genes, (first, rest)) in job.genes.iter().zip(results) {
            let arch = Arch::from_genes(self.space, genes)?;
            let measured = if early > 0 {
                let rejected = self
                    .kth_screen_bar()
                    .is_some_and(|bar| first.accuracy < bar);
                if rejected {
                    // Scored, then discarded.
                    self.state.images_evaluated += n - early;
                }
                Measured::Screened {
                    screen: first,
                    rest: (!rejected).then_some(rest),
                }
            } else {
                Measured::Whole(first)
            };
            self.record(genes, arch, measured, (n, early));
        }
        Ok(())
    }
}
