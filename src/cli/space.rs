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
            let i = &space.input;
            println!("space      {}  ({})", space.name, file.display());
            println!(
                "input      {}×{}×{}, patch {}, {} tokens, {} classes",
                i.image_size,
                i.image_size,
                i.channels,
                i.patch_size,
                space.seq_len(),
                i.num_classes
            );
            println!(
                "supernet   embed {}, depth {}, heads {} × {}, MLP ratio {} (width {})",
                s.embed_dim,
                s.depth,
                s.num_heads,
                s.head_dim,
                s.mlp_ratio,
                space.supernet_mlp_width()
            );
            println!("embed_dim  {:?}", c.embed_dim);
            println!("depth      {:?}", c.depth);
            println!("num_heads  {:?} (per layer)", c.num_heads);
            println!("mlp_ratio  {:?} (per layer)", c.mlp_ratio);
            for o in &space.layer {
                println!(
                    "layer {:<4} num_heads {:?}, mlp_ratio {:?}",
                    o.index,
                    space.heads_choices(o.index),
                    space.mlp_choices(o.index)
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
                "FLOPs      {} .. {} multiply-adds per image ({:.1}M .. {:.1}M)",
                f_lo,
                f_hi,
                f_lo as f64 / 1e6,
                f_hi as f64 / 1e6
            );
            Ok(())
        }
    }
}
