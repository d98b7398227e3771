#!/usr/bin/env python3
"""Writes the seed corpora of the safetensors and IDX fuzzers (tests/fuzz/corpus/{safetensors,idx}/):
small valid files and near misses. Run from anywhere; standard library only."""
import gzip, json, os, struct

here = os.path.dirname(os.path.abspath(__file__))


def safetensors(tensors, pad=True):
    """tensors: [(name, dtype, shape, raw bytes)] -> file bytes, data contiguous in the given order."""
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    while pad and (8 + len(text)) % 8:
        text += b" "
    return struct.pack("<Q", len(text)) + text + data


# The fuzzer's model: input 3, dense 4 relu, batchnorm, dense 2, cross_entropy.
shapes = [("layers.0.weight", [4, 3]), ("layers.0.bias", [4]), ("layers.2.weight", [4]), ("layers.2.bias", [4]),
          ("layers.3.weight", [2, 4]), ("layers.3.bias", [2])]
count = lambda s: s[0] * (s[1] if len(s) > 1 else 1)
f32 = [(n, "F32", s, struct.pack(f"<{count(s)}f", *[0.25 * i for i in range(count(s))])) for n, s in shapes]
stats = [("layers.2.running_mean", "F32", [4], struct.pack("<4f", 0, 0, 0, 0)),
         ("layers.2.running_var", "F32", [4], struct.pack("<4f", 1, 1, 1, 1)),
         ("layers.2.num_batches_tracked", "I64", [], struct.pack("<q", 3))]
f16 = [(n, "F16", s, struct.pack(f"<{count(s)}e", *[0.5] * count(s))) for n, s in shapes]
bf16 = [(n, "BF16", s, b"\x80\x3f" * count(s)) for n, s in shapes]
f64 = [(n, "F64", s, struct.pack(f"<{count(s)}d", *[-1.0] * count(s))) for n, s in shapes]
seeds = {
    "model_f32": safetensors(f32),
    "model_f32_stats": safetensors(f32 + stats),
    "model_f16": safetensors(f16),
    "model_bf16_unpadded": safetensors(bf16, pad=False),
    "model_f64_reversed": safetensors(list(reversed(f64))),
    "missing_tensor": safetensors(f32[1:]),
    "every_dtype": safetensors([("a", "I32", [2], struct.pack("<2i", 1, -1)), ("b", "I16", [1], b"\x01\x00"),
                                ("c", "I8", [1], b"\xff"), ("d", "U8", [2], b"\x01\x02"), ("e", "BOOL", [1], b"\x01")]),
    "empty": safetensors([]),
}
os.makedirs(os.path.join(here, "safetensors"), exist_ok=True)
for name, data in seeds.items():
    open(os.path.join(here, "safetensors", name + ".safetensors"), "wb").write(data)


def idx_input(images, labels):
    return struct.pack("<H", len(images)) + images + labels


def images(n, r, c):
    return struct.pack(">IIII", 0x803, n, r, c) + bytes((i * 5) & 0xFF for i in range(n * r * c))


def labels(n):
    return struct.pack(">II", 0x801, n) + bytes(i % 10 for i in range(n))


img, lbl = images(3, 2, 3), labels(3)
seeds = {
    "plain": idx_input(img, lbl),
    "gzip": idx_input(gzip.compress(img), gzip.compress(lbl)),
    "gzip_two_members": idx_input(gzip.compress(img[:9]) + gzip.compress(img[9:]), lbl),
    "empty_set": idx_input(images(0, 28, 28), labels(0)),
    "claims_more": idx_input(images(3, 2, 2)[:4] + struct.pack(">I", 4000000) + images(3, 2, 2)[8:], labels(3)),
    "label_out_of_range": idx_input(img, labels(2) + b"\x0c"),
}
os.makedirs(os.path.join(here, "idx"), exist_ok=True)
for name, data in seeds.items():
    open(os.path.join(here, "idx", name + ".idx"), "wb").write(data)
