"""Writes the bundled Fashion-MNIST sample: the first 1,000 train images of
each class (10,000) and the first 200 test images of each class (2,000), in
the original IDX gzip format.  Usage: python3 data/make_sample.py [data/fashion-mnist]
(the directory holding the four full Fashion-MNIST .gz files)."""
import gzip, struct, sys
src = sys.argv[1] if len(sys.argv) > 1 else "data/fashion-mnist"
def read(path):
    b = gzip.open(path).read()
    nd = b[3]; dims = struct.unpack(">" + "I" * nd, b[4:4 + 4 * nd])
    return dims, b[4 + 4 * nd:]
def write(path, dims, data):
    with gzip.GzipFile(path, "wb", mtime=0, compresslevel=9) as f:
        f.write(bytes([0, 0, 8, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) + data)
for split, per_class in [("train", 1000), ("t10k", 200)]:
    (n, h, w), img = read(f"{src}/{split}-images-idx3-ubyte.gz")
    _, lab = read(f"{src}/{split}-labels-idx1-ubyte.gz")
    counts = [0] * 10; keep = []
    for i in range(n):
        if counts[lab[i]] < per_class:
            counts[lab[i]] += 1; keep.append(i)
    write(f"data/fashion-mnist-sample/{split}-images-idx3-ubyte.gz", (len(keep), h, w),
          b"".join(img[i * h * w:(i + 1) * h * w] for i in keep))
    write(f"data/fashion-mnist-sample/{split}-labels-idx1-ubyte.gz", (len(keep),), bytes(lab[i] for i in keep))
    print(split, len(keep))
