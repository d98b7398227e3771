#!/usr/bin/env python3
"""tests/cache/cache_test.py — the cache of compiled code from the command line, as a hostile
user would meet it: another user's folder and planted entries, entries that are directories,
FIFOs or symbolic links, no HOME at all; one warning per process, and the folder gradc makes.
Standard library only; the parts that need a second user run when the tests run as root (as in
CI), as `nobody` through setpriv.

Usage: cache_test.py GRADC SOURCE_DIR CASE   (CASE: attack, entries, one_warning, no_home, folder)
"""
import os, pwd, re, shutil, stat, subprocess, sys, tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import testlib
from testlib import check

GRADC, SRC, CASE = testlib.arguments()
TINY = os.path.join(SRC, "tests", "golden", "report", "tiny.nn")
ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody")


def run(*args, cache=None, env=None, as_nobody=False, rc=0):
    """Runs gradc with GRADC_CACHE_DIR=cache (unless env is given whole); never waits past
    two minutes, so a cache entry that blocks fails the test instead of hanging it."""
    if env is None:
        env = dict(os.environ)
        if cache is not None:
            env["GRADC_CACHE_DIR"] = cache
    return testlib.run(GRADC, *args, rc=rc, env=env, user="nobody" if as_nobody else None, timeout=120)


def grads(model, **kw):
    """`gradc grads MODEL --batch 4`: (loss line, whether the code came from the cache, stderr)."""
    p = run("grads", model, "--batch", "4", **kw)
    loss = re.search(r"^loss .*$", p.stdout, re.M).group(0)
    cached = "loaded from the cache" in p.stdout
    check(cached or "compiled in" in p.stdout, "grads says where its code came from:\n" + p.stdout)
    return loss, cached, p.stderr


def warnings(stderr):
    return [l for l in stderr.splitlines() if ": warning: " in l]


def entries(folder):
    """The compiled objects in the folder (it also keeps the register tiles' speeds)."""
    return sorted(f for f in os.listdir(folder) if f != "gemm-tiles.txt")


def give_to_nobody(path):
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)


with tempfile.TemporaryDirectory() as tmp:
    os.chmod(tmp, 0o755)  # nobody may look in, not write
    # Another model with the same entry points: loading its code for tiny.nn would run.
    other = os.path.join(tmp, "other.nn")
    with open(other, "w") as f:
        f.write(open(TINY).read().replace("dense 3 tanh", "dense 3 sigmoid"))
    os.chmod(other, 0o644)
    want, _, _ = grads(TINY, env={**os.environ, "GRADC_CACHE_DIR": os.path.join(tmp, "reference")})
    mine = os.path.join(tmp, "mine")
    grads(TINY, cache=mine)
    (victim_name,) = entries(mine)

    if CASE == "attack":
        # The attack: another user's cache folder (as /tmp/gradc-cache was) holding
        # another model's object under the victim's entry name.
        shared = os.path.join(tmp, "shared")
        os.mkdir(shared, 0o755)
        if ROOT:
            give_to_nobody(shared)
            _, _, err = grads(other, cache=shared, as_nobody=True)
            check(warnings(err) == [], "nobody uses a folder of its own: " + err)
            (planted,) = entries(shared)
            subprocess.run(["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
                            "mv", os.path.join(shared, planted), os.path.join(shared, victim_name)], check=True)
            loss, cached, err = grads(TINY, cache=shared)
            check(not cached and loss == want, f"another user's folder is not used: {loss} vs {want}")
            check(len(warnings(err)) == 1 and f"{shared}: warning: the cache folder is owned by uid "
                  f"{NOBODY.pw_uid}, not by this user (uid 0); running without the cache" in err, err)
            check(entries(shared) == [victim_name] and os.stat(os.path.join(shared, victim_name)).st_uid == NOBODY.pw_uid,
                  "nothing written into another user's folder")
            # The same entry in the user's own folder but owned by nobody: ignored, replaced.
            entry = os.path.join(mine, victim_name)
            shutil.copyfile(os.path.join(shared, victim_name), entry)
            give_to_nobody(entry)
            loss, cached, err = grads(TINY, cache=mine)
            check(not cached and loss == want, "an entry owned by another user is not loaded")
            check(f"{entry}: warning: the cache entry is owned by uid {NOBODY.pw_uid}" in err, err)
            check(os.stat(entry).st_uid == 0, "and is replaced by the user's own")
            planted_bytes = open(os.path.join(shared, victim_name), "rb").read()
        else:
            grads(other, cache=shared)
            (planted,) = entries(shared)
            planted_bytes = open(os.path.join(shared, planted), "rb").read()
            print("not root: the parts with another user are left out")
        # Mode 0600, the user's own, under the victim's name: only its recorded key differs.
        entry = os.path.join(mine, victim_name)
        with open(entry, "wb") as f:
            f.write(planted_bytes)
        loss, cached, err = grads(TINY, cache=mine)
        check(not cached and loss == want, f"a planted entry of another model is not loaded: {loss} vs {want}")
        check(f"{entry}: warning: the cache entry was built from another key; ignored" in err, err)
        loss, cached, _ = grads(TINY, cache=mine)
        check(cached and loss == want, "rebuilt, then loaded from the cache")
        # A folder others can write (/tmp's mode), even the user's own, is not used.
        os.chmod(mine, 0o1777)
        loss, cached, err = grads(TINY, cache=mine)
        check(not cached and "writable by others (mode 1777); running without the cache" in err, err)

    elif CASE == "entries":
        # Entries that are a directory (crashed with std::ios_base::failure), a FIFO (hung), a
        # symbolic link to a good entry, or writable by others: ignored, and the run succeeds.
        entry = os.path.join(mine, victim_name)
        good = os.path.join(mine, "good.o")
        shutil.copyfile(entry, good)
        os.chmod(good, 0o600)
        for kind, make, why in [
            ("directory", lambda: os.mkdir(entry), "the cache entry is a directory; ignored"),
            ("FIFO", lambda: os.mkfifo(entry, 0o600), "the cache entry is a FIFO; ignored"),
            ("symlink", lambda: os.symlink(good, entry), "the cache entry is a symbolic link; ignored"),
            ("writable", lambda: (shutil.copyfile(good, entry), os.chmod(entry, 0o666)),
             "the cache entry is writable by others (mode 0666); ignored"),
        ]:
            shutil.rmtree(entry) if os.path.isdir(entry) and not os.path.islink(entry) else os.remove(entry)
            make()
            loss, cached, err = grads(TINY, cache=mine)
            check(not cached and loss == want, f"{kind}: compiled afresh")
            check(warnings(err) == [f"{entry}: warning: {why}"], f"{kind}: one warning naming the entry: {err}")
        check(stat.S_ISREG(os.lstat(entry).st_mode) and os.stat(entry).st_mode & 0o777 == 0o600,
              "a bad entry is replaced by a good one")
        check(grads(TINY, cache=mine)[1], "and it is used")

    elif CASE == "one_warning":
        # Two models, two compilations, one unsafe folder: one warning for the process.
        os.chmod(mine, 0o777)
        p = run("grads", TINY, other, "--batch", "4", cache=mine)
        check(p.stdout.count("compiled in") == 2, "both compiled afresh")
        check(len(warnings(p.stderr)) == 1 and "writable by others (mode 0777)" in p.stderr, p.stderr)

    elif CASE == "no_home":
        # No GRADC_CACHE_DIR, XDG_CACHE_HOME or HOME: the passwd entry's home, never /tmp.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        user = NOBODY if ROOT else pwd.getpwuid(os.geteuid())
        folder = os.path.join(user.pw_dir, ".cache", "gradc")
        existed = os.path.isdir(folder)
        loss, _, err = grads(TINY, env=env, as_nobody=ROOT)
        check(loss == want, "the run succeeds")
        check("/tmp" not in err, "no shared folder: " + err)
        if not os.path.isdir(folder):  # nobody's home (/nonexistent) cannot be made
            check(len(warnings(err)) == 1 and err.startswith(f"{folder}: warning: cannot create the cache folder"), err)
        else:
            check(warnings(err) == [] and (existed or os.stat(folder).st_mode & 0o777 == 0o700), err)

    elif CASE == "folder":
        # GRADC_CACHE_DIR wins over XDG_CACHE_HOME; it and its missing parents are made 0700.
        chosen = os.path.join(tmp, "a", "b", "gradc")
        env = {**os.environ, "GRADC_CACHE_DIR": chosen, "XDG_CACHE_HOME": os.path.join(tmp, "xdg")}
        p = subprocess.run(["sh", "-c", 'umask 0 && exec "$@"', "sh", GRADC, "grads", TINY, "--batch", "4"],
                           capture_output=True, text=True, env=env, timeout=120)
        check(p.returncode == 0 and "compiled in" in p.stdout, p.stdout + p.stderr)
        check(not os.path.exists(os.path.join(tmp, "xdg")), "XDG_CACHE_HOME is not used when GRADC_CACHE_DIR is set")
        for d in (os.path.join(tmp, "a"), os.path.join(tmp, "a", "b"), chosen):
            check(os.stat(d).st_mode & 0o777 == 0o700, f"{d} is mode 0700 (umask 0)")
        (entry,) = entries(chosen)
        check(os.stat(os.path.join(chosen, entry)).st_mode & 0o777 == 0o600, "the entry is mode 0600")
        check(grads(TINY, env=env)[1], "the next run loads it")
    else:
        sys.exit("unknown case " + CASE)
