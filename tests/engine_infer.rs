//! The engine's inference path ([`engine::forward_infer`], and the
//! `forward_chunks(.., false)` under `engine::logits` and
//! `engine::token_logits`), which frees each block's activations as it goes
//! and never holds the attention probabilities of the whole batch, gives
//! the training forward's logits and features bit for bit: ViT (with and
//! without scaling layers) and post-norm BERT on padded batches, both
//! heads.

mod common;

use common::{bert_supernet, images, scaled_supernet, space, supernet, tiny_bert, tokens};
use rand::{rngs::StdRng, SeedableRng};
use vitnas::engine::{self, Config, Input, Weights};
use vitnas::supernet::scaling::Switch;
use vitnas::train::step::{Forward, Params};
use vitnas::{Arch, Space};

fn archs(space: &Space) -> Vec<Arch> {
    let mut rng = StdRng::seed_from_u64(5);
    let mut v = vec![space.largest(), space.smallest()];
    v.extend((0..3).map(|_| space.sample(&mut rng)));
    v
}

/// The logits of `forward` over the chunks of `split(batch)`, concatenated
/// (what `engine::logits` computed before it had its own path).
fn chunked_forward(w: &Weights, cfg: &Config, arch: &Arch, input: Input, batch: usize) -> Vec<f32> {
    engine::split(batch)
        .into_iter()
        .flat_map(|r| engine::forward(w, cfg, arch, input.slice(cfg, r)).0)
        .collect()
}

fn vit_inference_is_bit_identical(space: &Space, params: &Params, cfg: &Config) {
    let w = Weights::from_tensors(&params.tensors()).unwrap();
    let x = images(space, 5, 2);
    let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for arch in archs(space) {
        let (want, _) = engine::forward(&w, cfg, &arch, Input::Images(&flat));
        let (got, tape) = engine::forward_infer(&w, cfg, &arch, Input::Images(&flat));
        assert_eq!(got, want, "{arch:?}: forward_infer");
        assert_eq!(tape.features().len(), 5 * arch.embed_dim);
        let got = engine::logits(&w, cfg, &arch, &x).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = chunked_forward(&w, cfg, &arch, Input::Images(&flat), 5);
        assert_eq!(got, want, "{arch:?}: engine::logits");
        // a strided (non-contiguous) batch is copied, with the same result
        let t = x.transpose(2, 3).unwrap().transpose(2, 3).unwrap();
        let got_t = engine::logits(&w, cfg, &arch, &t).unwrap();
        let got_t = got_t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got_t, want, "{arch:?}: strided images");
    }
}

#[test]
fn vit_inference_gives_the_training_forwards_logits_bit_for_bit() {
    let space = space("fmnist-tiny");
    let (net, vm) = supernet(&space, 3);
    vit_inference_is_bit_identical(
        &space,
        &Params::from_varmap(&vm),
        &Config::from_supernet(&net),
    );
    let (net, vm) = scaled_supernet(&space, 3, Switch::LayerConfig, 0.7);
    vit_inference_is_bit_identical(
        &space,
        &Params::from_varmap(&vm),
        &Config::from_supernet(&net),
    );
}

#[test]
fn text_inference_gives_the_training_forwards_logits_and_features_bit_for_bit() {
    for pooling in ["pooler", "mean"] {
        let space = tiny_bert(pooling, "[2, 3, 4]");
        let (net, vm) = bert_supernet(&space, 11);
        let cfg = net
            .engine_config()
            .expect("the BERT supernet runs on the engine");
        let w = Weights::from_tensors(&Params::from_varmap(&vm).tensors()).unwrap();
        let (ids_t, mask_t) = tokens(6, 11, 50, 4);
        let (ids, mask, t) = engine::token_buffers(&cfg, &ids_t, &mask_t).unwrap();
        let input = Input::Tokens {
            ids: &ids,
            mask: &mask,
            t,
        };
        for arch in archs(&space) {
            let (want, tape) = engine::forward(&w, &cfg, &arch, input);
            let (got, light) = engine::forward_infer(&w, &cfg, &arch, input);
            assert_eq!(got, want, "{pooling} {arch:?}: forward_infer");
            assert_eq!(light.features(), tape.features(), "{pooling} {arch:?}");
            let got = engine::token_logits(&w, &cfg, &arch, &ids_t, &mask_t).unwrap();
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                got,
                chunked_forward(&w, &cfg, &arch, input, 6),
                "{pooling} {arch:?}"
            );
            let f = engine::token_features(&w, &cfg, &arch, &ids_t, &mask_t).unwrap();
            let want_f: Vec<f32> = engine::split(6)
                .into_iter()
                .flat_map(|r| {
                    let (_, tp) = engine::forward(&w, &cfg, &arch, input.slice(&cfg, r));
                    tp.features().to_vec()
                })
                .collect();
            let f = f.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(f, want_f, "{pooling} {arch:?}: features");
        }
    }
}
