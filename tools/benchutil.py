"""tools/benchutil.py — what the benchmark scripts share (bench-vs-torch, bench-compile,
bench-grads-vs-torch, bench-all, bench-aot): the CPU's name and features, commands run and timed, runs of `gradc bench` read into numbers, medians, checks of their options, `gradc check`'s parameter table.
Standard library only (tests/aot/isa_test.py reads the CPU's features here too, tests/cnn/cli_test.py
and torchutil the parameter table); benchmarks, never tests of speed."""
import os, re, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRADC = os.path.join(ROOT, "build/tools/gradc")
PYTHON = "/usr/bin/python3"  # Debian's, with python3-torch


def fail(message):
    """Exits with status 1 and a message naming the script."""
    sys.exit(f"{os.path.basename(sys.argv[0])}: {message}")


def cpu_model():
    """lscpu's "Model name" (/proc/cpuinfo's "model name" without lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def cpu_flags():
    """The first processor's flags in /proc/cpuinfo."""
    # As the kernel names them: sse3 is "pni", lzcnt "abm".
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def parameter_table(text):
    """[(name, shape)] of the parameters in `gradc check`'s output `text`, in its order."""
    rows, table = [], False
    for line in text.splitlines():
        cols = line.split()
        if cols[:2] == ["parameter", "shape"]:
            table = True
        elif table and cols and cols[0] != "total":
            rows.append((cols[0], [int(d) for d in cols[1].strip("[]").split(",")]))
    return rows


def cpu_isa(flags=None):
    """The widest vector ISA the CPU has: AVX-512, AVX2 or SSE2."""
    flags = cpu_flags() if flags is None else flags
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags and "fma" in flags else "SSE2"


def median(values):
    return statistics.median(values)


def run(cmd, env=None, timeout=None):
    """Runs a command; exits with its stderr when it fails. Returns stdout. A run longer than
    `timeout` seconds is killed and raises subprocess.TimeoutExpired."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        fail(f"'{' '.join(cmd)}' exited with {p.returncode}:\n{(p.stderr or p.stdout).strip()}")
    return p.stdout


def timed(cmd, env=None):
    """The wall time of a whole process in ms, from start to exit, and its stdout (as run)."""
    start = time.perf_counter()
    out = run(cmd, env)
    return (time.perf_counter() - start) * 1000, out


class Bench:
    """One run of `gradc bench`: compile time, the ISA of the code (its name, the CPU and the
    vector width), FMA peak, threads, ms and GFLOP per step, % of peak, and the compilation by
    phase that gradc prints."""

    def __init__(self, text):
        self.text = text
        m = re.search(r"(compiled|loaded from the cache) in ([0-9.]+) ms", text)
        self.cached, self.compile_ms = m.group(1) != "compiled", float(m.group(2))
        # A gradc from before --isa (tools/bench-vs-torch --gradc OLD) prints no ISA line.
        m = re.search(r"^ISA: (\S+) \((\S+), (\d+)-bit vectors\)$", text, re.M)
        self.isa, self.cpu, self.vector_bits = (m.group(1), m.group(2), int(m.group(3))) if m else ("native", None, None)
        m = re.search(r"FMA peak \(measured\): ([0-9.]+) GFLOP/s per thread; (\d+) threads?", text)
        self.peak, self.threads = float(m.group(1)), int(m.group(2))
        m = re.search(r"backward: ([0-9.]+) ms per step, [0-9.]+ GFLOP/s \(([0-9.]+) GFLOP per step\), ([0-9.]+)% of peak", text)
        self.ms, self.gflop, self.percent = float(m.group(1)), float(m.group(2)), float(m.group(3))
        # The table under "compilation by phase (...):", up to the next blank line.
        m = re.search(r"^compilation by phase[^\n]*\n((?:[^\n]+\n?)*)", text, re.M)
        self.phases = m.group(1).splitlines() if m else []

    def code(self):
        """The ISA of the code as gradc prints it: "native (znver4, 512-bit vectors)"."""
        if self.cpu is None:
            return f"{self.isa} (not printed by this gradc)"
        return f"{self.isa} ({self.cpu}, {self.vector_bits}-bit vectors)"


def gradc_bench(gradc, model, batch=256, steps=1, threads=1, cache=True, extra=(), timeout=None):
    """One run of `gradc bench` (a Bench); past `timeout` seconds, subprocess.TimeoutExpired."""
    cmd = [gradc, "bench", model, "--batch", str(batch), "--steps", str(steps), "--threads", str(threads), *extra]
    if not cache:
        cmd.append("--no-cache")
    return Bench(run(cmd, timeout=timeout))


def header(bench):
    """The line every benchmark table starts with: CPU, the ISA of gradc's code and the peak,
    as `bench` (a Bench) reported them."""
    return (f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, {cpu_isa()}); "
            f"gradc code: {bench.code()}; FMA peak (measured by gradc bench): {bench.peak:.1f} GFLOP/s per thread")


def check_gradc(gradc):
    """Exits unless `gradc` (--gradc) is an executable."""
    if not os.access(gradc, os.X_OK):
        fail(f"{gradc}: no gradc executable (build it, or give --gradc)")


def check_model(path):
    """Exits unless the model file exists."""
    if not os.path.isfile(path):
        fail(f"{path}: model file not found")


def check_at_least_one(value, option):
    """Exits unless a count (`--rounds`, or `ROUNDS=` from the environment) is at least 1."""
    if value < 1:
        fail(f"{option}{'' if option.endswith('=') else ' '}{value} is out of range (at least 1)")


def parse_list(text, what):
    """A comma-separated list of whole numbers > 0 (--threads 1,2)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        fail(f"{what} '{text}' is not a comma-separated list of whole numbers > 0")
    return values
