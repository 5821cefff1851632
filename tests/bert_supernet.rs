//! The elastic BERT supernet: extraction equals the supernet, every
//! parameter gets exactly its gradient, and all-MiniLM-L6-v2 fills the
//! largest subnet so that it computes the pretrained model.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{bert_supernet, max_abs_diff, minilm, repo_path, tiny_bert, tokens};
use rand::{rngs::StdRng, SeedableRng};
use vitnas::models::bert::Bert;
use vitnas::space::{Arch, Space};
use vitnas::supernet::bert::Tokens;
use vitnas::train::step::Params;

#[test]
fn extracted_text_subnet_matches_supernet_logits_with_padding() {
    for pooling in ["pooler", "mean"] {
        let space = tiny_bert(pooling, "[2, 3, 4]");
        let (net, _vm) = bert_supernet(&space, 3);
        let (ids, mask) = tokens(4, 10, 50, 1);
        let x = Tokens {
            ids: &ids,
            mask: &mask,
        };
        let mut rng = StdRng::seed_from_u64(7);
        for arch in [space.largest(), space.smallest(), space.sample(&mut rng)] {
            let logits = net.forward(x, &arch, false).unwrap();
            assert_eq!(logits.dims(), &[4, 3]);
            let sub = net.extract(&arch).unwrap();
            let out = sub.forward(&ids, &mask).unwrap().logits.unwrap();
            let d = max_abs_diff(&logits, &out);
            assert!(d < 1e-5, "{pooling} {}: differs by {d}", arch.to_json());
        }
    }
}

#[test]
fn every_text_supernet_parameter_gets_exactly_its_slice_gradient() {
    let space = tiny_bert("pooler", "[2, 3, 4]");
    let (net, vm) = bert_supernet(&space, 5);
    let params = Params::from_varmap(&vm);
    let (ids, mask) = tokens(3, 9, 50, 2);
    let x = Tokens {
        ids: &ids,
        mask: &mask,
    };
    // The largest subnet reaches every parameter (word rows: those used).
    let loss = net
        .forward(x, &space.largest(), true)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in params.names.iter().zip(&params.vars) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let n = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0, "{name}: zero gradient");
    }
    // A small subnet: nothing outside its slices moves.
    let arch = Arch::with_dims(16, 2, vec![2, 3], vec![16, 40]);
    let loss = net
        .forward(x, &arch, true)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in params.names.iter().zip(&params.vars) {
        let Some(g) = grads.get(var.as_tensor()) else {
            assert!(name.contains("layer.2."), "{name}: no gradient");
            continue;
        };
        let g = g.to_dtype(DType::F32).unwrap();
        let dims = g.dims().to_vec();
        // Columns past the hidden size 16 carry no gradient in any tensor
        // whose last dim is the hidden size.
        // The dimension of each tensor that is the hidden size.
        let hidden_dims: Vec<usize> = if name.contains("LayerNorm")
            || name.contains("attention.output.dense")
            || (name.contains(".output.dense") && !name.contains("attention"))
        {
            vec![0]
        } else if name.ends_with("bias") && !name.contains("pooler") {
            vec![]
        } else if name.contains("pooler.dense.weight") {
            vec![0, 1]
        } else if name.contains("pooler") {
            vec![0]
        } else {
            vec![dims.len() - 1]
        };
        if name.contains("layer.2.") {
            assert_no_gradient(name, &g);
            continue;
        }
        for hd in hidden_dims {
            let rest = g.narrow(hd, 16, 16).unwrap();
            let n = rest
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(
                n, 0.0,
                "{name}: gradient outside the hidden slice (dim {hd})"
            );
        }
    }
}

/// An unused tensor: its gradient, when candle made one, is all zero.
fn assert_no_gradient(name: &str, g: &Tensor) {
    {
        let n = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(n, 0.0, "{name}: an unused layer has a gradient");
    }
}

#[test]
fn all_minilm_l6_v2_fills_the_largest_subnet_exactly() {
    let space = Space::from_file(repo_path("search_spaces/bert-minilm.toml")).unwrap();
    let (net, vm) = bert_supernet(&space, 0);
    let params = Params::from_varmap(&vm);
    let report = vitnas::hub::load_bert_into(&params, &minilm(), 32).unwrap();
    // Everything but the new classifier comes from the checkpoint.
    assert_eq!(
        report.initialised,
        vec!["classifier.bias", "classifier.weight"]
    );
    assert!(
        report.ignored.iter().all(|n| n.contains("position_ids")),
        "{report}"
    );
    let reference = Bert::load_dir(&minilm()).unwrap();
    let (ids, mask) = tokens(2, 20, 30522, 3);
    let want = reference.forward(&ids, &mask).unwrap();
    let sub = net.extract(&space.largest()).unwrap();
    let got = sub.forward(&ids, &mask).unwrap();
    let d = max_abs_diff(
        want.hidden_states.last().unwrap(),
        got.hidden_states.last().unwrap(),
    );
    assert!(d < 1e-5, "last hidden state differs by {d}");
}

/// The text trainer's step: the engine's forward and backward on the
/// supernet's flat weights give candle's autograd gradients through the
/// supernet (sandwich plan with KL distillation, padded batch, both heads).
#[test]
fn the_engine_step_on_a_text_supernet_equals_the_autograd_step() {
    use vitnas::engine::Weights;
    use vitnas::train::loss::Kl;
    use vitnas::train::sampler::Plan;
    use vitnas::train::step::{accumulate_groups, Batch, Forward, Input, Path};
    for pooling in ["pooler", "mean"] {
        let space = tiny_bert(pooling, "[2, 3, 4]");
        let (net, vm) = bert_supernet(&space, 11);
        let params = Params::from_varmap(&vm);
        let (ids, mask) = tokens(5, 11, 50, 4);
        let labels = Tensor::from_vec(vec![0u32, 2, 1, 1, 0], 5, &Device::Cpu).unwrap();
        let mut rng = StdRng::seed_from_u64(9);
        let plan = Plan {
            archs: vec![space.largest(), space.smallest(), space.sample(&mut rng)],
            teacher_first: true,
        };
        let batch = Batch {
            input: Input::Tokens(Tokens {
                ids: &ids,
                mask: &mask,
            }),
            labels: &labels,
            label_smoothing: 0.1,
            distill: Some(&Kl),
            ranking: None,
            teacher: None,
        };
        let cfg = net
            .engine_config()
            .expect("the BERT supernet runs on the engine");
        let weights = Weights::from_tensors(&params.tensors()).unwrap();
        let group_of = vec![0; plan.archs.len()];
        let mut by_engine = params.zero_grads();
        let mut by_autograd = params.zero_grads();
        let e = accumulate_groups(
            Path::Engine {
                weights: &weights,
                config: &cfg,
                recompute: Default::default(),
            },
            &plan,
            batch,
            &group_of,
            &mut [&mut by_engine[..]],
        )
        .unwrap();
        let a = accumulate_groups(
            Path::Autograd {
                net: &net,
                params: &params,
            },
            &plan,
            batch,
            &group_of,
            &mut [&mut by_autograd[..]],
        )
        .unwrap();
        for (x, y) in e.losses.iter().zip(&a.losses) {
            assert!((x - y).abs() < 1e-5, "{pooling}: losses {x} vs {y}");
        }
        let mut moved = 0;
        for ((name, ge), ga) in params.names.iter().zip(&by_engine).zip(&by_autograd) {
            let scale = ga.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let d = ge
                .iter()
                .zip(ga)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                d / scale < 1e-4,
                "{pooling} {name}: gradients differ by {d} (scale {scale})"
            );
            moved += usize::from(ga.iter().any(|v| *v != 0.0));
        }
        assert_eq!(
            moved,
            params.names.len(),
            "{pooling}: every parameter gets a gradient"
        );
    }
}
