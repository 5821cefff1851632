//! The static BERT against Hugging Face transformers: the tiny
//! `BertForSequenceClassification` fixture (tests/fixtures/hf-tiny-bert,
//! one row of the batch padded) and the real all-MiniLM-L6-v2 in
//! ../shared/models with its tokenizer.json.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, repo_path};
use std::path::{Path, PathBuf};
use vitnas::hub::resolve;
use vitnas::models::bert::Bert;
use vitnas::models::sentence_embeddings;
use vitnas::models::text::TextTokenizer;
use vitnas::train::checkpoint::read_safetensors;

fn fixture() -> PathBuf {
    repo_path("tests/fixtures/hf-tiny-bert")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    read_safetensors(&fixture().join("reference.safetensors"), &Device::Cpu)
        .unwrap()
        .0
}

fn check_against_reference(model: &Bert) {
    let r = reference();
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = r["attention_mask"].to_dtype(DType::U32).unwrap();
    // The fixture really has a padded row (positions 8.. of row 2).
    let m = mask.to_vec2::<u32>().unwrap();
    assert!(m[2][8..].iter().all(|&v| v == 0) && m[0].iter().all(|&v| v == 1));
    let out = model.forward(&ids, &mask).unwrap();
    assert_eq!(out.hidden_states.len(), 3);
    for (i, h) in out.hidden_states.iter().enumerate() {
        // Every position, padded ones included, as transformers computes them.
        let d = max_abs_diff(h, &r[&format!("hidden_states.{i}")]);
        assert!(d <= 1e-4, "hidden_states.{i} differs by {d}");
    }
    let d = max_abs_diff(out.logits.as_ref().unwrap(), &r["logits"]);
    assert!(d <= 1e-4, "logits differ by {d}");
}

#[test]
fn tiny_bert_reproduces_transformers_with_a_padded_row() {
    let model = Bert::load_dir(&fixture()).unwrap();
    assert_eq!(model.config.num_labels, Some(2));
    check_against_reference(&model);
}

#[test]
fn tiny_bert_loads_through_the_offline_hub_cache_layout() {
    let cache = std::env::temp_dir().join(format!("vitnas-hub-bert-{}", std::process::id()));
    let repo = cache.join("models--vitnas--hf-tiny-bert");
    let snap = repo.join("snapshots/feedbeef");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "feedbeef").unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), snap.join(f)).unwrap();
    }
    std::env::set_var("HF_HUB_CACHE", &cache);
    let dir = resolve("vitnas/hf-tiny-bert").unwrap();
    assert_eq!(dir, snap);
    check_against_reference(&Bert::load_dir(&dir).unwrap());
    std::fs::remove_dir_all(cache).ok();
}

fn minilm() -> PathBuf {
    let d = repo_path("../shared/models/all-MiniLM-L6-v2");
    assert!(
        d.join("model.safetensors").is_file(),
        "{} is missing: the repository expects ../shared beside it",
        d.display()
    );
    d
}

#[test]
fn all_minilm_l6_v2_gives_transformers_cosine_similarity() {
    let dir = minilm();
    let (tensors, _) = read_safetensors(&dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(tensors.len(), 104);
    assert!(
        tensors.keys().all(|k| !k.starts_with("bert.")),
        "bare names"
    );
    let model = Bert::load_dir(&dir).unwrap();
    assert_eq!(model.config.num_labels, None);
    assert_eq!(model.layers.len(), 6);
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json"), 512).unwrap();
    let s = ["A man is eating food.", "A man is eating a piece of bread."];
    let (ids, _) = tok.encode(&s).unwrap();
    // [CLS] a man is eating food . [SEP] and the padding of the batch.
    assert_eq!(
        ids.to_vec2::<u32>().unwrap()[0][..8],
        [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]
    );
    let e = sentence_embeddings(&model, &tok, &s).unwrap();
    let cos = (e.get(0).unwrap() * e.get(1).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((cos - 0.7553).abs() <= 1e-3, "cosine {cos}");
    // Padding must not change a sentence's embedding.
    let alone = sentence_embeddings(&model, &tok, &s[..1]).unwrap();
    assert!(max_abs_diff(&alone.get(0).unwrap(), &e.get(0).unwrap()) < 1e-5);
}

fn copy_fixture(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-bert-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), d.join(f)).unwrap();
    }
    d
}

fn load_err(d: &Path) -> String {
    Bert::load_dir(d).unwrap_err().to_string()
}

#[test]
fn broken_bert_directories_are_clear_errors() {
    // Truncated weights.
    let d = copy_fixture("trunc");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let m = load_err(&d);
    assert!(
        m.contains("model.safetensors") && m.contains("truncated or corrupt"),
        "{m}"
    );
    // A config.json without a required field.
    let d = copy_fixture("cfg");
    let text = std::fs::read_to_string(d.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(d.join("config.json"), v.to_string()).unwrap();
    let m = load_err(&d);
    assert!(
        m.contains("config.json") && m.contains("hidden_size"),
        "{m}"
    );
    // A config that does not match the weights: the tensor and both shapes.
    let d = copy_fixture("shape");
    v = serde_json::from_str(&text).unwrap();
    v["intermediate_size"] = serde_json::json!(48);
    std::fs::write(d.join("config.json"), v.to_string()).unwrap();
    let m = load_err(&d);
    assert!(
        m.contains("intermediate.dense.weight") && m.contains("48") && m.contains("64"),
        "{m}"
    );
    // An unsupported variant is refused by field.
    let d = copy_fixture("act");
    v = serde_json::from_str(&text).unwrap();
    v["hidden_act"] = serde_json::json!("relu");
    std::fs::write(d.join("config.json"), v.to_string()).unwrap();
    assert!(load_err(&d).contains("hidden_act"));
    // No BERT tensors at all.
    let vit = repo_path("tests/fixtures/hf-tiny-vit/model.safetensors");
    let d = copy_fixture("notbert");
    std::fs::copy(vit, d.join("model.safetensors")).unwrap();
    assert!(load_err(&d).contains("word_embeddings"));
    for tag in ["trunc", "cfg", "shape", "act", "notbert"] {
        std::fs::remove_dir_all(copy_fixture(tag)).ok();
    }
}

#[test]
fn bert_config_values_no_model_can_have_are_refused_naming_the_file_and_field() {
    let text = std::fs::read_to_string(fixture().join("config.json")).unwrap();
    let cases = [
        ("hidden_size", serde_json::json!(0)),
        ("num_attention_heads", serde_json::json!(0)),
        ("num_attention_heads", serde_json::json!(5)),
        ("vocab_size", serde_json::json!(0)),
        ("intermediate_size", serde_json::json!(0)),
        ("max_position_embeddings", serde_json::json!(0)),
        ("type_vocab_size", serde_json::json!(0)),
        ("layer_norm_eps", serde_json::json!(-1.0)),
        ("num_labels", serde_json::json!(0)),
        ("position_embedding_type", serde_json::json!("relative_key")),
    ];
    let d = copy_fixture("cfgvals");
    let p = d.join("config.json");
    for (key, value) in cases {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[key] = value;
        std::fs::write(&p, v.to_string()).unwrap();
        let err = Bert::load_dir(&d).unwrap_err();
        let msg = err.to_string();
        match &err {
            vitnas::Error::InvalidConfig { file, field, .. } => {
                assert_eq!(field, key, "{msg}");
                assert_eq!(file, &p.display().to_string(), "{msg}");
            }
            other => panic!("{key}: expected InvalidConfig, got {other:?}"),
        }
        assert!(msg.contains(&format!("`{key}`")), "{msg}");
    }
    std::fs::remove_dir_all(d).ok();
}
