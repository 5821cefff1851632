//! The CPU engine on text (post-norm BERT layers, token stem, pooler and
//! mean-pooling heads, padding masks) against the static `Bert` built from
//! the same leading slices, and against candle's autograd through it:
//! logits within 1e-4, every gradient within 1e-4 relative to its tensor's
//! largest gradient, on batches with padded rows (end, middle, start, all),
//! on non-uniform subnets of a small random text supernet.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use common::{max_abs, max_abs_diff};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;
use vitnas::engine::{self, Config, Head, Input, Model, Weights};
use vitnas::models::bert::{mean_pool, Bert, BertConfig};
use vitnas::models::names::Family;
use vitnas::{Arch, Space};

/// Vocabulary 100, hidden 32, 3 layers of 4 heads × 8, FFN 64, 3 classes;
/// per-layer choices, and layer 1 with its own lists.
fn space(pooling: &str) -> Space {
    common::text_space(
        "tiny-text",
        &format!(
            "vocab_size = 100\nmax_position_embeddings = 16\ntype_vocab_size = 2\n\
             num_classes = 3\nseq_len = 10\npooling = \"{pooling}\""
        ),
        "embed_dim = [16, 24, 32]\ndepth = [1, 2, 3]\nnum_heads = [2, 3, 4]\nmlp_dim = [32, 48, 64]\n\
         [[layer]]\nindex = 1\nnum_heads = [1, 4]\nmlp_dim = [40, 64]",
    )
}

const POOLINGS: [&str; 2] = ["pooler", "mean"];

/// Every tensor of the text supernet (`Family::Bert` names) with its shape
/// for `arch` (the supernet's own largest dims give the full shapes);
/// `layers` layers, the pooler only under the pooler head.
fn shapes(space: &Space, arch: &Arch, layers: usize) -> Vec<(String, Vec<usize>)> {
    let (f, s, t) = (Family::Bert, Family::Bert.stem(), space.text_input());
    let (e, hd) = (arch.embed_dim, space.supernet.head_dim);
    let lin = |p: &str, out: usize, inp: usize| {
        [
            (format!("{p}.weight"), vec![out, inp]),
            (format!("{p}.bias"), vec![out]),
        ]
    };
    let norm = |p: &str| {
        [
            (format!("{p}.weight"), vec![e]),
            (format!("{p}.bias"), vec![e]),
        ]
    };
    let mut v = vec![
        (
            format!("{}.weight", s.word_embeddings),
            vec![t.vocab_size, e],
        ),
        (
            format!("{}.weight", s.position_embeddings),
            vec![t.max_position_embeddings, e],
        ),
        (
            format!("{}.weight", s.token_type_embeddings),
            vec![t.type_vocab_size, e],
        ),
    ];
    v.extend(norm(&s.embeddings_norm));
    for l in 0..layers {
        let (n, q, m) = (f.layer(l), arch.num_heads[l] * hd, arch.mlp_width(l));
        v.extend(lin(&n.query, q, e));
        v.extend(lin(&n.key, q, e));
        v.extend(lin(&n.value, q, e));
        v.extend(lin(&n.attention_output, e, q));
        v.extend(norm(&n.norm1));
        v.extend(lin(&n.intermediate, m, e));
        v.extend(lin(&n.output, e, m));
        v.extend(norm(&n.norm2));
    }
    if t.pooling == vitnas::space::Pooling::Pooler {
        v.extend(lin(&s.pooler, e, e));
    }
    v.extend(lin(&s.classifier, t.num_classes, e));
    v
}

/// The supernet's largest dims as an architecture (every layer).
fn full_arch(space: &Space) -> Arch {
    let s = &space.supernet;
    Arch::with_dims(
        s.embed_dim,
        s.depth,
        vec![s.num_heads; s.depth],
        vec![space.supernet_mlp_width(); s.depth],
    )
}

/// Seeded random supernet tensors: matrices and embeddings of unit-ish
/// scale, biases and norm parameters away from their initial constants.
fn supernet(space: &Space, seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let full = full_arch(space);
    shapes(space, &full, full.depth)
        .into_iter()
        .map(|(name, dims)| {
            let n: usize = dims.iter().product();
            let (base, spread) = match (dims.len(), name.contains("LayerNorm.weight")) {
                (_, true) => (1.0, 0.3),
                (1, false) => (0.0, 0.2),
                _ => (0.0, 0.6 / (dims[1] as f32).sqrt().max(1.0) * 2.0),
            };
            let v: Vec<f32> = (0..n)
                .map(|_| base + (rng.random::<f32>() * 2.0 - 1.0) * spread)
                .collect();
            (name, Tensor::from_vec(v, dims, &Device::Cpu).unwrap())
        })
        .collect()
}

/// The static BERT of `arch`, loaded from the leading slices of the
/// supernet's tensors (as `Var`s, so candle's autograd reaches them).
fn static_bert(
    space: &Space,
    net: &[(String, Tensor)],
    arch: &Arch,
) -> (Bert, HashMap<String, Var>) {
    let full: HashMap<_, _> = net.iter().cloned().collect();
    let mut vars = HashMap::new();
    for (name, dims) in shapes(space, arch, arch.depth) {
        let mut t = full[&name].clone();
        for (axis, &d) in dims.iter().enumerate() {
            t = t.narrow(axis, 0, d).unwrap();
        }
        vars.insert(name, Var::from_tensor(&t.contiguous().unwrap()).unwrap());
    }
    let t = space.text_input();
    let pooler = t.pooling == vitnas::space::Pooling::Pooler;
    let cfg = BertConfig {
        vocab_size: t.vocab_size,
        hidden_size: arch.embed_dim,
        head_dim: space.supernet.head_dim,
        num_heads: arch.num_heads.clone(),
        intermediate_sizes: (0..arch.depth).map(|l| arch.mlp_width(l)).collect(),
        max_position_embeddings: t.max_position_embeddings,
        type_vocab_size: t.type_vocab_size,
        layer_norm_eps: space.supernet.layer_norm_eps,
        num_labels: pooler.then_some(t.num_classes),
        pooling: vitnas::space::Pooling::Pooler,
    };
    let tensors = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    (Bert::load(&cfg, vb, "bert").unwrap(), vars)
}

/// Logits of the static BERT: its own pooler head, or the classifier on
/// the mean of its last hidden states over the mask.
fn reference_logits(
    bert: &Bert,
    vars: &HashMap<String, Var>,
    ids: &Tensor,
    mask: &Tensor,
) -> Tensor {
    let out = bert.forward(ids, mask).unwrap();
    if let Some(l) = out.logits {
        return l;
    }
    let pooled = mean_pool(out.hidden_states.last().unwrap(), mask).unwrap();
    let (w, b) = (
        vars["classifier.weight"].as_tensor(),
        vars["classifier.bias"].as_tensor(),
    );
    pooled
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(b)
        .unwrap()
}

/// A batch of 6 sequences of 10 tokens: unpadded; padded at the end; in
/// the middle; at the start (the pooler's first token masked); two tokens
/// only; every token padded.
fn batch(seed: u64) -> (Vec<u32>, Vec<u32>, usize) {
    let t = 10;
    let masks: [[u32; 10]; 6] = [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 1, 1, 0, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [0; 10],
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let ids = (0..masks.len() * t)
        .map(|_| rng.random_range(0..100))
        .collect();
    (ids, masks.concat(), t)
}

fn tensors(ids: &[u32], mask: &[u32], t: usize) -> (Tensor, Tensor) {
    let b = ids.len() / t;
    (
        Tensor::from_slice(ids, (b, t), &Device::Cpu).unwrap(),
        Tensor::from_slice(mask, (b, t), &Device::Cpu).unwrap(),
    )
}

fn archs(space: &Space) -> Vec<Arch> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut v = vec![space.largest(), space.smallest()];
    v.extend((0..3).map(|_| space.sample(&mut rng)));
    v
}

fn close(got: &Tensor, want: &Tensor) -> bool {
    max_abs_diff(got, want) <= 1e-4 * max_abs(want).max(1.0)
}

#[test]
fn engine_text_logits_match_the_static_bert_on_padded_batches() {
    for pooling in POOLINGS {
        let space = space(pooling);
        let net = supernet(&space, 1);
        let w = Weights::from_tensors(&net).unwrap();
        let cfg = Config::from_space(&space);
        assert_eq!(
            cfg.head,
            if pooling == "mean" {
                Head::Mean
            } else {
                Head::Pooler
            }
        );
        let (ids, mask, t) = batch(2);
        let (ids_t, mask_t) = tensors(&ids, &mask, t);
        let classes = cfg.classes;
        for arch in archs(&space) {
            w.check(&cfg, &arch).unwrap();
            let (bert, vars) = static_bert(&space, &net, &arch);
            let want = reference_logits(&bert, &vars, &ids_t, &mask_t);
            let input = Input::Tokens {
                ids: &ids,
                mask: &mask,
                t,
            };
            for first_only in [true, false] {
                let (l, _) = engine::forward_with(&w, &cfg, &arch, input, first_only);
                assert!(l.iter().all(|v| v.is_finite()), "{pooling} {arch:?}: {l:?}");
                let got = Tensor::from_vec(l, (6, classes), &Device::Cpu).unwrap();
                assert!(
                    close(&got, &want),
                    "{pooling} {arch:?} first_only {first_only}: logits differ by {}",
                    max_abs_diff(&got, &want)
                );
            }
            // data-parallel chunks, and each sequence alone (batch 1: its
            // rows split over the threads when it has no padding)
            let got = engine::token_logits(&w, &cfg, &arch, &ids_t, &mask_t).unwrap();
            assert!(close(&got, &want), "{pooling} {arch:?}: chunked");
            for b in 0..6 {
                let one = |x: &Tensor| x.narrow(0, b, 1).unwrap();
                let got =
                    engine::token_logits(&w, &cfg, &arch, &one(&ids_t), &one(&mask_t)).unwrap();
                assert!(
                    close(&got, &one(&want)),
                    "{pooling} {arch:?}: sequence {b} alone"
                );
            }
            // the static model run by the engine
            let model = Model::from_bert(&bert).unwrap();
            match pooling {
                "pooler" => {
                    let got = model.token_logits(&ids_t, &mask_t).unwrap();
                    assert!(close(&got, &want), "{arch:?}: Model::from_bert");
                }
                _ => {
                    let out = bert.forward(&ids_t, &mask_t).unwrap();
                    let pooled = mean_pool(out.hidden_states.last().unwrap(), &mask_t).unwrap();
                    let got = model.token_features(&ids_t, &mask_t).unwrap();
                    assert!(close(&got, &pooled), "{arch:?}: Model::from_bert features");
                }
            }
        }
    }
}

/// The engine's gradient buffers against autograd through the static BERT
/// of `arch`, mapped back into full-size buffers: within 1e-4 relative
/// inside the slices, exactly zero outside them and for unused tensors.
fn check_gradients(
    space: &Space,
    net: &[(String, Tensor)],
    arch: &Arch,
    ids: &[u32],
    mask: &[u32],
    t: usize,
) -> Vec<Vec<f32>> {
    let w = Weights::from_tensors(net).unwrap();
    let cfg = Config::from_space(space);
    let b = ids.len() / t;
    let (ids_t, mask_t) = tensors(ids, mask, t);
    let r = common::uniform(&[b, cfg.classes], 9, 1.0);
    let dl = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (bert, vars) = static_bert(space, net, arch);
    let g = (reference_logits(&bert, &vars, &ids_t, &mask_t) * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let input = Input::Tokens { ids, mask, t };
    let mut last = Vec::new();
    for first_only in [true, false] {
        let (_, tape) = engine::forward_with(&w, &cfg, arch, input, first_only);
        let mut grads = w.zero_grads();
        engine::backward(&w, &cfg, arch, &tape, &dl, &mut grads);
        for ((name, full), got) in net.iter().zip(&grads) {
            assert!(
                got.iter().all(|v| v.is_finite()),
                "{name}: non-finite gradient"
            );
            let Some(var) = vars.get(name) else {
                assert!(
                    got.iter().all(|v| *v == 0.0),
                    "{name} is unused by {arch:?} but got a gradient"
                );
                continue;
            };
            let want = g
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no autograd gradient"));
            // the reference mapped back: zero outside the leading slice
            let (fd, sd) = (full.dims().to_vec(), want.dims().to_vec());
            let want_v = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (cols, scols) = (
                fd.get(1).copied().unwrap_or(1),
                sd.get(1).copied().unwrap_or(1),
            );
            let mut mapped = vec![0f32; got.len()];
            let mut inside = vec![false; got.len()];
            for (i, v) in want_v.iter().enumerate() {
                let at = (i / scols) * cols + i % scols;
                mapped[at] = *v;
                inside[at] = true;
            }
            // The key bias shifts every score of a row equally: its true
            // gradient is 0 and both sides hold rounding noise, so it is
            // compared absolutely (1e-4 of a 1e-2 floor).
            let floor = if name.ends_with("key.bias") {
                1e-2
            } else {
                1e-12
            };
            let scale = want_v.iter().fold(0f32, |m, v| m.max(v.abs())).max(floor);
            for (i, (a, b)) in got.iter().zip(&mapped).enumerate() {
                if !inside[i] {
                    assert_eq!(
                        *a, 0.0,
                        "{name} ({arch:?}): gradient outside the slice at {i}"
                    );
                } else {
                    assert!(
                        (a - b).abs() <= 1e-4 * scale,
                        "{name} ({arch:?}, first_only {first_only}): gradient {a} vs {b} at {i} (scale {scale})"
                    );
                }
            }
        }
        last = grads;
    }
    last
}

#[test]
fn engine_text_gradients_match_candle_autograd_through_the_static_bert() {
    let (ids, mask, t) = batch(3);
    for pooling in POOLINGS {
        let space = space(pooling);
        let net = supernet(&space, 4);
        for arch in archs(&space) {
            check_gradients(&space, &net, &arch, &ids, &mask, t);
        }
    }
}

#[test]
fn every_parameter_of_the_largest_text_subnet_gets_a_gradient() {
    let (ids, mask, t) = batch(5);
    for pooling in POOLINGS {
        let space = space(pooling);
        let net = supernet(&space, 6);
        let arch = space.largest();
        let grads = check_gradients(&space, &net, &arch, &ids, &mask, t);
        let stem = Family::Bert.stem();
        for ((name, full), g) in net.iter().zip(&grads) {
            // the entries this batch can reach: the rows of the ids and
            // positions it holds, everything of the other tensors
            let width = *full.dims().last().unwrap();
            let rows: Vec<usize> = if name.starts_with(&stem.word_embeddings) {
                let mut r: Vec<usize> = ids
                    .iter()
                    .zip(&mask)
                    .filter(|(_, &m)| m == 1)
                    .map(|(&i, _)| i as usize)
                    .collect();
                r.sort();
                r.dedup();
                r
            } else if name.starts_with(&stem.position_embeddings) {
                (0..t).collect()
            } else if name.starts_with(&stem.token_type_embeddings) {
                vec![0]
            } else {
                (0..g.len() / width).collect()
            };
            let reach = rows.len() * width;
            let nonzero = rows
                .iter()
                .flat_map(|r| &g[r * width..][..width])
                .filter(|v| **v != 0.0)
                .count();
            assert!(
                nonzero * 2 > reach,
                "{pooling}: {name}: only {nonzero} of {reach} reachable gradient entries are non-zero"
            );
        }
    }
}

/// Padded key positions are invisible: three more padded columns, and
/// other ids under the mask, give bit-identical logits and gradients. (Not
/// for a sequence without any token, which attends uniformly over all its
/// positions, nor for a masked first token under the pooler, which reads
/// its state: both as in Hugging Face's BERT.)
#[test]
fn padding_columns_and_padded_ids_change_neither_logits_nor_gradients() {
    let (mut ids, mut mask, t) = batch(8);
    ids.truncate(5 * t);
    mask.truncate(5 * t);
    let wide = t + 3;
    let mut rng = StdRng::seed_from_u64(9);
    let (mut ids2, mut mask2) = (Vec::new(), Vec::new());
    for (ir, mr) in ids.chunks(t).zip(mask.chunks(t)) {
        for (j, (&i, &m)) in ir.iter().zip(mr).enumerate() {
            let keep = m == 1 || j == 0;
            ids2.push(if keep { i } else { rng.random_range(0..100) });
            mask2.push(m);
        }
        for _ in 0..3 {
            ids2.push(rng.random_range(0..100));
            mask2.push(0);
        }
    }
    for pooling in POOLINGS {
        let space = space(pooling);
        let w = Weights::from_tensors(&supernet(&space, 10)).unwrap();
        let cfg = Config::from_space(&space);
        let dl: Vec<f32> = (0..5 * cfg.classes)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        for arch in archs(&space) {
            let run = |ids: &[u32], mask: &[u32], t: usize| {
                let (l, tape) = engine::forward(&w, &cfg, &arch, Input::Tokens { ids, mask, t });
                let mut g = w.zero_grads();
                engine::backward(&w, &cfg, &arch, &tape, &dl, &mut g);
                (l, g)
            };
            let (l1, g1) = run(&ids, &mask, t);
            let (l2, g2) = run(&ids2, &mask2, wide);
            assert_eq!(l1, l2, "{pooling} {arch:?}: logits");
            assert!(g1 == g2, "{pooling} {arch:?}: gradients");
        }
    }
}

#[test]
fn a_fully_padded_sequence_gives_finite_logits_as_the_static_bert_does() {
    let mask = vec![0u32; 2 * 10];
    let ids: Vec<u32> = (0..20).map(|i| (i * 7 % 100) as u32).collect();
    let (ids_t, mask_t) = tensors(&ids, &mask, 10);
    for pooling in POOLINGS {
        let space = space(pooling);
        let net = supernet(&space, 11);
        let w = Weights::from_tensors(&net).unwrap();
        let cfg = Config::from_space(&space);
        let arch = space.largest();
        let got = engine::token_logits(&w, &cfg, &arch, &ids_t, &mask_t).unwrap();
        let (bert, vars) = static_bert(&space, &net, &arch);
        let want = reference_logits(&bert, &vars, &ids_t, &mask_t);
        assert!(close(&got, &want), "{pooling}: {got} vs {want}");
        if pooling == "mean" {
            // nothing to average: the classifier's bias
            let bias = vars["classifier.bias"].as_tensor().unsqueeze(0).unwrap();
            assert_eq!(max_abs_diff(&got, &bias.broadcast_as((2, 3)).unwrap()), 0.0);
        }
    }
}

#[test]
fn engine_rejects_text_inputs_and_archs_that_do_not_fit() {
    let space = space("pooler");
    let net = supernet(&space, 12);
    let w = Weights::from_tensors(&net).unwrap();
    let cfg = Config::from_space(&space);
    let arch = space.largest();
    let err = |ids: Vec<u32>, mask: Vec<u32>, t: usize| {
        let (i, m) = tensors(&ids, &mask, t);
        engine::token_logits(&w, &cfg, &arch, &i, &m)
            .unwrap_err()
            .to_string()
    };
    let e = err(vec![3, 100], vec![1, 1], 2);
    assert!(e.contains("input_ids") && e.contains("100"), "{e}");
    let e = err(vec![1; 17], vec![1; 17], 17);
    assert!(e.contains("max_position_embeddings 16"), "{e}");
    let (i, m) = tensors(&[1, 2], &[1, 1], 2);
    let e = engine::token_logits(&w, &cfg, &arch, &i, &m.reshape(2).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("attention_mask"), "{e}");
    // a static subnet's tensors are too small for a larger architecture
    let small = space.smallest();
    let (bert, _) = static_bert(&space, &net, &small);
    let model = Model::from_bert(&bert).unwrap();
    let e = engine::token_logits(&model.weights, &model.cfg, &arch, &i, &m)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bert.encoder.layer."),
        "should name a tensor: {e}"
    );
    // images into a text model, and a ViT configuration on BERT tensors
    let images = Tensor::zeros((1, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let e = engine::logits(&w, &cfg, &arch, &images)
        .unwrap_err()
        .to_string();
    assert!(e.contains("text model"), "{e}");
    let vit = Config::from_space(&common::space("fmnist-tiny"));
    let e = w.check(&vit, &arch).unwrap_err().to_string();
    assert!(e.contains("Bert") && e.contains("Vit"), "{e}");
}

/// The real all-MiniLM-L6-v2 (../shared/models; skipped with a message
/// when absent): the engine's mean-pooled features of tokenized sentences
/// of different lengths (a padded batch) equal the static BERT's.
#[test]
fn engine_mean_pools_all_minilm_l6_v2_as_the_static_bert_does() {
    let dir = common::minilm_dir();
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipped: {} is absent", dir.display());
        return;
    }
    let bert = Bert::load_dir(&dir).unwrap();
    let tok =
        vitnas::models::text::TextTokenizer::from_file(&dir.join("tokenizer.json"), 128).unwrap();
    let sentences = [
        "A man is eating food.",
        "The new movie is awesome, everyone in the theatre loved it and wants to see it again.",
        "Hi",
        "A cheetah is running behind its prey across the dry grassland.",
    ];
    let (ids, mask) = tok.encode(&sentences).unwrap();
    assert!(
        mask.to_vec2::<u32>().unwrap()[2].contains(&0),
        "the batch is padded"
    );
    let model = Model::from_bert(&bert).unwrap();
    assert_eq!((model.cfg.head, model.cfg.classes), (Head::Mean, 0));
    let got = model.token_features(&ids, &mask).unwrap();
    let out = bert.forward(&ids, &mask).unwrap();
    let want = mean_pool(out.hidden_states.last().unwrap(), &mask).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-4, "mean-pooled features differ by {d}");
    // one sentence alone: the batch-1 path (rows split over threads)
    let one = |x: &Tensor| x.narrow(0, 1, 1).unwrap();
    let got = model.token_features(&one(&ids), &one(&mask)).unwrap();
    assert!(max_abs_diff(&got, &one(&want)) <= 1e-4);
}
