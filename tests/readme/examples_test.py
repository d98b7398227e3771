#!/usr/bin/env python3
"""tests/readme/examples_test.py — every command example in README.md, run, so the README
cannot drift from the tool: each indented or fenced block that calls gradc, as a shell script
(its `sed` and `for` lines too; `cc` and the programs it builds are the AOT tests' part), and
each inline `gradc ...` command that names a model file of models/ and no placeholder. And the
README's table of commands names every option `gradc help COMMAND` lists, and no other.

They run in a scratch folder holding the source's models/ and tests/, where `gradc` and
`build/tools/gradc` are a wrapper of GRADC that gives them small inputs when the example does
not choose: `train` a few steps on 1,200 images, `bench` two steps, `grads` a batch of 32,
`dead` 1,200 images. An example passes when it exits 0 and every file it names as an output
(-o, --plot, --save, --log, --header, --save-params, > FILE) is there and not empty.

Usage: examples_test.py GRADC SOURCE_DIR [--list]
"""
import os, re, shlex, subprocess, sys, tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from testlib import check  # noqa: E402

WRAPPER = r"""#!/bin/bash
# gradc with small inputs where the example does not choose them (tests/readme/examples_test.py)
args=("$@")
has() { local a; for a in "${args[@]}"; do [[ $a == "$1" || $a == "$1="* ]] && return 0; done; return 1; }
case "$1" in
  train) has --steps || args+=(--steps 3); has --limit || args+=(--limit 1200); has --no-progress || args+=(--no-progress) ;;
  bench) has --steps || args+=(--steps 2) ;;
  grads) has --batch || args+=(--batch 32) ;;
  dead) has --limit || args+=(--limit 1200) ;;
esac
exec GRADC "${args[@]}"
"""

# The words of an example that name the files it writes.
OUTPUT_FLAGS = {"-o", "--plot", "--save", "--log", "--header", "--save-params", "--dump-grads", ">"}


def blocks(text):
    """(line, [lines]) of every indented or fenced block of README text."""
    out, cur, fence = [], None, False
    lines = text.split("\n")
    for i, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            if fence:
                out.append(cur)
                cur, fence = None, False
            else:
                if cur:
                    out.append(cur)
                cur, fence = (i + 1, []), True
            continue
        if fence:
            cur[1].append(line)
        elif line.startswith("    ") and (cur is not None or lines[i - 2].strip() == ""):
            if cur is None:
                cur = (i, [])
            cur[1].append(line[4:])
        elif cur is not None:
            out.append(cur)
            cur = None
    if cur:
        out.append(cur)
    return out


GRADC_LINE = re.compile(r"^(tools/setup && )?(build/tools/)?gradc ")
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_]+\b|\.\.\.|\[")


def examples(readme):
    """(where, script) of every runnable example of the README."""
    text = open(readme).read()
    out = []
    for start, lines in blocks(text):
        if not any(GRADC_LINE.match(l.strip()) for l in lines):
            continue
        script = []
        for l in lines:
            l = re.sub(r"\s{2,}(#.*|\(or .*\))$", "", l).strip()  # a comment, an alternative
            if not l or PLACEHOLDER.search(l) and GRADC_LINE.match(l):
                continue  # a synopsis (gradc COMMAND [OPTIONS] ...)
            if l.startswith("cc ") or l.startswith("./"):
                continue  # building and running a C program: the AOT tests
            script.append(l.replace("tools/setup && ", ""))
        if any(GRADC_LINE.match(l) for l in script):
            out.append((f"README.md:{start}", script))
    for m in re.finditer(r"`((?:build/tools/)?gradc [^`]+)`", text):
        cmd = " ".join(m.group(1).split()).replace("\\|", "|")
        if "models/" in cmd and not PLACEHOLDER.search(cmd):
            out.append((f"README.md:{text.count(chr(10), 0, m.start()) + 1}", [cmd]))
    return out


def outputs(script):
    """The files the lines of a script name as outputs."""
    files = []
    for line in script:
        words = shlex.split(line.replace(">", " > "))
        for k, w in enumerate(words[:-1]):
            if w in OUTPUT_FLAGS and "$" not in words[k + 1]:  # not one a loop names
                files.append(words[k + 1].rstrip(";"))
    return files


def table_options(gradc, readme):
    """Disagreements between the README's table of commands and each command's help."""
    text = open(readme).read()
    bad = []
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `gradc (\w+) ([^`]*)` \|", text, re.M)}
    check(len(rows) >= 10, f"the table of commands: {sorted(rows)}")
    for cmd, row in rows.items():
        help = subprocess.run([gradc, "help", cmd], capture_output=True, text=True).stdout
        offered = set(re.findall(r"^  (?:-\w, )?(--[a-z0-9-]+)", help, re.M)) - {"--help"}
        check(offered, f"gradc help {cmd} lists options")
        named = set(re.findall(r"(?<![\w-])--[a-z0-9-]+", row))
        if offered - named:
            bad.append(f"the README's row of gradc {cmd} omits {', '.join(sorted(offered - named))}")
        if named - offered:
            bad.append(f"the README's row of gradc {cmd} names {', '.join(sorted(named - offered))}, which it does not take")
    return bad


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: examples_test.py GRADC SOURCE_DIR [--list]")
    gradc, src = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    found = examples(os.path.join(src, "README.md"))
    if sys.argv[3:] == ["--list"]:
        for where, script in found:
            print(where, *script, sep="\n  ")
        return
    check(len(found) >= 15, f"the README's examples found: {len(found)}")
    failures = table_options(gradc, os.path.join(src, "README.md"))
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "build/tools"))
        wrapper = os.path.join(tmp, "build/tools/gradc")
        with open(wrapper, "w") as f:
            f.write(WRAPPER.replace("GRADC", shlex.quote(gradc)))
        os.chmod(wrapper, 0o755)
        env = dict(os.environ, PATH=os.path.join(tmp, "build/tools") + ":" + os.environ["PATH"],
                   XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", os.path.join(tmp, "cache")))
        for k, (where, script) in enumerate(found):
            work = os.path.join(tmp, f"example{k}")
            os.makedirs(os.path.join(work, "build"))
            os.symlink(os.path.join(tmp, "build/tools"), os.path.join(work, "build/tools"))
            for d in ("models", "tests"):
                os.symlink(os.path.join(src, d), os.path.join(work, d))
            p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "\n".join(script)], cwd=work, env=env,
                               capture_output=True, text=True, timeout=600)
            missing = [f for f in outputs(script)
                       if not os.path.isfile(os.path.join(work, f)) or os.path.getsize(os.path.join(work, f)) == 0]
            if p.returncode != 0:
                failures.append(f"{where}: exit {p.returncode}: {' ; '.join(script)}\n{p.stderr.strip()[-2000:]}")
            elif missing:
                failures.append(f"{where}: no {', '.join(missing)} after: {' ; '.join(script)}")
            else:
                print(f"ok {where}: {' ; '.join(script)}")
    for f in failures:
        print("FAILED:", f)
    print(f"{len(found)} examples, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
