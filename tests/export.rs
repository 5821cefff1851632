//! Export of subnets as standalone model directories and loading them back.

mod common;

use common::{images, max_abs_diff, scaled_supernet, space, supernet};
use rand::{rngs::StdRng, SeedableRng};
use vitnas::models::export::{export, hf_obstacle, load_dir, pad_uniform};
use vitnas::models::vit::VitConfig;
use vitnas::space::Arch;

/// The model.safetensors of an exported directory, as HF-style loaders read it.
fn weights(d: &std::path::Path) -> candle_nn::VarBuilder<'static> {
    unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[d.join("model.safetensors")],
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap()
    }
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-export-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn exported_subnet_reloads_and_matches_the_supernet() {
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 3);
    let x = images(&s, 4, 8);
    let mut rng = StdRng::seed_from_u64(4);
    for k in 0..3 {
        let arch = s.sample(&mut rng);
        let d = tmp(&format!("rt{k}"));
        export(&net.extract(&arch).unwrap(), &s, &arch, None, &d).unwrap();
        let (m, _) = load_dir(&d).unwrap();
        let diff = max_abs_diff(
            &m.forward(&x).unwrap(),
            &net.forward(&x, &arch, false).unwrap(),
        );
        assert!(diff <= 1e-5, "{diff}");
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("arch.json")).unwrap()).unwrap();
        assert_eq!(
            meta["params"].as_u64().unwrap(),
            meta["exported_params"].as_u64().unwrap()
        );
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
        let representable = cfg["vitnas"]["hf_representable"].as_bool().unwrap();
        // Only HF-representable exports claim transformers' ViT class.
        assert_eq!(cfg["model_type"] == "vit", representable);
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn uniform_subnet_is_written_as_a_hugging_face_vit() {
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 3);
    // embed 96 = 3 heads × 32, the same MLP in every layer.
    let arch = Arch {
        embed_dim: 96,
        depth: 4,
        num_heads: vec![3; 4],
        mlp_ratio: vec![3.0; 4],
        mlp_dim: vec![],
    };
    let d = tmp("hf");
    let note = export(&net.extract(&arch).unwrap(), &s, &arch, None, &d).unwrap();
    assert!(note.is_none(), "{note:?}");
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (raw["model_type"].as_str(), raw["architectures"][0].as_str()),
        (Some("vit"), Some("ViTForImageClassification"))
    );
    // Read as Hugging Face reads it: the standard fields only.
    let cfg = VitConfig::from_hf_config_file(&d.join("config.json")).unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_heads.clone(),
            cfg.intermediate_sizes.clone()
        ),
        (96, 32, vec![3; 4], vec![288; 4])
    );
    let vb = weights(&d);
    let hf = vitnas::models::vit::Vit::load(&cfg, vb).unwrap();
    let x = images(&s, 2, 1);
    assert!(
        max_abs_diff(
            &hf.forward(&x).unwrap(),
            &net.forward(&x, &arch, false).unwrap()
        ) <= 1e-5
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn hf_padding_keeps_outputs_and_makes_the_subnet_representable() {
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 3);
    let arch = Arch {
        embed_dim: 128,
        depth: 4,
        num_heads: vec![2, 4, 3, 4],
        mlp_ratio: vec![2.0, 4.0, 3.0, 2.0],
        mlp_dim: vec![],
    };
    let m = net.extract(&arch).unwrap();
    assert!(hf_obstacle(&m.config).unwrap().contains("heads differ"));
    let p = pad_uniform(&m).unwrap();
    assert!(hf_obstacle(&p.config).is_none());
    let x = images(&s, 3, 2);
    assert!(max_abs_diff(&p.forward(&x).unwrap(), &m.forward(&x).unwrap()) <= 1e-5);
    // 64-wide subnets cannot have heads × 32 = 64 with 4 heads: still not HF.
    let small = Arch {
        embed_dim: 64,
        depth: 4,
        num_heads: vec![2, 4, 2, 2],
        mlp_ratio: vec![2.0; 4],
        mlp_dim: vec![],
    };
    let p = pad_uniform(&net.extract(&small).unwrap()).unwrap();
    assert!(hf_obstacle(&p.config)
        .unwrap()
        .contains("differs from hidden_size"));
}

#[test]
fn corrupt_weights_and_incomplete_configs_are_clear_errors() {
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 3);
    let arch = s.smallest();
    let d = tmp("corrupt");
    export(&net.extract(&arch).unwrap(), &s, &arch, None, &d).unwrap();
    let w = d.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 1000]).unwrap();
    let msg = load_dir(&d).unwrap_err().to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated or corrupt"),
        "{msg}"
    );

    let hf = common::repo_path("tests/fixtures/hf-tiny-vit/config.json");
    let text = std::fs::read_to_string(hf)
        .unwrap()
        .replace("\"hidden_size\": 48,", "");
    std::fs::write(d.join("config.json"), text).unwrap();
    let msg = load_dir(&d).unwrap_err().to_string();
    assert!(
        msg.contains("config.json") && msg.contains("hidden_size"),
        "{msg}"
    );

    // A tensor of the wrong shape names the tensor and both shapes.
    let d2 = tmp("shape");
    let fixture = common::repo_path("tests/fixtures/hf-tiny-vit");
    std::fs::create_dir_all(&d2).unwrap();
    let cfg = std::fs::read_to_string(fixture.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 80");
    std::fs::write(d2.join("config.json"), cfg).unwrap();
    std::fs::copy(
        fixture.join("model.safetensors"),
        d2.join("model.safetensors"),
    )
    .unwrap();
    let msg = load_dir(&d2).unwrap_err().to_string();
    assert!(
        msg.contains("intermediate.dense.weight") && msg.contains("96") && msg.contains("80"),
        "{msg}"
    );
    std::fs::remove_dir_all(d).ok();
    std::fs::remove_dir_all(d2).ok();
}

/// Loads an exported directory with candle-transformers' ViT (a different
/// implementation: candle's own layer norm, GELU and attention).
fn candle_transformers_logits(d: &std::path::Path, x: &candle_core::Tensor) -> candle_core::Tensor {
    use candle_transformers::models::vit;
    let text = std::fs::read_to_string(d.join("config.json")).unwrap();
    let cfg: vit::Config = serde_json::from_str(&text).unwrap();
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    let labels = raw["id2label"].as_object().unwrap().len();
    let vb = weights(d);
    vit::Model::new(&cfg, labels, vb)
        .unwrap()
        .forward(x)
        .unwrap()
}

#[test]
fn representable_exports_load_in_candle_transformers_vit() {
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 5);
    let x = images(&s, 3, 2);
    // Uniform: written as a Hugging Face ViT directly.
    let arch = Arch {
        embed_dim: 128,
        depth: 5,
        num_heads: vec![4; 5],
        mlp_ratio: vec![2.0; 5],
        mlp_dim: vec![],
    };
    let d = tmp("ct-uniform");
    assert!(export(&net.extract(&arch).unwrap(), &s, &arch, None, &d)
        .unwrap()
        .is_none());
    let want = net.forward(&x, &arch, false).unwrap();
    let diff = max_abs_diff(&candle_transformers_logits(&d, &x), &want);
    assert!(diff <= 1e-4, "uniform export: {diff}");
    // Non-uniform, made representable by --hf-pad (4 heads × 32 = 128).
    let arch = Arch {
        embed_dim: 128,
        depth: 4,
        num_heads: vec![2, 4, 3, 4],
        mlp_ratio: vec![2.0, 3.0, 4.0, 2.0],
        mlp_dim: vec![],
    };
    let d2 = tmp("ct-padded");
    let padded = pad_uniform(&net.extract(&arch).unwrap()).unwrap();
    assert!(hf_obstacle(&padded.config).is_none());
    export(&padded, &s, &arch, None, &d2).unwrap();
    let want = net.forward(&x, &arch, false).unwrap();
    let diff = max_abs_diff(&candle_transformers_logits(&d2, &x), &want);
    assert!(diff <= 1e-4, "padded export: {diff}");
    std::fs::remove_dir_all(d).ok();
    std::fs::remove_dir_all(d2).ok();
}

#[test]
fn exported_configs_with_impossible_shapes_are_refused_naming_the_field() {
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 3);
    let arch = s.smallest();
    let d = tmp("badcfg");
    export(&net.extract(&arch).unwrap(), &s, &arch, None, &d).unwrap();
    let cfg_path = d.join("config.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let depth = arch.depth;
    let mut zero_first_heads = arch.num_heads.clone();
    zero_first_heads[0] = 0;
    // The `vitnas` block (what load_dir reads for its own exports): each of
    // these would divide by zero or size a layer 0 if it reached the model.
    let vitnas_cases: Vec<(&str, serde_json::Value, String)> = vec![
        (
            "patch_size",
            serde_json::json!(0),
            "vitnas.config.patch_size".into(),
        ),
        (
            "patch_size",
            serde_json::json!(5),
            "vitnas.config.patch_size".into(),
        ),
        (
            "image_size",
            serde_json::json!(0),
            "vitnas.config.image_size".into(),
        ),
        (
            "hidden_size",
            serde_json::json!(0),
            "vitnas.config.hidden_size".into(),
        ),
        (
            "head_dim",
            serde_json::json!(0),
            "vitnas.config.head_dim".into(),
        ),
        (
            "num_heads",
            serde_json::json!(zero_first_heads),
            "vitnas.config.num_heads[0]".into(),
        ),
        (
            "intermediate_sizes",
            serde_json::json!(vec![64; depth + 1]),
            "vitnas.config.intermediate_sizes".into(),
        ),
    ];
    // A plain Hugging Face config.json (no `vitnas` block) goes through the
    // same checks under its own field names.
    let hf_cases: Vec<(&str, serde_json::Value, String)> = vec![
        ("patch_size", serde_json::json!(0), "patch_size".into()),
        (
            "num_attention_heads",
            serde_json::json!(0),
            "num_attention_heads".into(),
        ),
    ];
    for (in_block, (key, value, want)) in vitnas_cases
        .into_iter()
        .map(|c| (true, c))
        .chain(hf_cases.into_iter().map(|c| (false, c)))
    {
        let mut v = original.clone();
        if in_block {
            v["vitnas"]["config"][key] = value;
        } else {
            v.as_object_mut().unwrap().remove("vitnas");
            v[key] = value;
        }
        std::fs::write(&cfg_path, v.to_string()).unwrap();
        let err = load_dir(&d).unwrap_err();
        let msg = err.to_string();
        match &err {
            vitnas::Error::InvalidConfig { file, field, .. } => {
                assert_eq!(field, &want, "{msg}");
                assert_eq!(file, &cfg_path.display().to_string(), "{msg}");
            }
            other => panic!("{want}: expected InvalidConfig, got {other:?}"),
        }
        assert!(msg.contains(&format!("`{want}`")), "{msg}");
    }
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn integer_weights_are_refused_naming_the_tensor() {
    use vitnas::train::checkpoint::{read_safetensors, to_safetensors_bytes};
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 3);
    let arch = s.smallest();
    let d = tmp("int-weights");
    let model = net.extract(&arch).unwrap();
    export(&model, &s, &arch, None, &d).unwrap();
    // The same model with one weight cast to i64.
    let w = d.join("model.safetensors");
    let (tensors, _) = read_safetensors(&w, &candle_core::Device::Cpu).unwrap();
    let mut named: Vec<(String, candle_core::Tensor)> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let victim = "classifier.weight";
    for (n, t) in named.iter_mut() {
        if n == victim {
            *t = t.to_dtype(candle_core::DType::I64).unwrap();
        }
    }
    std::fs::write(&w, to_safetensors_bytes(&named, None).unwrap()).unwrap();
    let msg = load_dir(&d).unwrap_err().to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains(victim) && msg.contains("I64"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_config_whose_hf_fields_disagree_with_its_vitnas_block_is_refused() {
    let s = space("fmnist-tiny");
    let (net, _vm) = supernet(&s, 3);
    let arch = s.largest();
    let d = tmp("disagree");
    export(&net.extract(&arch).unwrap(), &s, &arch, None, &d).unwrap();
    let path = d.join("config.json");
    let good = std::fs::read_to_string(&path).unwrap();
    load_dir(&d).unwrap();
    for (field, from, to) in [
        ("hidden_size", "\"hidden_size\": 128", "\"hidden_size\": 64"),
        (
            "num_hidden_layers",
            "\"num_hidden_layers\": 6",
            "\"num_hidden_layers\": 5",
        ),
        ("patch_size", "\"patch_size\": 4", "\"patch_size\": 7"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        let (k, val) = to.split_once(": ").unwrap();
        v[k.trim_matches('"')] = serde_json::from_str(val).unwrap();
        assert!(serde_json::to_string(&v).unwrap() != good, "{from}");
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        let msg = load_dir(&d).unwrap_err().to_string();
        assert!(
            msg.contains("config.json") && msg.contains(&format!("`{field}`")),
            "{msg}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// A supernet with switchable scaling layers (every scale its own value):
/// the exported subnet, scales folded into the attention output projection
/// and fc2, is a plain ViT whose logits equal the supernet's within 1e-5,
/// for a non-uniform subnet as exported and zero-padded by --hf-pad (then
/// also as candle-transformers' ViT reads it).
#[test]
fn folded_scaling_layers_export_to_a_plain_vit_with_the_supernet_outputs() {
    let s = space("fmnist-tiny");
    let (net, vm) = scaled_supernet(&s, 6, vitnas::supernet::scaling::Switch::Depth, 1.0);
    for (i, (name, v)) in vm.data().lock().unwrap().iter().enumerate() {
        if name.contains(".scaling.") {
            let t = (v.as_tensor() + common::uniform(v.dims(), i as u64, 0.5)).unwrap();
            v.set(&t).unwrap();
        }
    }
    let arch = Arch {
        embed_dim: 128,
        depth: 5,
        num_heads: vec![2, 4, 3, 4, 2],
        mlp_ratio: vec![2.0, 3.0, 4.0, 2.0, 3.0],
        mlp_dim: vec![],
    };
    let x = images(&s, 3, 7);
    let want = net.forward(&x, &arch, false).unwrap();
    let m = net.extract(&arch).unwrap();
    assert!(m.tensors().iter().all(|(n, _)| !n.contains("scaling")));
    let d = tmp("scaled");
    export(&m, &s, &arch, None, &d).unwrap();
    let (loaded, _) = load_dir(&d).unwrap();
    let diff = max_abs_diff(&loaded.forward(&x).unwrap(), &want);
    assert!(diff <= 1e-5, "folded export: {diff}");
    let d2 = tmp("scaled-padded");
    let padded = pad_uniform(&m).unwrap();
    assert!(hf_obstacle(&padded.config).is_none());
    export(&padded, &s, &arch, None, &d2).unwrap();
    let (loaded, _) = load_dir(&d2).unwrap();
    let diff = max_abs_diff(&loaded.forward(&x).unwrap(), &want);
    assert!(diff <= 1e-5, "folded, padded export: {diff}");
    let diff = max_abs_diff(&candle_transformers_logits(&d2, &x), &want);
    assert!(
        diff <= 1e-4,
        "folded, padded export in candle-transformers: {diff}"
    );
    std::fs::remove_dir_all(d).ok();
    std::fs::remove_dir_all(d2).ok();
}
