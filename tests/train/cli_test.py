#!/usr/bin/env python3
"""tests/train/cli_test.py — gradc train, acts and dead from the command line: the files they
write (JSON lines, TensorBoard records, safetensors, SVG), early stopping, Ctrl-C, bad input,
and the tutorial's dead-neuron count. Standard library only.

Usage: cli_test.py GRADC SOURCE_DIR CASE   (CASE: files, early_stop, interrupt, bad_input, dead,
                                             acts, batchnorm, bad_data, bad_params, f64, clip)
"""
import gzip, json, os, signal, struct, subprocess, sys, tempfile, threading, time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import testlib
from testlib import check

GRADC, SRC, CASE = testlib.arguments()
SMALL = ["--limit", "3000", "--val", "500", "--batch", "128", "--no-progress"]


def model(name):
    return os.path.join(SRC, "models", name + ".nn")


def run(*args, rc=0):
    return testlib.run(GRADC, *args, rc=rc)


def measured(*args, rc=1, stdin=None, timeout=60):
    """Runs gradc; returns (stderr, the peak RSS in MiB of the gradc runs so far). A hang fails
    the test after `timeout` s."""
    return testlib.run(GRADC, *args, rc=rc, stdin=stdin, timeout=timeout).stderr, peak_rss_mib()


def peak_rss_mib():
    import resource
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def idx_images(n, rows, cols, count=None):
    count = n if count is None else count
    return struct.pack(">IIII", 0x803, n, rows, cols) + bytes((i * 7) & 0xFF for i in range(count * rows * cols))


def idx_labels(n, labels):
    return struct.pack(">II", 0x801, n) + bytes(labels)


def data_dir(path, train, test, gz=False):
    """train, test: (images bytes, labels bytes); files written plain or gzip."""
    os.makedirs(path, exist_ok=True)
    for prefix, (img, lbl) in (("train", train), ("t10k", test)):
        for stem, data in ((f"{prefix}-images-idx3-ubyte", img), (f"{prefix}-labels-idx1-ubyte", lbl)):
            with open(os.path.join(path, stem + (".gz" if gz else "")), "wb") as f:
                f.write(gzip.compress(data) if gz else data)
    return path


def fields(msg):
    """The fields of a protocol buffer as (number, value) pairs: an int for varints, bytes
    for length-delimited fields, a float for 64-bit ones (wire types 0, 2 and 1)."""
    out, pos = [], 0
    def varint():
        nonlocal pos
        v, shift = 0, 0
        while True:
            b = msg[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v
    while pos < len(msg):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, varint()))
        elif wire == 1:
            out.append((number, struct.unpack_from("<d", msg, pos)[0]))
            pos += 8
        elif wire == 2:
            n = varint()
            out.append((number, msg[pos:pos + n]))
            pos += n
        elif wire == 5:
            out.append((number, struct.unpack_from("<f", msg, pos)[0]))
            pos += 4
        else:
            check(False, f"wire type {wire} in a protocol buffer")
    return out


def field(msg, number):
    """The last value of field `number` of a message, or None."""
    found = [v for n, v in fields(msg) if n == number]
    return found[-1] if found else None


def hparams_summaries(recs):
    """{tag: HParamsPluginData} of the HParams plugin's summaries among TensorBoard records."""
    out = {}
    for r in recs:
        summary = field(r, 5)
        value = summary and field(summary, 1)
        metadata = value and field(value, 9)
        plugin = metadata and field(metadata, 1)
        if plugin and field(plugin, 1) == b"hparams":
            out[field(value, 1).decode()] = field(plugin, 2)
    return out


def safetensors_names(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    return {k: v for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__"}


with tempfile.TemporaryDirectory() as tmp:
    log, save, logdir = (os.path.join(tmp, f) for f in ("log.jsonl", "best.safetensors", "tb"))
    if CASE == "files":
        p = run("train", model("seed_relu"), "--epochs", "3", "--lr", "0.05", "--momentum", "0.9", "--log", log, "--save", save,
                "--logdir", logdir, *SMALL)
        lines = [json.loads(l) for l in open(log)]
        check(len(lines) == 4 and lines[-1]["end"] is True, "three epoch lines and an end line")
        check([l["epoch"] for l in lines[:3]] == [1, 2, 3], "epochs numbered 1..3")
        check(all(l["step"] == 19 * l["epoch"] for l in lines[:3]), "2500 examples / 128 = 19 steps per epoch")
        check(lines[2]["val_accuracy"] > 0.6, f"relu learns: {lines[2]['val_accuracy']}")
        check(lines[2]["train_loss"] < lines[0]["train_loss"], "the training loss falls")
        check(len(lines[0]["grads"]) == 10 and lines[0]["grads"][0]["name"] == "layers.0.weight", "gradient stats")
        check(lines[0]["vanishing_factor"] > 0, "a vanishing factor per epoch")
        end = lines[-1]
        check(0.6 < end["test_accuracy"] <= 1 and end["best_epoch"] in (1, 2, 3), "test accuracy of the best epoch")
        check(f"test accuracy {100 * end['test_accuracy']:.2f}%" in p.stdout, "the summary line")
        names = safetensors_names(save)
        check(len(names) == 10 and names["layers.0.weight"]["shape"] == [512, 784], "the best parameters saved")
        files = os.listdir(logdir)
        check(len(files) == 1 and files[0].startswith("events.out.tfevents."), "one event file")
        recs = testlib.tf_records(os.path.join(logdir, files[0]))
        check(b"brain.Event:2" in recs[0], "the file-version event first")
        text = b"".join(recs)
        for tag in (b"loss/train", b"loss/val", b"accuracy/val", b"accuracy/test", b"grad/layers.0.weight",
                    b"grad_abs_mean/layers.8.weight"):
            check(tag in text, f"a {tag.decode()} summary")
        # TensorBoard's HParams dashboard: the experiment's columns, this run's values, its end.
        hp = hparams_summaries(recs)
        check(sorted(hp) == ["_hparams_/experiment", "_hparams_/session_end_info", "_hparams_/session_start_info"],
              f"the HParams summaries: {sorted(hp)}")
        experiment = field(hp["_hparams_/experiment"], 2)
        infos = {field(v, 1).decode(): field(v, 4) for n, v in fields(experiment) if n == 4}
        check(infos == {"model": 1, "activation": 1, "optimizer": 1, "lr": 3, "momentum": 3, "weight_decay": 3,
                        "batch": 3, "seed": 3}, f"the hyperparameters and their types: {infos}")
        metrics = [field(field(v, 1), 2).decode() for n, v in fields(experiment) if n == 5]
        check(metrics == ["accuracy/test", "loss/test", "accuracy/val", "loss/val", "loss/train"], f"the metrics: {metrics}")
        for m in metrics:
            check(m.encode() in text, f"the metric {m} is a scalar of the run")
        start = field(hp["_hparams_/session_start_info"], 3)
        values = {}
        for n, entry in fields(start):
            if n == 1:
                v = field(entry, 2)
                values[field(entry, 1).decode()] = field(v, 3).decode() if field(v, 3) is not None else field(v, 2)
        check(values == {"model": "seed_relu", "activation": "relu", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                         "weight_decay": 0.0, "batch": 128.0, "seed": 42.0}, f"this run's hyperparameters: {values}")
        check(field(field(hp["_hparams_/session_end_info"], 4), 1) == 1, "the session ended with success")
        check(b"_hparams_/session_end_info" in recs[-1], "the session's end is the last record")
        # Training resumes from saved parameters and evaluates them as they were.
        p2 = run("train", model("seed_relu"), "--params", save, "--epochs", "1", "--lr", "0", *SMALL)
        check(f"test accuracy {100 * end['test_accuracy']:.2f}%" in p2.stdout, "the saved parameters reload exactly")
    elif CASE == "log_every":
        # A small run out of the box (--limit without --val holds out a sixth of the images read),
        # the gradients' statistics every 4 steps in the log and in TensorBoard, then plotted.
        run("train", model("seed_sigmoid"), "--epochs", "2", "--limit", "3000", "--batch", "128", "--no-progress",
            "--log", log, "--log-every", "4", "--logdir", logdir)
        lines = [json.loads(l) for l in open(log)]
        steps = [l for l in lines if l.get("kind") == "step"]
        epochs = [l for l in lines if "epoch" in l and l.get("kind") != "step"]
        # 3000 - 500 held out = 2500 examples: 19 steps of 128 an epoch, 38 in all.
        check([l["step"] for l in steps] == list(range(4, 39, 4)), f"a step line every 4 steps: {[l['step'] for l in steps]}")
        check([l["epoch"] for l in steps] == [1] * 4 + [2] * 5, "each step line names its epoch")
        check(all(len(l["grads"]) == 10 and l["grads"][0]["name"] == "layers.0.weight" and l["loss"] > 0 for l in steps),
              "each step line has the step's loss and every gradient's statistics")
        check([l["step"] for l in epochs] == [19, 38], "the epoch lines as before")
        text = b"".join(testlib.tf_records(os.path.join(logdir, os.listdir(logdir)[0])))
        check(text.count(b"grad/layers.0.weight") == 9, "a gradient histogram at each logged step, none per epoch")
        check(b"loss/test" in text and b"accuracy/test" in text, "the test loss and accuracy")
        figure = os.path.join(tmp, "run.svg")
        run("plot", log, "-o", figure)
        svg = open(figure).read()
        heat = svg[svg.index('<g class="heat-map"'):]
        check(heat[:heat.index("</g>")].count('<rect') == 1 + 5 * 9 + 50, "the heat map has a column per logged step")
        p = run("train", model("seed_relu"), "--limit", "3000", "--val", "3000", rc=1)
        check("--val 3000 leaves no training examples of the 3000 read: pass a smaller --val" in p.stderr, p.stderr)
        p = run("train", model("seed_relu"), "--log-every", "-1", rc=2)
        check("--log-every -1" in p.stderr, p.stderr)
    elif CASE == "early_stop":
        run("train", model("seed_relu"), "--epochs", "20", "--patience", "2", "--lr", "0", "--log", log, *SMALL)
        lines = [json.loads(l) for l in open(log)]
        check(len(lines) == 4 and lines[-1]["stopped_early"] and lines[-1]["best_epoch"] == 1,
              "without learning, training stops after 1 + patience epochs")
    elif CASE == "interrupt":
        # The log goes to a temporary while training runs and replaces the old one at the end,
        # also on Ctrl-C.
        with open(log, "w") as f:
            f.write('{"old": true}\n')
        p = subprocess.Popen([GRADC, "train", model("seed_sigmoid_bn"), "--epochs", "1000", "--log", log, "--save",
                              save, "--limit", "6000", "--val", "1000", "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = ""
        while "epoch   1:" not in seen:  # the first epoch is over
            line = p.stderr.readline()
            check(line, f"training runs: {seen}")
            seen += line
        check(open(log).read() == '{"old": true}\n', "the old log stays until the run ends")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        check(p.returncode == 130, f"Ctrl-C exits with 130, not {p.returncode}: {err}")
        check("interrupted" in err, "Ctrl-C is reported")
        lines = [json.loads(l) for l in open(log)]
        check(lines[0]["epoch"] == 1, "the new log, from the first epoch")
        end = lines[-1]
        check(end["end"] and end["interrupted"], "the log's last line says interrupted")
        check(sorted(os.listdir(tmp)) == ["best.safetensors", "log.jsonl"], f"no temporaries: {os.listdir(tmp)}")
        names = safetensors_names(save)
        check("layers.1.running_mean" in names and names["layers.1.num_batches_tracked"]["dtype"] == "I64",
              "what was trained is saved, running statistics included")
    elif CASE == "bad_input":
        for args, rc, text in [
            (["--optimizer", "rmsprop"], 2, "--optimizer=rmsprop is not sgd or adam"),
            (["--lr", "-1"], 2, "learning rate -1 is not a finite number >= 0"),
            (["--nesterov"], 2, "Nesterov momentum needs momentum > 0"),
            (["--epochs", "0"], 2, "--epochs 0 is out of range"),
            (["--val", "60000"], 1, "--val 60000 leaves no training examples"),
            (["--data", "/nonexistent"], 1, "/nonexistent/train-images-idx3-ubyte.gz: error: data file not found"),
            (["--log", "/nonexistent/dir/log.jsonl"], 1,
             "/nonexistent/dir/log.jsonl: error: cannot write the log file: the folder '/nonexistent/dir' does not exist"),
            (["--dtype", "f16"], 2, "--dtype=f16 is not an element type"),
        ]:
            p = run("train", model("seed_relu"), "--save", save, *args, rc=rc)
            check(text in p.stderr, f"{args}: expected '{text}' in: {p.stderr}")
            check(not os.path.exists(save), f"{args}: no parameter file after an error")
        p = run("train", model("binary_bce"), rc=1)
        check("binary_bce.nn: error: this command needs a cross_entropy classifier" in p.stderr, p.stderr)
        p = run("train", model("seed_relu"), "--params", os.path.join(SRC, "models", "seed_relu.nn"), rc=1)
        check("seed_relu.nn: error: not a safetensors file" in p.stderr, p.stderr)
        for args, text in [(["dead", "--limit", "-1"], "gradc dead: error: --limit -1 must not be negative"),
                           (["acts", "--count", "0"], "gradc acts: error: --count 0 is out of range"),
                           (["acts", "--format", "xml"], "gradc acts: error: --format=xml is not table or json")]:
            p = run(args[0], model("seed_relu"), *args[1:], rc=2)
            check(p.stderr.startswith(text), f"{args}: expected '{text}' first in: {p.stderr}")
    elif CASE == "dead":
        # The tutorial's observation: in the untrained deep ReLU network, dead units grow with depth.
        p = run("dead", model("deep_relu"))
        rows = [l.split() for l in p.stdout.splitlines() if l.strip().startswith("layers.")]
        dead = [int(r[3]) for r in rows]
        check(len(dead) == 10, f"ten ReLU layers: {dead}")
        check(dead[0] == 0 and sum(dead[:3]) < sum(dead[3:6]) < sum(dead[6:]) and dead[-1] > 10,
              f"dead units grow with depth: {dead}")
    elif CASE == "acts":
        svg = os.path.join(tmp, "acts.svg")
        p = run("acts", model("seed_tanh"), "--format", "json", "--plot", svg)
        j = json.loads(p.stdout)
        check(j["examples"] == 1024 and len(j["layers"]) == 8, "eight modules before the last")
        check([l["op"] for l in j["layers"][:2]] == ["linear 784 -> 512", "tanh"], "linear then tanh")
        for l in j["layers"]:
            check(sum(l["histogram"]["counts"]) == 1024 * int(l["op"].split()[-1]) if l["op"].startswith("linear")
                  else True, "every value counted once")
        check(all(-1 <= l["min"] and l["max"] <= 1 for l in j["layers"] if l["op"] == "tanh"), "tanh in [-1, 1]")
        check(abs(j["layers"][0]["variance"] - j["layers"][0]["std"] ** 2) < 1e-9, "variance is std squared")
        body = open(svg).read()
        check(body.startswith("<svg") or body.startswith("<?xml"), "an SVG")
        check(body.count('class="panel"') == 8, "one panel per module")
    elif CASE == "clip":
        # --clip-grad-norm: each epoch line has the last step's norm before clipping, whether it
        # was clipped, and how many of the epoch's 19 steps were. A limit far below the norm
        # clips every step, one far above none; without the flag the fields are absent.
        def epochs(*args):
            run("train", model("seed_relu"), "--epochs", "2", "--lr", "0.05", "--momentum", "0.9", "--log", log, *SMALL,
                *args)
            lines = [json.loads(l) for l in open(log)]
            check(len(lines) == 3 and lines[-1]["end"] is True, "two epoch lines and an end line")
            return lines[:2]
        for line in epochs("--clip-grad-norm", "1e-3"):
            check(line["clipped_steps"] == 19 and line["clipped"] is True, f"a tiny limit clips every step: {line}")
            check(line["grad_norm"] > 1e-3, f"the norm before clipping is above the limit: {line}")
        small = epochs("--clip-grad-norm", "1e-3")
        for line in epochs("--clip-grad-norm", "1e6"):
            check(line["clipped_steps"] == 0 and line["clipped"] is False, f"a huge limit clips nothing: {line}")
            check(0 < line["grad_norm"] < 1e6, f"the norm is still measured: {line}")
        unclipped = epochs("--clip-grad-norm", "1e6")
        for line in epochs():
            check("grad_norm" not in line and "clipped" not in line and "clipped_steps" not in line,
                  f"no clipping fields without the flag: {line}")
        # Clipping to 1e-3 moves the parameters by at most lr * 1e-3 a step: the loss hardly falls.
        check(small[1]["train_loss"] > unclipped[1]["train_loss"] + 0.05,
              f"clipped training is slower: {small[1]['train_loss']} vs {unclipped[1]['train_loss']}")
        # A limit around the typical norm clips some steps, not all.
        typical = unclipped[0]["grad_norm"]
        some = epochs("--clip-grad-norm", str(typical))
        check(0 < sum(l["clipped_steps"] for l in some) < 38, f"a limit at the norm clips some steps: {some}")
    elif CASE == "f64":
        # Training, activations and dead units in double agree with float to float's precision;
        # in double the interpreter and the compiled code agree to double's.
        def losses(*args):
            path = os.path.join(tmp, "f64.jsonl")
            run("train", model("seed_relu"), "--epochs", "1", "--lr", "0.05", "--log", path, *SMALL, *args)
            lines = [json.loads(l) for l in open(path)]
            return lines[0]["train_loss"], lines[0]["val_loss"], lines[-1]["test_loss"]
        rel = lambda a, b: max(abs(x - y) / abs(y) for x, y in zip(a, b))
        f32, f64 = losses(), losses("--dtype", "f64")
        check(rel(f64, f32) < 1e-4, f"f64 losses {f64} within 1e-4 of f32's {f32}")
        check(f64 != f32, f"f64 trains in double, not in float: {f64} {f32}")
        jit, interp = losses("--dtype", "f64", "--steps", "3"), losses("--dtype", "f64", "--steps", "3", "--backend", "interp")
        check(rel(jit, interp) < 1e-9, f"f64: jit {jit} and interp {interp} agree within 1e-9")
        a32 = json.loads(run("acts", model("seed_tanh"), "--format", "json", "--count", "256").stdout)
        a64 = json.loads(run("acts", model("seed_tanh"), "--format", "json", "--count", "256", "--dtype", "f64").stdout)
        check(len(a32["layers"]) == len(a64["layers"]) == 8, "acts in f32 and f64: eight modules")
        for l32, l64 in zip(a32["layers"], a64["layers"]):
            check(abs(l64["std"] - l32["std"]) <= 1e-4 * abs(l32["std"]), f"acts {l64['name']}: std {l64['std']} {l32['std']}")
        dead = lambda *a: [int(l.split()[3]) for l in run("dead", model("deep_relu"), "--limit", "2000", "--val", "500", *a)
                           .stdout.splitlines() if l.strip().startswith("layers.")]
        d32, d64 = dead(), dead("--dtype", "f64")
        check(len(d32) == len(d64) == 10 and all(abs(a - b) <= 2 for a, b in zip(d32, d64)), f"dead in f64 {d64}, in f32 {d32}")
    elif CASE == "batchnorm":
        run("train", model("seed_sigmoid_bn"), "--steps", "30", "--save", save, *SMALL)
        names = safetensors_names(save)
        check(names["layers.1.running_var"]["shape"] == [512], "running statistics saved")
        p = run("acts", model("seed_sigmoid_bn"), "--params", save, "--count", "256")
        check("layers.1" in p.stdout and "batchnorm 512" in p.stdout, "batchnorm layers in evaluation mode")
    elif CASE == "bad_data":
        # Every data file is checked before anything is computed; memory follows the bytes there.
        good_train = (idx_images(300, 28, 28), idx_labels(300, [i % 10 for i in range(300)]))
        good_test = (idx_images(60, 28, 28), idx_labels(60, [i % 10 for i in range(60)]))
        train_args = ["--val", "50", "--batch", "32", "--epochs", "1", "--no-progress", "--save", save, "--log", log]
        def bad(name, train, test, text, gz=False, commands=("train",)):
            d = data_dir(os.path.join(tmp, name), train, test, gz)
            for command in commands:
                extra = train_args if command == "train" else []
                err, peak = measured(command, model("seed_relu"), "--data", d, *extra)
                check(text.replace("DIR", d) in err, f"{name} ({command}): expected '{text}' in: {err}")
                check(not os.path.exists(save) and not os.path.exists(log), f"{name}: no output file after an error")
            return peak
        t = "t10k-images-idx3-ubyte: error: the test images have 196 pixels, but the training images in "
        bad("test_size", good_train, (idx_images(60, 14, 14), good_test[1]), t, commands=("train", "dead"))
        lbl = [i % 10 for i in range(300)]
        lbl[0], lbl[299] = 12, 10  # example 0 and the last: whichever split they fall in
        bad("train_labels", (good_train[0], idx_labels(300, lbl)), good_test,
            "train-labels-idx1-ubyte: error: label 12 of example 0 is out of range for the model's 10 classes")
        lbl[0] = 0
        bad("train_labels_last", (good_train[0], idx_labels(300, lbl)), good_test,
            "train-labels-idx1-ubyte: error: label 10 of example 299 is out of range for the model's 10 classes")
        tl = [i % 10 for i in range(60)]
        tl[3] = 200
        bad("test_labels", good_train, (good_test[0], idx_labels(60, tl)),
            "t10k-labels-idx1-ubyte: error: label 200 of example 3 is out of range for the model's 10 classes")
        bad("test_empty", good_train, (idx_images(0, 28, 28), idx_labels(0, [])),
            "t10k-images-idx3-ubyte: error: the test set is empty: the file holds no images", commands=("train", "dead"))
        bad("test_count", good_train, (good_test[0], idx_labels(59, tl[:59])),
            "t10k-labels-idx1-ubyte: error: holds 59 labels but DIR/t10k-images-idx3-ubyte has 60 images")
        # The example: 2.3 MB of images claiming 4,000,000 (3.1 GB were allocated).
        claim = (idx_images(4000000, 28, 28, count=2934), idx_labels(4000000, [1] * 4000000))
        peak = bad("claim", claim, good_test, "train-images-idx3-ubyte: error: file is truncated: its header claims "
                   "4000000 images of 28x28 pixels (3136000016 bytes with the header), but the file holds 2300272 bytes",
                   commands=("train", "grads", "acts", "dead"))
        check(peak < 600, f"peak memory {peak:.0f} MiB")  # the old readers: 3.1 GB, 1.36 GB
        huge = (idx_images(2**32 - 1, 28, 28, count=300), idx_labels(2**32 - 1, [1] * 300))
        bad("huge", huge, good_test, "train-images-idx3-ubyte: error: file is truncated: its header claims 4294967295 "
            "images", commands=("train", "grads"))
        peak = bad("huge_gz", huge, good_test, "train-images-idx3-ubyte.gz: error: file is truncated: the image data "
                   "ended after 235200 of 3367254359280 bytes", gz=True)
        check(peak < 600, f"peak memory {peak:.0f} MiB")  # the old readers: 3.1 GB, 1.36 GB
        print(f"peak RSS of the gradc runs: {peak_rss_mib():.0f} MiB")
    elif CASE == "bad_params":
        # Devices, FIFOs and pipes as --params: refused after the header, never read without bound.
        for command in ("train", "grads", "acts", "dead"):
            err, _ = measured(command, model("seed_relu"), "--params", "/dev/zero", timeout=30)
            check("/dev/zero: error: not a safetensors file: header length 0 is too short" in err, err)
        fifo = os.path.join(tmp, "fifo")
        os.mkfifo(fifo)
        err, _ = measured("grads", model("seed_relu"), "--params", fifo, timeout=30)
        check("fifo: error: not a safetensors file: 0 bytes" in err, err)
        # The example: a 256 MiB F16 file without layers.0.weight (1.36 GB were used).
        n = 128 << 20
        header = json.dumps({"big": {"dtype": "F16", "shape": [n], "data_offsets": [0, 2 * n]}}).encode()
        big = os.path.join(tmp, "f16.safetensors")
        with open(big, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            f.truncate(8 + len(header) + 2 * n)  # sparse: no disk used
        for command in ("train", "grads"):
            err, peak = measured(command, model("seed_relu"), "--params", big)
            check("f16.safetensors: error: tensor 'layers.0.weight' of the model is missing" in err, err)
            check(peak < 600, f"peak memory {peak:.0f} MiB")  # the old readers: 3.1 GB, 1.36 GB
        # The same header through a pipe kept open: refused without waiting for the data.
        r, w = os.pipe()
        os.write(w, struct.pack("<Q", len(header)) + header)
        err, _ = measured("grads", model("seed_relu"), "--params", "/dev/stdin", stdin=r, timeout=30)
        os.close(r), os.close(w)
        check("error: tensor 'layers.0.weight' of the model is missing" in err, err)
        print(f"peak RSS of the gradc runs: {peak_rss_mib():.0f} MiB")
    else:
        sys.exit(f"unknown case {CASE}")
print("ok")
