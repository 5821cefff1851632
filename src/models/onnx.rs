//! ONNX export of a static subnet ([`Vit`] or [`Bert`]): one self-contained
//! `model.onnx` that any ONNX runtime runs without vitnas.
//!
//! - Opset [`OPSET`] (17, IR version 8): `LayerNormalization`, GELU as the
//!   exact formula `0.5 · x · (1 + erf(x / √2))` (the `Gelu` op needs opset
//!   20), `Softmax` over the last axis.
//! - Non-uniform subnets (heads and MLP widths per layer) are plain graphs:
//!   every layer has its own shapes. Switchable scaling layers are already
//!   folded into the weights by extraction (`supernet::scaling::fold`).
//! - Inputs: `pixel_values` `[batch, C, H, W]` f32, normalised as the
//!   metadata says; or `input_ids` and `attention_mask` `[batch, sequence]`
//!   i64 (mask 1 = token, 0 = padding; token type 0 throughout, as vitnas
//!   reads text). `batch` and `sequence` are symbolic dimensions.
//! - Output: `logits` `[batch, labels]`, or `features` `[batch, hidden]`
//!   (mean-pooled, not normalised) for a BERT without classifier.
//! - Metadata (`metadata_props`): `vitnas.architecture` (the architecture
//!   JSON), `vitnas.config` (the static model's config JSON), `labels` (a
//!   JSON list of label names in id order), `preprocessing` (JSON: image
//!   size, channels and mean/std, or the tokenizer file, maximum length and
//!   padding id).
//!
//! The graph computes what the engine and the static models compute
//! (pre-LN ViT, post-LN BERT with transformers' additive `f32::MIN` mask,
//! pooler or mean pooling), checked to 1e-4 in tract (tests/onnx.rs) and in
//! ONNX Runtime (evaluate/onnx_check.py).

use super::bert::Bert;
use super::layers::{LayerNorm, Linear};
use super::vit::Vit;
use crate::data::batch::Normalize;
use crate::error::{Error, Result};
use crate::space::{Arch, Pooling};
use candle_core::{DType, Tensor};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use serde_json::json;

/// The default-domain opset the graphs use.
pub const OPSET: i64 = 17;
/// The ONNX IR version that goes with [`OPSET`].
pub const IR_VERSION: i64 = 8;
/// The largest serialised model protobuf allows (2 GiB − 1 bytes): larger
/// weights would need ONNX external data, which this exporter does not write.
pub const MAX_BYTES: u64 = (1 << 31) - 1;
/// Room left under [`MAX_BYTES`] for the graph itself and the metadata.
const GRAPH_MARGIN: u64 = 16 << 20;

/// The name of a BERT graph's word-embedding initializer (`[vocab, hidden]`,
/// read by a `Gather` on `input_ids`).
pub const WORD_EMBEDDINGS: &str = "embeddings.word";

/// What a text model's input needs: the tokenizer that produced the ids.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TextPreprocessing {
    /// The tokenizer file written beside the model (`tokenizer.json`).
    pub tokenizer: String,
    /// The most tokens per sequence, special tokens included.
    pub max_length: usize,
    /// The id of padded positions (their mask is 0; the id itself is read
    /// but never changes the outputs).
    pub pad_token_id: u32,
}

/// Why a model of `params` f32 weights cannot be written as one ONNX file
/// (None: it can).
pub fn size_obstacle(params: u64) -> Option<String> {
    let bytes = params.saturating_mul(4);
    (bytes + GRAPH_MARGIN > MAX_BYTES).then(|| {
        format!(
            "{params} parameters take {:.2} GiB as f32; a single ONNX file holds at most 2 GiB \
             (protobuf's limit) and this exporter does not write ONNX external data",
            bytes as f64 / (1u64 << 30) as f64
        )
    })
}

fn refuse(message: String) -> Error {
    Error::OnnxExport { message }
}

/// The ViT's parameter count from its config alone (before any tensor is
/// read), as [`size_obstacle`] judges it.
pub fn vit_params(c: &super::vit::VitConfig) -> u64 {
    let e = c.hidden_size as u64;
    let patch = (c.num_channels * c.patch_size * c.patch_size) as u64;
    let layers: u64 = c
        .num_heads
        .iter()
        .zip(&c.intermediate_sizes)
        .map(|(&h, &m)| {
            let (q, m) = ((h * c.head_dim) as u64, m as u64);
            4 * e + 3 * (e * q + q) + q * e + e + e * m + m + m * e + e
        })
        .sum();
    e * patch + e + e * (c.seq_len() as u64 + 1) + layers + 2 * e + (e + 1) * c.num_labels as u64
}

/// The BERT's parameter count from its config alone.
pub fn bert_params(c: &super::bert::BertConfig) -> u64 {
    let e = c.hidden_size as u64;
    let layers: u64 = c
        .num_heads
        .iter()
        .zip(&c.intermediate_sizes)
        .map(|(&h, &m)| {
            let (q, m) = ((h * c.head_dim) as u64, m as u64);
            3 * (e * q + q) + q * e + e + e * m + m + m * e + e + 4 * e
        })
        .sum();
    let head = match (c.num_labels, c.pooling) {
        (Some(n), Pooling::Pooler) => e * e + e + (e + 1) * n as u64,
        (Some(n), Pooling::Mean) => (e + 1) * n as u64,
        (None, _) => 0,
    };
    e * (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) as u64
        + 2 * e
        + layers
        + head
}

/// The ONNX model of a static ViT (`arch` is recorded in the metadata;
/// `labels` names the classes, `LABEL_i` where empty), serialised.
/// Refused, with the reason, when it cannot be one ONNX file.
pub fn vit_to_onnx(
    model: &Vit,
    arch: &Arch,
    labels: &[String],
    normalize: Option<&Normalize>,
) -> Result<Vec<u8>> {
    let c = &model.config;
    if let Some(why) = size_obstacle(vit_params(c)) {
        return Err(refuse(why));
    }
    let (e, p) = (c.hidden_size, c.patch_size);
    let grid = (c.image_size / p) as i64;
    let mut g = Builder::default();
    // Patches: a stride-p convolution, then [batch, grid², hidden].
    let w = g.init("embeddings.patch.weight", &model.patch_weight, false)?;
    let b = g.init("embeddings.patch.bias", &model.patch_bias, false)?;
    let ints = |name: &str, v: &[i64]| attr_ints(name, v);
    let x = g.node(
        "Conv",
        &["pixel_values", &w, &b],
        vec![
            ints("kernel_shape", &[p as i64; 2]),
            ints("strides", &[p as i64; 2]),
        ],
    );
    let shape = g.const_i64("shape.batch_hidden_rest", &[0, e as i64, -1]);
    let x = g.node("Reshape", &[&x, &shape], vec![]);
    let x = g.node("Transpose", &[&x], vec![ints("perm", &[0, 2, 1])]);
    // The class token: a zero row in front, then the position table with
    // the class token added to its first row.
    let pads = g.const_i64("pads.class_token", &[0, 1, 0, 0, 0, 0]);
    let x = g.node("Pad", &[&x, &pads], vec![]);
    let cls = model.cls_token.reshape((1, e))?;
    let pos = model
        .position_embeddings
        .reshape((grid as usize * grid as usize + 1, e))?;
    let first = (pos.narrow(0, 0, 1)? + cls)?;
    let table = Tensor::cat(&[&first, &pos.narrow(0, 1, pos.dim(0)? - 1)?], 0)?;
    let table = g.init("embeddings.positions_with_class_token", &table, false)?;
    let mut x = g.node("Add", &[&x, &table], vec![]);
    for (i, l) in model.layers.iter().enumerate() {
        let n = format!("layer{i}");
        let h = g.layer_norm(&x, &l.layernorm_before, &format!("{n}.norm1"))?;
        let a = g.attention(
            &h,
            [&l.query, &l.key, &l.value, &l.attention_output],
            (l.num_heads, l.head_dim),
            None,
            &n,
        )?;
        x = g.node("Add", &[&x, &a], vec![]);
        let h = g.layer_norm(&x, &l.layernorm_after, &format!("{n}.norm2"))?;
        let m = g.mlp(&h, &l.intermediate, &l.output, &n)?;
        x = g.node("Add", &[&x, &m], vec![]);
    }
    let zero = g.const_i64_scalar("index.first_token", 0);
    let x = g.node("Gather", &[&x, &zero], vec![attr_int("axis", 1)]);
    let x = g.layer_norm(&x, &model.layernorm, "final_norm")?;
    let logits = g.linear(&x, &model.classifier, "classifier", 1.0)?;
    g.rename_last(&logits, "logits");
    let labels = label_names(labels, c.num_labels);
    let preprocessing = json!({
        "input": "pixel_values: float32 [batch, channels, height, width], RGB/grey values in [0, 1] \
                  then (x - mean) / std per channel when `normalize` is given",
        "image_size": c.image_size,
        "num_channels": c.num_channels,
        "normalize": normalize,
    });
    let inputs = vec![value_info(
        "pixel_values",
        DataType::FLOAT,
        &[
            Dim::Param("batch"),
            Dim::Fixed(c.num_channels),
            Dim::Fixed(c.image_size),
            Dim::Fixed(c.image_size),
        ],
    )];
    let outputs = vec![value_info(
        "logits",
        DataType::FLOAT,
        &[Dim::Param("batch"), Dim::Fixed(c.num_labels)],
    )];
    let meta = Meta {
        arch: serde_json::to_string(arch).expect("an architecture serialises"),
        config: serde_json::to_string(c).expect("a config serialises"),
        labels,
        preprocessing,
        doc: format!(
            "vitnas ViT subnet (pre-LN, {} layers, hidden {e}, heads {:?}, MLP widths {:?}): \
             pixel_values → logits",
            c.num_heads.len(),
            c.num_heads,
            c.intermediate_sizes
        ),
    };
    g.finish("vitnas_vit", inputs, outputs, meta)
}

/// The ONNX model of a static BERT (pooler or mean pooling; features when
/// it has no classifier), serialised. `labels` names the classes.
pub fn bert_to_onnx(
    model: &Bert,
    arch: &Arch,
    labels: &[String],
    text: Option<&TextPreprocessing>,
) -> Result<Vec<u8>> {
    let c = &model.config;
    if let Some(why) = size_obstacle(bert_params(c)) {
        return Err(refuse(why));
    }
    let e = c.hidden_size;
    let mut g = Builder::default();
    // Embeddings: word rows, plus position rows (with the token-type-0 row
    // added once here) for the first `sequence` positions.
    let words = g.init(WORD_EMBEDDINGS, &model.word_embeddings, false)?;
    let x = g.node("Gather", &[&words, "input_ids"], vec![]);
    let tt0 = model.token_type_embeddings.narrow(0, 0, 1)?;
    let pos = model.position_embeddings.broadcast_add(&tt0)?;
    let pos = g.init("embeddings.position_plus_token_type0", &pos, false)?;
    let shape = g.node("Shape", &["input_ids"], vec![]);
    let one = g.const_i64("index.sequence_axis", &[1]);
    let len = g.node("Gather", &[&shape, &one], vec![]);
    let zero = g.const_i64("starts.zero", &[0]);
    let pos = g.node("Slice", &[&pos, &zero, &len, &zero], vec![]);
    let x = g.node("Add", &[&x, &pos], vec![]);
    let mut x = g.layer_norm(&x, &model.embeddings_layer_norm, "embeddings.norm")?;
    // transformers' additive mask, [batch, 1, 1, sequence].
    let m = g.node(
        "Cast",
        &["attention_mask"],
        vec![attr_int("to", DataType::FLOAT as i64)],
    );
    let one_f = g.const_f32("one", 1.0);
    let inv = g.node("Sub", &[&one_f, &m], vec![]);
    let min = g.const_f32("f32_min", f32::MIN);
    let add_mask = g.node("Mul", &[&inv, &min], vec![]);
    let axes = g.const_i64("axes.heads_queries", &[1, 2]);
    let add_mask = g.node("Unsqueeze", &[&add_mask, &axes], vec![]);
    for (i, l) in model.layers.iter().enumerate() {
        let n = format!("layer{i}");
        let a = g.attention(
            &x,
            [&l.query, &l.key, &l.value, &l.attention_output],
            (l.num_heads, l.head_dim),
            Some(&add_mask),
            &n,
        )?;
        let y = g.node("Add", &[&a, &x], vec![]);
        x = g.layer_norm(&y, &l.attention_layer_norm, &format!("{n}.norm1"))?;
        let f = g.mlp(&x, &l.intermediate, &l.output, &n)?;
        let y = g.node("Add", &[&f, &x], vec![]);
        x = g.layer_norm(&y, &l.output_layer_norm, &format!("{n}.norm2"))?;
    }
    let (pooled, head) = match (&model.pooler, &model.classifier) {
        (Some(p), Some(cl)) => {
            let zero = g.const_i64_scalar("index.first_token", 0);
            let first = g.node("Gather", &[&x, &zero], vec![attr_int("axis", 1)]);
            let d = g.linear(&first, p, "pooler", 1.0)?;
            (g.node("Tanh", &[&d], vec![]), Some(cl))
        }
        (None, cl) => {
            // The masked mean (sentence-transformers): Σ x·m / max(Σ m, 1e-9).
            let axis2 = g.const_i64("axes.hidden", &[2]);
            let m3 = g.node("Unsqueeze", &[&m, &axis2], vec![]);
            let xm = g.node("Mul", &[&x, &m3], vec![]);
            let axis1 = g.const_i64("axes.sequence", &[1]);
            let keep = vec![attr_int("keepdims", 0)];
            let sum = g.node("ReduceSum", &[&xm, &axis1], keep.clone());
            let count = g.node("ReduceSum", &[&m3, &axis1], keep);
            let tiny = g.const_f32("count_floor", 1e-9);
            let count = g.node("Max", &[&count, &tiny], vec![]);
            (g.node("Div", &[&sum, &count], vec![]), cl.as_ref())
        }
        (Some(_), None) => {
            return Err(refuse(
                "a BERT with a pooler but no classifier has no defined output".into(),
            ))
        }
    };
    let (out_name, width) = match head {
        Some(cl) => {
            let logits = g.linear(&pooled, cl, "classifier", 1.0)?;
            g.rename_last(&logits, "logits");
            ("logits", c.num_labels.unwrap_or(cl.bias.dim(0)?))
        }
        None => {
            g.rename_last(&pooled, "features");
            ("features", e)
        }
    };
    let labels = match head {
        Some(_) => label_names(labels, width),
        None => vec![],
    };
    let preprocessing = json!({
        "input": "input_ids, attention_mask: int64 [batch, sequence] from the tokenizer, padded \
                  on the right (mask 1 = token, 0 = padding); token type 0",
        "tokenizer": text,
        "max_position_embeddings": c.max_position_embeddings,
        "pooling": c.pooling,
        "output": out_name,
    });
    let dims = [Dim::Param("batch"), Dim::Param("sequence")];
    let inputs = vec![
        value_info("input_ids", DataType::INT64, &dims),
        value_info("attention_mask", DataType::INT64, &dims),
    ];
    let outputs = vec![value_info(
        out_name,
        DataType::FLOAT,
        &[Dim::Param("batch"), Dim::Fixed(width)],
    )];
    let meta = Meta {
        arch: serde_json::to_string(arch).expect("an architecture serialises"),
        config: serde_json::to_string(c).expect("a config serialises"),
        labels,
        preprocessing,
        doc: format!(
            "vitnas BERT subnet (post-LN, {} layers, hidden {e}, heads {:?}, FFN widths {:?}, \
             {} pooling): input_ids, attention_mask → {out_name}",
            c.num_heads.len(),
            c.num_heads,
            c.intermediate_sizes,
            match c.pooling {
                Pooling::Pooler => "pooler",
                Pooling::Mean => "mean",
            }
        ),
    };
    g.finish("vitnas_bert", inputs, outputs, meta)
}

fn label_names(labels: &[String], n: usize) -> Vec<String> {
    match labels.len() == n {
        true => labels.to_vec(),
        false => (0..n).map(|i| format!("LABEL_{i}")).collect(),
    }
}

struct Meta {
    arch: String,
    config: String,
    labels: Vec<String>,
    preprocessing: serde_json::Value,
    doc: String,
}

enum Dim<'a> {
    Fixed(usize),
    Param(&'a str),
}

fn value_info(name: &str, ty: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| {
            let mut out = onnx_protobuf::tensor_shape_proto::Dimension::new();
            out.value = Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Param(p) => dimension::Value::DimParam(p.to_string()),
            });
            out
        })
        .collect();
    let mut shape = TensorShapeProto::new();
    shape.dim = dim;
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = ty as i32;
    tensor.shape = Some(shape).into();
    let mut t = TypeProto::new();
    t.value = Some(type_proto::Value::TensorType(tensor));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(t).into();
    v
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = i;
    a
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = f;
    a
}

fn entry(key: &str, value: String) -> StringStringEntryProto {
    let mut e = StringStringEntryProto::new();
    e.key = key.into();
    e.value = value;
    e
}

/// A graph under construction: nodes in topological order (each appended
/// after its inputs) and the initializers.
#[derive(Default)]
struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    next: usize,
}

impl Builder {
    /// Appends `op` on `inputs`; returns its (fresh) output name.
    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.next += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.next);
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = format!("{op}_{}", self.next);
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![out.clone()];
        n.attribute = attrs;
        self.nodes.push(n);
        out
    }

    /// Renames the output `old` of the last node to `new` (a graph output).
    fn rename_last(&mut self, old: &str, new: &str) {
        let last = self.nodes.last_mut().expect("a graph with nodes");
        debug_assert_eq!(last.output[0], old);
        last.output[0] = new.into();
    }

    /// An f32 initializer holding `t` (transposed when `transpose`: a
    /// `[out, in]` linear weight becomes the `[in, out]` MatMul operand).
    fn init(&mut self, name: &str, t: &Tensor, transpose: bool) -> Result<String> {
        let t = match transpose {
            true => t.t()?.contiguous()?,
            false => t.contiguous()?,
        };
        let dims = t.dims().iter().map(|&d| d as i64).collect();
        let data: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        if let Some(bad) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::Tensor {
                name: name.into(),
                message: format!("element {bad} is {}: not exported", data[bad]),
            });
        }
        let mut p = TensorProto::new();
        p.name = name.into();
        p.dims = dims;
        p.data_type = DataType::FLOAT as i32;
        p.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.inits.push(p);
        Ok(name.into())
    }

    fn const_i64(&mut self, name: &str, v: &[i64]) -> String {
        self.push_const(
            name,
            vec![v.len() as i64],
            DataType::INT64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    fn const_i64_scalar(&mut self, name: &str, v: i64) -> String {
        self.push_const(name, vec![], DataType::INT64, v.to_le_bytes().to_vec())
    }

    fn const_f32(&mut self, name: &str, v: f32) -> String {
        self.push_const(name, vec![], DataType::FLOAT, v.to_le_bytes().to_vec())
    }

    fn push_const(&mut self, name: &str, dims: Vec<i64>, ty: DataType, raw: Vec<u8>) -> String {
        if let Some(t) = self.inits.iter().find(|t| t.name == name) {
            return t.name.clone();
        }
        let mut p = TensorProto::new();
        p.name = name.into();
        p.dims = dims;
        p.data_type = ty as i32;
        p.raw_data = raw;
        self.inits.push(p);
        name.into()
    }

    /// `x · Wᵀ + b`, both multiplied by `scale` (1: the layer as it is).
    fn linear(&mut self, x: &str, l: &Linear, name: &str, scale: f64) -> Result<String> {
        let (w, b) = match scale == 1.0 {
            true => (l.weight.clone(), l.bias.clone()),
            false => ((&l.weight * scale)?, (&l.bias * scale)?),
        };
        let w = self.init(&format!("{name}.weight_t"), &w, true)?;
        let b = self.init(&format!("{name}.bias"), &b, false)?;
        let y = self.node("MatMul", &[x, &w], vec![]);
        Ok(self.node("Add", &[&y, &b], vec![]))
    }

    fn layer_norm(&mut self, x: &str, n: &LayerNorm, name: &str) -> Result<String> {
        let w = self.init(&format!("{name}.weight"), &n.weight, false)?;
        let b = self.init(&format!("{name}.bias"), &n.bias, false)?;
        Ok(self.node(
            "LayerNormalization",
            &[x, &w, &b],
            vec![attr_int("axis", -1), attr_float("epsilon", n.eps as f32)],
        ))
    }

    /// Multi-head self-attention of `x` `[batch, T, hidden]` through the
    /// query, key, value and output projections; the query carries the
    /// `1/√d` factor; `mask` is an additive `[batch, 1, 1, T]` key mask.
    fn attention(
        &mut self,
        x: &str,
        [q, k, v, o]: [&Linear; 4],
        (heads, d): (usize, usize),
        mask: Option<&str>,
        name: &str,
    ) -> Result<String> {
        let split = self.const_i64(
            &format!("shape.heads{heads}_dim{d}"),
            &[0, 0, heads as i64, d as i64],
        );
        let q = self.linear(
            x,
            q,
            &format!("{name}.attention.query_scaled"),
            1.0 / (d as f64).sqrt(),
        )?;
        let k = self.linear(x, k, &format!("{name}.attention.key"), 1.0)?;
        let v = self.linear(x, v, &format!("{name}.attention.value"), 1.0)?;
        let perm = |p: &[i64]| vec![attr_ints("perm", p)];
        let q = self.node("Reshape", &[&q, &split], vec![]);
        let q = self.node("Transpose", &[&q], perm(&[0, 2, 1, 3]));
        let k = self.node("Reshape", &[&k, &split], vec![]);
        let k = self.node("Transpose", &[&k], perm(&[0, 2, 3, 1]));
        let v = self.node("Reshape", &[&v, &split], vec![]);
        let v = self.node("Transpose", &[&v], perm(&[0, 2, 1, 3]));
        let mut s = self.node("MatMul", &[&q, &k], vec![]);
        if let Some(m) = mask {
            s = self.node("Add", &[&s, m], vec![]);
        }
        let p = self.node("Softmax", &[&s], vec![attr_int("axis", -1)]);
        let ctx = self.node("MatMul", &[&p, &v], vec![]);
        let ctx = self.node("Transpose", &[&ctx], perm(&[0, 2, 1, 3]));
        let merge = self.const_i64(
            &format!("shape.merge{}", heads * d),
            &[0, 0, (heads * d) as i64],
        );
        let ctx = self.node("Reshape", &[&ctx, &merge], vec![]);
        self.linear(&ctx, o, &format!("{name}.attention.output"), 1.0)
    }

    /// `fc2(gelu(fc1(x)))`, GELU as `0.5 · x · (1 + erf(x / √2))`.
    fn mlp(&mut self, x: &str, fc1: &Linear, fc2: &Linear, name: &str) -> Result<String> {
        let h = self.linear(x, fc1, &format!("{name}.mlp.fc1"), 1.0)?;
        let sqrt2 = self.const_f32("sqrt2", std::f32::consts::SQRT_2);
        let one = self.const_f32("one", 1.0);
        let half = self.const_f32("half", 0.5);
        let t = self.node("Div", &[&h, &sqrt2], vec![]);
        let t = self.node("Erf", &[&t], vec![]);
        let t = self.node("Add", &[&t, &one], vec![]);
        let t = self.node("Mul", &[&h, &t], vec![]);
        let t = self.node("Mul", &[&t, &half], vec![]);
        self.linear(&t, fc2, &format!("{name}.mlp.fc2"), 1.0)
    }

    fn finish(
        self,
        name: &str,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
        meta: Meta,
    ) -> Result<Vec<u8>> {
        let mut graph = GraphProto::new();
        graph.name = name.into();
        graph.node = self.nodes;
        graph.initializer = self.inits;
        graph.input = inputs;
        graph.output = outputs;
        let mut opset = OperatorSetIdProto::new();
        opset.domain = String::new();
        opset.version = OPSET;
        let mut m = ModelProto::new();
        m.ir_version = IR_VERSION;
        m.opset_import = vec![opset];
        m.producer_name = "vitnas".into();
        m.producer_version = env!("CARGO_PKG_VERSION").into();
        m.doc_string = meta.doc;
        m.graph = Some(graph).into();
        m.metadata_props = vec![
            entry("vitnas.architecture", meta.arch),
            entry("vitnas.config", meta.config),
            entry(
                "labels",
                serde_json::to_string(&meta.labels).expect("strings serialise"),
            ),
            entry("preprocessing", meta.preprocessing.to_string()),
        ];
        let bytes = m
            .write_to_bytes()
            .map_err(|e| refuse(format!("protobuf encoding failed: {e}")))?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(refuse(format!(
                "the model takes {} bytes, over protobuf's 2 GiB limit",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// A seeded check batch for an exported ViT: `n` images `[n, C, H, W]`
/// uniform in [-2, 2) (the range of normalised pixels) and the engine's
/// logits for them, as JSON (`inputs.pixel_values`, `outputs.logits`:
/// `{shape, data}`). evaluate/onnx_check.py runs the ONNX file on the
/// inputs, the whole batch and each image alone, and compares.
pub fn vit_check_batch(model: &Vit, n: usize, seed: u64) -> Result<serde_json::Value> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let c = &model.config;
    let shape = [n, c.num_channels, c.image_size, c.image_size];
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random::<f32>() * 4.0 - 2.0)
        .collect();
    let images = Tensor::from_vec(x.clone(), shape.to_vec(), &candle_core::Device::Cpu)?;
    let logits = crate::engine::Model::from_vit(model)?.logits(&images)?;
    Ok(json!({
        "computed_by": "vitnas engine",
        "inputs": {"pixel_values": {"shape": shape, "data": x}},
        "outputs": {"logits": tensor_json(&logits)?},
    }))
}

/// A seeded check batch for an exported BERT: `n` sequences of up to 16
/// tokens (ids uniform in the vocabulary), sequence `r` padded after
/// `16 − 3r mod 16` tokens (padded ids are `pad_id`), and the engine's
/// logits (or features) for them, as [`vit_check_batch`] writes them.
pub fn bert_check_batch(
    model: &Bert,
    n: usize,
    pad_id: u32,
    seed: u64,
) -> Result<serde_json::Value> {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let c = &model.config;
    let t = c.max_position_embeddings.min(16);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut ids, mut mask) = (Vec::with_capacity(n * t), Vec::with_capacity(n * t));
    for r in 0..n {
        let len = (t - (3 * r) % t).max(1);
        for i in 0..t {
            let on = i < len;
            mask.push(u32::from(on));
            ids.push(match on {
                true => rng.random_range(0..c.vocab_size as u32),
                false => pad_id,
            });
        }
    }
    let dev = candle_core::Device::Cpu;
    let ids_t = Tensor::from_vec(ids.clone(), (n, t), &dev)?;
    let mask_t = Tensor::from_vec(mask.clone(), (n, t), &dev)?;
    let m = crate::engine::Model::from_bert(model)?;
    let (name, out) = match model.classifier.is_some() {
        true => ("logits", m.token_logits(&ids_t, &mask_t)?),
        false => ("features", m.token_features(&ids_t, &mask_t)?),
    };
    Ok(json!({
        "computed_by": "vitnas engine",
        "inputs": {
            "input_ids": {"shape": [n, t], "data": ids},
            "attention_mask": {"shape": [n, t], "data": mask},
        },
        "outputs": {name: tensor_json(&out)?},
    }))
}

fn tensor_json(t: &Tensor) -> Result<serde_json::Value> {
    let data: Vec<f32> = t.flatten_all()?.to_vec1()?;
    Ok(json!({"shape": t.dims(), "data": data}))
}
