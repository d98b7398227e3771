#!/usr/bin/python3
"""tests/torch/cnn_test.py — gradc's gradients of convolutional networks against PyTorch's, on
the interpreter (in double) and on compiled code (float32 and double, on 1 and 2 threads).

    cnn_test.py GRADC SOURCE_DIR CASE BACKEND DTYPE
      CASE     models  models/cnn_relu.nn, cnn_plain_sigmoid.nn, cnn_plain_relu.nn, cnn_resnet.nn
               random  random small convolutions (kernels 1-5, strides 1-3, paddings 0-2, none
                       of them square, on inputs of 784 values in several shapes and channel
                       counts; half of them after a 1x1 convolution, so that their input
                       gradient is checked too), some followed by pooling (overlapping or not,
                       padded or not), by batchnorm, or by a second convolution and a
                       residual add
      BACKEND  interp | jit (run with --threads 1, then --threads 2)
      DTYPE    f32 | f64

For each model: tools/torchutil.network builds its PyTorch twin (nn.Conv2d, nn.MaxPool2d,
nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d, nn.Flatten, named values and residual
adds), whose parameters are checked against `gradc check`'s; batchnorm's weight and bias are
drawn at random so that their gradients mean something. The parameters (float32, as PyTorch
made them) go to `gradc grads --backend BACKEND --dtype DTYPE --params ... --dump-grads ...` on the
first training batch of FashionMNIST, and the same float32 values, in double, to PyTorch's
forward and backward pass on the same batch. The reference is PyTorch in float64 for every
backend and dtype: float32 code is measured against the exact answer of the same parameters
and batch, not against another float32 computation with its own rounding. Every parameter's
gradient must agree within 1e-6 relative (max |gradc - torch| over max |torch|) for the
interpreter and --dtype f64, 1e-4 for float32 code, and the loss too.
"""
import json, os, random, subprocess, sys, tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import testlib  # noqa: E402

GRADC, SRC, CASE, BACKEND, DTYPE = testlib.arguments("GRADC", "SOURCE_DIR", "CASE", "BACKEND", "DTYPE")
sys.path.insert(0, os.path.join(SRC, "tools"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchutil  # noqa: E402

testlib.check(BACKEND in ("interp", "jit") and DTYPE in ("f32", "f64"), f"backend {BACKEND}, dtype {DTYPE}")
TOLERANCE = 1e-4 if BACKEND == "jit" and DTYPE == "f32" else 1e-6
#: The runs of gradc compared with each reference: the interpreter once, compiled code on one
#: thread and on two (the batch and the products' panels split between them).
THREADS = [None] if BACKEND == "interp" else [1, 2]


def compare(path, batch):
    """The largest relative difference of the loss and of every parameter's gradient."""
    torch.manual_seed(0)
    net = torchutil.network(path, gradc=GRADC)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    # The parameters and running statistics (not used by training mode, but state); not
    # batchnorm's num_batches_tracked (int64).
    state = {k: v for k, v in net.gradc_state().items() if v.is_floating_point()}
    x, y = torchutil.first_batch(batch)
    runs = []  # (threads, loss, gradients) of each run of gradc
    with tempfile.TemporaryDirectory() as d:
        params, grads = os.path.join(d, "params.safetensors"), os.path.join(d, "grads.safetensors")
        torchutil.write_safetensors(params, state)
        for threads in THREADS:
            extra = [] if threads is None else ["--threads", str(threads)]
            p = testlib.run(GRADC, "grads", path, "--backend", BACKEND, "--dtype", DTYPE, "--batch", str(batch),
                            "--params", params, "--dump-grads", grads, "--format", "json", "--no-cache", *extra,
                            timeout=600)
            runs.append((threads, json.loads(p.stdout)["loss"], torchutil.read_safetensors(grads)))
    net = net.double()
    loss = net.loss_of(net(x), y)
    loss.backward()
    name = os.path.basename(path)
    # A gradient that is zero in exact arithmetic (a conv's bias that batchnorm follows) holds
    # rounding noise: it is measured against the model's largest gradient.
    scale = max(np.abs(p.grad.numpy()).max() for p in net.parameters())
    worst = 0.0
    for threads, gradc_loss, ours in runs:
        how = f"{BACKEND} {DTYPE}" + (f" {threads} thread{'s' if threads > 1 else ''}" if threads else "")
        diff = abs(gradc_loss - loss.item()) / max(abs(loss.item()), 1e-30)
        print(f"{name} ({how}): loss torch {loss.item():.9f} gradc {gradc_loss:.9f}, relative difference {diff:.2e}")
        worst = max(worst, diff)
        testlib.check(sorted(ours) == sorted(net.gradc_names.values()),
                      f"{name}: gradc's gradients {sorted(ours)}, torch's parameters {sorted(net.gradc_names.values())}")
        for n, param in net.named_parameters():
            g = net.gradc_names[n]
            ref = param.grad.numpy()
            testlib.check(ours[g].shape == ref.shape, f"{name}: {g} has shape {ours[g].shape}, torch's {ref.shape}")
            testlib.check(np.isfinite(ours[g]).all(), f"{name} ({how}): {g} is not finite")
            largest = np.abs(ref).max()
            diff = np.abs(ours[g] - ref).max() / (largest if largest >= 1e-9 * scale else max(scale, 1e-30))
            print(f"  {g:<22} {str(list(ref.shape)):<16} max relative difference {diff:.2e}")
            worst = max(worst, diff)
    testlib.check(worst <= TOLERANCE, f"{name}: largest relative difference {worst:.2e} > {TOLERANCE:g}")
    return worst


def models():
    worst = 0.0
    for stem in ("cnn_relu", "cnn_plain_sigmoid", "cnn_plain_relu", "cnn_resnet"):
        worst = max(worst, compare(os.path.join(SRC, "models", stem + ".nn"), 4))
    print(f"largest relative difference {worst:.2e} (tolerance {TOLERANCE:g})")


def random_convs():
    rng = random.Random(16)
    shapes = [(1, 28, 28), (4, 14, 14), (2, 14, 28), (1, 14, 56), (4, 7, 28), (16, 7, 7), (1, 49, 16)]
    worst, kinds = 0.0, set()
    with tempfile.TemporaryDirectory() as d:
        for trial in range(24):
            c, h, w = shapes[trial % len(shapes)]
            kh, kw = rng.randint(1, 5), rng.randint(1, 5)
            while kw == kh:
                kw = rng.randint(1, 5)
            sh, sw, ph, pw = rng.randint(1, 3), rng.randint(1, 3), rng.randint(0, 2), rng.randint(0, 2)
            # Every other trial, a 1x1 convolution first: the random one's input gradient
            # (conv2d_grad_x at its stride, padding and kernel) is then computed and checked.
            first = f"conv {rng.randint(1, 4)} 1x1 tanh\n" if trial % 2 else ""
            text = (f"input {c}x{h}x{w}\n{first}conv {rng.randint(1, 4)} {kh}x{kw} stride={sh}x{sw} padding={ph}x{pw} "
                    f"{rng.choice(['tanh', 'relu', 'sigmoid', ''])}{rng.choice(['', ' bias=false'])}\n")
            oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            pool = rng.choice(["", "maxpool", "avgpool", "maxpool_overlap", "avgpool_padded", "batchnorm",
                               "residual"])
            if pool in ("maxpool", "avgpool") and min(oh, ow) >= 2:
                text += f"{pool} 2\n"
            elif pool == "maxpool_overlap" and min(oh, ow) >= 3:
                text += "maxpool 3 stride=1 padding=1\n"
            elif pool == "avgpool_padded" and min(oh, ow) >= 2:  # padding counts in the average
                text += "avgpool 3x2 stride=2 padding=1\n"
            elif pool == "batchnorm":
                text += "batchnorm\nrelu\n"
            elif pool == "residual":  # a second convolution that keeps the shape, and the shortcut added
                lines = text.splitlines()
                lines[-1] = "residual_in = " + lines[-1]
                text = "\n".join(lines) + "\n"
                text += f"conv {lines[-1].split()[3]} 3x5 padding=1x2 {rng.choice(['relu', 'tanh'])}\n"
                text += "add residual_in\n"
            kinds.add(pool if pool.split("_")[0] in text else "")
            text += "flatten\ndense 10\nloss cross_entropy\n"
            path = os.path.join(d, f"conv{trial}.nn")
            testlib.write(path, text.encode())
            print(text.strip().replace("\n", "; "))
            worst = max(worst, compare(path, 3))
    testlib.check(len(kinds) >= 5 and {"batchnorm", "residual"} <= kinds,
                  f"the random convolutions were followed by {kinds}")
    print(f"largest relative difference {worst:.2e} (tolerance {TOLERANCE:g})")


testlib.check(CASE in ("models", "random"), f"unknown case {CASE}")
{"models": models, "random": random_convs}[CASE]()
