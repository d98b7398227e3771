"""tools/torchutil.py — what the PyTorch cross-checks share: safetensors files written and read
without the safetensors package, and FashionMNIST batches. Tests and benchmarks only."""
import gzip, json, os, struct

import numpy as np
import torch

DATA = "/usr/share/datasets/fashion-mnist"


def write_safetensors(path, tensors):
    header, body = {}, b""
    for name, t in tensors.items():
        data = t.detach().cpu().numpy().astype("<f4" if t.dtype == torch.float32 else "<f8").tobytes()
        header[name] = {"dtype": "F32" if t.dtype == torch.float32 else "F64",
                        "shape": list(t.shape), "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    text = json.dumps(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + body)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dtype = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}[info["dtype"]]
        out[name] = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=dtype).reshape(info["shape"]).astype(np.float64)
    return out


def first_batch(batch):
    images_, labels = images(batch)
    x = (torch.tensor(images_, dtype=torch.float64) / 255 - 0.5) / 0.5
    return x, torch.tensor(labels, dtype=torch.long)


def images(count, train=True):
    """The first `count` images (uint8, [count, 784]) and labels of the data set."""
    stem = "train" if train else "t10k"
    with gzip.open(os.path.join(DATA, f"{stem}-images-idx3-ubyte.gz")) as f:
        f.read(16)
        x = np.frombuffer(f.read(count * 784), dtype=np.uint8).reshape(count, 784)
    with gzip.open(os.path.join(DATA, f"{stem}-labels-idx1-ubyte.gz")) as f:
        f.read(8)
        y = np.frombuffer(f.read(count), dtype=np.uint8)
    return x, y


def permutation(n, seed):
    """gradc's permutation (runtime/Data.cpp): Fisher-Yates driven by splitmix64."""
    mask, state, order = (1 << 64) - 1, seed, list(range(n))
    for i in range(n - 1):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        j = i + z % (n - i)
        order[i], order[j] = order[j], order[i]
    return order
