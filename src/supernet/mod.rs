//! Weight-sharing supernets built from elastic layers (one per file): the
//! ViT supernet here, the BERT supernet in `bert.rs`. Every subnet of a
//! [`Space`] is the leading slice of the supernet's weights; the
//! architecture is an argument of [`Supernet::forward`], never stored
//! state. Optional switchable scaling layers ([`scaling`]) multiply each
//! block's branch outputs; they are folded away by [`Supernet::extract`].
//! New variables start from a seeded [`init::InitScheme`] ([`init`]).

pub mod attention;
pub mod bert;
pub mod bert_layer;
pub mod block;
pub mod embeddings;
pub mod head;
pub mod init;
pub mod layer_norm;
pub mod linear;
pub mod mlp;
pub mod params;
pub mod patch_embed;
pub mod rewire;
pub mod scaling;
pub mod text_embeddings;

use crate::engine::names::Family;
use crate::error::{Error, Result};
use crate::models::vit::{Vit, VitConfig};
use crate::space::{Arch, Space};
use crate::supernet::init::InitScheme;
use block::{elastic_block, BlockDims, ElasticBlock};
use candle_core::{IndexOp, Tensor};
use candle_nn::VarBuilder;
use embeddings::{elastic_embeddings, ElasticEmbeddings};
use head::{elastic_head, ElasticHead};
use layer_norm::{elastic_layer_norm, ElasticLayerNorm};
use scaling::{elastic_scaling, Scaling, ScalingConfig};

#[derive(Debug, Clone)]
pub struct Supernet {
    pub space: Space,
    pub embeddings: ElasticEmbeddings,
    pub layers: Vec<ElasticBlock>,
    pub layernorm: ElasticLayerNorm,
    pub classifier: ElasticHead,
    /// How subnets pick their rows of the blocks' scaling tables, when the
    /// supernet has scaling layers.
    pub scaling: Option<Scaling>,
}

// The engine knows names, dims and buffers only; its view of a supernet
// is built here, beside the type.
impl crate::engine::Config {
    /// The configuration of a supernet: its space's shapes and its scaling
    /// layers' row mapping.
    pub fn from_supernet(net: &Supernet) -> Self {
        Self {
            scaling: net.scaling.clone(),
            ..Self::from_space(&net.space)
        }
    }
}

impl Supernet {
    /// Builds (or loads, depending on `vb`'s backend) the supernet of `space`
    /// with Hugging Face `ViTForImageClassification` tensor names; new
    /// variables start from the default [`InitScheme`].
    pub fn new(space: &Space, vb: VarBuilder) -> Result<Self> {
        Self::with_init(space, InitScheme::default(), vb)
    }

    /// As [`Supernet::new`], with new variables initialised by `init`.
    pub fn with_init(space: &Space, init: InitScheme, vb: VarBuilder) -> Result<Self> {
        Self::with_scaling(space, init, &ScalingConfig::default(), vb)
    }

    /// As [`Supernet::with_init`], with the switchable scaling layers of
    /// `scaling` when it is enabled (tables `vit.encoder.layer.<i>.scaling.attention`
    /// and `.mlp`, `[rows, embed_dim]`, starting at `scaling.init`).
    pub fn with_scaling(
        space: &Space,
        init: InitScheme,
        scaling: &ScalingConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let rows = scaling.rows(space);
        let s = &space.supernet;
        let i = match space.modality() {
            crate::space::Modality::Image(i) => i,
            crate::space::Modality::Text(_) => {
                return Err(Error::InvalidSpace {
                    file: space.name.clone(),
                    field: "input".into(),
                    message: "a ViT supernet needs an image space ([input]); this one reads \
                              text (its supernet is supernet::bert::BertSupernet)"
                        .into(),
                })
            }
        };
        let (fam, stem) = (Family::Vit, Family::Vit.stem());
        let embeddings = elastic_embeddings(
            i.channels,
            i.patch_size,
            space.seq_len(),
            s.embed_dim,
            init,
            &stem,
            vb.clone(),
        )?;
        let layers = (0..s.depth)
            .map(|l| {
                let names = fam.layer(l);
                let mut block = elastic_block(
                    s.embed_dim,
                    s.num_heads,
                    s.head_dim,
                    space.supernet_mlp_width(),
                    s.layer_norm_eps,
                    init,
                    &names,
                    vb.clone(),
                )?;
                if let Some(r) = &rows {
                    block.scaling = Some(elastic_scaling(
                        r.height(l),
                        s.embed_dim,
                        scaling.init,
                        vb.pp(&names.scaling),
                    )?);
                }
                Ok(block)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            space: space.clone(),
            embeddings,
            layers,
            layernorm: elastic_layer_norm(s.embed_dim, s.layer_norm_eps, vb.pp(&stem.final_norm))?,
            classifier: elastic_head(s.embed_dim, i.num_classes, init, vb.pp(&stem.classifier))?,
            scaling: rows,
        })
    }

    fn check_input(&self, images: &Tensor) -> Result<()> {
        let i = &self.space.image();
        let ok = matches!(images.dims(), &[_, c, h, w] if c == i.channels && h == i.image_size && w == i.image_size);
        if !ok {
            return Err(Error::Tensor {
                name: "input images".into(),
                message: format!(
                    "expected shape [batch, {}, {}, {}], found {:?}",
                    i.channels,
                    i.image_size,
                    i.image_size,
                    images.dims()
                ),
            });
        }
        Ok(())
    }

    /// The shapes (and scaling row) of every layer of `arch`.
    fn block_dims(&self, arch: &Arch, batch: usize) -> Result<Vec<BlockDims>> {
        let rows = match &self.scaling {
            Some(s) => s.rows(&self.space, arch)?.into_iter().map(Some).collect(),
            None => vec![None; arch.depth],
        };
        Ok((0..arch.depth)
            .zip(rows)
            .map(|(l, scale_row)| BlockDims {
                batch,
                embed: arch.embed_dim,
                heads: arch.num_heads[l],
                mlp_width: arch.mlp_width(l),
                scale_row,
            })
            .collect())
    }

    /// Logits `[B, classes]` of the subnet `arch` for images `[B, C, H, W]`.
    /// `train` switches training-only behaviour (none yet: no dropout).
    pub fn forward(&self, images: &Tensor, arch: &Arch, train: bool) -> Result<Tensor> {
        let _ = train;
        arch.check_fits(&self.space)?;
        self.check_input(images)?;
        let e = arch.embed_dim;
        let (b, t) = (images.dim(0)?, self.space.seq_len());
        let dims = self.block_dims(arch, b)?;
        let mut x = self.embeddings.forward(images, e)?.reshape((b * t, e))?;
        for (layer, d) in self.layers.iter().zip(dims) {
            x = layer.forward(&x, d)?;
        }
        let cls = self
            .layernorm
            .forward(&x.reshape((b, t, e))?.i((.., 0))?, e)?;
        Ok(self.classifier.forward(&cls, e)?)
    }

    /// Logits of `arch` like `forward(images, arch, false)`, computed by the
    /// [`crate::engine`] on the extracted subnet (evaluation and search).
    pub fn infer(&self, images: &Tensor, arch: &Arch) -> Result<Tensor> {
        self.check_input(images)?;
        self.extract(arch)?.infer(images)
    }

    /// The subnet `arch` as a standalone static ViT: contiguous copies of the
    /// slices it uses, no link back to the supernet; its scaling rows, if
    /// any, folded into the weights they scale.
    pub fn extract(&self, arch: &Arch) -> Result<Vit> {
        arch.check_fits(&self.space)?;
        let e = arch.embed_dim;
        let (patch_weight, patch_bias) = self.embeddings.patch_embeddings.extract(e)?;
        let (cls_token, position_embeddings) = self.embeddings.extract(e)?;
        let layers = (self.layers.iter().zip(self.block_dims(arch, 0)?))
            .map(|(layer, d)| layer.extract(d))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Vit {
            config: VitConfig::from_arch(&self.space, arch),
            cls_token,
            position_embeddings,
            patch_weight,
            patch_bias,
            layers,
            layernorm: self.layernorm.extract(e)?,
            classifier: self.classifier.extract(e)?,
        })
    }
}
