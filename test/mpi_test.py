#!/usr/bin/env python3
"""The multi-process engine under mpirun, on the CPU (CTest label model).

  mpi_test.py BIN_DIR SOURCE_DIR MODELS_DIR gtest NP TP PP [GTEST_FILTER]
      test_mpi under `mpirun -np NP`, --tp TP --pp PP
  mpi_test.py BIN_DIR SOURCE_DIR MODELS_DIR gtest-cuda NP TP PP [GTEST_FILTER]
      the same with --device cuda, one GPU per process (skipped, 77, with fewer than NP GPUs)
  mpi_test.py BIN_DIR SOURCE_DIR MODELS_DIR cli
      llama_infer / llama_bench under mpirun: the greedy text of tp 2, pp 2 and tp 2 x pp 2 is one
      process's; every error is one line on stderr, a non-zero exit, and no hang

Exit 77 (skipped) when mpirun or the program built with MPI is absent, with a line saying which; under
CI=true tools/check_skips.py turns that skip into a failure. mpirun runs with --oversubscribe (more
ranks than cores: CI has 2), --bind-to none, -q (Open MPI's own notices off, so that an error is one
line) and, as root in a container, --allow-run-as-root. Every run is under a timeout.
"""
import os
import shutil
import subprocess
import sys
import time

bin_dir, src_dir, models = sys.argv[1:4]
mode = sys.argv[4]
failures = []


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


mpirun = shutil.which("mpirun")
if mpirun is None:
    skip("needs mpirun (Open MPI: apt-get install openmpi-bin libopenmpi-dev, as tools/setup.sh does); it is absent")


# Containers often forbid the cross-process memory copies (CMA, ptrace) that Open MPI's shared-memory
# transport tries first, and it then prints a warning per message: copy through shared memory instead.
os.environ.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
# Under AddressSanitizer (tools/sanitize.sh sets ASAN_OPTIONS): Open MPI keeps state allocated past
# MPI_Finalize; test/lsan_mpi.supp leaves out what was allocated through it, which needs whole stacks
# (no fast unwinding: Open MPI has no frame pointers) and its plugins kept loaded, so that their
# frames have names.
if "ASAN_OPTIONS" in os.environ:
    os.environ["ASAN_OPTIONS"] += ":fast_unwind_on_malloc=0"
    os.environ["LSAN_OPTIONS"] = (f"suppressions={os.path.join(src_dir, 'test', 'lsan_mpi.supp')}:print_suppressions=0" +
                                  (":" + os.environ["LSAN_OPTIONS"] if os.environ.get("LSAN_OPTIONS") else ""))
    os.environ["OMPI_MCA_mca_base_component_disable_dlclose"] = "1"


def mpirun_prefix(np_):
    cmd = [mpirun, "-q", "--oversubscribe", "--bind-to", "none", "-np", str(np_)]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    return cmd


def descendants(pid):
    kids = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                if d.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    kids += [int(d)] + descendants(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def stacks(pid):
    """Every thread's stack of every process under `pid` (gdb, when installed): what a hang waited in."""
    if shutil.which("gdb") is None:
        return "(no gdb for the stacks)"
    out = []
    for p in [pid] + descendants(pid):
        r = subprocess.run(["gdb", "-p", str(p), "-batch", "-ex", "thread apply all bt 12"], capture_output=True,
                           text=True, timeout=60)
        out.append(f"--- pid {p}\n" + "\n".join(l for l in r.stdout.splitlines() if l.startswith(("#", "Thread"))))
    return "\n".join(out)


def run(cmd, timeout=120, stdin_text=None):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL)
    try:
        out, err = p.communicate(stdin_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        failures.append(f"{' '.join(cmd)}: no answer within {timeout} s (a hang); the stacks:\n{stacks(p.pid)}")
        for pid in descendants(p.pid):  # the ranks too, not only mpirun
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        p.kill()
        p.communicate()
        return None, time.monotonic() - t0
    return subprocess.CompletedProcess(cmd, p.returncode, out, err), time.monotonic() - t0


if mode in ("gtest", "gtest-cuda"):
    np_, tp, pp = sys.argv[5:8]
    exe = os.path.join(bin_dir, "test_mpi")
    if not os.path.exists(exe):
        skip("test_mpi was not built: this build has no MPI (install libopenmpi-dev and reconfigure)")
    device = []
    if mode == "gtest-cuda":
        gpus = int(subprocess.run([exe, "--gpu_count"], capture_output=True, text=True, timeout=60).stdout.strip() or 0)
        if gpus < int(np_):
            skip(f"needs {np_} GPUs (one per process); {gpus} visible")
        device = ["--device", "cuda"]
    cmd = mpirun_prefix(np_) + [exe, "--tp", tp, "--pp", pp] + device + [f"--gtest_filter={f}" for f in sys.argv[8:9]]
    r, secs = run(cmd, timeout=240)
    if r is None:
        print(failures[0])
        sys.exit(1)
    sys.stdout.write(r.stdout)
    sys.stdout.write(r.stderr)
    print(f"mpi_test: {' '.join(cmd[cmd.index(exe) + 1:])} under mpirun -np {np_}: exit {r.returncode}, {secs:.1f} s")
    sys.exit(0 if r.returncode == 0 else 1)

# ---- cli ----
if not os.path.isdir(models):
    skip(f"needs {models} (test data beside the checkout); it is absent")
infer = os.path.join(bin_dir, "llama_infer")
bench = os.path.join(bin_dir, "llama_bench")
probe = subprocess.run(mpirun_prefix(1) + [infer, "--version"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
if "no MPI" in probe.stderr:
    skip("llama_infer was built without MPI (install libopenmpi-dev and reconfigure)")
stories = os.path.join(models, "stories260K", "stories260K.bin")
tok512 = os.path.join(models, "stories260K", "tok512.model")
storyteller = os.path.join(src_dir, "models", "storyteller.bin")
greedy = ["--device", "cpu", "--temp", "0", "-t", "1", "-p", "Once upon a time"]
stories_args = ["-m", stories, "--tokenizer", tok512] + greedy


def check(name, ok, detail=""):
    if ok:
        print(f"ok   {name}")
    else:
        failures.append(f"{name}: {detail}")


# The text of one process, then the same under mpirun.
for name, args in (("stories260K", stories_args + ["-n", "120"]), ("storyteller", ["-m", storyteller] + greedy + ["-n", "80"])):
    one, _ = run([infer] + args)
    check(f"{name}: one process", one is not None and one.returncode == 0 and len(one.stdout) > 40,
          one and one.stderr)
    for np_, layout in ((2, ["--tp", "2"]), (2, ["--pp", "2"]), (4, ["--tp", "2", "--pp", "2"]), (4, ["--pp", "4"])):
        r, secs = run(mpirun_prefix(np_) + [infer] + args + layout)
        label = f"{name}: mpirun -np {np_} {' '.join(layout)} prints one process's text"
        if r is None:
            continue
        check(label + f" ({secs:.1f} s)", r.returncode == 0 and r.stdout == one.stdout,
              f"exit {r.returncode}\n    got:  {r.stdout[:300]!r}\n    want: {one.stdout[:300]!r}\n    stderr: {r.stderr[:300]}")
        check(f"{name}: mpirun -np {np_} {' '.join(layout)}: one stats line (rank 0's)",
              r.stderr.count("[stats]") == 1, r.stderr)

# A prompt piped on stdin reaches rank 0 only; every process gets it from there.
r, _ = run(mpirun_prefix(2) + [infer, "-m", stories, "--tokenizer", tok512, "--device", "cpu", "--temp", "0", "-n", "30",
                               "--tp", "2"], stdin_text="Once upon a time\n")
one, _ = run([infer, "-m", stories, "--tokenizer", tok512, "--device", "cpu", "--temp", "0", "-n", "30"],
             stdin_text="Once upon a time\n")
check("a piped prompt under mpirun", r is not None and r.returncode == 0 and r.stdout == one.stdout,
      r and (r.stdout + r.stderr))

# Sampling: every process samples with rank 0's seed from the logits the last stage broadcast.
sampled = ["-m", stories, "--tokenizer", tok512, "--device", "cpu", "--temp", "0.9", "-s", "4242", "-n", "60", "-t", "1",
           "-p", "Once upon a time"]
one, _ = run([infer] + sampled)
r, _ = run(mpirun_prefix(4) + [infer] + sampled + ["--tp", "2", "--pp", "2"])
check("sampled text (seed 4242) under mpirun -np 4 --tp 2 --pp 2", r is not None and r.stdout == one.stdout,
      r and (r.stdout + r.stderr))


def expect_error(name, cmd, code, needle, max_s=30, timeout=60):
    """One line on stderr, naming the cause; a non-zero exit (`code`); within max_s seconds."""
    r, secs = run(cmd, timeout=timeout)
    if r is None:
        return
    lines = r.stderr.strip().splitlines()
    problems = []
    if r.returncode != code:
        problems.append(f"exit {r.returncode}, expected {code}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, expected 1")
    if needle not in r.stderr:
        problems.append(f"stderr lacks {needle!r}")
    if secs > max_s:
        problems.append(f"took {secs:.1f} s, expected under {max_s}")
    if problems:
        failures.append(f"{name}: {'; '.join(problems)}\n    stderr: {r.stderr.strip()[:500]}")
    else:
        print(f"ok   {name}: exit {r.returncode} in {secs:.1f} s: {r.stderr.strip()}")


tp2 = ["-m", stories, "--tokenizer", tok512, "--device", "cpu", "-p", "Once", "-n", "40", "--temp", "0", "--tp", "2"]
# Every rank meets the same error: one line (rank 0's).
expect_error("a misspelt flag on every rank", mpirun_prefix(2) + [infer] + tp2 + ["--temprature", "1"], 2,
             "rank 0: unknown flag '--temprature'; did you mean --temperature?")
expect_error("-np that is not tp x pp", mpirun_prefix(2) + [infer] + tp2 + ["--pp", "2"], 1,
             "mpirun started 2 processes, but --tp 2 x --pp 2 is 4")
expect_error("--chat under mpirun", mpirun_prefix(2) + [infer, "-m", stories, "--tokenizer", tok512, "--device", "cpu",
                                                         "--chat", "--tp", "2"], 2, "--chat does not run under mpirun")
# One rank's own error (its model file is missing) while rank 0 has loaded and waits for it in a
# collective: rank 1's line, and MPI_Abort ends rank 0 (no timeout is waited for: it is 60 s).
mpmd = mpirun_prefix(1) + [infer] + tp2 + [":", "-np", "1", infer] + tp2[2:] + ["-m", "/nonexistent/model.bin"]
expect_error("one rank's model file is missing", mpmd, 1, "rank 1: /nonexistent/model.bin: cannot open", max_s=20)
# One rank loads another model (same tokenizer, other shape): refused before anything runs.
gqa = os.path.join(bin_dir, "..", "mpi_llama3_gqa.bin")
subprocess.run([sys.executable, os.path.join(src_dir, "tools", "export.py"), "-q", "--hf",
                os.path.join(src_dir, "test", "fixtures", "hf", "llama3_gqa"), "--tokenizer", tok512, "--dtype", "fp32",
                gqa], check=True, timeout=120, capture_output=True)
mpmd = mpirun_prefix(1) + [infer] + tp2 + [":", "-np", "1", infer] + tp2 + ["-m", gqa]
expect_error("ranks that load different models", mpmd, 1, "rank 1's model (", max_s=20)
# A rank that leaves early (its context is full after 3 tokens: a launch with other flags): rank 0 waits
# for it in the next all-reduce and gives up after --comm_timeout 2 s, with one line.
mpmd = (mpirun_prefix(1) + [infer] + tp2 + ["--comm_timeout", "2", ":", "-np", "1", infer] + tp2 +
        ["--comm_timeout", "2", "-c", "6"])
expect_error("a rank that stops early is caught by the timeout", mpmd, 1,
             "rank 0: MPI all-reduce: the other ranks did not arrive within 2 s (a rank failed or hung)", max_s=20)
expect_error("the same across pipeline stages", [a if a != "--tp" else "--pp" for a in mpmd], 1,
             "did not arrive within 2 s (a rank failed or hung)", max_s=20)

# llama_bench under mpirun: rank 0 prints one table of the job, with the stage transfer under --pp.
r, _ = run(mpirun_prefix(4) + [bench, "-m", stories, "-p", "8", "-n", "16", "-r", "1", "--device", "cpu", "-t", "1",
                               "--tp", "2", "--pp", "2", "-o", "csv"])
lines = r.stdout.strip().splitlines() if r else []
check("llama_bench under mpirun -np 4 --tp 2 --pp 2: one csv table from rank 0",
      r is not None and r.returncode == 0 and len(lines) == 2 and lines[0].startswith("model,"), r and (r.stdout + r.stderr))
if len(lines) == 2:
    row = dict(zip(lines[0].split(","), lines[1].split(",")))
    check("llama_bench row: tp 2, pp 2, decode speed, stage transfer latency, MPI all-reduce",
          row.get("tp") == "2" and row.get("pp") == "2" and float(row.get("decode_tok_s", 0)) > 0 and
          float(row.get("stage_transfer_8kb_us") or 0) > 0 and row.get("all_reduce") == "mpi", str(row))
r, _ = run(mpirun_prefix(2) + [bench, "-m", stories, "-p", "8", "-n", "8", "-r", "1", "--device", "cpu", "--pp", "2"])
check("llama_bench --pp 2 text: the stages line", r is not None and r.stdout.count("stages      one transfer") == 1 and
      r.stdout.count("model       ") == 1, r and (r.stdout + r.stderr))

for f in failures:
    print("FAIL", f)
sys.exit(1 if failures else 0)
