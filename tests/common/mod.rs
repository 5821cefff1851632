#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::PathBuf;
use vitnas::data::text::TextBatch;
use vitnas::supernet::bert::BertSupernet;
use vitnas::supernet::init::{seeded_var_builder, InitScheme};
use vitnas::supernet::scaling::{ScalingConfig, Switch};
use vitnas::{Space, Supernet};

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn space(name: &str) -> Space {
    Space::from_file(repo_path(&format!("search_spaces/{name}.toml"))).unwrap()
}

pub fn supernet(space: &Space, seed: u64) -> (Supernet, VarMap) {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
    let net = Supernet::new(space, vb).unwrap();
    (net, varmap)
}

/// A seeded supernet with switchable scaling layers (`switch`), every
/// scale starting at `init`.
pub fn scaled_supernet(space: &Space, seed: u64, switch: Switch, init: f64) -> (Supernet, VarMap) {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
    let scaling = ScalingConfig {
        enabled: true,
        switch,
        init,
    };
    let net = Supernet::with_scaling(space, Default::default(), &scaling, vb).unwrap();
    (net, varmap)
}

/// Every switch of the scaling layers.
pub const SWITCHES: [Switch; 3] = [Switch::Depth, Switch::Shared, Switch::LayerConfig];

/// Seeded uniform [0, 1) images `[b, C, H, W]` for a space.
pub fn images(space: &Space, b: usize, seed: u64) -> Tensor {
    let i = &space.image();
    let n = b * i.channels * i.image_size * i.image_size;
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    Tensor::from_vec(v, (b, i.channels, i.image_size, i.image_size), &Device::Cpu).unwrap()
}

/// Seeded uniform values in `[-scale, scale)` of the given shape.
pub fn uniform(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The largest absolute value of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap())
}

/// Points `r` at the bundled Fashion-MNIST sample and the space
/// `search_spaces/{space}.toml`: 64 validation images, the first
/// `train_limit` training images, batches of `batch_size`.
pub fn on_fmnist_sample(
    r: &mut vitnas::train::recipe::Recipe,
    space: &str,
    train_limit: usize,
    batch_size: usize,
) {
    r.space = repo_path(&format!("search_spaces/{space}.toml"));
    r.data.path = Some(repo_path("data/fashion-mnist-sample"));
    r.data.val_size = 64;
    r.data.train_limit = Some(train_limit);
    r.train.batch_size = batch_size;
}

/// Quickstart, small: 256 training images, batch 32 (8 steps an epoch),
/// 64 validation images, crop and flip augmentation, sandwich with one
/// random subnet, gradient clipping at 1, a checkpoint every 3 steps;
/// written to `out`.
pub fn small_quickstart(out: &std::path::Path) -> vitnas::train::recipe::Recipe {
    use vitnas::train::recipe::{Recipe, SamplerConfig};
    let text = std::fs::read_to_string(repo_path("recipes/quickstart.toml")).unwrap();
    let mut r = Recipe::from_toml_str(&text, std::path::Path::new("quickstart.toml")).unwrap();
    on_fmnist_sample(&mut r, "fmnist-tiny", 256, 32);
    r.data.augment.crop_padding = 2;
    r.data.augment.hflip = true;
    r.sampler = SamplerConfig::Sandwich { num_random: 1 };
    r.train.epochs = 2;
    r.train.checkpoint_every = 3;
    r.optimizer.clip_grad_norm = Some(1.0);
    r.output_dir = out.to_path_buf();
    r
}

/// A fresh scratch directory `vitnas-{tag}-{pid}` under the system's
/// temporary directory (emptied first).
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vitnas-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------- search

/// The small search the search tests share: 8 candidates a generation for
/// 4 generations (3 parents, 3 mutations, 3 crossovers), each judged on 48
/// validation images, seed 11.
pub fn small_search_config() -> vitnas::search::config::SearchConfig {
    vitnas::search::config::SearchConfig {
        population: 8,
        generations: 4,
        parents: 3,
        mutations: 3,
        crossovers: 3,
        val_subset: 48,
        eval_batch_size: 48,
        seed: 11,
        ..Default::default()
    }
}

/// Runs `f` with an evaluator that judges `net`'s candidates, on the CPU,
/// by accuracy on the first `n` test images of the bundled Fashion-MNIST
/// sample, bounding latency by `predictor` where one is given.
pub fn with_fmnist_evaluator<T>(
    net: &Supernet,
    n: usize,
    predictor: Option<&vitnas::latency::Predictor>,
    f: impl FnOnce(&vitnas::search::Evaluator) -> T,
) -> T {
    use vitnas::data::{batch::Normalize, idx, Split};
    let val = idx::load_split(&repo_path("data/fashion-mnist-sample"), Split::Test)
        .unwrap()
        .head(n);
    let norm = Normalize {
        mean: vec![0.286],
        std: vec![0.353],
    };
    let judge = vitnas::search::ImageJudge {
        net,
        val: &val,
        norm: &norm,
        device: Device::Cpu,
    };
    f(&vitnas::search::Evaluator {
        judge: &judge,
        predictor,
        collective: &vitnas::dist::Single,
    })
}

// ------------------------------------------------------------- training

/// One accumulation of `plan`'s subnets (label smoothing 0.1) on `backend`
/// into zeroed gradients: the step's losses and the gradients.
pub fn accumulate_once(
    net: &dyn vitnas::train::step::Forward,
    params: &vitnas::train::step::Params,
    plan: &vitnas::train::sampler::Plan,
    x: &Tensor,
    y: &Tensor,
    distill: Option<&dyn vitnas::train::loss::Distill>,
    backend: vitnas::train::step::Backend,
) -> (vitnas::train::step::StepLosses, Vec<Vec<f32>>) {
    let mut g = params.zero_grads();
    let l = vitnas::train::step::accumulate(net, params, plan, x, y, 0.1, distill, &mut g, backend)
        .unwrap();
    (l, g)
}

/// The largest absolute value of `reference`, and the largest absolute
/// difference of `got` from it.
pub fn max_abs_and_diff(got: &[f32], reference: &[f32]) -> (f32, f32) {
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = got
        .iter()
        .zip(reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    (scale, d)
}

/// Trains `r` in this process (with `resume`: resumes the run in its
/// output directory), without progress output, for at most `max_steps`
/// where given; `stop` set asks it to stop at once, as Ctrl-C would.
pub fn train_in_process(
    r: &vitnas::train::recipe::Recipe,
    resume: bool,
    max_steps: Option<usize>,
    stop: bool,
) -> vitnas::Result<vitnas::train::Summary> {
    let flag = std::sync::atomic::AtomicBool::new(stop);
    let opts = vitnas::train::RunOptions {
        resume,
        stop: &flag,
        progress: false,
        max_steps,
        force: false,
        collective: &vitnas::dist::Single,
    };
    if resume {
        vitnas::train::resume(&r.output_dir, &opts)
    } else {
        vitnas::train::train(r, &opts)
    }
}

/// Asserts that the recipe `text` with `from` replaced by `to`, read as
/// bad.toml, is refused by an error that names the file and `field`.
pub fn assert_recipe_refused(text: &str, from: &str, to: &str, field: &str) {
    assert!(text.contains(from), "{from}");
    let bad = text.replace(from, to);
    let msg = vitnas::train::recipe::Recipe::from_toml_str(&bad, std::path::Path::new("bad.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bad.toml") && msg.contains(field),
        "{to}: {msg}"
    );
}

// ------------------------------------------------------------ the binary

/// Runs the `vitnas` binary in the repository root, as a user would:
/// whether it succeeded, its stdout and its stderr.
pub fn vitnas(args: &[&str]) -> (bool, String, String) {
    vitnas_env(args, &[])
}

/// [`vitnas`] with the environment variables `env` set.
pub fn vitnas_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitnas"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo_path(""))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `vitnas export` of subnet `arch` (`largest`, `smallest` or a JSON
/// file) of the run `run` into `out`, which must succeed: its stdout.
pub fn export(run: &std::path::Path, arch: &str, out: &std::path::Path) -> String {
    let (ok, stdout, err) = vitnas(&[
        "export",
        "--supernet",
        s(run),
        "--arch",
        arch,
        "--out",
        s(out),
    ]);
    assert!(ok, "{err}");
    stdout
}

/// A path as a command-line argument.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

// ------------------------------------------------------------------ text

/// A tiny text space: a 3-layer supernet 32 wide (4 heads of 8, FFN 64,
/// layer-norm eps 1e-12), `text` the fields of its `[text]` section and
/// `choices` those of its `[choices]` section (then any `[[layer]]`
/// sections), both as TOML.
pub fn text_space(name: &str, text: &str, choices: &str) -> Space {
    let toml = format!(
        "name = \"{name}\"\n[text]\n{text}\n[supernet]\nembed_dim = 32\ndepth = 3\n\
         num_heads = 4\nhead_dim = 8\nmlp_dim = 64\nlayer_norm_eps = 1e-12\n[choices]\n{choices}\n"
    );
    Space::from_toml_str(&toml, &format!("{name}.toml")).unwrap()
}

/// The tiny BERT space of the supernet and rewiring tests: vocabulary 50,
/// 16 positions, 3 classes, 12 tokens, `pooling` (`pooler` or `mean`);
/// widths 16 / 24 / 32, depth 2 or 3, the head choices `heads` (a TOML
/// list), FFN 16 / 40 / 64.
pub fn tiny_bert(pooling: &str, heads: &str) -> Space {
    text_space(
        "tiny-bert",
        &format!(
            "vocab_size = 50\nmax_position_embeddings = 16\nnum_classes = 3\nseq_len = 12\n\
             pooling = \"{pooling}\""
        ),
        &format!(
            "embed_dim = [16, 24, 32]\ndepth = [2, 3]\nnum_heads = {heads}\nmlp_dim = [16, 40, 64]"
        ),
    )
}

/// A depth-2 student of [`tiny_bert`]'s space 16 wide, heads 3 and 2,
/// FFN 40 and 64 (of the supernet's 3 layers, 32 wide, 4 heads, FFN 64).
pub fn tiny_bert_student(space: &Space) -> vitnas::space::Arch {
    let a = vitnas::space::Arch {
        embed_dim: 16,
        depth: 2,
        num_heads: vec![3, 2],
        mlp_ratio: Vec::new(),
        mlp_dim: vec![40, 64],
    };
    a.validate(space).unwrap();
    a
}

/// A seeded BERT supernet of `space` (truncated-normal 0.02 init) and its
/// variables.
pub fn bert_supernet(space: &Space, seed: u64) -> (BertSupernet, VarMap) {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu);
    (
        BertSupernet::with_init(space, InitScheme::TruncNormal002, vb).unwrap(),
        vm,
    )
}

/// A labelled `[b, t]` batch of seeded ids in `1..vocab` and labels in
/// `0..classes`, whose odd rows end in padding (the last `t / 3` tokens,
/// id 0).
pub fn text_batch(b: usize, t: usize, vocab: u32, classes: u32, seed: u64) -> TextBatch {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut ids, mut mask, mut lengths) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..b {
        let len = if r % 2 == 1 { t - t / 3 } else { t };
        for j in 0..t {
            ids.push(if j < len {
                rng.random_range(1..vocab)
            } else {
                0
            });
            mask.push(u32::from(j < len));
        }
        lengths.push(len);
    }
    let labels: Vec<u32> = (0..b).map(|_| rng.random_range(0..classes)).collect();
    TextBatch {
        ids: Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap(),
        attention_mask: Tensor::from_vec(mask, (b, t), &Device::Cpu).unwrap(),
        labels: Tensor::from_vec(labels, b, &Device::Cpu).unwrap(),
        lengths,
    }
}

/// The ids and mask of [`text_batch`] (the same values for the same seed).
pub fn tokens(b: usize, t: usize, vocab: u32, seed: u64) -> (Tensor, Tensor) {
    let batch = text_batch(b, t, vocab, 1, seed);
    (batch.ids, batch.attention_mask)
}

/// Where all-MiniLM-L6-v2 lies (../shared/models beside the repository).
pub fn minilm_dir() -> PathBuf {
    repo_path("../shared/models/all-MiniLM-L6-v2")
}

/// [`minilm_dir`], which must hold the model.
pub fn minilm() -> PathBuf {
    let d = minilm_dir();
    assert!(
        d.join("model.safetensors").is_file(),
        "{} is missing: the repository expects ../shared beside it",
        d.display()
    );
    d
}

/// all-MiniLM-L6-v2's tokenizer.json, which must exist.
pub fn minilm_tokenizer() -> PathBuf {
    let t = minilm_dir().join("tokenizer.json");
    assert!(
        t.is_file(),
        "{} is missing: the repository expects ../shared beside it",
        t.display()
    );
    t
}

/// The tiny text space of the binary's text tests, as TOML: a 2-layer
/// supernet 32 wide (4 heads of 8, FFN 64) on all-MiniLM-L6-v2's
/// vocabulary, `positions` position embeddings, sequences of 32 tokens,
/// `classes` its num_classes line (or none: from the data).
pub fn tiny_text_space_toml(positions: usize, classes: &str) -> String {
    format!(
        r#"
name = "tiny-text"
[text]
vocab_size = 30522
max_position_embeddings = {positions}
{classes}
seq_len = 32
[supernet]
embed_dim = 32
depth = 2
num_heads = 4
head_dim = 8
mlp_dim = 64
layer_norm_eps = 1e-12
[choices]
embed_dim = [16, 32]
depth = [1, 2]
num_heads = [2, 4]
mlp_dim = [32, 48, 64]
"#
    )
}

/// A one-epoch recipe (sandwich with one random subnet, KL distillation,
/// batch 16, a checkpoint every 5 steps, a log line every `log_every`) for
/// the space file `space` on the text data `data` with all-MiniLM-L6-v2's
/// tokenizer, writing to `out`; `val_size` examples held out and
/// `data_text` the other lines of its `[data.text]` section.
pub fn tiny_text_recipe_toml(
    (space, data, out): (&std::path::Path, &std::path::Path, &std::path::Path),
    val_size: usize,
    data_text: &str,
    log_every: usize,
) -> String {
    format!(
        r#"
name = "tiny-text"
space = "{space}"
seed = 0
output_dir = "{out}"
init = "trunc_normal_0.02"
[data]
format = "text"
path = "{data}"
val_size = {val_size}
eval_batch_size = 50
[data.text]
{data_text}
tokenizer = "{tok}"
[sampler]
kind = "sandwich"
num_random = 1
[loss]
label_smoothing = 0.0
distill = {{ kind = "kl" }}
[optimizer]
lr = 1e-3
min_lr = 1e-5
warmup_lr = 1e-5
warmup_epochs = 0.1
weight_decay = 0.01
clip_grad_norm = 1.0
[train]
epochs = 1
batch_size = 16
checkpoint_every = 5
log_every = {log_every}
"#,
        space = space.display(),
        out = out.display(),
        data = data.display(),
        tok = minilm_tokenizer().display(),
    )
}
