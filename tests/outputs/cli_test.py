#!/usr/bin/env python3
"""tests/outputs/cli_test.py — the output files of every command, from the command line: every
output checked before any work; a failed run leaves every existing output as it was and no
temporary; symlinks followed, devices and FIFOs written through, modes kept; TensorBoard event
files never overwritten. Standard library only; runs as root or as any user.

Usage: cli_test.py GRADC SOURCE_DIR CASE   (CASE: grads, compile, train, act, events)
"""
import os, re, socket, stat, subprocess, sys, tempfile, threading

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import testlib
from testlib import check, read, write

GRADC, SRC, CASE = testlib.arguments()
MODEL = os.path.join(SRC, "models", "seed_relu.nn")
SMALL = ["--limit", "600", "--val", "100", "--batch", "128", "--no-progress"]


def run(*args, **kw):
    return testlib.run(GRADC, *args, **kw)


def leftovers(folder, keep):
    """Names in `folder` besides `keep`: temporaries a run left behind."""
    return sorted(set(os.listdir(folder)) - set(keep))


with tempfile.TemporaryDirectory() as tmp:
    os.chmod(tmp, 0o755)
    P, Q, SVG = (os.path.join(tmp, f) for f in ("p.safetensors", "q.safetensors", "g.svg"))
    if CASE == "grads":
        grads = ["grads", MODEL, "--batch", "8"]
        # A run that fails writes nothing: the bad --plot folder is found before any work, and
        # the outputs given before it are left as they were.
        write(P, b"old p"), write(Q, b"old q")
        p = run(*grads, "--save-params", P, "--dump-grads", Q, "--plot", os.path.join(tmp, "missing-dir/x.svg"), rc=1)
        check(f"{tmp}/missing-dir/x.svg: error: cannot write the figure: the folder '{tmp}/missing-dir' does not exist"
              in p.stderr, p.stderr)
        check(p.stdout == "", "no work done: " + p.stdout)
        # A failure after the work started (a bad parameter file) writes nothing either.
        bad = os.path.join(tmp, "bad.safetensors")
        write(bad, b"garbage")
        p = run(*grads, "--params", bad, "--save-params", P, "--dump-grads", Q, "--plot", SVG, rc=1)
        check("bad.safetensors: error: not a safetensors file" in p.stderr, p.stderr)
        check(read(P) == b"old p" and read(Q) == b"old q" and not os.path.exists(SVG), "outputs untouched")
        check(leftovers(tmp, ["p.safetensors", "q.safetensors", "bad.safetensors"]) == [], "no temporaries")
        # A directory, and the model itself, are refused before any work.
        p = run(*grads, "--plot", tmp, rc=1)
        check(f"{tmp}: error: cannot write the figure: it is a directory" in p.stderr, p.stderr)
        model = os.path.join(tmp, "m.nn")
        write(model, read(MODEL))
        p = run("grads", model, "--batch", "8", "--save-params", model, rc=1)
        check(f"{model}: error: cannot write the parameter file: it is the same file as the input '{model}'" in p.stderr,
              p.stderr)
        p = run(*grads, "--save-params", P, "--dump-grads", os.path.join(tmp, ".", "p.safetensors"), rc=1)
        check("it is the same file as the parameter file" in p.stderr, p.stderr)
        check(read(P) == b"old p" and read(model) == read(MODEL), "nothing replaced")
        # A successful run writes all three; an existing file keeps its mode (600).
        os.chmod(P, 0o600)
        run(*grads, "--save-params", P, "--dump-grads", Q, "--plot", SVG)
        check(read(P)[8:9] == b"{" and read(Q)[8:9] == b"{" and read(SVG).startswith(b"<"), "all three written")
        check(stat.S_IMODE(os.stat(P).st_mode) == 0o600, f"mode 600 kept: {oct(os.stat(P).st_mode)}")
        check(leftovers(tmp, ["p.safetensors", "q.safetensors", "bad.safetensors", "g.svg", "m.nn"]) == [],
              "no temporaries")
        # --plot /dev/stdout prints the figure after the table (stdout a pipe, then a file).
        p = run(*grads, "--plot", "/dev/stdout")
        check("layers.0.weight" in p.stdout and "<svg" in p.stdout and p.stdout.index("layers.0.weight") < p.stdout.index("<svg"),
              "the table, then the SVG")
        out = os.path.join(tmp, "stdout.txt")
        with open(out, "w") as f:
            run(*grads, "--plot", "/dev/stdout", stdout=f)
        text = read(out).decode()
        check(text.startswith("seed_relu: batch 8") and "<svg" in text and text.rstrip().endswith("</svg>"),
              "stdout redirected to a file: the table, then the SVG")
        check(stat.S_ISREG(os.stat(out).st_mode), "still the same file")
    elif CASE == "compile":
        obj, folder = os.path.join(tmp, "x.o"), os.path.join(tmp, "some-dir")
        os.mkdir(folder)
        p = run("compile", MODEL, "-o", obj, "--header", folder, rc=1)
        check(f"{folder}: error: cannot write the header: it is a directory" in p.stderr, p.stderr)
        check(not os.path.exists(obj), "no object file when the header cannot be written")
        p = run("compile", MODEL, "-o", obj, "--header", obj, rc=1)
        check(f"{obj}: error: cannot write the header: it is the same file as the output '{obj}'" in p.stderr, p.stderr)
        check(not os.path.exists(obj), "-o X --header X writes nothing")
        # A symlinked header: the link stays, its target gets the header.
        header = os.path.join(folder, "model.h")
        write(header, b"old")
        os.symlink("some-dir/model.h", os.path.join(tmp, "link.h"))
        run("compile", MODEL, "-o", obj, "--header", os.path.join(tmp, "link.h"), "--emit", "llvm")
        check(os.path.islink(os.path.join(tmp, "link.h")), "the link is kept")
        check(b"#ifndef" in read(header) or b"#pragma once" in read(header), "the target holds the header")
        check(b"define" in read(obj), "the LLVM module")
        check(leftovers(tmp, ["x.o", "some-dir", "link.h"]) == [] and os.listdir(folder) == ["model.h"], "no temporaries")
    elif CASE == "train":
        log, save, logdir = (os.path.join(tmp, f) for f in ("ok.jsonl", "best.safetensors", "tb"))
        write(log, b'{"old": true}\n')
        write(save, b"old save")
        blocker = os.path.join(tmp, "file")
        write(blocker, b"")
        # Every output is checked before any data is loaded or code compiled.
        p = run("train", MODEL, "--log", log, "--save", save, "--logdir", os.path.join(blocker, "sub"), *SMALL, rc=1)
        check(f"{blocker}/sub: error: cannot write the log directory: '{blocker}' is not a folder" in p.stderr, p.stderr)
        check("parameters;" not in p.stderr, "no data loaded: " + p.stderr)
        p = run("train", MODEL, "--log", log, "--save", os.path.join(tmp, "missing", "x.safetensors"), *SMALL, rc=1)
        check("cannot write the parameter file: the folder" in p.stderr and "parameters;" not in p.stderr, p.stderr)
        p = run("train", MODEL, "--log", log, "--save", log, *SMALL, rc=1)
        check("it is the same file as the parameter file" in p.stderr, p.stderr)
        check(read(log) == b'{"old": true}\n' and read(save) == b"old save", "the existing log and parameters kept")
        # A folder the user may not write in (as root: run as nobody).
        unwritable = os.path.join(tmp, "unwritable")
        os.mkdir(unwritable, 0o555)
        user = "nobody" if os.geteuid() == 0 else None
        if user:  # the log and its folder are nobody's to write; only the log directory is not
            os.chmod(tmp, 0o777), os.chmod(log, 0o666)
        p = run("train", MODEL, "--log", log, "--logdir", os.path.join(unwritable, "sub"), *SMALL, rc=1, user=user)
        check(f"{unwritable}/sub: error: cannot write the log directory: '{unwritable}': Permission denied" in p.stderr,
              p.stderr)
        check(read(log) == b'{"old": true}\n', "the log is never emptied by a failing run")
        os.chmod(tmp, 0o755)
        # A run that fails in training (no batch fits) keeps the old log too, and no temporary.
        p = run("train", MODEL, "--log", log, "--limit", "600", "--val", "550", "--batch", "128", "--no-progress", rc=1)
        check("make no batch of 128" in p.stderr, p.stderr)
        check(read(log) == b'{"old": true}\n', "the old log after a failed run")
        check(leftovers(tmp, ["ok.jsonl", "best.safetensors", "file", "unwritable"]) == [], "no temporaries")
        # A successful run replaces the log and the parameters, keeping the log's mode.
        os.chmod(log, 0o600)
        run("train", MODEL, "--log", log, "--save", save, "--logdir", logdir, "--epochs", "1", *SMALL)
        lines = read(log).decode().splitlines()
        check(len(lines) == 2 and '"end":true' in lines[-1], f"a new log: {lines}")
        check(stat.S_IMODE(os.stat(log).st_mode) == 0o600, "the log keeps mode 600")
        check(read(save)[8:9] == b"{", "the parameters saved")
        check(leftovers(tmp, ["ok.jsonl", "best.safetensors", "file", "unwritable", "tb"]) == [], "no temporaries")
    elif CASE == "act":
        # --plot /dev/stdout: the SVG is the whole output.
        p = run("act", "relu", "--plot", "/dev/stdout")
        check(p.stdout.startswith("<svg") or p.stdout.startswith("<?xml"), p.stdout[:80])
        check(p.stdout.rstrip().endswith("</svg>"), "the whole SVG")
        # A device node (made here when we may, as root can) is written through and stays one.
        dev = os.path.join(tmp, "null")
        try:
            os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            dev = "/dev/null"  # only written to
        run("act", "relu", "--plot", dev)
        check(stat.S_ISCHR(os.stat(dev).st_mode), f"{dev} is still a device")
        # A FIFO: written through to its reader, and still a FIFO.
        fifo = os.path.join(tmp, "pipe")
        os.mkfifo(fifo)
        got = []
        reader = threading.Thread(target=lambda: got.append(read(fifo)))
        reader.start()
        run("act", "tanh", "--plot", fifo)
        reader.join(30)
        check(got and b"</svg>" in got[0], "the reader got the SVG")
        check(stat.S_ISFIFO(os.stat(fifo).st_mode), "still a FIFO")
        # A symlink: the target is replaced, with its mode; the link stays.
        target = os.path.join(tmp, "target.svg")
        write(target, b"old")
        os.chmod(target, 0o600)
        os.symlink("target.svg", os.path.join(tmp, "link.svg"))
        run("act", "relu", "--plot", os.path.join(tmp, "link.svg"))
        check(os.path.islink(os.path.join(tmp, "link.svg")), "the link is kept")
        check(read(target).startswith(b"<"), "the target holds the SVG")
        check(stat.S_IMODE(os.stat(target).st_mode) == 0o600, "the target keeps mode 600")
        # A hard link: the named file is replaced; its other name keeps the old contents.
        write(os.path.join(tmp, "a.svg"), b"old")
        os.link(os.path.join(tmp, "a.svg"), os.path.join(tmp, "b.svg"))
        run("act", "relu", "--plot", os.path.join(tmp, "a.svg"))
        check(read(os.path.join(tmp, "a.svg")).startswith(b"<") and read(os.path.join(tmp, "b.svg")) == b"old",
              "hard link: a new file, the other name unchanged")
        # A legal 250-character name.
        long = os.path.join(tmp, "a" * 246 + ".svg")
        run("act", "relu", "--plot", long)
        check(read(long).startswith(b"<"), "a 250-character name")
        check(leftovers(tmp, ["null", "pipe", "target.svg", "link.svg", "a.svg", "b.svg", os.path.basename(long)]) == [],
              "no temporaries")
    elif CASE == "events":
        # Two runs into one logdir at the same time: two files, named as SummaryWriter names them.
        logdir = os.path.join(tmp, "tb")
        args = [GRADC, "train", MODEL, "--logdir", logdir, "--steps", "1", *SMALL]
        procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=300)
            check(p.returncode == 0, err.decode())
        files = sorted(os.listdir(logdir))
        check(len(files) == 2, f"two event files: {files}")
        host = re.escape(socket.gethostname())
        pids = sorted(str(p.pid) for p in procs)
        for f in files:
            check(re.fullmatch(rf"events\.out\.tfevents\.\d{{10}}\.{host}\.\d+\.\d+", f), f"SummaryWriter's name: {f}")
        check(sorted(f.split(".")[-2] for f in files) == pids, f"one per process: {files} {pids}")
        check(all(os.path.getsize(os.path.join(logdir, f)) > 0 for f in files), "both written")
    else:
        sys.exit(f"unknown case {CASE}")
print("ok")
