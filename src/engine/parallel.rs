//! Threads: data-parallel chunks of a batch (one per pool thread, whole
//! subnets per chunk with single-threaded ops inside), and the switch that
//! keeps an op on its thread when splitting it would not pay.

use super::{
    backward_hidden, forward_infer, forward_infer_hidden, forward_train, infer_one_split, Config,
    Input, Recompute, Tape, Weights,
};
use crate::space::Arch;
use rayon::prelude::*;

/// Fewest images per data-parallel chunk.
const MIN_CHUNK: usize = 1;
/// A whole forward smaller than this (`rows · embed² · depth`, about a
/// twelfth of its multiply-adds) runs on one thread: waking the pool for
/// each of its small ops costs more than it saves (batch-1 inference).
const SERIAL_MAX_WORK: usize = 1 << 25;

thread_local! {
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every engine op on this thread single-threaded (inside a
/// data-parallel chunk, where the other threads have chunks of their own).
pub(crate) fn serial<T>(f: impl FnOnce() -> T) -> T {
    /// Restores the previous setting even if `f` panics (the pool's
    /// workers outlive a panicking task).
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|c| c.replace(true)));
    f()
}

/// Whether an op of `work` units (at least `min` to pay for the dispatch)
/// should use the thread pool.
pub(crate) fn par_ok(work: usize, min: usize) -> bool {
    work >= min && !SERIAL.with(|c| c.get()) && rayon::current_num_threads() > 1
}

/// Contiguous ranges of a batch, one per thread of the pool (at least
/// `MIN_CHUNK` images each), for data-parallel forward and backward: each
/// thread runs whole subnets on its images with single-threaded ops, which
/// beats splitting every small op across threads. Results are bit-identical
/// for the same seed and the same number of threads.
pub fn split(batch: usize) -> Vec<std::ops::Range<usize>> {
    let n = rayon::current_num_threads().min(batch / MIN_CHUNK).max(1);
    (0..n).map(|i| batch * i / n..batch * (i + 1) / n).collect()
}

/// [`forward`](super::forward) of each chunk of [`split`] on its own thread; the logits of
/// the whole batch and one tape per chunk (none when `tape` is false:
/// inference, by [`forward_infer`], which keeps one block's activations at
/// a time and lets one sequence be split over the threads by rows).
pub fn forward_chunks(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    input: Input,
    chunks: &[std::ops::Range<usize>],
    tape: bool,
) -> (Vec<f32>, Vec<Tape>) {
    match tape {
        true => forward_chunks_train(w, cfg, arch, input, chunks, false, Recompute::None),
        false => {
            let (logits, _) = chunks_by(forward_infer, w, cfg, arch, input, chunks, false);
            (logits, Vec::new())
        }
    }
}

/// [`forward_chunks`] by [`forward_infer`], keeping each chunk's tape for
/// its pooled features ([`Tape::features`]); the tapes hold no blocks.
pub(crate) fn forward_chunks_features(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    input: Input,
    chunks: &[std::ops::Range<usize>],
) -> (Vec<f32>, Vec<Tape>) {
    chunks_by(forward_infer, w, cfg, arch, input, chunks, true)
}

/// [`forward_chunks`] by [`forward_infer_hidden`]: each chunk's tape keeps
/// its hidden states and no block's activations (a fixed teacher's).
pub fn forward_chunks_infer_hidden(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    input: Input,
    chunks: &[std::ops::Range<usize>],
) -> (Vec<f32>, Vec<Tape>) {
    chunks_by(forward_infer_hidden, w, cfg, arch, input, chunks, true)
}

/// [`forward_chunks`] with tapes by [`forward_train`]: hidden states
/// kept with `hidden` (as [`forward_hidden`](super::forward_hidden)),
/// block activations as `recompute` says.
pub fn forward_chunks_train(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    input: Input,
    chunks: &[std::ops::Range<usize>],
    hidden: bool,
    recompute: Recompute,
) -> (Vec<f32>, Vec<Tape>) {
    let fwd = |w: &Weights, cfg: &Config, arch: &Arch, x: Input| {
        forward_train(w, cfg, arch, x, hidden, recompute)
    };
    chunks_by(fwd, w, cfg, arch, input, chunks, true)
}

fn chunks_by(
    fwd: impl Fn(&Weights, &Config, &Arch, Input) -> (Vec<f32>, Tape) + Sync,
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    input: Input,
    chunks: &[std::ops::Range<usize>],
    tape: bool,
) -> (Vec<f32>, Vec<Tape>) {
    if let [r] = chunks {
        let x = input.slice(cfg, r.clone());
        if !tape && r.len() == 1 && par_ok(2, 2) {
            return (infer_one_split(w, cfg, arch, x), Vec::new());
        }
        let run = || fwd(w, cfg, arch, x);
        let work = r.len() * input.seq_len(cfg) * arch.embed_dim * arch.embed_dim * arch.depth;
        let (l, t) = if work < SERIAL_MAX_WORK {
            serial(run)
        } else {
            run()
        };
        return (l, vec![t]);
    }
    let outs: Vec<(Vec<f32>, Tape)> = chunks
        .par_iter()
        .map(|r| serial(|| fwd(w, cfg, arch, input.slice(cfg, r.clone()))))
        .collect();
    let mut logits = Vec::with_capacity(input.batch(cfg) * cfg.classes);
    let mut tapes = Vec::with_capacity(outs.len());
    for (l, t) in outs {
        logits.extend(l);
        tapes.push(t);
    }
    (logits, tapes)
}

/// [`backward`](super::backward) of each chunk on its own thread: chunk 0 adds into
/// `grads`, chunk `i` into `extra[i - 1]` (buffers of the same shapes, to be
/// summed into `grads` by the caller once per step).
#[allow(clippy::too_many_arguments)]
pub fn backward_chunks(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    tapes: &[Tape],
    dlogits: &[f32],
    chunks: &[std::ops::Range<usize>],
    grads: &mut [Vec<f32>],
    extra: &mut [Vec<Vec<f32>>],
) {
    backward_chunks_hidden(w, cfg, arch, tapes, dlogits, &[], chunks, grads, extra)
}

/// [`backward_chunks`] by [`backward_hidden`]: `dhidden[i]` holds chunk
/// `i`'s gradients with respect to its hidden states (empty: none, as
/// [`backward_chunks`]).
#[allow(clippy::too_many_arguments)]
pub fn backward_chunks_hidden(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    tapes: &[Tape],
    dlogits: &[f32],
    dhidden: &[Vec<Vec<f32>>],
    chunks: &[std::ops::Range<usize>],
    grads: &mut [Vec<f32>],
    extra: &mut [Vec<Vec<f32>>],
) {
    assert!(tapes.len() == chunks.len() && extra.len() + 1 >= chunks.len());
    assert!(dhidden.is_empty() || dhidden.len() == chunks.len());
    let c = cfg.classes;
    let dh = |i: usize| dhidden.get(i).map_or(&[][..], Vec::as_slice);
    if let ([t], [r]) = (tapes, chunks) {
        let dl = &dlogits[r.start * c..r.end * c];
        return backward_hidden(w, cfg, arch, t, dl, dh(0), grads);
    }
    let mut targets: Vec<&mut [Vec<f32>]> = std::iter::once(grads)
        .chain(extra.iter_mut().map(|e| e.as_mut_slice()))
        .take(chunks.len())
        .collect();
    targets
        .par_iter_mut()
        .zip(tapes.par_iter())
        .zip(chunks.par_iter().enumerate())
        .for_each(|((g, t), (i, r))| {
            let dl = &dlogits[r.start * c..r.end * c];
            serial(|| backward_hidden(w, cfg, arch, t, dl, dh(i), g))
        });
}
