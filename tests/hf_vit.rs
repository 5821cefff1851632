//! The static ViT reproduces Hugging Face transformers' outputs for a real
//! `ViTForImageClassification` checkpoint (tests/fixtures/hf-tiny-vit,
//! written by transformers 5.24 with its reference outputs).

mod common;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use common::{max_abs_diff, repo_path};
use vitnas::models::vit::{Vit, VitConfig};

#[test]
fn static_vit_reproduces_transformers_logits_and_hidden_states() {
    let dir = repo_path("tests/fixtures/hf-tiny-vit");
    let cfg = VitConfig::from_hf_config_file(&dir.join("config.json")).unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads.len(),
            cfg.num_labels
        ),
        (48, 16, 3, 10)
    );
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let model = Vit::load(&cfg, vb).unwrap();
    let r =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let x = &r["pixel_values"];
    let logits = model.forward(x).unwrap();
    let d = max_abs_diff(&logits, &r["logits"]);
    assert!(d <= 1e-4, "logits differ by {d}");
    let mut h = model.embed(x).unwrap();
    assert!(max_abs_diff(&h, &r["hidden_states.0"]) <= 1e-4);
    let (b, t, e) = h.dims3().unwrap();
    for (i, layer) in model.layers.iter().enumerate() {
        h = layer
            .forward(&h.reshape((b * t, e)).unwrap(), b)
            .unwrap()
            .reshape((b, t, e))
            .unwrap();
        let d = max_abs_diff(&h, &r[&format!("hidden_states.{}", i + 1)]);
        assert!(d <= 1e-4, "hidden state {} differs by {d}", i + 1);
    }
}

/// The fixture's config.json with `field` set to `value`, written to a
/// fresh temporary directory; returns the file's path.
fn config_with(tag: &str, field: &str, value: serde_json::Value) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-hf-vit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let text =
        std::fs::read_to_string(repo_path("tests/fixtures/hf-tiny-vit/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[field] = value;
    let p = d.join("config.json");
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

#[test]
fn config_values_no_vit_can_have_are_refused_naming_the_file_and_field() {
    // Each would divide by zero, size a tensor 0, or cut the image into
    // partial patches; the error is the config's, never a panic.
    let cases = [
        ("patch0", "patch_size", serde_json::json!(0), "patch_size"),
        ("patch5", "patch_size", serde_json::json!(5), "patch_size"),
        ("image0", "image_size", serde_json::json!(0), "image_size"),
        (
            "hidden0",
            "hidden_size",
            serde_json::json!(0),
            "hidden_size",
        ),
        (
            "heads0",
            "num_attention_heads",
            serde_json::json!(0),
            "num_attention_heads",
        ),
        (
            "heads5",
            "num_attention_heads",
            serde_json::json!(5),
            "num_attention_heads",
        ),
        (
            "mlp0",
            "intermediate_size",
            serde_json::json!(0),
            "intermediate_size",
        ),
        (
            "chan0",
            "num_channels",
            serde_json::json!(0),
            "num_channels",
        ),
        ("labels0", "num_labels", serde_json::json!(0), "num_labels"),
        (
            "eps",
            "layer_norm_eps",
            serde_json::json!(-1.0),
            "layer_norm_eps",
        ),
        ("act", "hidden_act", serde_json::json!("relu"), "hidden_act"),
    ];
    for (tag, key, value, want) in cases {
        let p = config_with(tag, key, value);
        let err = VitConfig::from_hf_config_file(&p).unwrap_err();
        let msg = err.to_string();
        match &err {
            vitnas::Error::InvalidConfig { file, field, .. } => {
                assert_eq!(field, want, "{msg}");
                assert_eq!(file, &p.display().to_string(), "{msg}");
            }
            other => panic!("{tag}: expected InvalidConfig, got {other:?}"),
        }
        assert!(
            msg.contains(&format!("`{want}`")) && msg.contains("config.json"),
            "{msg}"
        );
        std::fs::remove_dir_all(p.parent().unwrap()).ok();
    }
}
