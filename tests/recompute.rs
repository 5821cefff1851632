//! `[train] recompute = "blocks"` (`engine::Recompute::Blocks`): the
//! forward keeps each block's input instead of its activations and the
//! backward runs the block's forward again. The logits, the hidden states
//! and every gradient are those of the forward that keeps everything, bit
//! for bit: ViT (with and without scaling layers, first-token shortcut),
//! post-norm BERT on padded batches under both heads with hidden-state
//! gradients, and a whole training run.

mod common;

use common::{bert_supernet, images, scaled_supernet, space, supernet, tiny_bert, tokens};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;
use vitnas::engine::{self, Config, Input, Recompute, Weights};
use vitnas::supernet::scaling::Switch;
use vitnas::train::checkpoint::read_safetensors;
use vitnas::train::step::{Forward, Params};
use vitnas::train::{CHECKPOINT_FILE, RECIPE_FILE};
use vitnas::{Arch, Space};

fn archs(space: &Space) -> Vec<Arch> {
    let mut rng = StdRng::seed_from_u64(9);
    let mut v = vec![space.largest(), space.smallest()];
    v.extend((0..3).map(|_| space.sample(&mut rng)));
    v
}

fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Logits, hidden states and gradients (from random logit and, with
/// `hidden`, hidden-state gradients) of one forward and backward.
fn grads(
    w: &Weights,
    cfg: &Config,
    arch: &Arch,
    input: Input,
    hidden: bool,
    recompute: Recompute,
) -> (Vec<f32>, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let (logits, mut tape) = engine::forward_train(w, cfg, arch, input, hidden, recompute);
    let states = tape.take_hidden();
    let dl = noise(logits.len(), 1);
    let dh: Vec<Vec<f32>> = (0..states.len())
        .map(|j| noise(states[j].len(), 2 + j as u64))
        .collect();
    let mut g = w.zero_grads();
    engine::backward_hidden(w, cfg, arch, &tape, &dl, &dh, &mut g);
    (logits, states, g)
}

fn assert_same_with_recompute(w: &Weights, cfg: &Config, arch: &Arch, input: Input, hidden: bool) {
    let (l0, h0, g0) = grads(w, cfg, arch, input, hidden, Recompute::None);
    let (l1, h1, g1) = grads(w, cfg, arch, input, hidden, Recompute::Blocks);
    assert_eq!(l1, l0, "{arch:?}: logits");
    assert_eq!(h1, h0, "{arch:?}: hidden states");
    assert_eq!(h0.is_empty(), !hidden);
    for (i, (a, b)) in g1.iter().zip(&g0).enumerate() {
        assert_eq!(a, b, "{arch:?}: gradient of {}", w.names[i]);
    }
    // the gradients are not trivially equal: the largest touches every tensor
    assert!(g0.iter().flatten().any(|&v| v != 0.0));
}

#[test]
fn vit_gradients_with_recomputed_blocks_are_bit_identical() {
    let space = space("fmnist-tiny");
    let x = images(&space, 5, 2);
    let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (net, vm) = supernet(&space, 3);
    let scaled = scaled_supernet(&space, 3, Switch::LayerConfig, 0.7);
    for (cfg, vm) in [
        (Config::from_supernet(&net), &vm),
        (Config::from_supernet(&scaled.0), &scaled.1),
    ] {
        let w = Weights::from_tensors(&Params::from_varmap(vm).tensors()).unwrap();
        for arch in archs(&space) {
            for hidden in [false, true] {
                assert_same_with_recompute(&w, &cfg, &arch, Input::Images(&flat), hidden);
            }
        }
    }
}

#[test]
fn text_gradients_with_recomputed_blocks_are_bit_identical() {
    for pooling in ["pooler", "mean"] {
        let space = tiny_bert(pooling, "[2, 3, 4]");
        let (net, vm) = bert_supernet(&space, 11);
        let cfg = net.engine_config().expect("on the engine");
        let w = Weights::from_tensors(&Params::from_varmap(&vm).tensors()).unwrap();
        let (ids_t, mask_t) = tokens(6, 11, 50, 4);
        let (ids, mask, t) = engine::token_buffers(&cfg, &ids_t, &mask_t).unwrap();
        let input = Input::Tokens {
            ids: &ids,
            mask: &mask,
            t,
        };
        for arch in archs(&space) {
            for hidden in [false, true] {
                assert_same_with_recompute(&w, &cfg, &arch, input, hidden);
            }
        }
    }
}

fn checkpoint(dir: &std::path::Path) -> HashMap<String, Vec<f32>> {
    let (t, _) = read_safetensors(&dir.join(CHECKPOINT_FILE), &candle_core::Device::Cpu).unwrap();
    t.into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn a_run_with_recomputed_blocks_trains_the_same_weights_and_says_so_in_its_recipe() {
    let base = common::scratch("checkpointed-blocks");
    let plain = common::small_quickstart(&base.join("plain"));
    let mut again = common::small_quickstart(&base.join("again"));
    again.train.recompute = Recompute::Blocks;
    common::train_in_process(&plain, false, Some(4), false).unwrap();
    common::train_in_process(&again, false, Some(4), false).unwrap();
    assert_eq!(
        checkpoint(&base.join("plain")),
        checkpoint(&base.join("again"))
    );
    let written = std::fs::read_to_string(base.join("again").join(RECIPE_FILE)).unwrap();
    assert!(written.contains("recompute = \"blocks\""), "{written}");
    let written = std::fs::read_to_string(base.join("plain").join(RECIPE_FILE)).unwrap();
    assert!(
        !written.contains("recompute ="),
        "the default is not written"
    );
    // a bad value names the field
    common::assert_recipe_refused(
        &format!("{}\n", again.to_toml_string()),
        "recompute = \"blocks\"",
        "recompute = \"layers\"",
        "recompute",
    );
    std::fs::remove_dir_all(base).ok();
}
