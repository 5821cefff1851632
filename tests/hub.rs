//! Pretrained Hugging Face ViT weights into the supernet: local directories
//! and the offline hub cache, exact reproduction of transformers' logits.

mod common;

use candle_core::Device;
use candle_nn::VarMap;
use common::{max_abs_diff, repo_path};
use vitnas::hub::{load_vit_into, resolve, LoadReport};
use vitnas::space::{Arch, Space};
use vitnas::train::{build_supernet, step::Params};
use vitnas::Supernet;

fn space(embed: usize, depth: usize, heads: usize) -> Space {
    // Each choice listed once (a space refuses repeats).
    let choices = |small: usize, big: usize| match small == big {
        true => format!("[{big}]"),
        false => format!("[{small}, {big}]"),
    };
    let (embeds, depths, headss) = (choices(48, embed), choices(3, depth), choices(3, heads));
    let text = format!(
        r#"
name = "hf-tiny"
[input]
image_size = 28
patch_size = 7
channels = 1
num_classes = 10
[supernet]
embed_dim = {embed}
depth = {depth}
num_heads = {heads}
mlp_ratio = 2.0
head_dim = 16
layer_norm_eps = 1e-12
[choices]
embed_dim = {embeds}
depth = {depths}
num_heads = {headss}
mlp_ratio = [2.0]
"#
    );
    Space::from_toml_str(&text, "hf-tiny.toml").unwrap()
}

fn reference() -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(
        repo_path("tests/fixtures/hf-tiny-vit/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn hf_arch() -> Arch {
    Arch {
        embed_dim: 48,
        depth: 3,
        num_heads: vec![3; 3],
        mlp_ratio: vec![2.0; 3],
        mlp_dim: vec![],
    }
}

/// A seed-0 supernet over `s` with the pretrained ViT in `dir` (head size
/// 16) loaded into it, its variables, and what the load did.
fn pretrained(s: &Space, dir: &std::path::Path) -> (Supernet, VarMap, LoadReport) {
    let (net, vm, _) = build_supernet(s, 0, Default::default()).unwrap();
    let report = load_vit_into(&Params::from_varmap(&vm), dir, 16).unwrap();
    (net, vm, report)
}

#[test]
fn largest_subnet_of_a_matching_supernet_is_the_pretrained_model() {
    let s = space(48, 3, 3);
    let (net, _vm, report) = pretrained(&s, &repo_path("tests/fixtures/hf-tiny-vit"));
    assert_eq!(
        (
            report.loaded.len(),
            report.initialised.len(),
            report.ignored.len()
        ),
        (4 + 16 * 3 + 4, 0, 0)
    );
    let r = reference();
    let logits = net
        .forward(&r["pixel_values"], &s.largest(), false)
        .unwrap();
    let d = max_abs_diff(&logits, &r["logits"]);
    assert!(d <= 1e-4, "{d}");
}

#[test]
fn a_larger_supernet_holds_the_pretrained_model_in_its_leading_slices() {
    let s = space(64, 4, 4);
    let (net, _vm, report) = pretrained(&s, &repo_path("tests/fixtures/hf-tiny-vit"));
    assert_eq!(
        report.initialised.len(),
        16,
        "layer 3 is new: {:?}",
        report.initialised
    );
    assert!(report.initialised.iter().all(|n| n.contains("layer.3.")));
    let r = reference();
    let logits = net.forward(&r["pixel_values"], &hf_arch(), false).unwrap();
    assert!(max_abs_diff(&logits, &r["logits"]) <= 1e-4);
}

#[test]
fn hub_ids_resolve_through_the_offline_cache_layout() {
    let cache = std::env::temp_dir().join(format!("vitnas-hub-{}", std::process::id()));
    let snap = cache.join("models--vitnas--hf-tiny-vit/snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(cache.join("models--vitnas--hf-tiny-vit/refs")).unwrap();
    std::fs::write(
        cache.join("models--vitnas--hf-tiny-vit/refs/main"),
        "0123abcd\n",
    )
    .unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            repo_path("tests/fixtures/hf-tiny-vit").join(f),
            snap.join(f),
        )
        .unwrap();
    }
    std::env::set_var("HF_HUB_CACHE", &cache);
    let dir = resolve("vitnas/hf-tiny-vit").unwrap();
    assert_eq!(dir, snap);
    let s = space(48, 3, 3);
    let (net, _vm, _) = pretrained(&s, &dir);
    let r = reference();
    assert!(
        max_abs_diff(
            &net.forward(&r["pixel_values"], &s.largest(), false)
                .unwrap(),
            &r["logits"]
        ) <= 1e-4
    );
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let msg = resolve("nobody/missing-model").unwrap_err().to_string();
    assert!(
        msg.contains("models--nobody--missing-model") && msg.contains("offline"),
        "{msg}"
    );
    std::fs::remove_dir_all(cache).ok();
}

#[test]
fn a_pretrained_tensor_larger_than_the_supernet_names_itself_and_both_shapes() {
    let text = std::fs::read_to_string(repo_path("search_spaces/fmnist-tiny.toml")).unwrap();
    let s = Space::from_toml_str(
        &text
            .replace("head_dim = 32", "head_dim = 16")
            .replace("patch_size = 4", "patch_size = 7"),
        "x.toml",
    )
    .unwrap();
    let mut small = s.clone();
    small.supernet.embed_dim = 32;
    small.choices.embed_dim = vec![32];
    let (_, vm, _) = build_supernet(&small, 0, Default::default()).unwrap();
    let msg = load_vit_into(
        &Params::from_varmap(&vm),
        &repo_path("tests/fixtures/hf-tiny-vit"),
        16,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("classifier.weight") && msg.contains("[10, 48]") && msg.contains("[10, 32]"),
        "{msg}"
    );
    let msg = load_vit_into(
        &Params::from_varmap(&vm),
        &repo_path("tests/fixtures/hf-tiny-vit"),
        32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("head size 16")
            && msg.contains("head_dim 32")
            && msg.contains("hf-tiny-vit/config.json")
            && msg.contains("`hidden_size / num_attention_heads`"),
        "{msg}"
    );
}
