#!/usr/bin/env python3
"""tests/blowup/shared_activations_test.py — model files whose activation definitions share
subexpressions deeply (issue 13, item 4) must check, differentiate, print and compile in
time and memory linear in their size, or be refused with a diagnostic at the line that
crosses a limit. Models come from tools/gen-shared-activations.

Each gradc run has a 60 s limit against hangs (the cases take well under 2 s when the
machine is idle); this is not a timing assertion.

Usage: shared_activations_test.py GRADC SOURCE_DIR
"""
import os, re, subprocess, sys, tempfile

GRADC, SRC = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(SRC, "tools"))
GEN = os.path.join(SRC, "tools", "gen-shared-activations")
HANG = 60
failures = []


def generate(path, kind, n, use=False, pad=0):
    args = [sys.executable, GEN, kind, str(n)] + (["--use"] if use else []) + (["--pad", str(pad)] if pad else [])
    with open(path, "w") as f:
        subprocess.run(args, stdout=f, check=True)


def run(what, args, rc=0, match=None, env=None):
    try:
        p = subprocess.run([GRADC, *args], capture_output=True, text=True, timeout=HANG, env=env)
    except subprocess.TimeoutExpired:
        failures.append(f"{what}: gradc {' '.join(args)} ran past {HANG} s")
        return None
    out = p.stdout + p.stderr
    if p.returncode != rc:
        failures.append(f"{what}: exit {p.returncode}, expected {rc}\n{out[:2000]}")
    elif match and not re.search(match, out, re.S):
        failures.append(f"{what}: output does not match {match!r}\n{out[:2000]}")
    return out


with tempfile.TemporaryDirectory() as tmp:
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(tmp, "cache"))
    p = lambda name: os.path.join(tmp, name)  # noqa: E731

    # The file: 25 doublings, 931 bytes; it ran past 60 s at 10 GB.
    generate(p("double.nn"), "double", 25)
    run("double: check", ["check", p("double.nn")], match=r"total")
    generate(p("double_use.nn"), "double", 25, use=True)
    run("double used: check", ["check", p("double_use.nn")], match=r"layers\.1\s+f25")
    run("double used: derive", ["derive", "f25", "--model", p("double_use.nn")],
        match=r"f\(x\)  = 33554432 \* x\nf'\(x\) = 33554432\n")
    run("double used: grads", ["grads", p("double_use.nn"), "--batch", "8"], env=env, match=r"vanishing factor")
    run("double used: grads, interpreter", ["grads", p("double_use.nn"), "--batch", "8", "--backend", "interp"])
    run("double used: dump llvm", ["dump", p("double_use.nn"), "--emit=llvm", "--batch", "8"], match=r"define")

    # Shared at every level and nothing simplifies: printing names the shared parts.
    generate(p("sigmoid_use.nn"), "sigmoid", 25, use=True)
    run("sigmoid used: dump grad", ["dump", p("sigmoid_use.nn"), "--emit=grad", "--batch", "8"],
        match=r"fn0 f25 = .*  where t1 = ")
    run("sigmoid used: grads", ["grads", p("sigmoid_use.nn"), "--batch", "8", "--no-cache"], match=r"vanishing factor")
    run("sigmoid used: derive", ["derive", "f25", "--model", p("sigmoid_use.nn")], match=r"where t1 = ")

    # The chain of 20,000: it ran past 100 s at 10 GB.
    generate(p("chain.nn"), "chain", 20000)
    run("chain: check", ["check", p("chain.nn")], match=r"total")
    run("chain: derive", ["derive", "f9000", "--model", p("chain.nn")], match=r"f'\(x\) = 1\n")
    # Used by a layer it is over the limit of operations, named at the use.
    generate(p("chain_use.nn"), "chain", 20000, use=True)
    run("chain used: check", ["check", p("chain_use.nn")], rc=1,
        match=r"chain_use\.nn:20004:10: error: activation 'f20000' has 20002 operations once its calls "
              r"are expanded; the limit is 10000")
    generate(p("chain_use_9000.nn"), "chain", 9000, use=True)
    run("chain of 9000 used: grads", ["grads", p("chain_use_9000.nn"), "--batch", "8", "--no-cache"],
        match=r"vanishing factor")

    # Each definition copies the one before: refused at the line that crosses the limit.
    generate(p("shift.nn"), "shift", 5000)
    run("shift: check", ["check", p("shift.nn")], rc=1,
        match=r"shift\.nn:(\d+):12: error: activation 'f\d+' is too large: expanding the activations defined "
              r"so far takes more than 250000 steps\n  activation f\d+\(x\) = ")

    # Files of 16 MiB, the largest gradc reads: checked in seconds.
    size = 16 * 1024 * 1024 - 4096
    generate(p("chain_16m.nn"), "chain", 99000, use=False, pad=size)
    run("16 MiB chain: check", ["check", p("chain_16m.nn")], match=r"total")
    generate(p("double_16m.nn"), "double", 99000, use=False, pad=size)
    run("16 MiB doubling: check", ["check", p("double_16m.nn")], match=r"total")
    generate(p("sigmoid_16m.nn"), "sigmoid", 99000, use=False, pad=size)
    run("16 MiB sigmoid: check", ["check", p("sigmoid_16m.nn")], match=r"total")

for f in failures:
    print("FAILED:", f)
sys.exit(1 if failures else 0)
