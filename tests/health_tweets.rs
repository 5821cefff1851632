//! The multi-class text benchmark of issue 31: Health News in Twitter (16
//! accounts). The shipped sample (data/health-tweets-sample) loads with its
//! recipe as a run would load it: 16 classes that the space states, every
//! account in train, validation and test, no tweet cut at `max_len`. The
//! benchmark recipe and its reference (all-MiniLM-L6-v2 fine-tuned alone)
//! train the same model on the same data and schedule. The tokenizer is
//! all-MiniLM-L6-v2's (../shared; the tests that need it skip without it).

use std::path::PathBuf;
use vitnas::data::text::{load_text, TextFields};
use vitnas::train::recipe::Recipe;
use vitnas::train::text::{load_test, load_train_val, resolve_space};
use vitnas::Space;

const ACCOUNTS: usize = 16;

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn recipe(rel: &str) -> Recipe {
    Recipe::from_file(repo_path(rel)).unwrap()
}

fn space_of(r: &Recipe) -> Space {
    Space::from_file(repo_path(r.space.to_str().unwrap())).unwrap()
}

fn per_class(labels: &[u32], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for &l in labels {
        counts[l as usize] += 1;
    }
    counts
}

#[test]
fn shipped_sample_has_70_train_and_20_test_tweets_of_each_of_16_accounts() {
    let fields = TextFields::default();
    let dir = repo_path("data/health-tweets-sample");
    let train = load_text(&dir.join("train.jsonl"), &fields, None).unwrap();
    let test = load_text(&dir.join("test.jsonl"), &fields, Some(&train.label_names)).unwrap();
    assert_eq!(train.label_names.len(), ACCOUNTS, "{:?}", train.label_names);
    assert!(train.label_names.iter().any(|l| l == "bbchealth"));
    assert_eq!(train.class_counts(), vec![70; ACCOUNTS]);
    assert_eq!(test.class_counts(), vec![20; ACCOUNTS]);
    let no_url = |t: &String| !t.contains("http://") && !t.contains("https://");
    assert!(train.texts.iter().chain(&test.texts).all(no_url));
    let in_train: std::collections::HashSet<&String> = train.texts.iter().collect();
    let shared = test.texts.iter().filter(|t| in_train.contains(t)).count();
    assert_eq!(shared, 0, "tweets in both train and test");
}

#[test]
fn sample_recipe_loads_16_stated_classes_every_account_in_each_split_none_cut() {
    let tok = repo_path("../shared/models/all-MiniLM-L6-v2/tokenizer.json");
    if !tok.is_file() {
        eprintln!("skipped: {} not present", tok.display());
        return;
    }
    let mut r = recipe("recipes/health-tweets-sample.toml");
    r.data.path = Some(repo_path("data/health-tweets-sample"));
    let max_len = {
        let t = r.data.text.as_mut().unwrap();
        t.tokenizer = Some(tok.to_str().unwrap().into());
        t.max_len
    };
    let space = space_of(&r);
    assert!(space.states_classes());
    assert_eq!(space.num_classes(), ACCOUNTS);
    let data = load_train_val(&r, &space).unwrap();
    assert_eq!(data.label_names.len(), ACCOUNTS);
    assert_eq!((data.train.len(), data.val.len()), (800, r.data.val_size));
    for (split, d) in [("train", &data.train), ("validation", &data.val)] {
        let counts = per_class(&d.labels, ACCOUNTS);
        assert!(counts.iter().all(|&c| c >= 5), "{split}: {counts:?}");
    }
    let test = load_test(&r, &data.label_names, &data.tokenizer).unwrap();
    assert_eq!(per_class(&test.labels, ACCOUNTS), vec![20; ACCOUNTS]);
    let longest = [&data.train, &data.val, &test]
        .iter()
        .flat_map(|d| d.ids.iter().map(Vec::len))
        .max()
        .unwrap();
    assert!(
        longest < max_len,
        "a tweet of {longest} tokens reaches max_len {max_len}"
    );
    let resolved = resolve_space(&r, &space, &data).unwrap();
    let t = resolved.text.as_ref().unwrap();
    assert_eq!((t.num_classes, t.seq_len), (ACCOUNTS, 64));
}

#[test]
fn benchmark_and_its_reference_train_the_same_model_on_the_same_data_and_schedule() {
    let bench = recipe("recipes/health-tweets.toml");
    let reference = recipe("evaluate/text/minilm-alone-health-tweets.toml");
    let sample = recipe("recipes/health-tweets-sample.toml");
    assert_eq!(bench.space, sample.space);
    let (bs, rs) = (space_of(&bench), space_of(&reference));
    assert_eq!(bs.text, rs.text, "classes, cost length and pooling");
    assert_eq!(bs.largest(), rs.largest());
    assert_eq!(
        rs.smallest(),
        rs.largest(),
        "the reference is one architecture"
    );
    assert_eq!(bench.init_from, reference.init_from);
    assert_eq!(
        (bench.seed, bench.data.val_size, bench.data.split_seed),
        (
            reference.seed,
            reference.data.val_size,
            reference.data.split_seed
        )
    );
    assert_eq!(
        bench.data.text.as_ref().unwrap().max_len,
        reference.data.text.as_ref().unwrap().max_len
    );
    assert_eq!(bench.optimizer, reference.optimizer);
    assert_eq!(
        (bench.train.epochs, bench.train.batch_size),
        (reference.train.epochs, reference.train.batch_size)
    );
}
