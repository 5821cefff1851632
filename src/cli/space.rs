//! `vitnas space show <file>`.

use clap::Subcommand;
use std::path::PathBuf;
use vitnas::space::{flops, params, Space};

#[derive(Debug, Subcommand)]
pub enum SpaceCmd {
    /// Print a space's choices, its size (number of architectures) and the
    /// params / FLOPs range of its subnets.
    Show {
        /// A search-space file, e.g. search_spaces/fmnist-tiny.toml.
        file: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: SpaceCmd) -> anyhow::Result<()> {
    match cmd {
        SpaceCmd::Show { file, json } => {
            let space = Space::from_file(&file)?;
            let (lo, hi) = (space.smallest(), space.largest());
            let (p_lo, p_hi) = (params(&space, &lo), params(&space, &hi));
            let (f_lo, f_hi) = (flops(&space, &lo), flops(&space, &hi));
            if json {
                let v = serde_json::json!({
                    "space": space,
                    "size": space.size().map_or("more than 2^128".into(), |n| n.to_string()),
                    "params": {"min": p_lo, "max": p_hi},
                    "flops_macs": {"min": f_lo, "max": f_hi},
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let c = &space.choices;
            let s = &space.supernet;
            println!("space      {}  ({})", space.name, file.display());
            match space.modality() {
                vitnas::space::Modality::Image(i) => println!(
                    "input      {}×{}×{}, patch {}, {} tokens, {} classes",
                    i.image_size,
                    i.image_size,
                    i.channels,
                    i.patch_size,
                    space.seq_len(),
                    i.num_classes
                ),
                vitnas::space::Modality::Text(t) => println!(
                    "text       vocab {}, up to {} positions, costs stated at {} tokens, \
                     {:?} pooling, {}",
                    t.vocab_size,
                    t.max_position_embeddings,
                    t.seq_len,
                    t.pooling,
                    match t.num_classes {
                        0 => "classes from the training data".to_string(),
                        n => format!("{n} classes"),
                    }
                ),
            }
            let mlp = match (s.mlp_ratio, s.mlp_dim) {
                (Some(r), _) => format!("MLP ratio {r}"),
                _ => "MLP".to_string(),
            };
            println!(
                "supernet   embed {}, depth {}, heads {} × {}, {mlp} (width {})",
                s.embed_dim,
                s.depth,
                s.num_heads,
                s.head_dim,
                space.supernet_mlp_width()
            );
            println!("embed_dim  {:?}", c.embed_dim);
            println!("depth      {:?}", c.depth);
            println!("num_heads  {:?} (per layer)", c.num_heads);
            match space.mlp_is_dim() {
                true => println!("mlp_dim    {:?} (per layer)", c.mlp_dim),
                false => println!("mlp_ratio  {:?} (per layer)", c.mlp_ratio),
            }
            for o in &space.layer {
                println!(
                    "layer {:<4} num_heads {:?}, mlp {:?}{:?}",
                    o.index,
                    space.heads_choices(o.index),
                    space.mlp_choices(o.index),
                    space.mlp_dim_choices(o.index)
                );
            }
            match space.size() {
                Some(n) => println!("size       {n} architectures ({:.3e})", n as f64),
                None => println!("size       more than 2^128 (3.4e38) architectures"),
            }
            println!(
                "params     {} .. {}  ({:.2}M .. {:.2}M)",
                p_lo,
                p_hi,
                p_lo as f64 / 1e6,
                p_hi as f64 / 1e6
            );
            println!(
                "FLOPs      {} .. {} multiply-adds per input ({:.1}M .. {:.1}M)",
                f_lo,
                f_hi,
                f_lo as f64 / 1e6,
                f_hi as f64 / 1e6
            );
            Ok(())
        }
    }
}
