"""tests/testlib.py — what the command-line test scripts share: their arguments, running gradc
(or another program) and checking its exit status (and that it does not hang), reporting a
failed check, reading and writing files. Standard library only. A script in tests/DIR/ imports it with

    sys.dont_write_bytecode = True  # no __pycache__ in the source tree
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import testlib
"""
import json, os, pwd, struct, subprocess, sys


def arguments(*names):
    """The script's arguments, named by `names` (default GRADC SOURCE_DIR CASE: how ctest calls
    most test scripts); a wrong count exits with the usage."""
    names = names or ("GRADC", "SOURCE_DIR", "CASE")
    if len(sys.argv) != len(names) + 1:
        sys.exit(f"usage: {os.path.basename(sys.argv[0])} {' '.join(names)}")
    return tuple(sys.argv[1:])


def run(program, *args, rc=0, text=True, cwd=None, user=None, stdout=subprocess.PIPE, stdin=None, env=None,
        timeout=None):
    """Runs `PROGRAM ARGS` (gradc, or any other; arguments may be bytes: file names that are
    not UTF-8) as `user` when given (setpriv, without root's groups), and exits the test unless
    its exit status is `rc` (None: any). Output is text, or bytes with text=False; stdout may be
    a file to write to. A run still going after `timeout` seconds is killed and fails the test:
    a hang, not a wait."""
    cmd = [program, *args]
    if user:
        pw = pwd.getpwnam(user)
        cmd = ["setpriv", "--reuid", str(pw.pw_uid), "--regid", str(pw.pw_gid), "--clear-groups", *cmd]
    shown = " ".join(a if isinstance(a, str) else repr(a) for a in [os.path.basename(program), *args])
    try:
        p = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, stdin=stdin, text=text, cwd=cwd, env=env,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"FAILED: {shown} still ran after {timeout} s")
    if rc is not None and p.returncode != rc:
        sys.exit(f"expected exit {rc}, got {p.returncode}: {shown}\n{p.stdout}\n{p.stderr}")
    return p


def check(cond, what):
    if not cond:
        sys.exit("FAILED: " + what)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read_safetensors(path):
    """{name: tuple of floats} of a safetensors file's F32, F64 and I64 tensors (stdlib only)."""
    raw = read(path)
    (n,) = struct.unpack_from("<Q", raw, 0)
    out = {}
    for name, t in json.loads(raw[8:8 + n]).items():
        if name == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        code = {"F32": "f", "F64": "d", "I64": "q"}[t["dtype"]]
        out[name] = struct.unpack_from(f"<{(end - begin) // struct.calcsize(code)}{code}", raw, 8 + n + begin)
    return out


def tf_records(path):
    """The records of a TensorBoard event file (TFRecord framing: length, masked CRC-32C of
    it, data, masked CRC-32C of the data); the test fails on a broken or cut record."""
    def crc32c(data):
        c = 0xFFFFFFFF
        for b in data:
            c ^= b
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        c ^= 0xFFFFFFFF
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    raw, pos, out = read(path), 0, []
    while pos < len(raw):
        check(pos + 12 <= len(raw), f"{path}: a record cut in its header at {pos}")
        (n,) = struct.unpack_from("<Q", raw, pos)
        check(struct.unpack_from("<I", raw, pos + 8)[0] == crc32c(raw[pos:pos + 8]), f"{path}: a length's CRC")
        check(pos + 12 + n + 4 <= len(raw), f"{path}: a record cut at {pos}")
        data = raw[pos + 12:pos + 12 + n]
        check(struct.unpack_from("<I", raw, pos + 12 + n)[0] == crc32c(data), f"{path}: a record's CRC")
        out.append(data)
        pos += 12 + n + 4
    return out
