//! Architectures: one subnet of a [`Space`], as data. Sampling takes an
//! explicit RNG; the gene encoding (one choice index per gene) makes mutation
//! and crossover plain vector operations.

use super::{mlp_width, Space};
use crate::error::{Error, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arch {
    pub embed_dim: usize,
    pub depth: usize,
    /// Heads of each active layer (`depth` entries).
    pub num_heads: Vec<usize>,
    /// MLP ratio of each active layer (`depth` entries; spaces of ratios).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mlp_ratio: Vec<f64>,
    /// MLP width of each active layer (`depth` entries; spaces of widths,
    /// e.g. BERT's `intermediate_size`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mlp_dim: Vec<usize>,
}

impl Arch {
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        crate::io::read_json(path)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Arch always serializes")
    }

    /// MLP hidden width of layer `i`.
    pub fn mlp_width(&self, i: usize) -> usize {
        match self.mlp_dim.get(i) {
            Some(&m) => m,
            None => mlp_width(self.embed_dim, self.mlp_ratio[i]),
        }
    }

    /// A ViT-style architecture: MLP widths as ratios of `embed_dim`.
    pub fn with_ratios(
        embed_dim: usize,
        depth: usize,
        num_heads: Vec<usize>,
        mlp_ratio: Vec<f64>,
    ) -> Self {
        Arch {
            embed_dim,
            depth,
            num_heads,
            mlp_ratio,
            mlp_dim: Vec::new(),
        }
    }

    /// A BERT-style architecture: MLP widths in neurons.
    pub fn with_dims(
        embed_dim: usize,
        depth: usize,
        num_heads: Vec<usize>,
        mlp_dim: Vec<usize>,
    ) -> Self {
        Arch {
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: Vec::new(),
            mlp_dim,
        }
    }

    /// Checks that every value is one of the space's choices.
    pub fn validate(&self, space: &Space) -> Result<()> {
        self.check_lengths(space)?;
        let bad = |field: String, message: String| Error::InvalidArch {
            space: space.name.clone(),
            field,
            message,
        };
        if !space.choices.embed_dim.contains(&self.embed_dim) {
            return Err(bad(
                "embed_dim".into(),
                format!(
                    "{} is not among the choices {:?}",
                    self.embed_dim, space.choices.embed_dim
                ),
            ));
        }
        if !space.choices.depth.contains(&self.depth) {
            return Err(bad(
                "depth".into(),
                format!(
                    "{} is not among the choices {:?}",
                    self.depth, space.choices.depth
                ),
            ));
        }
        for l in 0..self.depth {
            let hs = space.heads_choices(l);
            if !hs.contains(&self.num_heads[l]) {
                return Err(bad(
                    format!("num_heads[{l}]"),
                    format!(
                        "{} is not among layer {l}'s choices {hs:?}",
                        self.num_heads[l]
                    ),
                ));
            }
            if space.mlp_is_dim() {
                let ms = space.mlp_dim_choices(l);
                if !ms.contains(&self.mlp_dim[l]) {
                    return Err(bad(
                        format!("mlp_dim[{l}]"),
                        format!(
                            "{} is not among layer {l}'s choices {ms:?}",
                            self.mlp_dim[l]
                        ),
                    ));
                }
                continue;
            }
            let rs = space.mlp_choices(l);
            if !rs.contains(&self.mlp_ratio[l]) {
                return Err(bad(
                    format!("mlp_ratio[{l}]"),
                    format!(
                        "{:?} is not among layer {l}'s choices {rs:?}",
                        self.mlp_ratio[l]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks only that the architecture fits in the supernet's weights (every
    /// dimension at most the supernet's), not that it is one of the choices:
    /// for published subnets that lie off the space's grid.
    pub fn check_fits(&self, space: &Space) -> Result<()> {
        self.check_lengths(space)?;
        let s = &space.supernet;
        let bad = |field: String, message: String| Error::InvalidArch {
            space: space.name.clone(),
            field,
            message,
        };
        if self.embed_dim == 0 || self.embed_dim > s.embed_dim {
            return Err(bad(
                "embed_dim".into(),
                format!(
                    "{} is outside 1..={} (the supernet's embed_dim)",
                    self.embed_dim, s.embed_dim
                ),
            ));
        }
        if self.depth == 0 || self.depth > s.depth {
            return Err(bad(
                "depth".into(),
                format!(
                    "{} is outside 1..={} (the supernet's depth)",
                    self.depth, s.depth
                ),
            ));
        }
        for l in 0..self.depth {
            let h = self.num_heads[l];
            if h == 0 || h > s.num_heads {
                return Err(bad(
                    format!("num_heads[{l}]"),
                    format!(
                        "{h} is outside 1..={} (the supernet's num_heads)",
                        s.num_heads
                    ),
                ));
            }
            if space.mlp_is_dim() {
                let m = self.mlp_dim[l];
                if m == 0 || m > space.supernet_mlp_width() {
                    return Err(bad(
                        format!("mlp_dim[{l}]"),
                        format!(
                            "{m} is outside 1..={} (the supernet's mlp_dim)",
                            space.supernet_mlp_width()
                        ),
                    ));
                }
                continue;
            }
            let r = self.mlp_ratio[l];
            let m = if r.is_finite() && r > 0.0 {
                self.mlp_width(l)
            } else {
                0
            };
            if m == 0 || m > space.supernet_mlp_width() {
                return Err(bad(
                    format!("mlp_ratio[{l}]"),
                    format!(
                        "{r} × embed {} gives MLP width {m}, outside 1..={} (the supernet's MLP width)",
                        self.embed_dim,
                        space.supernet_mlp_width()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_lengths(&self, space: &Space) -> Result<()> {
        let (mlp_field, mlp_len, other_field, other_len) = match space.mlp_is_dim() {
            true => (
                "mlp_dim",
                self.mlp_dim.len(),
                "mlp_ratio",
                self.mlp_ratio.len(),
            ),
            false => (
                "mlp_ratio",
                self.mlp_ratio.len(),
                "mlp_dim",
                self.mlp_dim.len(),
            ),
        };
        if other_len != 0 {
            return Err(Error::InvalidArch {
                space: space.name.clone(),
                field: other_field.into(),
                message: format!("this space's MLP choices are `{mlp_field}`, not `{other_field}`"),
            });
        }
        for (field, len) in [("num_heads", self.num_heads.len()), (mlp_field, mlp_len)] {
            if len != self.depth {
                return Err(Error::InvalidArch {
                    space: space.name.clone(),
                    field: field.into(),
                    message: format!("has {len} entries but depth is {}", self.depth),
                });
            }
        }
        Ok(())
    }

    /// The gene vector: `[embed, depth, heads_0.., mlp_0..]`, each an index
    /// into its choice list, with `space.max_depth()` layer genes each (the
    /// genes of inactive layers are kept at 0). Fails if a value is off-grid.
    pub fn to_genes(&self, space: &Space) -> Result<Vec<usize>> {
        self.validate(space)?;
        let idx = |list: &[usize], v: usize| list.iter().position(|&x| x == v).unwrap();
        let n = space.max_depth();
        let mut genes = vec![0; 2 + 2 * n];
        genes[0] = idx(&space.choices.embed_dim, self.embed_dim);
        genes[1] = idx(&space.choices.depth, self.depth);
        for l in 0..self.depth {
            genes[2 + l] = idx(space.heads_choices(l), self.num_heads[l]);
            genes[2 + n + l] = match space.mlp_is_dim() {
                true => idx(space.mlp_dim_choices(l), self.mlp_dim[l]),
                false => space
                    .mlp_choices(l)
                    .iter()
                    .position(|&r| r == self.mlp_ratio[l])
                    .unwrap(),
            };
        }
        Ok(genes)
    }

    /// Decodes a gene vector (see [`Arch::to_genes`]); genes of layers past
    /// the decoded depth are ignored.
    pub fn from_genes(space: &Space, genes: &[usize]) -> Result<Self> {
        let card = gene_cardinalities(space);
        if genes.len() != card.len() {
            return Err(Error::InvalidArch {
                space: space.name.clone(),
                field: "genes".into(),
                message: format!("expected {} genes, found {}", card.len(), genes.len()),
            });
        }
        if let Some((k, (&g, &c))) = genes
            .iter()
            .zip(&card)
            .enumerate()
            .find(|(_, (g, c))| g >= c)
        {
            return Err(Error::InvalidArch {
                space: space.name.clone(),
                field: format!("genes[{k}]"),
                message: format!("index {g} is out of range for {c} choices"),
            });
        }
        let n = space.max_depth();
        let depth = space.choices.depth[genes[1]];
        let embed_dim = space.choices.embed_dim[genes[0]];
        let num_heads = (0..depth)
            .map(|l| space.heads_choices(l)[genes[2 + l]])
            .collect();
        Ok(match space.mlp_is_dim() {
            true => Arch::with_dims(
                embed_dim,
                depth,
                num_heads,
                (0..depth)
                    .map(|l| space.mlp_dim_choices(l)[genes[2 + n + l]])
                    .collect(),
            ),
            false => Arch::with_ratios(
                embed_dim,
                depth,
                num_heads,
                (0..depth)
                    .map(|l| space.mlp_choices(l)[genes[2 + n + l]])
                    .collect(),
            ),
        })
    }
}

/// Number of choices behind each gene of [`Arch::to_genes`].
pub fn gene_cardinalities(space: &Space) -> Vec<usize> {
    let n = space.max_depth();
    let mut card = vec![space.choices.embed_dim.len(), space.choices.depth.len()];
    card.extend((0..n).map(|l| space.heads_choices(l).len()));
    card.extend((0..n).map(|l| space.mlp_choice_count(l)));
    card
}

fn max_usize(v: &[usize]) -> usize {
    *v.iter().max().expect("validated: non-empty")
}
fn min_usize(v: &[usize]) -> usize {
    *v.iter().min().expect("validated: non-empty")
}
fn max_f64(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}
fn min_f64(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MAX, f64::min)
}

impl Space {
    /// The largest architecture: every choice at its maximum.
    pub fn largest(&self) -> Arch {
        let depth = max_usize(&self.choices.depth);
        let embed_dim = max_usize(&self.choices.embed_dim);
        let heads = (0..depth)
            .map(|l| max_usize(self.heads_choices(l)))
            .collect();
        match self.mlp_is_dim() {
            true => Arch::with_dims(
                embed_dim,
                depth,
                heads,
                (0..depth)
                    .map(|l| max_usize(self.mlp_dim_choices(l)))
                    .collect(),
            ),
            false => Arch::with_ratios(
                embed_dim,
                depth,
                heads,
                (0..depth).map(|l| max_f64(self.mlp_choices(l))).collect(),
            ),
        }
    }

    /// The smallest architecture: every choice at its minimum.
    pub fn smallest(&self) -> Arch {
        let depth = min_usize(&self.choices.depth);
        let embed_dim = min_usize(&self.choices.embed_dim);
        let heads = (0..depth)
            .map(|l| min_usize(self.heads_choices(l)))
            .collect();
        match self.mlp_is_dim() {
            true => Arch::with_dims(
                embed_dim,
                depth,
                heads,
                (0..depth)
                    .map(|l| min_usize(self.mlp_dim_choices(l)))
                    .collect(),
            ),
            false => Arch::with_ratios(
                embed_dim,
                depth,
                heads,
                (0..depth).map(|l| min_f64(self.mlp_choices(l))).collect(),
            ),
        }
    }

    /// `largest`, `smallest`, or the path of an architecture JSON file; the
    /// architecture must fit this space's supernet.
    ///
    /// The architecture must be on the space's grid (every value one of its
    /// choices) unless `off_grid`, which accepts any architecture that fits
    /// the supernet.
    pub fn arch_from_spec(&self, spec: &str, off_grid: bool) -> Result<Arch> {
        let arch = match spec {
            "largest" => self.largest(),
            "smallest" => self.smallest(),
            path => Arch::from_json_file(path)?,
        };
        if off_grid {
            arch.check_fits(self)?;
        } else {
            arch.validate(self).map_err(|e| match e {
                Error::InvalidArch {
                    space,
                    field,
                    message,
                } => Error::InvalidArch {
                    space,
                    field,
                    message: format!(
                        "{message} (--off-grid accepts values outside the choice lists that fit the supernet)"
                    ),
                },
                e => e,
            })?;
        }
        Ok(arch)
    }

    /// A uniformly sampled architecture (each choice independently uniform).
    pub fn sample(&self, rng: &mut impl Rng) -> Arch {
        let card = gene_cardinalities(self);
        let genes: Vec<usize> = card.iter().map(|&c| rng.random_range(0..c)).collect();
        Arch::from_genes(self, &genes).expect("genes drawn within their cardinalities")
    }
}
