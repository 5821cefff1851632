//! A fixed teacher (`[loss] teacher`, DynaBERT's first stage): every
//! subnet of a step, the largest included, distills from a trained run's
//! largest subnet instead of from the step's own largest; a text run also
//! starts from a trained text run (`init_from`). Checked exactly against
//! in-place distillation, and end to end through training.

mod common;

use common::{bert_supernet, repo_path, text_batch, tiny_bert, train_in_process};
use std::path::{Path, PathBuf};
use vitnas::engine::Weights;
use vitnas::space::Space;
use vitnas::supernet::bert::Tokens;
use vitnas::train::loss::{Distill, HiddenDistillConfig, Kl, LayerMap, WithHidden};
use vitnas::train::recipe::Recipe;
use vitnas::train::sampler::Plan;
use vitnas::train::step::{
    accumulate_groups, Batch, Forward, Input, Params, Path as StepPath, StepLosses, TeacherModel,
};

use common::tiny_bert_student as student;

/// One engine step of `plan` on a fixed batch of the tiny space (seeded
/// supernet 11), distilled by `distill`, taught by `teacher` (a copy of
/// the same weights, its largest subnet) when `fixed`: losses and
/// gradients.
fn step(
    space: &Space,
    plan: &Plan,
    distill: Option<&dyn Distill>,
    fixed: bool,
) -> (StepLosses, Vec<Vec<f32>>) {
    let (net, vm) = bert_supernet(space, 11);
    let params = Params::from_varmap(&vm);
    let cfg = net.engine_config().unwrap();
    let weights = Weights::from_tensors(&params.tensors()).unwrap();
    let teacher_weights = Weights::from_tensors(&params.tensors()).unwrap();
    let largest = space.largest();
    let b = text_batch(5, 11, 50, 3, 4);
    let batch = Batch {
        input: Input::Tokens(Tokens {
            ids: &b.ids,
            mask: &b.attention_mask,
        }),
        labels: &b.labels,
        label_smoothing: 0.1,
        distill,
        ranking: None,
        teacher: fixed.then_some(TeacherModel {
            weights: &teacher_weights,
            cfg: &cfg,
            arch: &largest,
        }),
    };
    let mut grads = params.zero_grads();
    let path = StepPath::Engine {
        weights: &weights,
        config: &cfg,
        recompute: Default::default(),
    };
    let one = vec![0; plan.archs.len()];
    let out = accumulate_groups(path, plan, batch, &one, &mut [&mut grads[..]]).unwrap();
    (out, grads)
}

#[test]
fn a_fixed_teacher_teaches_every_subnet_the_largest_included_as_in_place_distillation_does_the_rest(
) {
    let hidden = WithHidden {
        logits: Box::new(Kl),
        config: HiddenDistillConfig {
            weight: 1.0,
            embeddings: true,
            layer_map: LayerMap::Uniform,
        },
    };
    for pooling in ["pooler", "mean"] {
        let space = tiny_bert(pooling, "[2, 3, 4]");
        let plan = Plan {
            archs: vec![space.largest(), student(&space)],
            teacher_first: true,
        };
        let alone = Plan {
            archs: vec![space.largest()],
            teacher_first: false,
        };
        for distill in [&Kl as &dyn Distill, &hidden] {
            // The teacher has the student supernet's weights: the largest
            // learns nothing from it (its loss and gradient are zero) and
            // the rest learn what in-place distillation teaches them. So
            // fixed = in-place − the largest's label gradient.
            let (fixed, g_fixed) = step(&space, &plan, Some(distill), true);
            let (in_place, g_in_place) = step(&space, &plan, Some(distill), false);
            let (ce, g_ce) = step(&space, &alone, None, false);
            assert!(
                fixed.losses[0].abs() < 1e-5,
                "{pooling}: {:?}",
                fixed.losses
            );
            assert!((in_place.losses[0] - ce.losses[0]).abs() < 1e-6 && ce.losses[0] > 0.5);
            assert!(
                (fixed.losses[1] - in_place.losses[1]).abs() < 1e-5 && fixed.losses[1] > 0.0,
                "{pooling}: {:?} against {:?}",
                fixed.losses,
                in_place.losses
            );
            let mut worst = 0f32;
            let mut scale = 0f32;
            for ((f, i), c) in g_fixed.iter().zip(&g_in_place).zip(&g_ce) {
                for ((f, i), c) in f.iter().zip(i).zip(c) {
                    worst = worst.max((f - (i - c)).abs());
                    scale = scale.max(i.abs());
                }
            }
            assert!(
                worst < 1e-4 * scale.max(1.0),
                "{pooling}: gradients differ by {worst} (scale {scale})"
            );
        }
    }
}

#[test]
fn a_fixed_teacher_is_refused_off_the_engine_and_without_a_logits_distillation() {
    let space = tiny_bert("mean", "[2, 3, 4]");
    let (net, vm) = bert_supernet(&space, 11);
    let params = Params::from_varmap(&vm);
    let cfg = net.engine_config().unwrap();
    let weights = Weights::from_tensors(&params.tensors()).unwrap();
    let largest = space.largest();
    let b = text_batch(4, 9, 50, 3, 4);
    let batch = Batch {
        input: Input::Tokens(Tokens {
            ids: &b.ids,
            mask: &b.attention_mask,
        }),
        labels: &b.labels,
        label_smoothing: 0.0,
        distill: Some(&Kl),
        ranking: None,
        teacher: Some(TeacherModel {
            weights: &weights,
            cfg: &cfg,
            arch: &largest,
        }),
    };
    let plan = Plan {
        archs: vec![largest.clone()],
        teacher_first: true,
    };
    let path = StepPath::Autograd {
        net: &net,
        params: &params,
    };
    let mut grads = params.zero_grads();
    let e = accumulate_groups(path, &plan, batch, &[0], &mut [&mut grads[..]]).unwrap_err();
    assert!(e.to_string().contains("loss.teacher"), "{e}");

    let origin = repo_path("recipes/health-tweets-sample.toml");
    let text = std::fs::read_to_string(&origin).unwrap();
    let with = text.replace(
        "distill = { kind = \"kl\" }",
        "distill = { kind = \"kl\" }\nteacher = \"runs/some-teacher\"",
    );
    let r = Recipe::from_toml_str(&with, &origin).unwrap();
    assert_eq!(r.loss.teacher, Some(PathBuf::from("runs/some-teacher")));
    assert!(r
        .to_toml_string()
        .contains("teacher = \"runs/some-teacher\""));
    common::assert_recipe_refused(
        &with,
        "distill = { kind = \"kl\" }",
        "distill = { kind = \"none\" }",
        "loss.teacher",
    );
}

/// A tiny text space and recipe on the bundled spam sample (`extra`
/// appended to `[loss]`, `init_from` set when given), writing to `out`.
fn tiny_recipe(dir: &Path, out: &Path, init_from: Option<&Path>, extra: &str) -> Recipe {
    let space = dir.join("space.toml");
    std::fs::write(&space, common::tiny_text_space_toml(64, "num_classes = 2")).unwrap();
    let data = repo_path("data/spam-sample");
    let mut text = common::tiny_text_recipe_toml((&space, &data, out), 100, "max_len = 32", 1)
        .replace(
            "distill = { kind = \"kl\" }",
            &format!("distill = {{ kind = \"kl\" }}\n{extra}"),
        );
    if let Some(from) = init_from {
        text = format!("init_from = \"{}\"\n{text}", from.display());
    }
    let file = dir.join(format!(
        "{}.toml",
        out.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&file, &text).unwrap();
    Recipe::from_file(&file).unwrap()
}

fn first_losses(run: &Path) -> Vec<f64> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let line = metrics.lines().find(|l| l.contains("\"losses\"")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn a_text_run_starts_from_a_trained_run_and_learns_from_it_as_a_fixed_teacher() {
    let dir = common::scratch("teacher-e2e");
    let first = dir.join("first");
    let r = tiny_recipe(&dir, &first, None, "");
    train_in_process(&r, false, Some(6), false).unwrap();

    // Started from the first run and taught by it (logits and hidden
    // states): at the first step the largest subnet is its teacher (the
    // rewiring permutes heads and neurons without changing the function),
    // so it has nothing to learn; the smaller ones do.
    let second = dir.join("second");
    let extra = format!(
        "teacher = \"{}\"\nhidden_distill = {{ weight = 1.0 }}",
        first.display()
    );
    let r2 = tiny_recipe(&dir, &second, Some(&first), &extra);
    let s = train_in_process(&r2, false, Some(3), false).unwrap();
    assert_eq!(s.steps, 3);
    let losses = first_losses(&second);
    assert!(losses[0].abs() < 1e-4, "{losses:?}");
    assert!(losses[1..].iter().all(|l| *l > 1e-3), "{losses:?}");
    let report = std::fs::read_to_string(second.join("init-report.txt")).unwrap();
    assert!(report.contains("initialised 0,"), "{report}");

    // Without the teacher, the largest learns from the labels.
    let third = dir.join("third");
    let r3 = tiny_recipe(&dir, &third, Some(&first), "");
    train_in_process(&r3, false, Some(1), false).unwrap();
    assert!(first_losses(&third)[0] > 0.05);

    // A teacher (or start) with other labels is refused, naming them.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in [
        "recipe.toml",
        "space.toml",
        "supernet.safetensors",
        "tokenizer.json",
    ] {
        std::fs::copy(first.join(f), other.join(f)).unwrap();
    }
    std::fs::write(other.join("labels.json"), "[\"spam\", \"ham\"]").unwrap();
    let labels: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(first.join("labels.json")).unwrap()).unwrap();
    assert_ne!(
        labels,
        ["spam", "ham"],
        "the fixture's labels are ordered otherwise"
    );
    let extra = format!("teacher = \"{}\"", other.display());
    let r4 = tiny_recipe(&dir, &dir.join("fourth"), None, &extra);
    let e = train_in_process(&r4, false, Some(1), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("loss.teacher") && e.contains("labels"), "{e}");
    let r5 = tiny_recipe(&dir, &dir.join("fifth"), Some(&other), "");
    let e = train_in_process(&r5, false, Some(1), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("init_from") && e.contains("labels"), "{e}");

    // A teacher that is not a run names the field and the missing file.
    let extra = format!("teacher = \"{}\"", dir.join("nowhere").display());
    let r6 = tiny_recipe(&dir, &dir.join("sixth"), None, &extra);
    let e = train_in_process(&r6, false, Some(1), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("loss.teacher") && e.contains("supernet.safetensors"),
        "{e}"
    );
    // refused before anything is written
    assert!(
        !dir.join("sixth").exists(),
        "a refused run left a directory"
    );
    assert!(
        !dir.join("fourth").exists(),
        "a refused run left a directory"
    );
}

#[test]
fn an_image_run_learns_from_a_trained_image_run_as_a_fixed_teacher_and_resumes_with_it() {
    let dir = common::scratch("teacher-image");
    let first = dir.join("first");
    train_in_process(&common::small_quickstart(&first), false, Some(4), false).unwrap();

    // Started from the first run and taught by it: the largest subnet is
    // its teacher at the first step (the same weights, the same augmented
    // batch), so its loss is zero; the smaller subnets' is not.
    let second = dir.join("second");
    let mut r = common::small_quickstart(&second);
    r.init_from = Some(first.display().to_string());
    r.loss.teacher = Some(first.clone());
    train_in_process(&r, false, Some(3), false).unwrap();
    let losses = first_losses(&second);
    assert!(losses[0].abs() < 1e-5, "{losses:?}");
    assert!(losses[1..].iter().all(|l| *l > 1e-4), "{losses:?}");
    // The resolved recipe names the teacher by its absolute path, and a
    // resume continues with it to the same weights as a straight run.
    let saved = Recipe::from_file(second.join("recipe.toml")).unwrap();
    assert!(saved.loss.teacher.as_ref().unwrap().is_absolute());
    train_in_process(&saved, true, Some(6), false).unwrap();
    let straight = dir.join("straight");
    let mut r = common::small_quickstart(&straight);
    r.init_from = Some(first.display().to_string());
    r.loss.teacher = Some(first.clone());
    train_in_process(&r, false, Some(6), false).unwrap();
    let a = std::fs::read(second.join("supernet.safetensors")).unwrap();
    let b = std::fs::read(straight.join("supernet.safetensors")).unwrap();
    assert!(a == b, "resumed and straight runs differ");
}
