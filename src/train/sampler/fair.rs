//! FairNAS strict fairness: each step trains `m` subnets (m = the least
//! common multiple of the genes' choice counts) built so that every choice
//! of every gene appears exactly `m / choices` times: per gene, the choice
//! indices are a shuffled, repeated permutation. Genes of layers past a
//! subnet's depth are drawn too but inactive, so deeper layers are trained
//! only by deeper subnets (inherent in elastic depth).

use super::{Plan, Sampler};
use crate::space::arch::gene_cardinalities;
use crate::space::{Arch, Space};
use rand::{rngs::StdRng, seq::SliceRandom};

pub struct Fair;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The number of subnets per fair round.
pub fn round_len(space: &Space) -> usize {
    gene_cardinalities(space)
        .into_iter()
        .fold(1, |m, c| m / gcd(m, c) * c)
}

impl Sampler for Fair {
    fn plan(&self, space: &Space, _step: usize, rng: &mut StdRng) -> Plan {
        let card = gene_cardinalities(space);
        let m = round_len(space);
        let columns: Vec<Vec<usize>> = card
            .iter()
            .map(|&c| {
                let mut col: Vec<usize> = (0..m).map(|k| k % c).collect();
                col.shuffle(rng);
                col
            })
            .collect();
        let archs = (0..m)
            .map(|k| {
                let genes: Vec<usize> = columns.iter().map(|col| col[k]).collect();
                Arch::from_genes(space, &genes).expect("genes within cardinalities")
            })
            .collect();
        Plan {
            archs,
            teacher_first: false,
        }
    }
}
