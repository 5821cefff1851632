//! ONNX export (`vitnas::models::onnx`) checked in an independent runtime:
//! every exported file loads in tract (pure Rust, `tract-onnx`) with its
//! symbolic batch (and sequence) dimensions, and its outputs equal the
//! engine's within 1e-4 at batch 1 and batch 7: a non-uniform ViT subnet
//! with switchable scaling layers folded in, non-uniform pooler and
//! mean-pooling BERT subnets on padded batches, a real tiny Hugging Face
//! BERT checkpoint, and all-MiniLM-L6-v2 (features; ../shared, skipped when
//! absent). ONNX Runtime runs the same check in evaluate/onnx_check.py.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use common::{max_abs, max_abs_diff, repo_path, scaled_supernet, space, vitnas};
use onnx_protobuf::Message;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::Arc;
use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoRunnable, IntoTValue, TypedRunnableModel,
};
use vitnas::engine::Model;
use vitnas::models::bert::Bert;
use vitnas::models::onnx::{self, TextPreprocessing};
use vitnas::models::vit::VitConfig;
use vitnas::supernet::bert::BertSupernet;
use vitnas::supernet::init::{seeded_var_builder, InitScheme};
use vitnas::supernet::scaling::Switch;
use vitnas::{Arch, Space};

type Runnable = Arc<TypedRunnableModel>;

/// The exported bytes as tract runs them: loaded, typed with the file's
/// own symbolic dimensions, optimised.
fn tract(bytes: &[u8]) -> Runnable {
    tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
}

fn f32_out(m: &Runnable, inputs: Vec<tract_onnx::prelude::Tensor>) -> Tensor {
    let out = m
        .run(inputs.into_iter().map(|t| t.into_tvalue()).collect())
        .unwrap();
    let view = out[0].to_plain_array_view::<f32>().unwrap();
    let shape = view.shape().to_vec();
    let data: Vec<f32> = view.iter().copied().collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn tract_images(x: &Tensor) -> tract_onnx::prelude::Tensor {
    let data: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    tract_onnx::prelude::Tensor::from_shape(x.dims(), &data).unwrap()
}

fn tract_i64(x: &Tensor) -> tract_onnx::prelude::Tensor {
    let data: Vec<i64> = x
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    tract_onnx::prelude::Tensor::from_shape(x.dims(), &data).unwrap()
}

/// Within 1e-4, relative to the reference's scale when that exceeds 1.
fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    let d = max_abs_diff(got, want);
    let tol = 1e-4 * max_abs(want).max(1.0);
    eprintln!(
        "{what}: largest difference {d:.2e} (largest |output| {:.2})",
        max_abs(want)
    );
    assert!(
        d <= tol,
        "{what}: tract differs from vitnas by {d} (> {tol})"
    );
}

/// A ViT supernet with switchable scaling layers whose every scale has its
/// own value (as tests/export.rs builds it).
fn scaled_vit(s: &Space) -> vitnas::Supernet {
    let (net, vm) = scaled_supernet(s, 6, Switch::Depth, 1.0);
    for (i, (name, v)) in vm.data().lock().unwrap().iter().enumerate() {
        if name.contains(".scaling.") {
            let t = (v.as_tensor() + common::uniform(v.dims(), i as u64, 0.5)).unwrap();
            v.set(&t).unwrap();
        }
    }
    net
}

fn non_uniform_vit_arch() -> Arch {
    Arch {
        embed_dim: 128,
        depth: 5,
        num_heads: vec![2, 4, 3, 4, 2],
        mlp_ratio: vec![2.0, 3.0, 4.0, 2.0, 3.0],
        mlp_dim: vec![],
    }
}

#[test]
fn non_uniform_vit_with_scaling_layers_runs_in_tract_as_in_the_engine() {
    let s = space("fmnist-tiny");
    let net = scaled_vit(&s);
    let arch = non_uniform_vit_arch();
    let vit = net.extract(&arch).unwrap();
    let engine = Model::from_vit(&vit).unwrap();
    let bytes = onnx::vit_to_onnx(&vit, &arch, &[], None).unwrap();
    let m = tract(&bytes);
    for (b, seed) in [(1, 3), (7, 4)] {
        let x = common::images(&s, b, seed);
        let want = engine.logits(&x).unwrap();
        // the supernet itself, scaling layers unfolded
        let supernet = net.forward(&x, &arch, false).unwrap();
        assert!(max_abs_diff(&want, &supernet) <= 1e-4);
        let got = f32_out(&m, vec![tract_images(&x)]);
        assert_eq!(got.dims(), &[b, s.image().num_classes]);
        assert_close(&got, &want, &format!("ViT, batch {b}"));
    }
}

#[test]
fn exported_onnx_declares_opset_17_symbolic_dims_and_its_metadata() {
    let s = space("fmnist-tiny");
    let net = scaled_vit(&s);
    let arch = non_uniform_vit_arch();
    let vit = net.extract(&arch).unwrap();
    let norm = vitnas::data::batch::Normalize {
        mean: vec![0.286],
        std: vec![0.353],
    };
    let labels: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    let bytes = onnx::vit_to_onnx(&vit, &arch, &labels, Some(&norm)).unwrap();
    let model = onnx_protobuf::ModelProto::parse_from_bytes(&bytes).unwrap();
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!(model.opset_import[0].version, 17);
    let ops: Vec<&str> = model
        .graph
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    assert!(ops.contains(&"LayerNormalization") && ops.contains(&"Erf"));
    let meta = |k: &str| -> serde_json::Value {
        let e = model.metadata_props.iter().find(|e| e.key == k).unwrap();
        serde_json::from_str(&e.value).unwrap()
    };
    let back: Arch = serde_json::from_value(meta("vitnas.architecture")).unwrap();
    assert_eq!(back, arch);
    let config: VitConfig = serde_json::from_value(meta("vitnas.config")).unwrap();
    assert_eq!(config, vit.config);
    assert_eq!(meta("labels"), serde_json::json!(labels));
    assert_eq!(
        meta("preprocessing")["normalize"]["std"][0],
        0.353f32 as f64
    );
    assert_eq!(meta("preprocessing")["image_size"], 28);
    let input = &model.graph.input[0];
    let dims = match &input.type_.value {
        Some(onnx_protobuf::type_proto::Value::TensorType(t)) => t.shape.dim.clone(),
        other => panic!("not a tensor input: {other:?}"),
    };
    assert_eq!(
        dims[0].value,
        Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimParam("batch".into()))
    );
}

/// Vocabulary 50, hidden 32, 3 layers of up to 4 heads × 8, FFN 64, 3
/// classes (the tiny text space of tests/bert_supernet.rs).
fn text_space(pooling: &str) -> Space {
    Space::from_toml_str(
        &format!(
            r#"
            name = "tiny-bert"
            [text]
            vocab_size = 50
            max_position_embeddings = 16
            num_classes = 3
            seq_len = 12
            pooling = "{pooling}"
            [supernet]
            embed_dim = 32
            depth = 3
            num_heads = 4
            head_dim = 8
            mlp_dim = 64
            layer_norm_eps = 1e-12
            [choices]
            embed_dim = [16, 24, 32]
            depth = [2, 3]
            num_heads = [2, 3, 4]
            mlp_dim = [16, 40, 64]
            "#
        ),
        "tiny-bert.toml",
    )
    .unwrap()
}

/// `[b, t]` ids and a mask: row `r` padded after `t − 3r mod t` tokens
/// (the padded ids nonzero, so that the mask alone hides them).
fn tokens(b: usize, t: usize, vocab: u32, seed: u64) -> (Tensor, Tensor) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.random_range(1..vocab)).collect();
    let mask: Vec<u32> = (0..b * t)
        .map(|i| u32::from(i % t < (t - (3 * (i / t)) % t).max(1)))
        .collect();
    (
        Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (b, t), &Device::Cpu).unwrap(),
    )
}

/// A non-uniform subnet of the tiny text supernet, trained-looking weights
/// (every tensor perturbed away from its initialisation).
fn text_subnet(pooling: &str) -> (Bert, Arch) {
    let s = text_space(pooling);
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 5, DType::F32, &Device::Cpu);
    let net = BertSupernet::with_init(&s, InitScheme::TruncNormal002, vb).unwrap();
    for (i, (_, v)) in vm.data().lock().unwrap().iter().enumerate() {
        let t = (v.as_tensor() + common::uniform(v.dims(), 100 + i as u64, 0.3)).unwrap();
        v.set(&t).unwrap();
    }
    let arch = Arch::with_dims(24, 3, vec![3, 2, 4], vec![40, 64, 16]);
    (net.extract(&arch).unwrap(), arch)
}

fn check_text(bert: &Bert, arch: &Arch, what: &str) {
    let text = TextPreprocessing {
        tokenizer: "tokenizer.json".into(),
        max_length: 16,
        pad_token_id: 0,
    };
    // the size check counts exactly the model's parameters
    let n: usize = bert.tensors().iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(onnx::bert_params(&bert.config) as usize, n, "{what}");
    let bytes = onnx::bert_to_onnx(bert, arch, &[], Some(&text)).unwrap();
    let m = tract(&bytes);
    let engine = Model::from_bert(bert).unwrap();
    let vocab = bert.config.vocab_size as u32;
    for (b, t, seed) in [(1, 9, 1), (7, 12, 2), (7, 5, 3)] {
        let (ids, mask) = tokens(b, t, vocab, seed);
        let want = match bert.classifier.is_some() {
            true => engine.token_logits(&ids, &mask).unwrap(),
            false => engine.token_features(&ids, &mask).unwrap(),
        };
        let got = f32_out(&m, vec![tract_i64(&ids), tract_i64(&mask)]);
        assert_eq!(got.dims(), want.dims());
        assert_close(&got, &want, &format!("{what}, batch {b} × {t}"));
    }
}

#[test]
fn non_uniform_pooler_bert_runs_in_tract_as_in_the_engine_on_padded_batches() {
    let (bert, arch) = text_subnet("pooler");
    assert!(bert.pooler.is_some());
    check_text(&bert, &arch, "pooler BERT");
}

#[test]
fn non_uniform_mean_pooling_bert_runs_in_tract_as_in_the_engine_on_padded_batches() {
    let (bert, arch) = text_subnet("mean");
    assert!(bert.pooler.is_none() && bert.classifier.is_some());
    check_text(&bert, &arch, "mean-pooling BERT");
}

/// [`check_text`] on the whole of a loaded model: every layer, head and
/// FFN unit its config names.
fn check_whole_text(bert: &Bert, what: &str) {
    let c = &bert.config;
    let arch = Arch::with_dims(
        c.hidden_size,
        c.num_heads.len(),
        c.num_heads.clone(),
        c.intermediate_sizes.clone(),
    );
    check_text(bert, &arch, what);
}

/// A real (tiny) Hugging Face `BertForSequenceClassification` checkpoint.
#[test]
fn a_hugging_face_bert_checkpoint_runs_in_tract_as_in_the_engine() {
    let bert = Bert::load_dir(&repo_path("tests/fixtures/hf-tiny-bert")).unwrap();
    check_whole_text(&bert, "hf-tiny-bert");
}

/// all-MiniLM-L6-v2 (no classifier: mean-pooled features), from
/// ../shared/models; skipped with a message when absent.
#[test]
fn all_minilm_l6_v2_features_run_in_tract_as_in_the_engine() {
    let dir = repo_path("../shared/models/all-MiniLM-L6-v2");
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipped: {} is absent", dir.display());
        return;
    }
    let bert = Bert::load_dir(&dir).unwrap();
    assert!(bert.classifier.is_none());
    check_whole_text(&bert, "all-MiniLM-L6-v2");
}

/// A model over protobuf's 2 GiB is refused, naming the limit, from its
/// config alone (before any tensor is read).
#[test]
fn a_model_too_large_for_one_onnx_file_is_refused_with_the_reason() {
    let s = space("fmnist-tiny");
    let mut vit = scaled_vit(&s).extract(&s.smallest()).unwrap();
    vit.config = VitConfig {
        hidden_size: 4096,
        head_dim: 64,
        num_heads: vec![64; 12],
        intermediate_sizes: vec![16384; 12],
        ..vit.config.clone()
    };
    let e = onnx::vit_to_onnx(&vit, &s.smallest(), &[], None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ONNX export") && e.contains("2 GiB") && e.contains("external data"),
        "{e}"
    );
    // the benchmark's largest fmnist-tiny subnet is far below it
    let small = scaled_vit(&s).extract(&s.largest()).unwrap();
    assert!(onnx::size_obstacle(onnx::vit_params(&small.config)).is_none());
    assert_eq!(onnx::vit_params(&small.config) as usize, small.num_params());
}

/// `vitnas export --format onnx --check-batch 3` on a trained run: the
/// directory holds model.onnx, arch.json and check.json, and tract's
/// logits on check.json's inputs equal the vitnas logits written there; a
/// second export without --force is refused (it is an exported model), and
/// --hf-pad with --format onnx is refused with the reason.
#[test]
fn cli_exports_onnx_whose_check_file_tract_reproduces() {
    let dir = common::scratch("onnx-cli");
    let recipe = common::small_quickstart(&dir.join("run"));
    let recipe_file = dir.join("recipe.toml");
    std::fs::write(&recipe_file, recipe.to_toml_string()).unwrap();
    let (ok, _, err) = vitnas(&["train", recipe_file.to_str().unwrap(), "--max-steps", "1"]);
    assert!(ok, "{err}");
    let (run, out) = (dir.join("run"), dir.join("onnx"));
    let (run, out) = (run.to_str().unwrap(), out.to_str().unwrap());
    let export = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "--supernet",
            run,
            "--arch",
            "largest",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        vitnas(&args)
    };
    let (ok, stdout, err) = export(&["--format", "onnx", "--check-batch", "3"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("opset 17"), "{stdout}");
    let check: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("onnx/check.json")).unwrap()).unwrap();
    let tensor = |v: &serde_json::Value| -> (Vec<usize>, Vec<f32>) {
        let shape = v["shape"].as_array().unwrap().iter();
        let data = v["data"].as_array().unwrap().iter();
        (
            shape.map(|d| d.as_u64().unwrap() as usize).collect(),
            data.map(|x| x.as_f64().unwrap() as f32).collect(),
        )
    };
    let (shape, x) = tensor(&check["inputs"]["pixel_values"]);
    assert_eq!(shape, [3, 1, 28, 28]);
    let (lshape, want) = tensor(&check["outputs"]["logits"]);
    let m = tract(&std::fs::read(dir.join("onnx/model.onnx")).unwrap());
    let got = f32_out(
        &m,
        vec![tract_onnx::prelude::Tensor::from_shape(&shape, &x).unwrap()],
    );
    let want = Tensor::from_vec(want, lshape, &Device::Cpu).unwrap();
    assert_close(&got, &want, "CLI export, check.json");
    let arch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("onnx/arch.json")).unwrap()).unwrap();
    assert_eq!(arch["opset"], 17);
    let (ok, _, err) = export(&["--format", "onnx"]);
    assert!(
        !ok && err.contains("already holds an exported model"),
        "{err}"
    );
    let (ok, _, err) = export(&["--format", "onnx", "--hf-pad", "--force"]);
    assert!(!ok && err.contains("--hf-pad"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}
