#!/usr/bin/python3
"""tests/torch/rnn_test.py — gradc's recurrent layers (issue 17) against PyTorch's nn.RNN,
nn.LSTM and nn.GRU: the interpreter in double, or the compiled code in float or double on one
and two threads.

    rnn_test.py GRADC SOURCE_DIR BACKEND DTYPE   (interp f64, jit f32 or jit f64)

For each cell (rnn tanh, rnn relu, lstm, gru; one stacked gru + lstm; bias=false) and T in
{1, 5, 28, 784}: a model `input T steps N`, the recurrent layer(s), `last`, `dense C`, and its
PyTorch twin (nn.RNN/nn.LSTM/nn.GRU with batch_first=True, out[:, -1], nn.Linear) in float64
with random parameters. The parameters go to `gradc grads --params`, a random batch of 33
sequences (two row tiles or more of the jit's register tile in float and double) (x [B,T,N] and class targets) to `--inputs`, and every parameter's gradient must
agree with PyTorch's within the tolerance (1e-6 in double, 1e-4 for the jit in float) of the
tensor's largest value (as cnn_test), and the loss too. The parameter names are PyTorch's
(`layers.0.weight_ih_l0`, ...), so the state_dict is written as it is. A second twin, unrolled
(nn.RNNCell/LSTMCell/GRUCell loaded with the same state_dict, retain_grad on every h_t), must
give nn.LSTM's gradients too, and its ‖dL/dh_t‖ (the Frobenius norm over the batch of h_t.grad)
are gradc's through-time norms (`through:LAYER` in --dump-grads), element by element within the
tolerance; where PyTorch's is below 1e-30 (a vanished tanh RNN), gradc's must be too (f32
underflow).
"""
import json, os, subprocess, sys, tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import testlib  # noqa: E402

GRADC, SRC, BACKEND, DTYPE = testlib.arguments("GRADC", "SOURCE_DIR", "BACKEND", "DTYPE")
if (BACKEND, DTYPE) not in (("interp", "f64"), ("jit", "f32"), ("jit", "f64")):
    sys.exit(f"rnn_test.py: no mode {BACKEND} {DTYPE} (interp f64, jit f32, jit f64)")
THREADS = (1, 2) if BACKEND == "jit" else (1,)
sys.path.insert(0, os.path.join(SRC, "tools"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchutil  # noqa: E402

TOLERANCE = 1e-4 if DTYPE == "f32" else 1e-6
TINY = 1e-30  # a norm below this is underflow in float
MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
CELLS = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}


class Twin(nn.Module):
    """The recurrent layers (module i is `layers.i`), out[:, -1] (`last`, a module of its own)
    and nn.Linear."""

    def __init__(self, layers, n, classes):
        super().__init__()
        mods, width = [], n
        for cell, hidden, extra in layers:
            kw = {"nonlinearity": extra.get("act", "tanh")} if cell == "rnn" else {}
            mods.append(MODULES[cell](width, hidden, batch_first=True, bias=extra.get("bias", True), **kw))
            width = hidden
        self.layers = nn.ModuleList(mods + [nn.Identity(), nn.Linear(width, classes)])
        self.recurrent = len(mods)

    def forward(self, x):
        for m in self.layers[:self.recurrent]:
            x = m(x)[0]
        return self.layers[-1](x[:, -1])


def unrolled(twin, layers, x):
    """The same network as a loop over steps of nn.*Cell (weights from the twin's state_dict),
    each h_t kept with retain_grad; returns the logits, the cells and the h_t of every layer."""
    hs_all, cells, seq = [], [], x
    for i, (cell, hidden, extra) in enumerate(layers):
        mod = twin.layers[i]
        kw = {"nonlinearity": extra.get("act", "tanh")} if cell == "rnn" else {}
        c = CELLS[cell](mod.input_size, hidden, bias=extra.get("bias", True), **kw).double()
        c.load_state_dict({k.replace("_l0", ""): v for k, v in mod.state_dict().items()})
        cells.append(c)
        h = torch.zeros(x.shape[0], hidden, dtype=torch.float64)
        state = (h, torch.zeros_like(h)) if cell == "lstm" else h
        hs = []
        for t in range(seq.shape[1]):
            state = c(seq[:, t], state)
            h = state[0] if cell == "lstm" else state
            h.retain_grad()
            hs.append(h)
        hs_all.append(hs)
        seq = torch.stack(hs, dim=1)
    return twin.layers[-1](seq[:, -1]), cells, hs_all


def spelling(cell, hidden, extra):
    words = [cell, str(hidden)] + ([extra["act"]] if "act" in extra else [])
    return " ".join(words + (["bias=false"] if extra.get("bias", True) is False else []))


def compare(layers, steps, n=3, batch=33, classes=5):
    name = " + ".join(spelling(*l) for l in layers) + f", {steps} steps"
    torch.manual_seed(steps * 7 + len(layers))
    twin = Twin(layers, n, classes).double()
    x = torch.randn(batch, steps, n, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,))
    loss = nn.functional.cross_entropy(twin(x), y)
    loss.backward()
    names = [k for k, _ in twin.named_parameters()]

    # The unrolled twin: the same loss and gradients as nn.RNN/LSTM/GRU's, and dL/dh_t.
    reference = {k: p.grad.clone() for k, p in twin.named_parameters()}
    twin.zero_grad()
    logits, cells, hs = unrolled(twin, layers, x)
    loss2 = nn.functional.cross_entropy(logits, y)
    loss2.backward()
    testlib.check(abs(loss2.item() - loss.item()) <= 1e-12 * abs(loss.item()), f"{name}: the unrolled twin's loss")
    for i, c in enumerate(cells):
        for k, param in c.named_parameters():
            ref = reference[f"layers.{i}.{k}_l0"]
            d = (param.grad - ref).abs().max().item() / max(ref.abs().max().item(), 1e-300)
            testlib.check(d <= 1e-10 or ref.abs().max().item() == 0 == param.grad.abs().max().item(),
                          f"{name}: the unrolled twin's layers.{i}.{k}_l0 differs by {d:.2e}")
    testlib.check(all(h.grad is not None for h in hs[-1]), f"{name}: every h_t of the last layer has a gradient")
    norms = {f"through:layers.{i}": np.array([h.grad.norm().item() if h.grad is not None else 0.0 for h in layer])
             for i, layer in enumerate(hs)}

    worst = 0.0
    for threads in THREADS:
        with tempfile.TemporaryDirectory() as d:
            model = os.path.join(d, "m.nn")
            text = f"input {steps} steps {n}\n" + "".join(spelling(*l) + "\n" for l in layers)
            testlib.write(model, (text + f"last\ndense {classes}\nloss cross_entropy\n").encode())
            params, inputs, grads = (os.path.join(d, f) for f in ("p.safetensors", "i.safetensors", "g.safetensors"))
            torchutil.write_safetensors(params, twin.state_dict())
            torchutil.write_safetensors(inputs, {"x": x, "target": y.to(torch.float64)})
            extra = ["--dtype", DTYPE, "--threads", str(threads), "--no-cache"] if BACKEND == "jit" else []
            p = testlib.run(GRADC, "grads", model, "--backend", BACKEND, "--params", params, "--inputs", inputs,
                            "--dump-grads", grads, "--format", "json", *extra, timeout=600)
            ours = torchutil.read_safetensors(grads)
            gradc_loss = json.loads(p.stdout)["loss"]
        how = f"{name}, {BACKEND} {DTYPE}" + (f", {threads} thread(s)" if BACKEND == "jit" else "")
        diff = abs(gradc_loss - loss.item()) / abs(loss.item())
        print(f"{how}: loss torch {loss.item():.12f} gradc {gradc_loss:.12f}, relative difference {diff:.2e}")
        worst = max(worst, diff)
        testlib.check(sorted(ours) == sorted(names + list(norms)),
                      f"{how}: gradc's gradients and norms {sorted(ours)}, torch's {sorted(names + list(norms))}")
        for k, ref in reference.items():
            ref = ref.numpy()
            testlib.check(ours[k].shape == ref.shape, f"{how}: {k} has shape {ours[k].shape}, torch's {ref.shape}")
            largest = np.abs(ref).max()
            d = np.abs(ours[k] - ref).max() / max(largest, 1e-300)
            if largest == 0:  # a one-step sequence's weight_hh multiplies h_{-1} = 0
                d = np.abs(ours[k]).max()
            print(f"  {k:<24} {str(list(ref.shape)):<12} max relative difference {d:.2e}")
            worst = max(worst, d)
        for k, ref in norms.items():  # element by element; below TINY: underflow on both sides
            got = np.asarray(ours[k], dtype=np.float64)
            testlib.check(got.shape == ref.shape, f"{how}: {k} has shape {got.shape}, torch's {ref.shape}")
            big = ref >= TINY
            testlib.check(bool(np.all(got[~big] < TINY)), f"{how}: {k}: gradc's norm is not below {TINY:g} where torch's is")
            d = float(np.max(np.abs(got[big] - ref[big]) / ref[big])) if big.any() else 0.0
            print(f"  {k:<24} {str(list(ref.shape)):<12} max relative difference {d:.2e} (element by element, "
                  f"{int((~big).sum())} below {TINY:g})")
            worst = max(worst, d)
        testlib.check(worst <= TOLERANCE, f"{how}: largest relative difference {worst:.2e} > {TOLERANCE:g}")
    return worst


worst = 0.0
for steps in (1, 5, 28, 784):
    cases = [[("rnn", 6, {})], [("rnn", 6, {"act": "relu"})], [("lstm", 5, {})], [("gru", 5, {})]]
    if steps in (5, 28):
        cases += [[("gru", 4, {}), ("lstm", 3, {"bias": False})], [("rnn", 4, {"act": "relu", "bias": False})]]
    for layers in cases:
        if steps == 784 and len(layers) > 1:
            continue
        worst = max(worst, compare(layers, steps))
print(f"{BACKEND} {DTYPE}: largest relative difference {worst:.2e} (tolerance {TOLERANCE:g})")
