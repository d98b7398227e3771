#!/usr/bin/env python3
"""tests/mpi/mpi_test.py — data-parallel runs under Open MPI's mpirun, for real: two processes
(oversubscribed on a small machine; as root with Open MPI's two environment variables).

Cases:
  train_equal   5 training steps on 2 processes give the parameters one process gives (within
                1e-5 relative): the seed network, and seed_sigmoid_bn.nn (synchronised batchnorm)
  grads_equal   gradc grads of one batch on 2 processes: every statistic equals one process's
                (f64 within 1e-6 relative, f32 within 4e-6; histograms' counts exactly in f64,
                within one in f32),
                seed network and batchnorm
  kill          a process killed mid-run ends the job with a non-zero exit and no output files
  bad_input     a bad model file: a non-zero exit and its message once
  batch         a batch the processes cannot share equally is refused, naming it

Usage: mpi_test.py GRADC SOURCE_DIR CASE
"""
import json, os, signal, subprocess, sys, tempfile, time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import testlib  # noqa: E402
from testlib import check  # noqa: E402

GRADC, SRC, CASE = testlib.arguments()
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_btl_vader_single_copy_mechanism="none", OMPI_MCA_rmaps_base_oversubscribe="1")
SMALL = ["--limit", "3000", "--batch", "128", "--no-progress", "--threads", "1"]


def model(name):
    return os.path.join(SRC, "models", name + ".nn")


def mpirun(n, *args, timeout=300, rc=0):
    cmd = ["mpirun", "-np", str(n), GRADC, *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"FAILED: {' '.join(cmd)} still ran after {timeout} s")
    if rc is not None and (p.returncode != 0 if rc == 0 else p.returncode == 0):
        sys.exit(f"expected exit {'0' if rc == 0 else 'non-zero'}, got {p.returncode}: {' '.join(cmd)}\n"
                 f"{p.stdout}\n{p.stderr}")
    return p


if CASE == "train_equal":
    with tempfile.TemporaryDirectory() as d:
        for stem in ("seed_sigmoid", "seed_sigmoid_bn"):
            one, two = os.path.join(d, f"{stem}_1.safetensors"), os.path.join(d, f"{stem}_2.safetensors")
            log1, log2 = os.path.join(d, f"{stem}_1.jsonl"), os.path.join(d, f"{stem}_2.jsonl")
            args = ["train", model(stem), "--steps", "5", "--lr", "0.1", "--momentum", "0.9", *SMALL]
            testlib.run(GRADC, *args, "--save", one, "--log", log1)
            p = mpirun(2, *args, "--save", two, "--log", log2)
            check("2 processes of 64" in p.stderr, f"the run says how the batch is shared:\n{p.stderr}")
            check(p.stderr.count("epoch   1:") == 1, f"rank 0 alone reports:\n{p.stderr}")
            a, b = testlib.read_safetensors(one), testlib.read_safetensors(two)
            check(sorted(a) == sorted(b), f"{stem}: the same tensors")
            worst = 0.0
            for name in a:
                scale = max(max(abs(v) for v in a[name]), 1e-30)
                diff = max(abs(x - y) for x, y in zip(a[name], b[name]))
                worst = max(worst, diff / scale)
                check(diff <= 1e-5 * scale, f"{stem} {name}: 2 processes differ from 1 by {diff / scale:.2e} relative")
            moved = max(abs(x) for x in a["layers.0.weight"]) > 0
            check(moved, "trained parameters")
            e1, e2 = json.loads(open(log1).readline()), json.loads(open(log2).readline())
            check(e1["step"] == e2["step"] == 5, "five steps each")
            check(abs(e1["train_loss"] - e2["train_loss"]) <= 1e-5 * abs(e1["train_loss"]), "the same training loss")
            check(abs(e1["val_accuracy"] - e2["val_accuracy"]) <= 1e-9, "the same validation accuracy")
            print(f"{stem}: 2 processes against 1, worst relative difference {worst:.2e}")
elif CASE == "grads_equal":
    def close(a, b, where, worst, scale=0.0):
        """Every number of `b` within 1e-6 of `a`'s, relative to itself (or to `scale`: a
        histogram's edges, relative to the largest, since one near zero is a difference of
        two larger numbers); everything else equal."""
        if isinstance(a, dict):
            check(sorted(a) == sorted(b), f"{where}: the same fields")
            # A tensor's numbers relative to its mean |value| at least: its mean is a difference
            # of such numbers (the last layer's is near zero).
            inner = max(scale, a.get("abs_mean") or 0.0) if isinstance(a.get("abs_mean"), float) else scale
            if isinstance(a.get("abs_mean"), float) and a["abs_mean"] < 1e-3 * scale:
                # A gradient zero up to rounding (a bias before batchnorm): its statistics are the
                # rounding's, and must stay as small.
                check(b["abs_mean"] < 1e-3 * scale and a["name"] == b["name"], f"{where}: a zero gradient")
                return worst
            for k in a:
                if k == "zero_fraction" and "f32" in where:  # entries below 1e-8: one may cross it
                    check(abs(a[k] - b[k]) * a["count"] <= 1.5, f"{where}.{k}: {a[k]!r} on 1 process, {b[k]!r} on 2")
                    continue
                edges = k == "edges" and a[k]
                worst = close(a[k], b[k], f"{where}.{k}", worst, max(map(abs, edges)) if edges else inner)
        elif isinstance(a, list):
            check(len(a) == len(b), f"{where}: the same length")
            for i, (x, y) in enumerate(zip(a, b)):
                worst = close(x, y, f"{where}[{i}]", worst, scale)
        elif isinstance(a, float) and isinstance(b, (int, float)):
            d = abs(a - b) / max(abs(a), scale, 1e-300)
            # f64: 1e-6 (about 3e-15 is seen); f32: sums of 128 rows in another order and
            # batchnorm's statistics over two halves, 9e-7 seen, so 4e-6 of room for other CPUs.
            check(d <= (1e-6 if "f64" in where else 4e-6), f"{where}: {a!r} on 1 process, {b!r} on 2")
            worst = max(worst, d)
        elif isinstance(a, int) and ".counts[" in where and "f32" in where:
            # float sums in another order may move a value at an edge into the next bin
            check(abs(a - b) <= 1, f"{where}: {a!r} on 1 process, {b!r} on 2")
        else:
            check(a == b, f"{where}: {a!r} on 1 process, {b!r} on 2")
        return worst

    for stem in ("seed_sigmoid", "seed_sigmoid_bn"):
        for dtype in ("f32", "f64"):
            args = ["grads", model(stem), "--batch", "128", "--format", "json", "--threads", "1", "--dtype", dtype]
            one = json.loads(testlib.run(GRADC, *args).stdout)
            two = json.loads(mpirun(2, *args).stdout)
            # The gradients' statistics relative to the largest mean |gradient| of the model at
            # least: a bias before batchnorm has a gradient of zero up to rounding.
            scale = max(p["abs_mean"] for p in one["params"])
            worst = close(one["params"], two["params"], f"{stem} {dtype}.params", 0.0, scale)
            rest = lambda d: {k: v for k, v in d.items() if k != "params"}  # noqa: E731
            worst = close(rest(one), rest(two), f"{stem} {dtype}", worst)
            print(f"{stem} {dtype}: 2 processes against 1, worst relative difference {worst:.2e}")
elif CASE == "kill":
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out")
        os.mkdir(out)
        cmd = ["mpirun", "-np", "2", GRADC, "train", model("seed_relu"), "--epochs", "3", "--no-progress", "--threads",
               "1", "--log", os.path.join(out, "run.jsonl"), "--logdir", os.path.join(out, "tb"),
               "--save", os.path.join(out, "best.safetensors")]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        # Wait for both processes to be training (rank 0's first line), then kill rank 1.
        victim, deadline = None, time.time() + 120
        while victim is None and time.time() < deadline:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                    cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
                except OSError:
                    continue
                if b"OMPI_COMM_WORLD_RANK=1" in env and GRADC.encode() in cmdline and os.listdir(out):
                    victim = int(pid)
            time.sleep(0.2)
        check(victim is not None, "rank 1 found while rank 0 writes its outputs")
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        try:
            _, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            sys.exit("FAILED: the job still ran 120 s after a process was killed")
        check(p.returncode != 0, f"a non-zero exit when a process dies: {p.returncode}")
        # No output file, not even a temporary; only TensorBoard's event file, which grows record
        # by record as the run goes, whole records only.
        left = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs]
        check(all(os.path.basename(f).startswith("events.out.tfevents.") for f in left),
              f"no output files, not even temporaries: {left}\n{err}")
        for f in left:
            check(testlib.tf_records(f), f"{f}: whole records")
elif CASE == "bad_input":
    with tempfile.TemporaryDirectory() as d:
        bad = os.path.join(d, "bad.nn")
        testlib.write(bad, b"input 784\ndense 10 bogus\nloss cross_entropy\n")
        p = mpirun(2, "train", bad, *SMALL, rc=1)
        check(p.stderr.count("error: unknown activation 'bogus'") == 1, f"the message once:\n{p.stderr}")
        check(bad + ":2:10: error: unknown activation" in p.stderr, f"the message names the file:\n{p.stderr}")
elif CASE == "batch":
    p = mpirun(2, "train", model("seed_relu"), "--limit", "3000", "--batch", "127", "--no-progress", rc=1)
    check("--batch 127 does not divide among 2 processes" in p.stderr, f"the batch named:\n{p.stderr}")
    check(p.stderr.count("does not divide") == 1, f"the message once:\n{p.stderr}")
else:
    sys.exit(f"unknown case {CASE}")
