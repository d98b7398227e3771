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


def first_batch(batch, dtype=torch.float64):
    """The first `batch` training images, normalised as gradc does ((pixel/255 - 0.5) / 0.5), and labels."""
    images_, labels = images(batch)
    x = (torch.tensor(images_, dtype=dtype) / 255 - 0.5) / 0.5
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


# ---- A model file as a PyTorch network (benchmarks: tools/bench-vs-torch, bench-grads-vs-torch)

import re, subprocess  # noqa: E402

import benchutil  # noqa: E402  (beside this file: gradc check's parameter table)

import torch.nn as nn  # noqa: E402

#: The built-in activations as PyTorch modules, with gradc's parameters and defaults.
ACTIVATIONS = {
    "identity": lambda: nn.Identity(), "sigmoid": lambda: nn.Sigmoid(), "tanh": lambda: nn.Tanh(),
    "relu": lambda: nn.ReLU(), "leaky_relu": lambda alpha=0.01: nn.LeakyReLU(alpha),
    "elu": lambda alpha=1.0: nn.ELU(alpha), "swish": lambda: nn.SiLU(), "silu": lambda: nn.SiLU(),
    "gelu": lambda: nn.GELU(), "softplus": lambda: nn.Softplus(),
}


class Unsupported(Exception):
    """A model file with something this translation cannot express in PyTorch."""


def _tokens(line):
    return re.findall(r"[A-Za-z_][A-Za-z0-9_.]*|[0-9][0-9.eE+-]*(?:x[0-9]+)*|[=(),{}]|\S", line)


def _options(words):
    """NAME=VALUE options among the words (the first word of a value after '=')."""
    return {words[j - 1]: words[j + 1] for j in range(1, len(words) - 1) if words[j] == "="}


def _activation(words, where):
    """ACT or ACT(a, name=b) at words[0:]: (module factory, words used), or None."""
    if not words or words[0] not in ACTIVATIONS:
        return None
    name, used, args, kwargs = words[0], 1, [], {}
    if len(words) > 1 and words[1] == "(":
        end = words.index(")", 1) if ")" in words[1:] else None
        if end is None:
            raise Unsupported(f"{where}: unbalanced parentheses")
        inner = [w for w in words[2:end] if w != ","]
        i = 0
        while i < len(inner):
            if i + 1 < len(inner) and inner[i + 1] == "=":
                kwargs[inner[i]] = float(inner[i + 2])
                i += 3
            else:
                args.append(float(inner[i]))
                i += 1
        used = end + 1
    return (lambda: ACTIVATIONS[name](*args, **kwargs)), used


class Network(nn.Module):
    """The forward pass of a gradc model file in PyTorch modules (nn.Linear, nn.ReLU, ...):
    a list of steps, each reading a named value (or the previous one) and writing one. The
    parameters carry gradc's names in `gradc_names` (name in this module -> gradc's name),
    each step its layer's name in `labels`; gradc_state() is the state_dict under gradc's names."""

    def __init__(self, steps, input_shape, loss, labels):
        super().__init__()
        self.mods = nn.ModuleList([s[1] for s in steps if isinstance(s[1], nn.Module)])
        self.steps, self.input_shape, self.loss = steps, input_shape, loss
        self.labels = labels  # the layer name of each step, as gradc check prints it
        self.mod_labels = [labels[i] for i, s in enumerate(steps) if isinstance(s[1], nn.Module)]
        self.gradc_names = {n: self._gradc_name(n) for n, _ in self.named_parameters()}

    def _gradc_name(self, name):
        """mods.K.weight -> the K-th module's layer name + .weight"""
        return self.mod_labels[int(name.split(".")[1])] + "." + name.split(".", 2)[2]

    def gradc_state(self):
        """The state_dict (parameters, and batchnorm's running statistics) under gradc's names,
        as `gradc ... --params` reads them and --save writes them. A buffer takes its module's
        name from the module's parameters (which `gradc check` may have renamed), else from
        the numbering rule."""
        prefixes = {}  # mods.K -> the layer name gradc gives module K's parameters
        for n, g in self.gradc_names.items():
            prefixes.setdefault(n.rsplit(".", 1)[0], g.rsplit(".", 1)[0])

        def name(n):
            if n in self.gradc_names:
                return self.gradc_names[n]
            module, attr = n.rsplit(".", 1)
            return prefixes[module] + "." + attr if module in prefixes else self._gradc_name(n)
        return {name(n): t for n, t in self.state_dict().items()}

    def forward(self, x):
        env, cur = {}, x.view(x.shape[0], *self.input_shape)
        for kind, op, src, dst, extra in self.steps:
            v = cur if src is None else env[src]
            if kind == "module":
                cur = op(v)
            elif kind == "add":  # `add A` (the current value + A) or `add A B`
                cur = (v if extra is None else env[extra]) + env[op]
            elif kind == "mul":
                cur = (v if extra is None else env[extra]) * env[op]
            else:  # `from NAME`
                cur = v
            if dst is not None:
                env[dst] = cur
        return cur

    def loss_of(self, out, target):
        if self.loss == "cross_entropy":
            return nn.functional.cross_entropy(out, target)
        if self.loss == "bce":
            return nn.functional.binary_cross_entropy_with_logits(out.view(-1), target.to(out.dtype))
        return nn.functional.mse_loss(out, target)

    def target(self, batch, x, out_features):
        """A target of the loss's kind for a batch (random class indices, bits, or x itself)."""
        if self.loss == "cross_entropy":
            return torch.randint(0, out_features, (batch,))
        if self.loss == "bce":
            return torch.randint(0, 2, (batch,))
        return x.view(batch, -1)[:, :out_features] if x.view(batch, -1).shape[1] == out_features \
            else torch.randn(batch, out_features)


class _Recurrent:
    """nn.RNN/LSTM/GRU (batch_first) returning the whole sequence of hidden states [B,T,H], as
    gradc's rnn, lstm and gru layers do."""

    def forward(self, x):
        return super().forward(x)[0]


class _RNN(_Recurrent, nn.RNN):
    pass


class _LSTM(_Recurrent, nn.LSTM):
    pass


class _GRU(_Recurrent, nn.GRU):
    pass


class _Last(nn.Module):
    """gradc's `last`: the final step of a sequence, out[:, -1]."""

    def forward(self, x):
        return x[:, -1]


def _size2(word):
    """`3` or `3x2` (a window, stride= or padding=) as (h, w)."""
    parts = [int(p) for p in word.split("x")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _window_out(cur, k, stride, pad):
    """[C,H,W] after a window of size k, stride and padding (PyTorch's floor rule)."""
    return [(cur[1] + 2 * pad[0] - k[0]) // stride[0] + 1, (cur[2] + 2 * pad[1] - k[1]) // stride[1] + 1]


def _split_activation(rest, where):
    """The activation among a layer's options (`3x3 padding=1 relu bias=false`): (factory or
    None, the words without it)."""
    i = 0
    while i < len(rest):
        if i + 1 < len(rest) and rest[i + 1] == "=":
            i += 3
            continue
        act = _activation(rest[i:], where)
        if act:
            return act[0], rest[:i] + rest[i + act[1]:]
        i += 1
    return None, rest


def network(path, gradc=None):
    """The PyTorch network of model file `path` (nn.Linear, nn.Conv2d, nn.MaxPool2d,
    nn.AvgPool2d, nn.AdaptiveAvgPool2d, activations, batchnorm (1d and 2d), layernorm,
    flatten, add, mul, repeat, names, from; sequences `input T steps N` with nn.RNN, nn.LSTM
    and nn.GRU (batch_first, the whole sequence) and `last`). Raises Unsupported for what it cannot express
    (an `activation` definition, batchnorm on rank 3). With `gradc` (the executable), the
    parameters are checked against `gradc check`'s, in order and shape, and take its names."""
    with open(path) as f:
        lines = [l.split("#", 1)[0].strip() for l in f]
    where = os.path.basename(path)
    shape, loss, steps, labels = None, None, [], []
    index, defined = [0], {}  # the next index of an unnamed module; definitions of each name
    cur = None  # the current value's example shape
    named = {}  # the example shape of each named value

    def block(i, depth):
        nonlocal shape, loss, cur
        while i < len(lines):
            words = _tokens(lines[i])
            here = f"{where}:{i + 1}"
            i += 1
            if not words:
                continue
            if words[0] == "}":
                return i
            if words[0] == "model":
                continue
            if words[0] == "activation":
                raise Unsupported(f"{here}: user-defined activations ('activation {words[1]}') have no PyTorch module here")
            if words[0] == "input":  # input 784, input 1x28x28, input T steps N (a sequence [T, N])
                shape = [int(words[1]), int(words[3])] if len(words) > 3 and words[2] == "steps" \
                    else [int(d) for d in words[1].split("x")]
                cur = list(shape)
                continue
            if words[0] == "loss":
                loss = words[1]
                continue
            if words[0] == "repeat":
                count, start = int(words[1]), i
                for _ in range(count):
                    i = block(start, depth + 1)
                continue
            dst = None
            if len(words) > 2 and words[1] == "=":
                dst, words = words[0], words[2:]
            before = len(steps)
            src = None
            if "from" in words:
                k = words.index("from")
                src, words = words[k + 1], words[:k]
                cur = list(named[src])
            if not words:  # `from NAME`
                steps.append(("from", None, src, dst, None))
            elif words[0] == "dense":
                n = int(words[1])
                rest = words[2:]
                act = _activation(rest, here)
                opts = _options(rest[act[1] if act else 0:])
                lin = nn.Linear(cur[-1], n, bias=opts.get("bias", "true") != "false")
                steps.append(("module", lin, src, None if act else dst, None))
                if act:
                    steps.append(("module", act[0](), None, dst, None))
                cur[-1] = n
            elif words[0] == "conv":  # conv OUT KxK [stride=S] [padding=P] [ACT] [bias=B] [init=...]
                n, k = int(words[1]), _size2(words[2])
                act, rest = _split_activation(words[3:], here)
                opts = _options(rest)
                stride, pad = _size2(opts.get("stride", "1")), _size2(opts.get("padding", "0"))
                conv = nn.Conv2d(cur[0], n, k, stride=stride, padding=pad, bias=opts.get("bias", "true") != "false")
                steps.append(("module", conv, src, None if act else dst, None))
                if act:
                    steps.append(("module", act(), None, dst, None))
                cur = [n] + _window_out(cur, k, stride, pad)
            elif words[0] in ("maxpool", "avgpool"):  # maxpool K [stride=S] [padding=P]
                k = _size2(words[1])
                opts = _options(words[2:])
                stride, pad = _size2(opts.get("stride", words[1])), _size2(opts.get("padding", "0"))
                pool = (nn.MaxPool2d if words[0] == "maxpool" else nn.AvgPool2d)(k, stride=stride, padding=pad)
                steps.append(("module", pool, src, dst, None))
                cur = [cur[0]] + _window_out(cur, k, stride, pad)
            elif words[0] == "global_avgpool":  # nn.AdaptiveAvgPool2d(1), then nn.Flatten
                steps.append(("module", nn.AdaptiveAvgPool2d(1), src, None, None))
                steps.append(("module", nn.Flatten(), None, dst, None))
                cur = [cur[0]]
            elif words[0] in ("batchnorm", "layernorm"):
                opts = _options(words[1:])
                eps = float(opts.get("eps", 1e-5))
                if words[0] == "batchnorm":
                    if len(cur) not in (1, 3):
                        raise Unsupported(f"{here}: batchnorm on values of rank 3")
                    norm = nn.BatchNorm1d if len(cur) == 1 else nn.BatchNorm2d
                    mod = norm(cur[0], eps=eps, momentum=float(opts.get("momentum", 0.1)))
                else:
                    mod = nn.LayerNorm(cur[-1], eps=eps)
                steps.append(("module", mod, src, dst, None))
            elif words[0] in ("rnn", "lstm", "gru"):  # rnn H [tanh|relu] [init=...] [bias=false]
                n, rest = int(words[1]), words[2:]
                kind = {"rnn": _RNN, "lstm": _LSTM, "gru": _GRU}[words[0]]
                kw = {"nonlinearity": "relu" if "relu" in rest else "tanh"} if words[0] == "rnn" else {}
                mod = kind(cur[-1], n, batch_first=True, bias=_options(rest).get("bias", "true") != "false", **kw)
                steps.append(("module", mod, src, dst, None))
                cur[-1] = n
            elif words[0] == "last":
                steps.append(("module", _Last(), src, dst, None))
                cur = cur[1:]
            elif words[0] == "flatten":
                steps.append(("module", nn.Flatten(), src, dst, None))
                cur = [int(torch.tensor(cur).prod())]
            elif words[0] in ("add", "mul"):
                names = [w for w in words[1:]]
                if len(names) == 1:
                    steps.append((words[0], names[0], src, dst, None))
                else:
                    steps.append((words[0], names[1], src, dst, names[0]))
            elif _activation(words, here):
                steps.append(("module", _activation(words, here)[0](), src, dst, None))
            else:
                raise Unsupported(f"{here}: '{words[0]}' has no PyTorch translation here")
            if dst is not None:
                named[dst] = list(cur)
                label = dst if depth == 0 else f"{dst}.{defined.get(dst, 0)}"
                defined[dst] = defined.get(dst, 0) + 1
                labels.extend([label] * (len(steps) - before))
            else:
                for kind, *_ in steps[before:]:
                    labels.append(f"layers.{index[0]}" if kind != "from" else "")
                    index[0] += kind != "from"
        if depth:
            raise Unsupported(f"{where}: unclosed repeat")
        return i

    block(0, 0)
    if shape is None or loss is None:
        raise Unsupported(f"{where}: no input or no loss")
    net = Network(steps, shape, loss, labels)
    if gradc:
        _take_gradc_names(net, path, gradc)
    return net


def _take_gradc_names(net, path, gradc):
    """Checks the network's parameters against `gradc check`'s table and names them as it does."""
    out = subprocess.run([gradc, "check", path, "--batch", "2"], capture_output=True, text=True)
    if out.returncode != 0:
        raise Unsupported(out.stderr.strip())
    rows = benchutil.parameter_table(out.stdout)
    ours = [(n, list(p.shape)) for n, p in net.named_parameters()]
    if [s for _, s in ours] != [s for _, s in rows]:
        raise Unsupported(f"{os.path.basename(path)}: the PyTorch translation's parameters "
                          f"{[s for _, s in ours]} are not gradc's {[s for _, s in rows]}")
    net.gradc_names = {n: g for (n, _), (g, _) in zip(ours, rows)}  # where the rules above missed one
