//! `vitnas arch sample|params`.

use anyhow::Context;
use clap::Subcommand;
use rand::{rngs::StdRng, SeedableRng};
use std::path::PathBuf;
use vitnas::space::{flops, params, Arch, Space};

#[derive(Debug, Subcommand)]
pub enum ArchCmd {
    /// Print an architecture of a space as JSON (uniform sample by default).
    Sample {
        /// A search-space file.
        space: PathBuf,
        /// Seed of the sampler; the same seed gives the same architecture.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The largest architecture instead of a sample.
        #[arg(long, conflicts_with = "smallest")]
        largest: bool,
        /// The smallest architecture instead of a sample.
        #[arg(long)]
        smallest: bool,
    },
    /// Validate an architecture against a space and print its parameter
    /// count and FLOPs (multiply-adds per image, or per text at the space's
    /// stated sequence length).
    Params {
        /// A search-space file.
        space: PathBuf,
        /// An architecture JSON file (as `arch sample` prints).
        arch: PathBuf,
        /// Accept values outside the space's choice lists as long as they fit
        /// in the supernet's weights (e.g. published subnets off the grid).
        #[arg(long)]
        off_grid: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ArchCmd) -> anyhow::Result<()> {
    match cmd {
        ArchCmd::Sample {
            space,
            seed,
            largest,
            smallest,
        } => {
            let space = Space::from_file(&space)?;
            let arch = if largest {
                space.largest()
            } else if smallest {
                space.smallest()
            } else {
                space.sample(&mut StdRng::seed_from_u64(seed))
            };
            println!("{}", serde_json::to_string_pretty(&arch)?);
            Ok(())
        }
        ArchCmd::Params {
            space,
            arch: arch_path,
            off_grid,
            json,
        } => {
            let space = Space::from_file(&space)?;
            let arch = Arch::from_json_file(&arch_path)?;
            let checked = if off_grid {
                arch.check_fits(&space)
            } else {
                arch.validate(&space)
            };
            checked.with_context(|| {
                format!(
                    "{} does not validate against {}{}",
                    arch_path.display(),
                    space.name,
                    if off_grid { "" } else { " (--off-grid accepts values outside the choice lists that fit the supernet)" }
                )
            })?;
            let (p, f) = (params(&space, &arch), flops(&space, &arch));
            if json {
                println!(
                    "{}",
                    serde_json::json!({"arch": arch, "params": p, "flops_macs": f})
                );
            } else {
                println!("params {p} ({:.2}M)", p as f64 / 1e6);
                let per = match space.is_text() {
                    true => format!("text of {} tokens", space.seq_len()),
                    false => "image".to_string(),
                };
                println!(
                    "FLOPs  {f} multiply-adds per {per} ({:.1}M)",
                    f as f64 / 1e6
                );
            }
            Ok(())
        }
    }
}
