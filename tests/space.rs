//! Search-space files, architectures, sampling and the analytical cost model.

mod common;

use common::{repo_path, space};
use rand::{rngs::StdRng, SeedableRng};
use vitnas::space::{flops, params, Arch, Space};
use vitnas::Error;

const FMNIST: &str = include_str!("../search_spaces/fmnist-tiny.toml");

#[test]
fn presets_carry_the_published_ranges() {
    let t = space("autoformer-tiny");
    assert_eq!(t.choices.embed_dim, [192, 216, 240]);
    assert_eq!(t.choices.depth, [12, 13, 14]);
    assert_eq!(t.choices.num_heads, [3, 4]);
    assert_eq!(t.choices.mlp_ratio, [3.5, 4.0]);
    assert_eq!(
        (t.supernet.embed_dim, t.supernet.num_heads, t.supernet.depth),
        (256, 4, 14)
    );
    assert_eq!((t.supernet.mlp_ratio, t.supernet.head_dim), (Some(4.0), 64));
    assert_eq!(
        (
            t.image().image_size,
            t.image().channels,
            t.image().patch_size,
            t.image().num_classes
        ),
        (224, 3, 16, 1000)
    );

    let s = space("autoformer-small");
    assert_eq!(s.choices.embed_dim, [320, 384, 448]);
    assert_eq!(s.choices.depth, [12, 13, 14]);
    assert_eq!(s.choices.num_heads, [5, 6, 7]);
    assert_eq!(s.choices.mlp_ratio, [3.0, 3.5, 4.0]);

    let b = space("autoformer-base");
    assert_eq!(b.choices.embed_dim, [528, 576, 624]);
    assert_eq!(b.choices.depth, [14, 15, 16]);
    assert_eq!(b.choices.num_heads, [9, 10]);
    assert_eq!(b.choices.mlp_ratio, [3.0, 3.5, 4.0]);

    let f = space("fmnist-tiny");
    assert_eq!(f.choices.embed_dim, [64, 96, 128]);
    assert_eq!(f.choices.depth, [4, 5, 6]);
    assert_eq!(f.choices.num_heads, [2, 3, 4]);
    assert_eq!(f.choices.mlp_ratio, [2.0, 3.0, 4.0]);
    assert_eq!(f.supernet.head_dim, 32);
    assert_eq!(
        (
            f.image().image_size,
            f.image().channels,
            f.image().patch_size,
            f.image().num_classes
        ),
        (28, 1, 4, 10)
    );
}

#[test]
fn space_round_trips_through_toml() {
    let f = space("fmnist-tiny");
    let again = Space::from_toml_str(&f.to_toml_string(), "round-trip").unwrap();
    assert_eq!(f, again);
}

#[test]
fn fmnist_space_size_is_counted_by_depth() {
    // 3 embed choices × Σ_d (3 heads × 3 ratios)^d for d in {4, 5, 6}.
    assert_eq!(
        space("fmnist-tiny").size(),
        Some(3 * (9u128.pow(4) + 9u128.pow(5) + 9u128.pow(6)))
    );
}

fn invalid(text: &str) -> String {
    let err = Space::from_toml_str(text, "bad-space.toml").unwrap_err();
    err.to_string()
}

#[test]
fn unknown_key_is_refused_naming_file_and_key() {
    let msg = invalid(&FMNIST.replace("head_dim = 32", "head_dim = 32\nhead_dims = 4"));
    assert!(
        msg.contains("bad-space.toml") && msg.contains("head_dims"),
        "{msg}"
    );
}

#[test]
fn missing_field_is_refused_naming_it() {
    let msg = invalid(&FMNIST.replace("num_classes = 10", ""));
    assert!(
        msg.contains("bad-space.toml") && msg.contains("num_classes"),
        "{msg}"
    );
}

#[test]
fn empty_choice_list_is_refused_naming_the_field() {
    let msg = invalid(&FMNIST.replace("depth = [4, 5, 6]", "depth = []"));
    assert!(
        msg.contains("bad-space.toml") && msg.contains("choices.depth") && msg.contains("empty"),
        "{msg}"
    );
}

#[test]
fn choice_above_the_supernet_maximum_is_refused() {
    let msg = invalid(&FMNIST.replace("embed_dim = [64, 96, 128]", "embed_dim = [64, 96, 160]"));
    assert!(
        msg.contains("choices.embed_dim[2]") && msg.contains("160"),
        "{msg}"
    );
    let msg = invalid(&FMNIST.replace("num_heads = [2, 3, 4]", "num_heads = [2, 3, 5]"));
    assert!(msg.contains("choices.num_heads[2]"), "{msg}");
    let msg = invalid(&FMNIST.replace("mlp_ratio = [2.0, 3.0, 4.0]", "mlp_ratio = [2.0, 4.5]"));
    assert!(
        msg.contains("choices.mlp_ratio[1]") && msg.contains("MLP width"),
        "{msg}"
    );
    let msg = invalid(&FMNIST.replace("depth = [4, 5, 6]", "depth = [4, 7]"));
    assert!(msg.contains("choices.depth[1]"), "{msg}");
}

#[test]
fn nonsensical_dims_are_refused() {
    let msg = invalid(&FMNIST.replace("embed_dim = [64, 96, 128]", "embed_dim = [0, 96]"));
    assert!(msg.contains("choices.embed_dim[0]"), "{msg}");
    let msg = invalid(&FMNIST.replace("patch_size = 4", "patch_size = 5"));
    assert!(
        msg.contains("input.patch_size") && msg.contains("divide"),
        "{msg}"
    );
    let msg = invalid(&FMNIST.replace("mlp_ratio = 4.0", "mlp_ratio = -1.0"));
    assert!(msg.contains("supernet.mlp_ratio"), "{msg}");
}

#[test]
fn layer_overrides_apply_and_are_validated() {
    let text = format!("{FMNIST}\n[[layer]]\nindex = 0\nnum_heads = [4]\n");
    let s = Space::from_toml_str(&text, "o.toml").unwrap();
    assert_eq!(s.heads_choices(0), [4]);
    assert_eq!(s.heads_choices(1), [2, 3, 4]);
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..50 {
        assert_eq!(s.sample(&mut rng).num_heads[0], 4);
    }
    assert_eq!(s.smallest().num_heads[0], 4);
    let msg = invalid(&format!(
        "{FMNIST}\n[[layer]]\nindex = 6\nnum_heads = [4]\n"
    ));
    assert!(msg.contains("layer[0].index"), "{msg}");
    let msg = invalid(&format!("{FMNIST}\n[[layer]]\nindex = 1\nmlp_ratio = []\n"));
    assert!(
        msg.contains("layer[0].mlp_ratio") && msg.contains("empty"),
        "{msg}"
    );
}

#[test]
fn missing_file_error_names_the_path() {
    let err = Space::from_file("search_spaces/no-such-space.toml").unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err.to_string().contains("no-such-space.toml"));
}

#[test]
fn arch_round_trips_through_json() {
    let s = space("fmnist-tiny");
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..20 {
        let a = s.sample(&mut rng);
        let b: Arch = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn sampling_is_reproducible_and_stays_in_the_space() {
    let s = space("fmnist-tiny");
    let draw = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..30).map(|_| s.sample(&mut rng)).collect::<Vec<_>>()
    };
    let a = draw(42);
    assert_eq!(a, draw(42));
    assert_ne!(a, draw(43));
    for arch in &a {
        arch.validate(&s).unwrap();
    }
    // Every choice is reached by uniform sampling.
    for e in &s.choices.embed_dim {
        assert!(
            a.iter().any(|x| x.embed_dim == *e),
            "embed {e} never sampled"
        );
    }
    for d in &s.choices.depth {
        assert!(a.iter().any(|x| x.depth == *d), "depth {d} never sampled");
    }
}

#[test]
fn largest_and_smallest_bound_the_space() {
    let s = space("fmnist-tiny");
    let (hi, lo) = (s.largest(), s.smallest());
    assert_eq!(
        (
            hi.embed_dim,
            hi.depth,
            hi.num_heads.clone(),
            hi.mlp_ratio.clone()
        ),
        (128, 6, vec![4; 6], vec![4.0; 6])
    );
    assert_eq!(
        (
            lo.embed_dim,
            lo.depth,
            lo.num_heads.clone(),
            lo.mlp_ratio.clone()
        ),
        (64, 4, vec![2; 4], vec![2.0; 4])
    );
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..50 {
        let a = s.sample(&mut rng);
        assert!(params(&s, &lo) <= params(&s, &a) && params(&s, &a) <= params(&s, &hi));
        assert!(flops(&s, &lo) <= flops(&s, &a) && flops(&s, &a) <= flops(&s, &hi));
    }
}

#[test]
fn genes_round_trip_and_reject_out_of_range() {
    let s = space("fmnist-tiny");
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..20 {
        let a = s.sample(&mut rng);
        let g = a.to_genes(&s).unwrap();
        assert_eq!(g.len(), 2 + 2 * 6);
        assert_eq!(Arch::from_genes(&s, &g).unwrap(), a);
    }
    let mut g = s.largest().to_genes(&s).unwrap();
    g[3] = 3;
    let msg = Arch::from_genes(&s, &g).unwrap_err().to_string();
    assert!(msg.contains("genes[3]"), "{msg}");
}

#[test]
fn out_of_space_arch_is_refused_naming_the_field() {
    let s = space("fmnist-tiny");
    let mut a = s.largest();
    a.num_heads[2] = 5;
    let msg = a.validate(&s).unwrap_err().to_string();
    assert!(msg.contains("num_heads[2]") && msg.contains('5'), "{msg}");
    assert!(a
        .check_fits(&s)
        .unwrap_err()
        .to_string()
        .contains("num_heads[2]"));

    let mut a = s.largest();
    a.mlp_ratio.pop();
    let msg = a.validate(&s).unwrap_err().to_string();
    assert!(
        msg.contains("mlp_ratio") && msg.contains("depth is 6"),
        "{msg}"
    );

    let mut a = s.largest();
    a.embed_dim = 80;
    assert!(a
        .validate(&s)
        .unwrap_err()
        .to_string()
        .contains("embed_dim"));
    a.check_fits(&s).unwrap(); // 80 ≤ 128: fits the supernet, off the grid
}

#[test]
fn autoformer_t_subnet_counts_5_768_104_params() {
    let s = space("autoformer-tiny");
    let a = Arch::from_json_file(repo_path("search_spaces/autoformer-t.arch.json")).unwrap();
    assert_eq!(params(&s, &a), 5_768_104);
    // Its MLP ratio 3.0 is not among autoformer-tiny's choices...
    let msg = a.validate(&s).unwrap_err().to_string();
    assert!(
        msg.contains("mlp_ratio[2]") && msg.contains("3.0") && msg.contains("[3.5, 4.0]"),
        "{msg}"
    );
    // ...but it fits the supernet's weights,
    a.check_fits(&s).unwrap();
    // and a space with 3.0 added accepts it.
    let text = std::fs::read_to_string(repo_path("search_spaces/autoformer-tiny.toml"))
        .unwrap()
        .replace("mlp_ratio = [3.5, 4.0]", "mlp_ratio = [3.0, 3.5, 4.0]");
    a.validate(&Space::from_toml_str(&text, "t3.toml").unwrap())
        .unwrap();
}

#[test]
fn largest_fmnist_flops_match_a_hand_count() {
    let s = space("fmnist-tiny");
    // 49 patches + cls = 50 tokens, embed 128, 4 heads × 32 = 128, MLP 512, 6 layers.
    let patch = 49 * 16 * 128;
    let qkv = 3 * 50 * 128 * 128;
    let attn = 2 * 50 * 50 * 128; // q·kᵀ and probs·v over all heads
    let out = 50 * 128 * 128;
    let mlp = 2 * 50 * 128 * 512;
    let head = 128 * 10;
    let expected: u64 = patch + 6 * (qkv + attn + out + mlp) + head;
    assert_eq!(expected, 62_924_032);
    assert_eq!(flops(&s, &s.largest()), expected);
}

#[test]
fn spaces_too_large_to_allocate_or_count_are_refused_naming_the_field() {
    for (from, to, field) in [
        (
            "embed_dim = 128\n",
            "embed_dim = 1000000000\n",
            "supernet.embed_dim",
        ),
        ("depth = 6\n", "depth = 100000000\n", "supernet.depth"),
        (
            "num_classes = 10",
            "num_classes = 1000000000000",
            "input.num_classes",
        ),
        ("image_size = 28", "image_size = 4096", "input.patch_size"),
        // within every single limit, but 16 × 4096 × 16384 × 64 parameters
        ("embed_dim = 128\n", "embed_dim = 16384\n", "supernet.depth"),
    ] {
        let mut text = FMNIST.replacen(from, to, 1);
        if field == "supernet.depth" && to.contains("16384") {
            text = text.replacen("depth = 6\n", "depth = 64\n", 1).replacen(
                "num_heads = 4\n",
                "num_heads = 256\n",
                1,
            );
        }
        if field == "input.patch_size" {
            text = text.replacen("patch_size = 4", "patch_size = 1", 1);
        }
        assert_ne!(text, FMNIST, "{from}");
        let err = Space::from_toml_str(&text, "huge.toml").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::InvalidSpace { .. })
                && msg.contains("huge.toml")
                && msg.contains(field),
            "{field}: {msg}"
        );
    }
}

#[test]
fn a_space_with_more_than_u128_architectures_says_so() {
    // 64 layers of 3 × 3 per-layer choices: 9^64 ≈ 1.2e61 > 3.4e38.
    let text = FMNIST.replacen("depth = 6\n", "depth = 64\n", 1).replacen(
        "depth = [4, 5, 6]",
        "depth = [64]",
        1,
    );
    let s = Space::from_toml_str(&text, "deep.toml").unwrap();
    assert_eq!(s.size(), None);
    assert_eq!(space("fmnist-tiny").size().map(|n| n > 0), Some(true));
}

/// Every MLP width a space can produce is at least 1: a ratio that rounds
/// to 0 units (on the supernet, a choice list or a layer override) is
/// refused naming the field, before any engine shape is built from it.
#[test]
fn an_mlp_width_that_rounds_to_zero_is_refused_naming_the_field() {
    for (from, to, field) in [
        (
            "mlp_ratio = [2.0, 3.0, 4.0]",
            "mlp_ratio = [0.001, 3.0, 4.0]",
            "choices.mlp_ratio[0]",
        ),
        ("mlp_ratio = 4.0", "mlp_ratio = 0.001", "supernet.mlp_ratio"),
        (
            "# [[layer]]\n# index = 0\n# num_heads = [4]\n# mlp_ratio = [3.0, 4.0]",
            "[[layer]]\nindex = 0\nmlp_ratio = [0.001]",
            "layer[0].mlp_ratio[0]",
        ),
    ] {
        let text = FMNIST.replace(from, to);
        assert_ne!(text, FMNIST, "the fixture no longer holds {from:?}");
        let msg = invalid(&text);
        assert!(
            msg.contains("bad-space.toml") && msg.contains(field) && msg.contains("width of 0"),
            "{field}: {msg}"
        );
    }
}

/// A choice listed twice would be counted and sampled as two
/// architectures: refused in every choice list, naming the repeat.
#[test]
fn duplicate_choices_are_refused_naming_the_field() {
    for (from, to, field) in [
        (
            "embed_dim = [64, 96, 128]",
            "embed_dim = [64, 96, 64]",
            "choices.embed_dim[2]",
        ),
        ("depth = [4, 5, 6]", "depth = [4, 4]", "choices.depth[1]"),
        (
            "num_heads = [2, 3, 4]",
            "num_heads = [2, 3, 3]",
            "choices.num_heads[2]",
        ),
        (
            "mlp_ratio = [2.0, 3.0, 4.0]",
            "mlp_ratio = [2.0, 2.0]",
            "choices.mlp_ratio[1]",
        ),
    ] {
        let text = FMNIST.replace(from, to);
        assert_ne!(text, FMNIST, "the fixture no longer holds {from:?}");
        let msg = invalid(&text);
        assert!(
            msg.contains(field) && msg.contains("repeats"),
            "{field}: {msg}"
        );
    }
    // The text spaces' width lists too.
    let bert = include_str!("../search_spaces/bert-minilm.toml");
    let line = bert
        .lines()
        .find(|l| l.starts_with("mlp_dim = ["))
        .expect("bert-minilm lists mlp_dim choices");
    let first = line
        .trim_start_matches("mlp_dim = [")
        .split([',', ']'])
        .next()
        .unwrap()
        .trim();
    let msg = Space::from_toml_str(
        &bert.replace(line, &format!("mlp_dim = [{first}, {first}]")),
        "bad-bert.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("choices.mlp_dim[1]") && msg.contains("repeats"),
        "{msg}"
    );
}

/// A space of one class trains to 100 % on nothing: refused for images and
/// text, naming the field.
#[test]
fn a_space_of_one_class_is_refused_naming_the_field() {
    let msg = invalid(&FMNIST.replace("num_classes = 10", "num_classes = 1"));
    assert!(
        msg.contains("input.num_classes") && msg.contains("at least 2"),
        "{msg}"
    );
    let bert = include_str!("../search_spaces/bert-minilm.toml");
    let line = bert
        .lines()
        .find(|l| l.starts_with("num_classes"))
        .expect("bert-minilm states num_classes");
    let msg = Space::from_toml_str(&bert.replace(line, "num_classes = 1"), "bad-bert.toml")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("text.num_classes") && msg.contains("at least 2"),
        "{msg}"
    );
}
