#!/usr/bin/env python3
"""tests/aot/isa_test.py — the default ahead-of-time object (`--target-cpu portable`): code for
the x86-64 baseline (level 1), x86-64-v3 (3) and x86-64-v4 (4) in one object, built into
tests/aot/example.c with plain cc.

  - its only global symbols are the header's functions (every variant's code is local);
  - left to itself it runs the best level this CPU has, computed here from /proc/cpuinfo;
  - forced to each level this CPU has (model_select_isa), its gradients match the JIT's;
  - a level this CPU lacks, or that the object does not hold, is refused;
  - under qemu's user mode (tools/setup --test installs it), on an emulated Haswell (AVX2, no
    AVX-512) it runs level 3 and on qemu's baseline CPU level 1, with the JIT's gradients.

Usage: isa_test.py GRADC REFERENCE CC SOURCE_DIR WORK MODEL
"""
import os, shutil, sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import testlib  # noqa: E402
from testlib import check  # noqa: E402

GRADC, REFERENCE, CC, SOURCE, WORK, MODEL = testlib.arguments("GRADC", "REFERENCE", "CC", "SOURCE_DIR", "WORK", "MODEL")
GRADC, REFERENCE, SOURCE, WORK, MODEL = (os.path.abspath(a) for a in (GRADC, REFERENCE, SOURCE, WORK, MODEL))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(SOURCE)), "tools"))  # SOURCE is tests/aot
import benchutil  # noqa: E402  (the CPU's flags)
BATCH = "16"

# The features of each x86-64 psABI level as /proc/cpuinfo names them (sse3 is "pni", lzcnt
# "abm"). The kernel drops avx* when the operating system does not save their registers.
LEVELS = {
    2: "cx16 lahf_lm popcnt pni sse4_1 sse4_2 ssse3",
    3: "avx avx2 bmi1 bmi2 f16c fma abm movbe xsave",
    4: "avx512f avx512bw avx512cd avx512dq avx512vl",
}


def run(*cmd, rc=0):
    """A program run in WORK; its exit status must be rc (None: any)."""
    return testlib.run(*cmd, rc=rc, cwd=WORK)


def best_level():
    flags = benchutil.cpu_flags()
    level = 1
    while level < 4 and set(LEVELS[level + 1].split()) <= flags:
        level += 1
    return level


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
run(GRADC, "compile", MODEL, "--batch", BATCH, "--prefix", "model", "-o", "model.o", "--header", "model.h")
header = open(os.path.join(WORK, "model.h")).read()
check("for CPU portable (1 (x86-64), 3 (x86-64-v3), 4 (x86-64-v4))" in header,
      "the header names the object's variants:\n" + header[:400])
check("static const int model_isa_levels[3] = {1, 3, 4};" in header, "the header lists the levels")

# Only the header's functions are global; every variant's functions are local, named
# model_..._vL, so two objects (or the three variants) never clash.
public = sorted(run("nm", "-g", "--defined-only", "model.o").stdout.split()[2::3])
expected = sorted("model_" + f for f in ("abi_version", "backward", "forward", "isa", "isa_name", "select_isa", "update"))
check(public == expected, f"global symbols {public}, expected {expected}")
local = [l.split()[2] for l in run("nm", "--defined-only", "model.o").stdout.splitlines() if l.split()[1] in "tT"]
for level in (1, 3, 4):
    for entry in ("forward", "backward", "update"):
        check(f"model_{entry}_v{level}" in local, f"no local model_{entry}_v{level} in {local}")
strays = [s for s in local if not s.startswith("model_")]
check(not strays, f"functions not named after the prefix: {strays}")
# It asks the CPU itself: nothing from libgcc or compiler-rt (__cpu_model, __cpu_indicator_init,
# which cc would link silently) nor from gradc's runtime.
undefined = run("nm", "-u", "model.o").stdout.split()[1::2]
check(not any(s.startswith(("__", "gradc_")) for s in undefined),
      f"the object needs more than libc and libm: {undefined}")

run(CC, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I" + WORK, os.path.join(SOURCE, "example.c"), "model.o",
    "-lm", "-o", "example")
run(GRADC, "grads", MODEL, "--batch", BATCH, "--save-params", "params.safetensors", "--format", "csv")

best = best_level()
print(f"this CPU's best x86-64 level by /proc/cpuinfo: {best}")
names = {1: "x86-64", 3: "x86-64-v3", 4: "x86-64-v4"}
want = max(l for l in names if l <= best)

# Left to itself (and after select_isa(0)), the object runs the best level the CPU has.
for args in ([], ["0"]):
    p = run(os.path.join(WORK, "example"), "params.safetensors", "grads.out", *args)
    first = p.stdout.splitlines()[0]
    print("automatic:", first)
    check(first == f"isa {want} {names[want]}", f"the automatic choice ran '{first}', not level {want}")
print(run(REFERENCE, MODEL, BATCH, "params.safetensors", "grads.out").stdout.splitlines()[-1])

# Each level the CPU has, forced, computes the JIT's gradients; the others are refused.
for level in (1, 3, 4):
    p = run(os.path.join(WORK, "example"), "params.safetensors", f"grads{level}.out", str(level), rc=None)
    if level <= best:
        check(p.returncode == 0 and p.stdout.splitlines()[0] == f"isa {level} {names[level]}",
              f"level {level} forced: exit {p.returncode}\n{p.stdout}{p.stderr}")
        r = run(REFERENCE, MODEL, BATCH, "params.safetensors", f"grads{level}.out")
        print(f"level {level}: {r.stdout.splitlines()[-1]}")
    else:
        check(p.returncode == 3 and p.stdout.startswith(f"level {level} refused"),
              f"level {level}, which this CPU lacks, was not refused: exit {p.returncode}\n{p.stdout}{p.stderr}")
        print(f"level {level}: refused, as this CPU lacks it")

# Other CPUs, emulated by qemu's user mode where it is installed (it reports to cpuid the
# features of the CPU it is told, and has no AVX-512): a Haswell runs x86-64-v3 and refuses
# level 4; qemu's own baseline CPU (SSE3 at most) runs level 1 and refuses 3 and 4.
qemu = shutil.which("qemu-x86_64")
check(qemu, "qemu-x86_64 is not installed: tools/setup --test installs it (Debian: qemu-user)")
for cpu, level in (("Haswell-v4", 3), ("qemu64", 1)):
    emulated = [qemu, "-cpu", cpu, os.path.join(WORK, "example"), "params.safetensors"]
    p = run(*emulated, f"grads-{cpu}.out")
    check(p.stdout.splitlines()[0] == f"isa {level} {names[level]}",
          f"on an emulated {cpu}, the automatic choice ran '{p.stdout.splitlines()[0]}', not level {level}")
    r = run(REFERENCE, MODEL, BATCH, "params.safetensors", f"grads-{cpu}.out")
    print(f"emulated {cpu}: isa {level}; {r.stdout.splitlines()[-1]}")
    for lacking in (l for l in names if l > level):
        p = run(*emulated, "grads.out", str(lacking), rc=3)
        check(p.stdout.startswith(f"level {lacking} refused; isa {level}"), f"on an emulated {cpu}, level {lacking}: {p.stdout}")

# Levels the object does not hold are refused, and the choice stays as it was.
for level in (2, 5, -1, 64):
    p = run(os.path.join(WORK, "example"), "params.safetensors", "grads.out", str(level), rc=3)
    check(p.stdout.strip() == f"level {level} refused; isa {want} {names[want]}", f"level {level}: {p.stdout}")
print("ok")
