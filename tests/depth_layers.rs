//! `[supernet] depth_layers`: which of the supernet's layers a shallower
//! subnet runs. Under `prefix-and-last` a depth-`d` subnet runs the first
//! `d − 1` layers and the last one, the same on candle's supernet, on the
//! engine (forward and gradients) and in the extracted static BERT; and on
//! all-MiniLM-L6-v2 that is what gives a 2-layer subnet a `[CLS]` state,
//! hence pooler features, that depend on the input at all.

mod common;

use candle_core::{Tensor, Var};
use common::{bert_supernet, max_abs_diff, minilm_dir, repo_path, tiny_bert, tokens};
use vitnas::engine::{self, Input, Model};
use vitnas::space::{Arch, DepthLayers, Space};
use vitnas::supernet::bert::Tokens;
use vitnas::supernet::params::Params;

#[test]
fn a_prefix_and_last_subnet_runs_the_first_layers_then_the_last() {
    let map = |p: DepthLayers, d: usize| (0..d).map(|l| p.layer(l, d, 6)).collect::<Vec<_>>();
    assert_eq!(map(DepthLayers::Prefix, 2), [0, 1]);
    assert_eq!(map(DepthLayers::PrefixAndLast, 2), [0, 5]);
    assert_eq!(map(DepthLayers::PrefixAndLast, 4), [0, 1, 2, 5]);
    assert_eq!(map(DepthLayers::PrefixAndLast, 6), [0, 1, 2, 3, 4, 5]);
    assert_eq!(map(DepthLayers::PrefixAndLast, 1), [5]);
    // DynaBERT's kept_layers_index: floor(l / depth_mult)
    assert_eq!(map(DepthLayers::EveryOther, 3), [0, 2, 4]);
    assert_eq!(map(DepthLayers::EveryOther, 2), [0, 3]);
    assert_eq!(map(DepthLayers::EveryOther, 4), [0, 1, 3, 4]);
    assert_eq!(map(DepthLayers::EveryOther, 6), [0, 1, 2, 3, 4, 5]);
    // the same spread, ending at the last layer
    assert_eq!(map(DepthLayers::EveryOtherToLast, 3), [1, 3, 5]);
    assert_eq!(map(DepthLayers::EveryOtherToLast, 2), [2, 5]);
    assert_eq!(map(DepthLayers::EveryOtherToLast, 4), [0, 2, 3, 5]);
    assert_eq!(map(DepthLayers::EveryOtherToLast, 5), [0, 1, 2, 3, 5]);
    assert_eq!(map(DepthLayers::EveryOtherToLast, 6), [0, 1, 2, 3, 4, 5]);
    // 12 layers at half depth: DynaBERT's (0, 2, 4, 6, 8, 10)
    let twelve = |p: DepthLayers| (0..6).map(|l| p.layer(l, 6, 12)).collect::<Vec<_>>();
    assert_eq!(twelve(DepthLayers::EveryOther), [0, 2, 4, 6, 8, 10]);
    assert_eq!(twelve(DepthLayers::EveryOtherToLast), [1, 3, 5, 7, 9, 11]);
    for p in [
        DepthLayers::Prefix,
        DepthLayers::PrefixAndLast,
        DepthLayers::EveryOther,
        DepthLayers::EveryOtherToLast,
    ] {
        for l in 1..=12 {
            for d in 1..=l {
                let m: Vec<usize> = (0..d).map(|i| p.layer(i, d, l)).collect();
                assert!(
                    m.windows(2).all(|w| w[0] < w[1]) && m[d - 1] < l,
                    "{p:?} d {d} of {l}: {m:?} is not d distinct layers in order"
                );
            }
        }
    }
}

#[test]
fn depth_layers_reads_from_the_space_file_and_an_image_space_refuses_it() {
    let minilm = Space::from_file(repo_path("search_spaces/bert-minilm.toml")).unwrap();
    assert_eq!(minilm.supernet.depth_layers, DepthLayers::PrefixAndLast);
    let mean = Space::from_file(repo_path("search_spaces/bert-minilm-mean.toml")).unwrap();
    assert_eq!(mean.supernet.depth_layers, DepthLayers::Prefix);
    let text = std::fs::read_to_string(repo_path("search_spaces/bert-minilm-mean.toml")).unwrap();
    for (name, want) in [
        ("every-other", DepthLayers::EveryOther),
        ("every-other-to-last", DepthLayers::EveryOtherToLast),
    ] {
        let t = text.replacen(
            "[supernet]",
            &format!("[supernet]\ndepth_layers = \"{name}\""),
            1,
        );
        let s = Space::from_toml_str(&t, "dynabert.toml").unwrap();
        assert_eq!(s.supernet.depth_layers, want);
        assert!(s
            .to_toml_string()
            .contains(&format!("depth_layers = \"{name}\"")));
        // the largest must run every layer, and no [[layer]] list may
        // name a position that maps to other layers at each depth
        let shallow = t.replacen("depth = [2, 3, 4, 5, 6]", "depth = [2, 3, 4, 5]", 1);
        assert_ne!(shallow, t);
        let e = Space::from_toml_str(&shallow, "shallow.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("supernet.depth_layers") && e.contains("choices.depth"),
            "{e}"
        );
        let layered = format!("{t}\n[[layer]]\nindex = 5\nnum_heads = [12]\n");
        let e = Space::from_toml_str(&layered, "layered.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[[layer]]"), "{e}");
        let prefix = layered.replace(&format!("depth_layers = \"{name}\"\n"), "");
        Space::from_toml_str(&prefix, "prefix.toml").unwrap();
    }
    let image = std::fs::read_to_string(repo_path("search_spaces/fmnist-tiny.toml")).unwrap();
    let image = image.replacen(
        "[supernet]",
        "[supernet]\ndepth_layers = \"prefix-and-last\"",
        1,
    );
    let e = Space::from_toml_str(&image, "fmnist-tiny.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("supernet.depth_layers"), "{e}");
}

/// A depth-2 subnet of the tiny 3-layer supernet under `prefix-and-last`:
/// the engine on the supernet's weights, candle's supernet and the
/// extracted static BERT give the same logits; the engine's gradients are
/// candle's, the skipped middle layer gets none and the last one does.
#[test]
fn a_prefix_and_last_subnet_is_the_same_function_on_engine_supernet_and_export() {
    // at depth 2 of 3 both run layers 0 and 2
    let variants = [DepthLayers::PrefixAndLast, DepthLayers::EveryOtherToLast];
    let cases = variants
        .iter()
        .flat_map(|v| ["pooler", "mean"].map(|p| (p, *v)));
    for (pooling, variant) in cases {
        let mut space = tiny_bert(pooling, "[2, 3, 4]");
        space.supernet.depth_layers = variant;
        let (net, vm) = bert_supernet(&space, 7);
        let params = Params::from_varmap(&vm);
        // layers that differ (from N(0, 0.02) they all but pass their input on)
        for (name, var) in params.names.iter().zip(&params.vars) {
            if name.contains("layer.2.output.LayerNorm.bias") {
                var.set(&common::uniform(var.dims(), 3, 1.0)).unwrap();
            }
        }
        let arch = Arch {
            embed_dim: 24,
            depth: 2,
            num_heads: vec![3, 4],
            mlp_ratio: vec![],
            mlp_dim: vec![40, 64],
        };
        let (ids, mask) = tokens(4, 10, 50, 1);
        let x = Tokens {
            ids: &ids,
            mask: &mask,
        };
        let want = net.forward(x, &arch, false).unwrap();
        let stat = net.extract(&arch).unwrap();
        assert_eq!(stat.layers.len(), 2);
        let exported = Model::from_bert(&stat)
            .unwrap()
            .token_logits(&ids, &mask)
            .unwrap();
        assert!(max_abs_diff(&exported, &want) < 1e-5, "{pooling}: export");

        let w = engine::Weights::from_tensors(&params.tensors()).unwrap();
        let cfg = engine::Config::from_space(&space);
        let (i, m, t) = engine::token_buffers(&cfg, &ids, &mask).unwrap();
        let input = Input::Tokens {
            ids: &i,
            mask: &m,
            t,
        };
        let (logits, tape) = engine::forward(&w, &cfg, &arch, input);
        let got = Tensor::from_vec(logits, want.dims(), want.device()).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-4, "{pooling}: engine");

        // not the prefix subnet: its second layer is another one
        let mut prefix = cfg.clone();
        prefix.depth_layers = DepthLayers::Prefix;
        let last_state = |c: &engine::Config| {
            let (_, mut tape) = engine::forward_hidden(&w, c, &arch, input);
            tape.take_hidden().pop().unwrap()
        };
        let (a, b) = (last_state(&cfg), last_state(&prefix));
        let d = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            d > 0.1,
            "{pooling}: the prefix subnet's last states differ by {d} only"
        );

        let r = common::uniform(want.dims(), 9, 1.0);
        let dl = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let g = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut grads = w.zero_grads();
        engine::backward(&w, &cfg, &arch, &tape, &dl, &mut grads);
        for ((name, var), got) in params.names.iter().zip(&params.vars).zip(&grads) {
            let want = grad_of(&g, var);
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = if name.ends_with("key.bias") {
                scale.max(1e-2)
            } else {
                scale
            };
            let d = got
                .iter()
                .zip(&want)
                .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                d <= 1e-4 * scale.max(1e-12),
                "{pooling} {name}: {d} of {scale}"
            );
            let any = got.iter().any(|v| *v != 0.0);
            if name.contains("layer.1.") {
                assert!(!any, "{pooling} {name}: the skipped layer got a gradient");
            }
            if name.contains("layer.2.") && name.ends_with("weight") {
                assert!(any, "{pooling} {name}: the last layer got no gradient");
            }
        }
    }
}

fn grad_of(g: &candle_core::backprop::GradStore, var: &Var) -> Vec<f32> {
    match g.get(var.as_tensor()) {
        Some(t) => t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        None => vec![0.0; var.elem_count()],
    }
}

/// How much the rows of `[b, e]` features differ between inputs: the
/// root of the summed per-channel variance over the batch, relative to the
/// rows' root-mean-square norm (0: every input gives the same row).
fn spread(f: &Tensor) -> f32 {
    let mean = f.mean_keepdim(0).unwrap();
    let var = f.broadcast_sub(&mean).unwrap().sqr().unwrap();
    let var = var
        .mean(0)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let norm2 = f.sqr().unwrap().sum(1).unwrap().mean_all().unwrap();
    var.sqrt() / norm2.to_scalar::<f32>().unwrap().sqrt()
}

/// The cause of the pooler space's shallow subnets staying at the
/// majority class, and its fix (../shared's all-MiniLM-L6-v2; skipped with
/// a message when absent): a 2-layer prefix of the model hands BERT's
/// pooler the same `[CLS]` state for every input (all-MiniLM-L6-v2 was
/// trained with mean pooling: its `[CLS]` takes the input in only at the
/// last layer), so its features, hence its predictions, are constant;
/// with the last layer as its second, they differ by a fifth to a half of
/// their norm.
#[test]
fn with_minilms_last_layer_a_2_layer_subnet_pools_a_cls_that_depends_on_the_input() {
    let dir = minilm_dir();
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipped: {} is absent", dir.display());
        return;
    }
    let mut space = Space::from_file(repo_path("search_spaces/bert-minilm.toml")).unwrap();
    let (_net, vm) = bert_supernet(&space, 0);
    let params = Params::from_varmap(&vm);
    vitnas::hub::load_bert_into(&params, &dir, space.supernet.head_dim).unwrap();
    let w = engine::Weights::from_tensors(&params.tensors()).unwrap();
    let tok =
        vitnas::models::text::TextTokenizer::from_file(&dir.join("tokenizer.json"), 64).unwrap();
    let (ids, mask) = tok
        .encode(&[
            "Subject: meeting moved to Thursday, see you in room 4",
            "WIN a FREE iPod now!!! Click here to claim your prize before midnight",
            "Re: the kernel patch you sent fails to build on ARM",
            "Cheap meds online, no prescription needed, 80% off today only",
            "Can you send me the slides from yesterday's talk?",
            "You have been selected for a $1000 Walmart gift card",
        ])
        .unwrap();
    let arch = |e: usize, heads: usize, mlp: usize| Arch {
        embed_dim: e,
        depth: 2,
        num_heads: vec![heads; 2],
        mlp_ratio: vec![],
        mlp_dim: vec![mlp; 2],
    };
    for a in [arch(384, 12, 1536), space.smallest()] {
        space.supernet.depth_layers = DepthLayers::Prefix;
        let cfg = engine::Config::from_space(&space);
        let prefix = spread(&engine::token_features(&w, &cfg, &a, &ids, &mask).unwrap());
        space.supernet.depth_layers = DepthLayers::PrefixAndLast;
        let cfg = engine::Config::from_space(&space);
        let last = spread(&engine::token_features(&w, &cfg, &a, &ids, &mask).unwrap());
        eprintln!("{a:?}: pooler features spread {prefix:.4} (prefix) {last:.4} (last)");
        assert!(prefix < 0.05, "{a:?}: prefix spread {prefix}");
        assert!(
            last > 0.15 && last > 4.0 * prefix,
            "{a:?}: prefix-and-last spread {last} (prefix {prefix})"
        );
    }
}

/// A latency predictor fitted before the pooler space ran `prefix-and-last`
/// still serves it (every layer has the same shape: which ones a subnet
/// runs does not change its cost), while a change that does change costs
/// is refused by name.
#[test]
fn a_latency_predictor_ignores_which_layers_a_subnet_runs_but_not_their_shapes() {
    use vitnas::latency::{space_hash, Machine, Predictor};
    let pooler = Space::from_file(repo_path("search_spaces/bert-minilm.toml")).unwrap();
    let mut prefix = pooler.clone();
    prefix.supernet.depth_layers = DepthLayers::Prefix;
    assert_eq!(space_hash(&pooler), space_hash(&prefix));
    let file = repo_path("evaluate/results/latency/bert-minilm-s128-b1-t2.predictor.json");
    let p = Predictor::load(&file).unwrap();
    p.check(&file, &pooler, &Machine::current(2)).unwrap();
    let mut wider = pooler.clone();
    wider.choices.embed_dim.push(448);
    wider.supernet.embed_dim = 448;
    let e = p.check(&file, &wider, &Machine::current(2)).unwrap_err();
    assert!(e.to_string().contains("bert-minilm"), "{e}");
}
