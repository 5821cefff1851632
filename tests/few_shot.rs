//! Few-shot supernets (`[few_shot]`): a trained parent split into one
//! sub-supernet per option of a global choice, each inheriting the parent,
//! training on its part of the space, and holding the architectures that
//! take its option; GM-NAS's gradient matching choosing the split.

mod common;

use common::{repo_path, small_quickstart};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use vitnas::space::Space;
use vitnas::train::few_shot::{self, Choice, FewShot};
use vitnas::train::recipe::Recipe;
use vitnas::train::recipe::{FewShotConfig, Split};
use vitnas::train::{self, RunOptions};

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-few-shot-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(flag: &AtomicBool, max_steps: Option<usize>) -> RunOptions<'_> {
    RunOptions {
        resume: false,
        stop: flag,
        progress: false,
        max_steps,
        force: true,
        collective: &vitnas::dist::Single,
    }
}

/// A parent supernet trained for 4 steps on the bundled sample.
fn parent(d: &Path) -> PathBuf {
    let flag = AtomicBool::new(false);
    let mut r = small_quickstart(&d.join("parent"));
    r.train.epochs = 1;
    r.train.max_steps = Some(4);
    train::train(&r, &opts(&flag, None)).unwrap();
    d.join("parent")
}

fn few_shot_recipe(d: &Path, parent: &Path, split: Split) -> Recipe {
    let mut r = small_quickstart(&d.join("few-shot"));
    r.init_from = Some(parent.display().to_string());
    r.few_shot = Some(FewShotConfig {
        split,
        gm_batches: 1,
        gm_archs: 2,
    });
    r
}

fn weights(path: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, data)
        })
        .collect()
}

#[test]
fn each_part_inherits_the_parent_trains_its_option_only_and_holds_its_architectures() {
    let d = tmp_dir("parts");
    let parent = parent(&d);
    let space = Space::from_file(repo_path("search_spaces/fmnist-tiny.toml")).unwrap();
    let flag = AtomicBool::new(false);
    // One step per part: enough to tell trained from inherited.
    let r = few_shot_recipe(&d, &parent, Split::EmbedDim);
    let s = few_shot::train(&r, &opts(&flag, Some(1))).unwrap();
    assert_eq!(s.choice, Choice::EmbedDim);
    assert_eq!(s.parts.len(), 3, "one sub-supernet per embed_dim option");
    let fs = FewShot::load(&d.join("few-shot")).unwrap();
    assert_eq!(fs.manifest.space, space);
    let parent_w = weights(&parent.join("supernet.safetensors"));
    for &(e, ref rel) in &fs.manifest.parts {
        let dir = d.join("few-shot").join(rel);
        // Its space fixes the option and keeps the parent's shapes.
        let sub = Space::from_file(dir.join("space.toml")).unwrap();
        assert_eq!(sub.choices.embed_dim, vec![e]);
        assert_eq!(sub.supernet, space.supernet);
        // Every tensor came from the parent...
        let report = std::fs::read_to_string(dir.join("init-report.txt")).unwrap();
        assert!(report.contains("initialised 0"), "{report}");
        // ...and one step moved only what architectures with this option
        // use: columns of the embedding beyond `e` are the parent's.
        let w = weights(&dir.join("supernet.safetensors"));
        let name = "vit.embeddings.cls_token";
        let (pw, sw) = (&parent_w[name], &w[name]);
        assert_eq!(&pw[e..], &sw[e..], "{name} beyond {e} changed");
        assert_ne!(&pw[..e], &sw[..e], "{name} up to {e} did not train");
        // The architectures with this option are routed to this part.
        let mut arch = space.largest();
        arch.embed_dim = e;
        assert_eq!(fs.part_for(&arch).unwrap(), dir);
    }
    // An option no part holds is an error naming the choice.
    let mut arch = space.largest();
    arch.embed_dim = 100;
    let err = fs.part_for(&arch).unwrap_err().to_string();
    assert!(err.contains("embed_dim = 100"), "{err}");
    // Training again continues the unfinished parts instead of starting
    // over, and the choice stays the one recorded.
    let again = few_shot::train(&r, &opts(&flag, Some(2))).unwrap();
    assert_eq!(again.parts.len(), 3);
    assert!(
        again.parts.iter().all(|p| p.steps == 2),
        "{:?}",
        again.parts
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn gradient_matching_scores_every_splittable_choice_reproducibly() {
    let d = tmp_dir("gm");
    let parent = parent(&d);
    let space = Space::from_file(repo_path("search_spaces/fmnist-tiny.toml")).unwrap();
    let r = few_shot_recipe(&d, &parent, Split::Auto);
    let cfg = r.few_shot.clone().unwrap();
    let a = few_shot::gradient_match(&r, &space, &parent, &cfg).unwrap();
    let b = few_shot::gradient_match(&r, &space, &parent, &cfg).unwrap();
    assert_eq!(a, b, "same seed, same scores");
    let choices: Vec<Choice> = a.iter().map(|s| s.0).collect();
    assert_eq!(choices, vec![Choice::EmbedDim, Choice::Depth]);
    for (c, cos) in &a {
        assert!(cos.is_finite() && *cos > -1.0 && *cos < 1.0, "{c:?}: {cos}");
    }
    // `auto` records the scores and splits on the lowest.
    let flag = AtomicBool::new(false);
    let s = few_shot::train(&r, &opts(&flag, Some(1))).unwrap();
    let lowest = a.iter().min_by(|x, y| x.1.total_cmp(&y.1)).unwrap().0;
    assert_eq!(s.choice, lowest);
    assert_eq!(s.chosen_by, "gradient matching");
    assert_eq!(s.gm_cosine, a);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_parent_that_is_not_a_trained_run_or_has_other_shapes_is_refused() {
    let d = tmp_dir("refused");
    let flag = AtomicBool::new(false);
    // Not a vitnas run.
    let r = few_shot_recipe(&d, &d.join("nowhere"), Split::Depth);
    let err = few_shot::train(&r, &opts(&flag, Some(1)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("init_from") && err.contains("nowhere"),
        "{err}"
    );
    // A run of a space with other supernet shapes.
    let parent = parent(&d);
    let mut other = Space::from_file(repo_path("search_spaces/fmnist-tiny.toml")).unwrap();
    other.supernet.embed_dim = 96;
    other.choices.embed_dim = vec![64, 96];
    std::fs::write(parent.join("space.toml"), other.to_toml_string()).unwrap();
    let r = few_shot_recipe(&d, &parent, Split::Depth);
    let err = few_shot::train(&r, &opts(&flag, Some(1)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("space.toml") && err.contains("shapes"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
