#!/usr/bin/python3
"""tests/bench/bench_test.py — the benchmark scripts of tools/ run and print their tables (quick
modes: one round, a few steps, small batches; nothing here checks a time), refuse bad options
with a message naming them, and tools/torchutil.py's PyTorch networks are the model files'.

    bench_test.py GRADC SOURCE_DIR CASE
CASE: translate | core_choice | vs_torch | compile | grads | all | bad_options
"""
import glob, json, os, re, sys, tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import testlib  # noqa: E402
from testlib import check  # noqa: E402

GRADC, SRC, CASE = testlib.arguments()
TOOLS = os.path.join(SRC, "tools")


def tool(name, *args, rc=0):
    """tools/NAME --gradc GRADC ARGS, which must exit with rc: its stdout and stderr."""
    p = testlib.run(os.path.join(TOOLS, name), "--gradc", GRADC, *args, rc=rc)
    return p.stdout + p.stderr


def header(out):
    check(re.search(r"^CPU: .+ \(\d+ logical CPUs, (AVX-512|AVX2|SSE2)\); "
                    r"gradc code: (native|avx2|avx512) \([a-z0-9_-]+, (128|256|512)-bit vectors\); "
                    r"FMA peak \(measured by gradc bench\): [0-9.]+ GFLOP/s per thread$", out, re.M),
          "the header names the CPU, the ISA and the peak:\n" + out)


def translate():
    """Every model torchutil can express gives, on gradc's parameters and the first batch, the
    loss gradc computes in double, and its parameters have gradc's names without asking gradc."""
    sys.path.insert(0, TOOLS)
    import torch
    import torchutil
    x, y = torchutil.first_batch(16)
    expressed, refused = 0, 0
    for path in sorted(glob.glob(os.path.join(SRC, "models", "*.nn"))):
        stem = os.path.basename(path)[:-3]
        if stem == "wide_relu":  # 20M parameters: nothing the other models do not show
            continue
        try:
            ours = torchutil.network(path)
        except torchutil.Unsupported as e:
            check("user-defined activations" in str(e), f"{stem}: refused for a reason it names: {e}")
            refused += 1
            continue
        net = torchutil.network(path, gradc=GRADC)
        check(ours.gradc_names == net.gradc_names, f"{stem}: parameter names {ours.gradc_names} != gradc's {net.gradc_names}")
        with tempfile.TemporaryDirectory() as d:
            # Images ([C,H,W] examples): the interpreter, until the jit compiles convolutions.
            backend = "interp" if len(net.input_shape) == 3 else "jit"
            p = testlib.run(GRADC, "grads", path, "--batch", "16", "--dtype", "f64", "--format", "json",
                            "--backend", backend, "--save-params", os.path.join(d, "p.safetensors"))
            params = torchutil.read_safetensors(os.path.join(d, "p.safetensors"))
        want = json.loads(p.stdout)["loss"]
        net = net.double()
        net.load_state_dict({n: torch.tensor(params[g]) for n, g in net.gradc_names.items()}, strict=False)
        loss = net.loss_of(net(x), y if net.loss != "mse" else x).item()
        check(abs(loss - want) <= 1e-7 * max(1.0, abs(want)), f"{stem}: PyTorch's loss {loss!r}, gradc's {want!r}")
        expressed += 1
    check(expressed >= 12 and refused >= 1, f"{expressed} models expressed, {refused} refused")
    with tempfile.TemporaryDirectory() as d:  # a statement it cannot express is refused by name
        bad = os.path.join(d, "odd.nn")
        testlib.write(bad, b"input 4\nactivation sq(x) = x * x\ndense 3 sq\nloss cross_entropy\n")
        try:
            torchutil.network(bad)
            check(False, "a user-defined activation is refused")
        except torchutil.Unsupported as e:
            check("odd.nn:2" in str(e), f"the refusal names the line: {e}")


def vs_torch():
    out = tool("bench-vs-torch", os.path.join(SRC, "models", "seed_relu.nn"), "8", "--threads", "1",
               "--rounds", "1", "--steps", "2", "--try-cores")
    header(out)
    check(re.search(r"^OpenBLAS core: \S+ \(the fastest in two 2-step runs at batch 8 on 1 thread; "
                    r"(--try-cores|the detected core \S+ does not fit this \S+ CPU); "
                    r"detected = \S+: [0-9.]+ ms", out, re.M), "the OpenBLAS kernel and the candidates tried:\n" + out)
    check("| batch | threads | gradc ms | PyTorch ms | PyTorch / gradc | gradc % of peak |" in out, "the table:\n" + out)
    check(re.search(r"^\| 8 \| 1 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+% \|$", out, re.M), "a row:\n" + out)


def core_choice():
    """bench-vs-torch's choice of OpenBLAS kernels, with OpenBLAS and PyTorch stood in for: a
    misdetected core (Prescott on an AVX-512 CPU) makes it time the candidates that fit the CPU's
    flags and take the fastest; a fitting one is kept without a search."""
    import importlib.machinery, types
    loader = importlib.machinery.SourceFileLoader("bench_vs_torch", os.path.join(TOOLS, "bench-vs-torch"))
    bvt = types.ModuleType(loader.name)
    bvt.__file__ = loader.path
    loader.exec_module(bvt)
    avx512 = {"avx2", "fma", "avx512f", "avx512_bf16"}
    check(bvt.candidates(avx512) == ["COOPERLAKE", "SKYLAKEX", "HASWELL", "ZEN"], str(bvt.candidates(avx512)))
    check(bvt.candidates({"avx2", "fma", "avx512f", "amx_tile"})[0] == "SAPPHIRERAPIDS", "AMX: Sapphire Rapids first")
    check(bvt.candidates({"avx2", "fma"}) == ["HASWELL", "ZEN"], "AVX2 only: Haswell, Zen")
    names = {None: "Prescott", "COOPERLAKE": None, "SKYLAKEX": "SkylakeX", "HASWELL": "Haswell", "ZEN": "Zen"}
    speed = {"SKYLAKEX": 8.0, "HASWELL": 9.5, "ZEN": 9.0, None: 27.7}
    timed = []
    bvt.loaded_core = lambda core: names[core]
    bvt.torch_ms = lambda model, batch, steps, threads, core, gradc: timed.append(core) or speed[core]
    os.environ.pop("OPENBLAS_CORETYPE", None)
    said = []
    args = types.SimpleNamespace(core=None, try_cores=False, gradc=GRADC)
    coretype, core = bvt.choose_core(args, "m.nn", 256, 10, avx512, said.append)
    check((coretype, core) == ("SKYLAKEX", "SkylakeX"), f"the fastest fitting core: {coretype}, {core}")
    check(sorted(map(str, timed)) == sorted(map(str, [None, "SKYLAKEX", "HASWELL", "ZEN"] * 2)), f"timed {timed}")
    check("the detected core Prescott does not fit this AVX-512 CPU" in said[0] and "COOPERLAKE: not in this OpenBLAS"
          in said[0] and said[0].startswith("OpenBLAS core: SkylakeX"), said[0])
    names[None], timed[:], said[:] = "Cooperlake", [], []
    check(bvt.choose_core(args, "m.nn", 256, 10, avx512, said.append) == (None, "Cooperlake") and not timed,
          "a fitting core is kept without timing")
    check(said == ["OpenBLAS core: Cooperlake (as detected; it fits this AVX-512 CPU)"], str(said))


def compile_():
    out = tool("bench-compile", "--runs", "1", "--repeat", "3")
    header(out)
    both = r"[0-9.]+ \| [0-9.]+ to [0-9.]+ \| [0-9.]+ \| [0-9.]+ to [0-9.]+"  # 1 thread, all cores
    for row in (r"--threads 1, then --threads 0: compiled on \d+ threads?",
                r"\| model \| compile ms, 1 thread \| range ms \| compile ms, \d+ threads \| range ms \| target \| \|",
                r"\| seed_sigmoid \| " + both + r" \| <= 150 ms \| (pass|miss) \|",
                r"\| deep40_relu \| " + both + r" \| <= 2\.5x seed \| (pass|miss) \|",
                r"\| repeat3 \| " + both + r" \| \(for repeat 1000: < 2000 ms\) \| - \|",
                r"deep40_relu / seed_sigmoid: [0-9.]+x on one thread \(target <= 2\.5x\)"):
        check(re.search(row, out), f"a line like {row}:\n{out}")


def grads():
    out = tool("bench-grads-vs-torch", "--rounds", "1", "--batch", "8")
    header(out)
    check(re.search(r"\| gradc grads --no-cache \(cold\) \| [0-9.]+ \| [0-9.]+x \| >= 4x \| (pass|miss) \|", out), out)
    check(re.search(r"\| gradc grads, warm cache \| [0-9.]+ \| [0-9.]+x \| >= 10x \| (pass|miss) \|", out), out)
    # The PyTorch job printed the statistics gradc prints, under gradc's names.
    check(re.search(r"PyTorch's output:\n  loss [0-9.]+\n.*\n.*abs_mean.*\n +layers\.0\.weight +[0-9.e-]+", out), out)


def all_():
    out = tool("bench-all", "--quick")
    check(re.search(r"^Measured with `tools/bench-all` \(1 alternating round, medians\) on .+; gradc's code: "
                    r"(native|avx2|avx512) \([a-z0-9_-]+, (128|256|512)-bit vectors\); FMA peak [0-9.]+ GFLOP/s per thread "
                    r"\(the highest of gradc bench's probes", out, re.M), out)
    check(re.search(r"^\| seed_sigmoid \| 8 \| 1 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+% \|", out, re.M), out)
    check("| gradc grads, warm cache |" in out and "| deep40_relu |" in out, out)


def bad_options():
    seed = os.path.join(SRC, "models", "seed_relu.nn")
    check("--threads '0'" in tool("bench-vs-torch", seed, "--threads", "0", rc=1), "names --threads")
    check("no_such.nn: model file not found" in tool("bench-vs-torch", "no_such.nn", rc=1), "names the file")
    check("--runs 0 is out of range" in tool("bench-compile", "--runs", "0", rc=1), "names --runs")
    check("no_such.nn: model file not found" in tool("bench-grads-vs-torch", "no_such.nn", rc=1), "names the file")
    # A model PyTorch cannot run: the reason, no traceback.
    out = tool("bench-vs-torch", os.path.join(SRC, "models", "seed_softsign.nn"), "4", "--threads", "1",
               "--rounds", "1", "--steps", "1", rc=1)
    check("user-defined activations ('activation softsign')" in out and "Traceback" not in out, out)


{"translate": translate, "core_choice": core_choice, "vs_torch": vs_torch, "compile": compile_, "grads": grads, "all": all_,
 "bad_options": bad_options}[CASE]()
