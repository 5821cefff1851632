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
