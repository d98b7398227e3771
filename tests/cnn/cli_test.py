#!/usr/bin/python3
"""tests/cnn/cli_test.py — the command line on convolutional networks: every stage of `gradc
dump` and the figure of `gradc grads --plot`, checked against the models' own parameter tables
(`gradc check`), not against numbers written here.

    cli_test.py GRADC SOURCE_DIR CASE
      dump  models/cnn_resnet.nn at every stage (ast, graph, grad, layout, kernels, memplan,
            llvm, llvm-unoptimised, asm): one conv2d per convolution of the model, their
            gradients (conv2d_grad_w for each, conv2d_grad_x for each but the first, whose input
            is the images), the kernels of both programs, every parameter in the layout at its
            shape, the three entry points in LLVM IR (never a fast-math flag) and in assembly
      plot  gradc grads models/cnn_*.nn --plot: one row per model, titled with it, and one panel
            per weight tensor (rank 2 or more) in the order of the model's parameters
"""
import os, re, sys, tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import testlib  # noqa: E402
from testlib import check  # noqa: E402

GRADC, SRC, CASE = testlib.arguments()
sys.path.insert(0, os.path.join(SRC, "tools"))
import benchutil  # noqa: E402  (gradc check's parameter table)

MODELS = ["cnn_relu", "cnn_plain_sigmoid", "cnn_plain_relu", "cnn_resnet"]


def parameters(model):
    """[(name, shape)] of the model's parameters, from `gradc check`'s table."""
    out = testlib.run(GRADC, "check", model, "--batch", "2", timeout=120).stdout
    rows = benchutil.parameter_table(out)
    check(rows, f"{model}: no parameter table in gradc check's output:\n{out}")
    return rows


def dump(model, stage, batch):
    return testlib.run(GRADC, "dump", model, f"--emit={stage}", "--batch", str(batch),
                       timeout=300).stdout


def section(text, start, end=None):
    """The lines of `text` from the line starting with `start` to the one starting with `end`."""
    lines = text.splitlines()
    first = next((i for i, l in enumerate(lines) if l.startswith(start)), None)
    check(first is not None, f"no '{start}' in:\n{text[:2000]}")
    last = next((i for i, l in enumerate(lines) if end and i > first and l.startswith(end)), len(lines))
    return "\n".join(lines[first:last])


def dumps():
    model = os.path.join(SRC, "models", "cnn_resnet.nn")
    params = parameters(model)
    convs = [(n, s) for n, s in params if len(s) == 4]
    n = len(convs)
    check(n >= 12, f"cnn_resnet has {n} convolution weights")
    # ast: one `conv` statement per `conv` line of the file (a repeat's body once).
    with open(model) as f:
        source = [l.split("#", 1)[0] for l in f]
    written = sum(1 for l in source if re.match(r"\s*(\w+\s*=\s*)?conv\s", l))
    ast = dump(model, "ast", 4)
    check(len(re.findall(r"\d+:\d+ (\w+ = )?conv \d+ ", ast)) == written,
          f"the syntax tree has {len(re.findall(r' conv ', ast))} conv statements, the file {written}")
    # graph: a conv2d of the weight's window per convolution, at the weight's shape.
    graph = dump(model, "graph", 4)
    check(len(re.findall(r"= conv2d\[window=", graph)) == n, f"the graph has not {n} conv2d nodes:\n{graph}")
    for name, shape in convs:
        check(f'param "{name}" : real[{",".join(map(str, shape))}]' in graph, f"graph: {name} {shape} missing")
    # grad: every weight's gradient, and the input gradient of every convolution but the first.
    grad = dump(model, "grad", 4)
    counts = {op: len(re.findall(rf"= {op}\[", grad)) for op in ("conv2d", "conv2d_grad_w", "conv2d_grad_x")}
    check(counts == {"conv2d": n, "conv2d_grad_w": n, "conv2d_grad_x": n - 1},
          f"the differentiated graph has {counts}, {n} convolutions")
    # layout: every parameter at its place, with its shape.
    layout = dump(model, "layout", 4)
    for name, shape in params:
        check(re.search(rf"parameter +{re.escape(name)} \(.*\) : real\[{','.join(map(str, shape))}\]", layout),
              f"layout: no {name} {shape}:\n{layout[:3000]}")
    # kernels: the forward program runs each convolution once; the backward one runs them again
    # (the activations it needs) with their gradients.
    kernels = dump(model, "kernels", 4)
    fwd, bwd = section(kernels, "program forward", "program backward"), section(kernels, "program backward")
    def kinds(text, op):
        return len(re.findall(rf"^ +k\d+: {op} ", text, re.M))
    check(kinds(fwd, "conv2d") == n, f"forward program: {kinds(fwd, 'conv2d')} conv2d kernels, {n} convolutions")
    check((kinds(bwd, "conv2d"), kinds(bwd, "conv2d_grad_w"), kinds(bwd, "conv2d_grad_x")) == (n, n, n - 1),
          f"backward program: conv2d {kinds(bwd, 'conv2d')}, conv2d_grad_w {kinds(bwd, 'conv2d_grad_w')}, "
          f"conv2d_grad_x {kinds(bwd, 'conv2d_grad_x')}; {n} convolutions")
    check(kinds(fwd, "avgpool2d") == 1 and kinds(bwd, "avgpool2d_grad") == 1, "global_avgpool and its gradient")
    # memplan: a workspace for each of the two programs.
    memplan = dump(model, "memplan", 4)
    for program in ("forward", "backward"):
        m = re.search(rf"^program {program}: workspace (\d+) bytes", memplan, re.M)
        check(m and int(m.group(1)) > 0, f"memplan: no workspace for the {program} program")
    # llvm (optimised and not): the three entry points, and never a fast-math flag that assumes
    # away NaN or infinity.
    for stage in ("llvm", "llvm-unoptimised"):
        ir = dump(model, stage, 4)
        for entry in ("forward", "backward", "update"):
            check(re.search(rf"^define void @gradc_{entry}\(", ir, re.M), f"{stage}: no gradc_{entry}")
        flags = set(re.findall(r"\b(fast|nnan|ninf)\b", ir))
        check(not flags, f"{stage}: fast-math flags {flags}")
    asm = dump(model, "asm", 4)
    for entry in ("forward", "backward", "update"):
        check(re.search(rf"^gradc_{entry}:", asm, re.M), f"asm: no gradc_{entry}")
    print(f"cnn_resnet: {n} convolutions in every stage")


def plot():
    models = [os.path.join(SRC, "models", m + ".nn") for m in MODELS]
    with tempfile.TemporaryDirectory() as d:
        svg_path = os.path.join(d, "x.svg")
        testlib.run(GRADC, "grads", *models, "--batch", "8", "--plot", svg_path, timeout=600)
        svg = testlib.read(svg_path).decode()
    check(svg.startswith("<svg") or svg.startswith("<?xml"), "not an SVG file")
    check(svg.rstrip().endswith("</svg>"), "the SVG file is not complete")
    titles = re.findall(r"Gradient magnitude distribution for activation function (\w+) \((\w+)\)", svg)
    check([m for _, m in titles] == MODELS, f"rows {titles}, models {MODELS}")
    check(titles[MODELS.index("cnn_plain_sigmoid")][0] == "sigmoid", f"the sigmoid CNN's row: {titles}")
    panels = re.findall(r'<g class="panel" data-tensor="([^"]*)">', svg)
    want = [n for m in models for n, s in parameters(m) if len(s) >= 2]
    check(panels == want, f"{len(panels)} panels {panels}, the weights {len(want)} {want}")
    print(f"{len(panels)} panels in {len(titles)} rows")


testlib.check(CASE in ("dump", "plot"), f"unknown case {CASE}")
{"dump": dumps, "plot": plot}[CASE]()
