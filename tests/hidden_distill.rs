//! Hidden-state distillation (`[loss] hidden_distill`, DynaBERT): the
//! uniform layer map, the engine's gradient with respect to the hidden
//! states against finite differences, every parameter's gradient with the
//! term on, and the step without it unchanged.

mod common;

use common::{bert_supernet, text_batch, tiny_bert};
use vitnas::data::text::TextBatch;
use vitnas::engine::{self, Input as EngineInput, Weights};
use vitnas::space::{Arch, Space};
use vitnas::supernet::bert::Tokens;
use vitnas::train::loss::{
    from_loss_config, hidden_mse, teacher_boundary, DistillConfig, HiddenDistillConfig, Kl,
    LayerMap, LossConfig, WithHidden,
};
use vitnas::train::sampler::Plan;
use vitnas::train::step::{accumulate_groups, Batch, Forward, Input, Params, Path, StepLosses};

fn hidden_config(embeddings: bool) -> HiddenDistillConfig {
    HiddenDistillConfig {
        weight: 1.0,
        embeddings,
        layer_map: LayerMap::Uniform,
    }
}

use common::tiny_bert_student as student;

#[test]
fn the_uniform_map_meets_last_with_last_and_spreads_the_rest() {
    let map = |d: usize, l: usize| -> Vec<usize> {
        (0..=d)
            .map(|j| teacher_boundary(LayerMap::Uniform, j, d, l))
            .collect()
    };
    // boundary 0 is the embeddings; j = i + 1 the output of layer i
    assert_eq!(map(2, 3), [0, 2, 3]);
    assert_eq!(map(3, 6), [0, 2, 4, 6]);
    assert_eq!(map(4, 4), [0, 1, 2, 3, 4]);
    assert_eq!(map(1, 6), [0, 6]);
    assert_eq!(map(4, 6), [0, 2, 3, 5, 6]);
    assert_eq!(map(0, 6), [0]);
}

#[test]
fn the_recipe_table_reads_with_dynabert_defaults_and_needs_a_logits_distill() {
    let base = std::fs::read_to_string(common::repo_path("recipes/bert-spam-sample.toml")).unwrap();
    let on = base.replace(
        "distill = { kind = \"kl\" }",
        "distill = { kind = \"kl\" }\nhidden_distill = { weight = 0.5 }",
    );
    let origin = common::repo_path("recipes/bert-spam-sample.toml");
    let r = vitnas::train::recipe::Recipe::from_toml_str(&on, &origin).unwrap();
    assert_eq!(
        r.loss.hidden_distill,
        Some(HiddenDistillConfig {
            weight: 0.5,
            embeddings: true,
            layer_map: LayerMap::Uniform
        })
    );
    assert!(r.to_toml_string().contains("hidden_distill"));
    let off = vitnas::train::recipe::Recipe::from_toml_str(&base, &origin).unwrap();
    assert!(!off.to_toml_string().contains("hidden_distill"));
    let bad = on.replace(
        "distill = { kind = \"kl\" }\n",
        "distill = { kind = \"none\" }\n",
    );
    let e = vitnas::train::recipe::Recipe::from_toml_str(&bad, &origin).unwrap_err();
    assert!(e.to_string().contains("loss.hidden_distill"), "{e}");
    let typo = on.replace("weight = 0.5", "weight = 0.5, layers = \"uniform\"");
    assert!(vitnas::train::recipe::Recipe::from_toml_str(&typo, &origin).is_err());
}

/// The hidden-state term of `arch`'s forward on `w` against fixed teacher
/// states: its value, and (with `grads`) its gradients added through the
/// engine's backward.
fn hidden_loss(
    w: &Weights,
    cfg: &engine::Config,
    arch: &Arch,
    input: EngineInput,
    teacher: &(usize, Vec<Vec<f32>>),
    grads: Option<&mut [Vec<f32>]>,
) -> f64 {
    let config = hidden_config(true);
    let (logits, mut tape) = engine::forward_hidden(w, cfg, arch, input);
    let states = vec![tape.take_hidden()];
    let (v, dh) = hidden_mse(
        &config,
        &states,
        arch.embed_dim,
        std::slice::from_ref(&teacher.1),
        teacher.0,
    )
    .unwrap();
    if let Some(g) = grads {
        let dlogits = vec![0f32; logits.len()];
        engine::backward_hidden(w, cfg, arch, &tape, &dlogits, &dh[0], g);
    }
    v as f64
}

#[test]
fn the_hidden_state_gradient_through_the_engine_matches_finite_differences() {
    for pooling in ["pooler", "mean"] {
        let space = tiny_bert(pooling, "[2, 3, 4]");
        let (net, vm) = bert_supernet(&space, 21);
        let params = Params::from_varmap(&vm);
        let cfg = net.engine_config().unwrap();
        let mut w = Weights::from_tensors(&params.tensors()).unwrap();
        let b = text_batch(3, 9, 50, 3, 5);
        let (ids, mask, t) = engine::token_buffers(&cfg, &b.ids, &b.attention_mask).unwrap();
        let input = EngineInput::Tokens {
            ids: &ids,
            mask: &mask,
            t,
        };
        // the teacher: the largest, its states fixed (detached)
        let largest = space.largest();
        let (_, mut tt) = engine::forward_hidden(&w, &cfg, &largest, input);
        let teacher = (largest.embed_dim, tt.take_hidden());
        assert_eq!(teacher.1.len(), largest.depth + 1);
        let arch = student(&space);
        let mut grads = w.zero_grads();
        let base = hidden_loss(&w, &cfg, &arch, input, &teacher, Some(&mut grads));
        assert!(base > 0.0);
        let (mut checked, mut worst) = (0, 0f64);
        for (i, name) in params.names.iter().enumerate() {
            // the entries of largest gradient in this tensor
            let mut idx: Vec<usize> = (0..grads[i].len()).collect();
            idx.sort_by(|&a, &b| grads[i][b].abs().total_cmp(&grads[i][a].abs()));
            for &k in idx.iter().take(2) {
                let g = grads[i][k] as f64;
                if g.abs() < 1e-3 {
                    continue;
                }
                let h = 1e-2f32 * w.data[i][k].abs().max(0.05);
                let orig = w.data[i][k];
                w.data[i][k] = orig + h;
                w.refresh_transposed();
                let up = hidden_loss(&w, &cfg, &arch, input, &teacher, None);
                w.data[i][k] = orig - h;
                w.refresh_transposed();
                let down = hidden_loss(&w, &cfg, &arch, input, &teacher, None);
                w.data[i][k] = orig;
                w.refresh_transposed();
                let numeric = (up - down) / (2.0 * h as f64);
                let err = (numeric - g).abs() / g.abs().max(1e-2);
                assert!(
                    err < 2e-2,
                    "{pooling} {name}[{k}]: engine {g}, finite difference {numeric}"
                );
                checked += 1;
                worst = worst.max(err);
            }
        }
        assert!(checked >= 20, "{pooling}: only {checked} entries checked");
        eprintln!("{pooling}: {checked} entries, worst relative error {worst:.2e}");
    }
}

/// `b` as a step's batch, with label smoothing `label_smoothing`,
/// distilled by `distill`, without the ranking term.
fn step_batch<'a>(
    b: &'a TextBatch,
    label_smoothing: f64,
    distill: &'a dyn vitnas::train::loss::Distill,
) -> Batch<'a> {
    Batch {
        input: Input::Tokens(Tokens {
            ids: &b.ids,
            mask: &b.attention_mask,
        }),
        labels: &b.labels,
        label_smoothing,
        distill: Some(distill),
        ranking: None,
        teacher: None,
    }
}

/// One step of `plan` on the tiny space with `distill`, by the engine: its
/// losses and summed gradients.
fn engine_step(
    space: &Space,
    plan: &Plan,
    distill: &dyn vitnas::train::loss::Distill,
) -> (StepLosses, Vec<Vec<f32>>, Vec<String>) {
    let (net, vm) = bert_supernet(space, 11);
    let params = Params::from_varmap(&vm);
    let b = text_batch(5, 11, 50, 3, 4);
    let batch = step_batch(&b, 0.1, distill);
    let cfg = net.engine_config().unwrap();
    let weights = Weights::from_tensors(&params.tensors()).unwrap();
    let mut grads = params.zero_grads();
    let path = Path::Engine {
        weights: &weights,
        config: &cfg,
        recompute: Default::default(),
    };
    let one = vec![0; plan.archs.len()];
    let out = accumulate_groups(path, plan, batch, &one, &mut [&mut grads[..]]).unwrap();
    (out, grads, params.names.clone())
}

#[test]
fn with_hidden_distillation_every_parameter_gets_a_gradient_and_the_term_reaches_every_student_layer(
) {
    for pooling in ["pooler", "mean"] {
        let space = tiny_bert(pooling, "[2, 3, 4]");
        let with = WithHidden {
            logits: Box::new(Kl),
            config: hidden_config(true),
        };
        let plan = Plan {
            archs: vec![space.largest(), student(&space)],
            teacher_first: true,
        };
        let (on, g_on, names) = engine_step(&space, &plan, &with);
        let (off, g_off, _) = engine_step(&space, &plan, &Kl);
        assert!(on.nonfinite.is_none());
        for (name, g) in names.iter().zip(&g_on) {
            assert!(
                g.iter().any(|v| *v != 0.0),
                "{pooling}: {name} has no gradient"
            );
        }
        // The term's own share: every tensor the student's layers and
        // embeddings use moves; the head (after the last state) and the
        // layer it lacks do not, beyond rounding (under the pooler the
        // teacher's last block then computes every token, not the first).
        for ((name, a), b) in names.iter().zip(&g_on).zip(&g_off) {
            let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let d = a.iter().zip(b).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let moved = d > 1e-4 * scale;
            let head = name.starts_with("classifier") || name.contains("pooler");
            let unused = name.contains("layer.2.");
            if name.ends_with("key.bias") {
                continue; // softmax ignores a shift of every score: its gradient is 0
            }
            assert_eq!(
                moved,
                !(head || unused),
                "{pooling}: {name} moved = {moved} under the hidden-state term"
            );
        }
        assert!(
            on.losses[1] > off.losses[1],
            "{pooling}: the term adds to the loss"
        );
    }
}

#[test]
fn without_hidden_distill_the_step_is_bit_identical_to_logits_distillation() {
    let space = tiny_bert("mean", "[2, 3, 4]");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let plan = Plan {
        archs: vec![space.largest(), student(&space), space.sample(&mut rng)],
        teacher_first: true,
    };
    let cfg = LossConfig {
        label_smoothing: 0.1,
        distill: DistillConfig::Kl,
        hidden_distill: None,
        teacher: None,
    };
    let from_recipe = from_loss_config(&cfg).unwrap();
    assert!(from_recipe.hidden().is_none());
    let (a, ga, _) = engine_step(&space, &plan, from_recipe.as_ref());
    let (b, gb, _) = engine_step(&space, &plan, &Kl);
    assert_eq!(a, b);
    assert_eq!(ga, gb);
    // On, the teacher's loss stays (mean pooling reads every token either
    // way), the students' grow by their term.
    let on = from_loss_config(&LossConfig {
        hidden_distill: Some(hidden_config(false)),
        ..cfg
    })
    .unwrap();
    let (c, _, _) = engine_step(&space, &plan, on.as_ref());
    assert_eq!(c.losses[0], b.losses[0]);
    assert!(c.losses[1] > b.losses[1] && c.losses[2] > b.losses[2]);
}

#[test]
fn hidden_distillation_on_candle_autograd_is_refused_by_name() {
    let space = tiny_bert("mean", "[2, 3, 4]");
    let (net, vm) = bert_supernet(&space, 11);
    let params = Params::from_varmap(&vm);
    let b = text_batch(2, 6, 50, 3, 4);
    let with = WithHidden {
        logits: Box::new(Kl),
        config: hidden_config(true),
    };
    let batch = step_batch(&b, 0.0, &with);
    let plan = Plan {
        archs: vec![space.largest(), student(&space)],
        teacher_first: true,
    };
    let mut grads = params.zero_grads();
    let path = Path::Autograd {
        net: &net,
        params: &params,
    };
    let e = accumulate_groups(path, &plan, batch, &[0, 0], &mut [&mut grads[..]]).unwrap_err();
    assert!(e.to_string().contains("loss.hidden_distill"), "{e}");
}
