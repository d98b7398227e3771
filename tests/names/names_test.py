#!/usr/bin/env python3
"""tests/names/names_test.py — names and numbers that reach gradc's outputs: model files named
with bytes that are not UTF-8, with commas, quotes, newlines and `*/`; JSON read by a strict
parser, CSV by an RFC 4180 reader, SVG by an XML parser, C headers by a C compiler; AOT
prefixes that differ only in case; an unknown --target-cpu; `acts --format json` with NaN
parameters; `grads --save-params` on a batchnorm model loaded strictly by PyTorch.

Usage: names_test.py GRADC SOURCE_DIR CASE
  CASE: json, csv, svg, header, prefixes, target_cpu, acts_nan, save_params_torch
"""
import csv, io, json, os, struct, subprocess, sys, tempfile
import xml.etree.ElementTree as ET

GRADC, SRC, CASE = sys.argv[1], sys.argv[2], sys.argv[3]
CC = os.environ.get("CC", "cc")
TINY = "input 784\ndense 3 tanh\ndense 10\nloss cross_entropy\n"  # no `model` line: named after the file
REPLACEMENT = "\ufffd"


def run(*args, rc=0, cwd=None):
    p = subprocess.run([os.fsencode(a) if isinstance(a, bytes) else a for a in [GRADC, *args]], capture_output=True,
                       cwd=cwd)
    if p.returncode != rc:
        sys.exit(f"expected exit {rc}, got {p.returncode}: gradc {args}\n{p.stdout!r}\n{p.stderr!r}")
    return p


def check(cond, what):
    if not cond:
        sys.exit("FAILED: " + what)


def strict_json(data):
    """JSON as RFC 8259 has it: UTF-8, no NaN or Infinity tokens."""
    def reject(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(data.decode("utf-8"), parse_constant=reject)


def model_file(tmp, name):
    path = os.path.join(os.fsencode(tmp), name)
    with open(path, "wb") as f:
        f.write(TINY.encode())
    return path


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + n])
    return raw, n, {k: v for k, v in header.items() if k != "__metadata__"}


with tempfile.TemporaryDirectory() as tmp:
    # A file name that is not UTF-8 (0xff, 0xfe, a lone continuation byte, a truncated
    # sequence), with a quote, a comma, markup and a control character in it.
    odd = model_file(tmp, b'we\xff\xfe\x80"ird,<n&m>\x01\xe2\x82.nn')
    odd_name = odd.rsplit(b"/", 1)[1][:-3]
    if CASE == "json":
        p = run("grads", odd, "--batch", "4", "--format", "json")
        j = strict_json(p.stdout)
        want = odd_name.decode("utf-8", errors="replace")
        check(j["model"] == want, f"the model's name, each invalid byte as U+FFFD: {j['model']!r} vs {want!r}")
        check(j["params"][0]["name"] == "layers.0.weight", "the report itself")
        p = run("grads", odd, odd, "--batch", "4", "--format", "json")
        check(len(strict_json(p.stdout)) == 2, "two models, an array")
    elif CASE == "csv":
        weird = model_file(tmp, b'we"ird,name.nn')
        p = run("grads", weird, odd, "--batch", "4", "--format", "csv", "--backend", "interp")
        rows = list(csv.reader(io.StringIO(p.stdout.decode("utf-8"), newline="")))
        check(rows[0][:3] == ["model", "tensor", "shape"] and len(rows) == 9, f"a header and 4 rows a model: {rows}")
        check(all(len(r) == 13 for r in rows), f"13 columns in every row: {[len(r) for r in rows]}")
        check(rows[1][0] == 'we"ird,name', f"the name, quoted and unquoted again: {rows[1][0]!r}")
        check(rows[5][0] == odd_name.decode("utf-8", errors="replace"), f"the name that is not UTF-8: {rows[5][0]!r}")
        check(b'"we""ird,name"' in p.stdout, "RFC 4180: the field quoted, its quote doubled")
    elif CASE == "svg":
        for args in (["grads", odd, "--batch", "4"], ["acts", odd, "--count", "16"]):
            svg = os.path.join(tmp, "plot.svg")
            run(*args, "--plot", svg)
            raw = open(svg, "rb").read()
            raw.decode("utf-8")  # valid UTF-8
            root = ET.fromstring(raw)  # well-formed XML: no stray markup, no control characters
            texts = "".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
            check("<n&m>" in texts, f"{args[0]}: the name's markup characters escaped, read back as text: {texts[:300]}")
            check("\x01" not in texts and REPLACEMENT in texts, f"{args[0]}: control and invalid bytes replaced")
    elif CASE == "header":
        # A folder whose name holds `*/`, and a file name that holds `/*`-like text once the folder
        # is gone: the header's comment must survive both, and the folder must not appear.
        folder = os.path.join(tmp, "secret*")
        os.mkdir(folder)
        path = model_file(folder, b"m*\\\n.nn")  # m*, a backslash, a newline
        obj, hdr = os.path.join(tmp, "m.o"), os.path.join(tmp, "m.h")
        run("compile", path, "--batch", "4", "-o", obj, "--header", hdr, "--prefix", "m")
        text = open(hdr, "rb").read()
        check(tmp.encode() not in text and b"secret" not in text, "the header names the model file only, not its folder")
        first = text.split(b"\n", 1)[0]
        check(first.startswith(b"/* m.h - generated by") and b"from m*\\x5c\\x0a.nn" in first,
              f"the file name on the first line, escaped: {first!r}")
        # The path as a whole (folder and `*/` included) in a comment, through the prefix default.
        path2 = os.path.join(folder.encode(), b"a*")
        os.mkdir(path2)
        path2 = model_file(path2.decode(), b"b.nn")
        hdr2 = os.path.join(tmp, "b.h")
        run("compile", path2, "--batch", "4", "-o", os.path.join(tmp, "b.o"), "--header", hdr2)
        app = os.path.join(tmp, "app.c")
        with open(app, "w") as f:
            f.write('#include "m.h"\n#include "b.h"\nint main(void) { return M_BATCH == B_BATCH ? 0 : 1; }\n')
        c = subprocess.run([CC, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", tmp, app, obj, os.path.join(tmp, "b.o"),
                            "-lm", "-o", os.path.join(tmp, "app")], capture_output=True, text=True)
        check(c.returncode == 0, f"both headers compile and link with -Werror:\n{c.stderr}")
        check(subprocess.run([os.path.join(tmp, "app")]).returncode == 0, "the program runs")
        p = run("compile", path2, "--batch", "4", "-o", os.path.join(tmp, "c.o"), "--prefix", "9lives", rc=2)
        check(p.stderr.startswith(b"gradc compile: error: --prefix '9lives' is not a C identifier"), p.stderr)
        check(not os.path.exists(os.path.join(tmp, "c.o")), "no object after a usage error")
    elif CASE == "prefixes":
        model = os.path.join(SRC, "models", "seed_relu.nn")
        for prefix in ("a", "A"):
            run("compile", model, "--batch", "8", "-o", os.path.join(tmp, prefix + ".o"),
                "--header", os.path.join(tmp, prefix + "_model.h"), "--prefix", prefix)
        guards = [next(l for l in open(os.path.join(tmp, p + "_model.h")) if l.startswith("#ifndef")) for p in "aA"]
        check(guards[0] != guards[1], f"distinct include guards: {guards}")
        app = os.path.join(tmp, "app.c")
        with open(app, "w") as f:
            f.write('#include "a_model.h"\n#include "A_model.h"\n#include <stdio.h>\n'
                    "int main(void) {\n"
                    "    printf(\"%u %u %s %s\\n\", a_abi_version(), A_abi_version(), a_parameters[0].name,\n"
                    "           A_parameters[0].name);\n"
                    "    return a_abi_version() == A_abi_version() ? 0 : 1;\n}\n")
        c = subprocess.run([CC, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", tmp, app, os.path.join(tmp, "a.o"),
                            os.path.join(tmp, "A.o"), "-lm", "-o", os.path.join(tmp, "app")], capture_output=True, text=True)
        check(c.returncode == 0, f"both headers in one C file, both objects in one program:\n{c.stderr}")
        out = subprocess.run([os.path.join(tmp, "app")], capture_output=True, text=True)
        check(out.returncode == 0 and out.stdout == "2 2 layers.0.weight layers.0.weight\n", out.stdout)
    elif CASE == "target_cpu":
        obj = os.path.join(tmp, "x.o")
        model = os.path.join(SRC, "models", "seed_relu.nn")
        p = run("compile", model, "-o", obj, "--target-cpu", "bogus", rc=2)
        usage = run("compile", "--help").stdout
        line = (b"gradc compile: error: --target-cpu bogus is not a CPU LLVM knows (generic, native, or a name "
                b"that 'gradc compile MODEL --target-cpu help' lists)\n")
        check(p.stderr == line + usage, f"one line, then the usage, and nothing from LLVM:\n{p.stderr.decode()}")
        check(p.stdout == b"" and not os.path.exists(obj), "no output")
        names = run("compile", model, "--target-cpu", "help").stdout.decode().split()
        check(names[:2] == ["generic", "native"] and "x86-64-v3" in names and "znver4" in names
              and len(names) == len(set(names)), f"--target-cpu help lists the CPUs once each: {names[:10]}")
        p = run("compile", model, "-o", obj, "--target-cpu", "x86-64-v3", "--batch", "4")
        check(p.stderr == b"" and os.path.getsize(obj) > 0, f"a CPU from the list works, silently: {p.stderr}")
    elif CASE == "acts_nan":
        params = os.path.join(tmp, "p.safetensors")
        model = os.path.join(SRC, "models", "seed_relu.nn")
        run("grads", model, "--batch", "2", "--save-params", params)
        raw, n, header = read_safetensors(params)
        b, e = header["layers.0.weight"]["data_offsets"]
        nan = os.path.join(tmp, "nan.safetensors")
        body = bytearray(raw)
        body[8 + n + b:8 + n + b + 4 * 784] = struct.pack("<784f", *([float("nan")] * 784))  # the first unit's weights
        open(nan, "wb").write(body)
        p = run("acts", model, "--params", nan, "--count", "16", "--format", "json")
        j = strict_json(p.stdout)
        first = j["layers"][0]
        check(first["nan"] == 16 and first["inf"] == 0, f"the first unit is NaN for each of 16 images: {first['nan']}")
        check(first["count"] == 16 * 512 and sum(first["histogram"]["counts"]) == 16 * 511, "finite values binned")
        check(all(isinstance(l["mean"], float) for l in j["layers"][:1]), "figures over the finite values")
        # All-NaN parameters: every figure is null, never a bare nan token.
        body[8 + n + b:8 + n + e] = struct.pack(f"<{(e - b) // 4}f", *([float("nan")] * ((e - b) // 4)))
        open(nan, "wb").write(body)
        j = strict_json(run("acts", model, "--params", nan, "--count", "16", "--format", "json").stdout)
        check(j["layers"][0]["mean"] is None and j["layers"][0]["min"] is None and j["layers"][0]["nan"] == 16 * 512,
              f"null for a figure that is not finite: {j['layers'][0]}")
    elif CASE == "save_params_torch":
        import torch
        import torch.nn as nn
        params = os.path.join(tmp, "p.safetensors")
        run("grads", os.path.join(SRC, "models", "seed_sigmoid_bn.nn"), "--batch", "8", "--save-params", params)
        raw, n, header = read_safetensors(params)
        layers, sizes = [], [784, 512, 256, 256, 128]
        for i in range(1, len(sizes)):  # the twin, as tools/compare-training-with-torch builds it
            layers += [nn.Linear(sizes[i - 1], sizes[i]), nn.BatchNorm1d(sizes[i]), nn.Sigmoid()]
        layers.append(nn.Linear(128, 10))
        net = nn.Module()
        net.layers = nn.Sequential(*layers)
        want = list(net.state_dict().keys())
        check(list(header.keys()) == want, f"PyTorch's state_dict order:\n{list(header.keys())}\n{want}")
        dtypes = {"F32": torch.float32, "I64": torch.int64}
        state = {}
        for k, v in header.items():
            b, e = v["data_offsets"]
            t = torch.frombuffer(bytearray(raw[8 + n + b:8 + n + e]), dtype=dtypes[v["dtype"]])
            state[k] = t.reshape(v["shape"])
        net.load_state_dict(state, strict=True)  # raises on a missing or unexpected key, or a shape
        check(float(net.layers[1].running_var.min()) == 1.0 and int(net.layers[1].num_batches_tracked) == 0,
              "running statistics as initialised")
        # And gradc reads back what it wrote.
        run("grads", os.path.join(SRC, "models", "seed_sigmoid_bn.nn"), "--batch", "8", "--params", params)
    else:
        sys.exit(f"unknown case {CASE}")
print("ok")
