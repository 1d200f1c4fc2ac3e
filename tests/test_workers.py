"""Worker processes that can die, signals, and the limits of a run (issue 11, cases 3, 4, 11).

Every process case runs ``python -m cnngrad`` as a subprocess against a temporary folder,
bounded by a timeout (a hang fails the test instead of stalling it) and synchronised on
events — the pid file the pool writes (``CNNGRAD_WORKER_PIDS``) — never on fixed sleeps.
"""
from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from cnngrad import pool
from cnngrad.checker import check
from cnngrad.progress import LazyProgress

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes are forked")

BOUND = 120  # seconds any subprocess may take: far above the real time, only there to turn a hang into a failure

# Large enough (input δ: 24,576 entries through two 16-filter convs) that the check shares its
# chunks among worker processes (more than finite_diff.workers.PARALLEL_WORK), ~10 s on 2 cores.
SLOW = """input: {batch: 8, channels: 3, height: 32, width: 32}
layers:
  - conv: {filters: 16, kernel: 5, padding: 2}
  - activation: tanh
  - conv: {filters: 16, kernel: 5, padding: 2}
  - activation: tanh
  - flatten: {}
  - dense: {units: 10}
loss: softmax_cross_entropy
"""

TINY = """input: {batch: 2, channels: 1, height: 5, width: 5}
layers:
  - conv: {filters: 2, kernel: 3}
  - activation: tanh
  - flatten: {}
  - dense: {units: 3}
loss: mse
"""


# --------------------------------------------------------------------------- helpers


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """``cnngrad check ARGS`` in a session of its own (a signal to its group reaches the
    workers too, as a terminal's Ctrl-C does)."""
    pids = tmp_path / "pids"
    env = {**os.environ, pool.PIDS_ENV: str(pids)}
    proc = subprocess.Popen([sys.executable, "-m", "cnngrad", "check", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, start_new_session=True)
    return proc, pids


def wait_for_pids(proc: subprocess.Popen, pids: Path, count: int) -> list[int]:
    """Block until the pool has written ``count`` worker pids (an event, not a fixed sleep)."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        lines = pids.read_text().split("\n")[:-1] if pids.exists() else []  # whole lines only
        if len(lines) >= count:
            return [int(p) for p in lines]
        try:  # wait for the process to end, or 20 ms: whichever comes first, then look again
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"cnngrad ended before forking {count} workers: {proc.communicate()}")
    proc.kill()
    raise AssertionError("no workers were forked")


def gone(pid: int) -> bool:
    """The process no longer exists: it was killed and reaped (a zombie still has /proc/PID)."""
    return not os.path.exists(f"/proc/{pid}")


def assert_silent(stderr: str) -> None:
    for word in ("Traceback", "KeyboardInterrupt", "BrokenPipe", "BrokenProcessPool"):
        assert word not in stderr, stderr


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return name


# --------------------------------------------------------------------------- the pool itself


def square(x: int) -> int:
    pool.send(("seen", x))
    return x * x


def test_pool_gives_every_result_once_and_relays_messages():
    seen = []
    out = dict(pool.run_jobs(square, range(20), 2, on_message=lambda job, m: seen.append((job, m))))
    assert out == {x: x * x for x in range(20)}
    assert sorted(seen) == [(x, ("seen", x)) for x in range(20)]
    inline = dict(pool.run_jobs(square, range(5), 1, on_message=lambda job, m: seen.append((job, m))))
    assert inline == {x: x * x for x in range(5)}


def test_a_jobs_exception_comes_back_as_itself():
    def bad(x: int) -> int:
        if x == 3:
            raise ValueError("three is bad")
        return x

    with pytest.raises(ValueError, match="three is bad"):
        list(pool.run_jobs(bad, range(8), 2))


def test_a_killed_worker_is_an_error_naming_its_job_and_the_others_are_killed(tmp_path):
    pids = tmp_path / "pids"

    def suicidal(x: int) -> int:
        if x == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    os.environ[pool.PIDS_ENV] = str(pids)
    try:
        with pytest.raises(pool.WorkerDied, match="killed by SIGKILL") as died:
            list(pool.run_jobs(suicidal, range(10), 2))
    finally:
        del os.environ[pool.PIDS_ENV]
    assert died.value.job == 5
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 2 and all(gone(p) for p in workers)  # reaped before run_jobs returned


def test_with_dead_a_killed_workers_job_gets_its_answer_and_a_fresh_worker_goes_on(tmp_path):
    pids, ran, victim = tmp_path / "pids", tmp_path / "ran", tmp_path / "victim"

    def suicidal(x: int) -> int:
        with open(ran, "a") as f:  # every job run, wherever
            f.write(f"{x}\n")
        if x == 0:
            victim.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        while not victim.exists() or os.path.exists(f"/proc/{victim.read_text()}"):
            select.select([], [], [], 0.005)  # hold job 1 until the parent has reaped the dead worker
        return x

    os.environ[pool.PIDS_ENV] = str(pids)
    try:
        out = dict(pool.run_jobs(suicidal, range(10), 2, dead=lambda job, err: f"died: {err.pid}"))
    finally:
        del os.environ[pool.PIDS_ENV]
    workers = [int(p) for p in pids.read_text().split()]
    assert out == {0: f"died: {workers[0]}", **{x: x for x in range(1, 10)}}
    assert sorted(int(x) for x in ran.read_text().split()) == list(range(10))  # each job ran once: none again
    assert len(workers) == 3 and all(gone(p) for p in workers)  # two, and one in place of the dead


def test_stopping_early_kills_and_reaps_the_workers(tmp_path):
    pids = tmp_path / "pids"
    os.environ[pool.PIDS_ENV] = str(pids)
    try:
        it = pool.run_jobs(square, range(100), 2)
        next(it)
        it.close()
    finally:
        del os.environ[pool.PIDS_ENV]
    assert all(gone(int(p)) for p in pids.read_text().split())


LEAVE_DURING_PLUGIN_CODE = """
import threading
from cnngrad import plugins, pool
inside, done = threading.Event(), threading.Event()

def plugin_call():  # another thread inside plugin code: os._exit is plugins.no_exit's stand-in
    with plugins.no_exit():
        inside.set()
        done.wait()

t = threading.Thread(target=plugin_call)
t.start()
inside.wait()
try:
    results = sorted(pool.run_jobs(lambda x: x * x, range(6), 2))
except SystemExit:  # a worker whose os._exit raised: it runs on in the parent's code
    print("a worker escaped", flush=True)
    raise
print(results, flush=True)
done.set()
t.join()
"""


def test_a_worker_forked_while_plugin_code_runs_still_leaves(tmp_path):
    """A fork made while another thread is inside plugin code copies ``plugins.no_exit``'s
    os._exit (it raises): the worker leaves by the real one all the same — it never goes on
    running the parent's code (which would print the results twice)."""
    proc = subprocess.run([sys.executable, "-c", LEAVE_DURING_PLUGIN_CODE], capture_output=True, text=True,
                          timeout=BOUND, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[(0, 0), (1, 1), (2, 4), (3, 9), (4, 16), (5, 25)]\n", proc.stdout
    assert proc.stderr == ""


def test_workers_are_capped_by_jobs_and_usable_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert pool.usable_cores() == 3
    assert pool.cap(1000, 2) == 2
    assert pool.cap(1000, 50) == 3
    assert pool.cap(1, 50) == 1
    assert pool.cap(4, 0) == 1


def test_chunks_travel_in_trips_of_one_target_large_first():
    """Every chunk goes exactly once and in order; a trip holds one target's chunks; trips
    shrink as the work left does (the last ones even the workers out)."""
    from cnngrad.finite_diff.workers import trips

    jobs = [(0, i, i + 1) for i in range(7)] + [(1, 5 * i, 5 * i + 5) for i in range(300)]
    got = trips(jobs, [2, 3], workers=2)
    assert [job for trip in got for job in trip] == jobs
    assert all(len({ti for ti, _, _ in trip}) == 1 for trip in got)
    big = [len(trip) for trip in got if trip[0][0] == 1]
    assert big[0] > 10 * big[-1] and big[-1] == 1 and len(got) < len(jobs) // 4


def test_numbers_are_the_same_with_any_worker_count():
    from cnngrad import finite_diff
    from cnngrad.config import load
    from cnngrad.finite_diff import workers as chunks
    from cnngrad.network import build
    from cnngrad.refs import TensorRef

    problem = build(load("lenet"))
    targets = [(TensorRef.delta(0), np.arange(problem.x.size)),
               (TensorRef.param(0, "W"), np.arange(problem.net.layers[0].params["W"].size))]
    runs = []
    for workers in (1, 2):
        old = chunks.PARALLEL_WORK
        chunks.PARALLEL_WORK = 0  # share even this small check
        try:
            fd = finite_diff.FiniteDifferences(problem.net, problem.x, problem.y, 1e-6, workers=workers,
                                               memory_budget=1 << 18)
            runs.append([(n.values.tobytes(), n.kinks.tobytes()) for n in fd.numeric(targets)])
        finally:
            chunks.PARALLEL_WORK = old
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------- the command line


def test_a_killed_check_worker_is_an_exit_2_error_naming_the_config(tmp_path):
    proc, pids = start(tmp_path, write(tmp_path, "slow.yaml", SLOW), "--quiet")
    first = wait_for_pids(proc, pids, 1)[0]
    os.kill(first, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=BOUND)
    assert proc.returncode == 2, (stdout, stderr)
    assert stderr.startswith("Error: slow.yaml: worker process ") and "killed by SIGKILL" in stderr
    assert len(stderr.splitlines()) == 1
    assert_silent(stderr)


def test_a_killed_jobs_worker_fails_its_config_and_the_others_still_report(tmp_path):
    slow = write(tmp_path, "slow.yaml", SLOW)
    tiny = write(tmp_path, "tiny.yaml", TINY)
    proc, pids = start(tmp_path, slow, tiny, "--jobs", "2", "--quiet")
    first = wait_for_pids(proc, pids, 1)[0]  # the first worker takes the first config
    os.kill(first, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=BOUND)
    assert proc.returncode == 2, (stdout, stderr)
    assert "Error: slow.yaml: worker process" in stderr and "killed by SIGKILL" in stderr
    assert "PASSED: 5/5 tensors" in stdout  # tiny.yaml was checked all the same
    assert_silent(stderr)


@pytest.mark.parametrize("sig, code, group", [(signal.SIGINT, 130, False), (signal.SIGINT, 130, True),
                                              (signal.SIGINT, 130, True), (signal.SIGTERM, 143, False),
                                              (signal.SIGTERM, 143, True)])
def test_a_signal_stops_a_shared_check_with_the_partial_report(tmp_path, sig, code, group):
    """To the parent alone, or to its whole process group (a terminal's Ctrl-C, ``kill -TERM -PGID``)."""
    proc, pids = start(tmp_path, write(tmp_path, "slow.yaml", SLOW))
    workers = wait_for_pids(proc, pids, 2)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=BOUND)  # a deadlock (Pool.terminate's) fails here
    assert proc.returncode == code, (stdout, stderr)
    assert "slow: interrupted after" in stdout
    assert stderr.splitlines()[-1].startswith("interrupted: 0 of 1 configs checked")
    assert_silent(stderr)
    assert all(gone(p) for p in workers)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_jobs_with_what_finished(tmp_path, sig, code):
    proc, pids = start(tmp_path, write(tmp_path, "slow.yaml", SLOW), write(tmp_path, "slow2.yaml", SLOW),
                       "--jobs", "2")
    workers = wait_for_pids(proc, pids, 2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=BOUND)
    assert proc.returncode == code, (stdout, stderr)
    assert "interrupted: 0 of 2 configs checked" in stderr
    assert_silent(stderr)
    assert all(gone(p) for p in workers)


def test_jobs_fork_no_more_workers_than_configs(tmp_path):
    a, b = write(tmp_path, "a.yaml", TINY), write(tmp_path, "b.yaml", TINY.replace("units: 3", "units: 4"))
    proc, pids = start(tmp_path, a, b, "--jobs", "1000", "--quiet")
    stdout, stderr = proc.communicate(timeout=BOUND)
    assert proc.returncode == 0, (stdout, stderr)
    assert 1 <= len(pids.read_text().split()) <= min(2, pool.usable_cores())
    assert stdout.count("PASSED") == 2


# --------------------------------------------------------------------------- progress


def test_progress_counts_work_not_entries():
    calls: list[tuple[int, int]] = []
    check("lenet", progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1] > 0  # all the work planned was done
    # an entry of ∂C/∂x runs the whole network; one of the last bias only the loss: far less work
    from cnngrad import finite_diff
    from cnngrad.config import load
    from cnngrad.finite_diff import planning
    from cnngrad.network import build
    from cnngrad.refs import TensorRef

    problem = build(load("lenet"))
    fd = finite_diff.FiniteDifferences(problem.net, problem.x, problem.y, 1e-6)
    last = len(problem.net.layers) - 1
    whole, bias = planning.plan(fd, TensorRef.delta(0)), planning.plan(fd, TensorRef.param(last, "b"))
    assert whole.row_bytes > 20 * bias.row_bytes


def test_the_bar_has_a_row_per_config_in_flight_and_a_config_count():
    buf = io.StringIO()
    bar = LazyProgress(after=0.0, console=Console(file=buf, force_terminal=True, width=100))
    bar.configs(0, 3)
    bar.update(0, "a", 10, 100)
    bar.update(1, "[b]", 50, 100)  # a name is text, not markup
    assert bar.bar is not None and len(bar.bar.tasks) == 3
    bar.finish(0)
    bar.configs(1, 3)
    assert [t.description for t in bar.bar.tasks] == ["configs 1/3", r"\[b]"]
    bar.close()
    assert "configs" in buf.getvalue()


# --------------------------------------------------------------------------- limits: memory and depth


def deep(tmp_path: Path, layers: int) -> str:
    body = "".join("  - dense: {units: 3}\n" if i % 2 else "  - activation: tanh\n" for i in range(layers - 1))
    return write(tmp_path, f"deep{layers}.yaml", "input: {batch: 1, channels: 1, height: 2, width: 2}\n"
                                                 f"layers:\n  - flatten: {{}}\n{body}loss: mse\n")


def test_a_very_deep_config_is_refused_before_it_is_built(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cnngrad import checker
    from cnngrad.cli import main

    def never(*args, **kw):
        raise AssertionError("built a network the limits refuse")

    monkeypatch.setattr(checker, "build", never)
    path = str(tmp_path / deep(tmp_path, 8000))
    result = CliRunner().invoke(main, ["check", path])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: layers: deep8000 has 8,000 layers, more than --max-layers 1,000")
    assert "layer forward calls" in result.stderr and "raise --max-layers" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    result = CliRunner().invoke(main, ["check", str(tmp_path / deep(tmp_path, 30)), "--max-layers", "20"])
    assert result.exit_code == 2 and "more than --max-layers 20" in result.stderr
    monkeypatch.undo()
    result = CliRunner().invoke(main, ["check", str(tmp_path / deep(tmp_path, 30)), "--max-layers", "30", "--quiet"])
    assert result.exit_code in (0, 1), result.output  # within the limit: checked


def test_planning_is_linear_in_depth_and_agrees_with_the_estimate(tmp_path):
    """The engine's bytes per row from every start layer, in one pass, equal a plain sum per
    start (the old quadratic way), and the estimate's model of them."""
    from cnngrad import finite_diff
    from cnngrad.config import load
    from cnngrad.network import build
    from cnngrad.resources import suffix_row_bytes

    for ref in ("lenet", "strided", "maxpool", str(tmp_path / deep(tmp_path, 40))):
        config = load(ref)
        problem = build(config)
        fd = finite_diff.FiniteDifferences(problem.net, problem.x, problem.y, 1e-6)
        plain = []
        for start in range(len(config.layers) + 1):
            total = 0
            for spec in config.layers[start:]:
                out = int(np.prod(spec.out_shape))
                taps = int(np.prod(spec.options.get("kernel", spec.options.get("size", (1, 1)))))
                total += 3 * out + (spec.in_shape[0] * taps * int(np.prod(spec.out_shape[1:]))
                                    if spec.kind in ("conv", "pool") else 0)
            plain.append(max(total, 1) * 8)
        assert fd.row_bytes == plain == suffix_row_bytes(config)


def test_the_estimate_grows_with_every_mode():
    from cnngrad.config import load
    from cnngrad.resources import estimate

    lenet = load("lenet")
    base = estimate(lenet, workers=1)
    assert estimate(lenet, workers=1, method="complex").memory_mb > base.memory_mb  # complex rows: twice the bytes
    assert estimate(lenet, workers=1, method="richardson").passes == 2 * base.passes  # 4 steps, not 2
    assert estimate(lenet, workers=1, convergence=True).memory_mb > base.memory_mb  # a second engine at h/2
    assert estimate(lenet, workers=1, directions=1000).memory_mb > estimate(lenet, workers=1, directions=10).memory_mb
    assert estimate(lenet, workers=2).memory_mb > base.memory_mb  # lenet is large enough to share


def test_memory_refusal_names_the_estimate_the_mode_and_the_flag(tmp_path):
    from click.testing import CliRunner

    from cnngrad.cli import main

    result = CliRunner().invoke(main, ["check", "lenet", "--directions", "1000", "--max-memory", "100"])
    assert result.exit_code == 2
    assert "lenet needs about" in result.stderr and "1000 directions" in result.stderr
    assert "more than --max-memory 100 MB" in result.stderr and "raise --max-memory" in result.stderr
    a, b = write(tmp_path, "a.yaml", TINY), write(tmp_path, "b.yaml", TINY)
    one = CliRunner().invoke(main, ["check", str(tmp_path / a), "--max-memory", "80"])
    assert one.exit_code == 0, one.output  # alone it fits in 80 MB
    result = CliRunner().invoke(main, ["check", str(tmp_path / a), str(tmp_path / b), "--jobs", "2",
                                       "--max-memory", "80"])
    if pool.usable_cores() > 1:  # two configs at once: each gets half of 80 MB, less than the interpreter
        assert result.exit_code == 2 and "with --jobs 2 (40 MB)" in result.stderr and "lower --jobs" in result.stderr


@pytest.mark.parametrize("samples, mode", [(50, []), (50, ["--method", "complex"]), (20, ["--method", "richardson"]),
                                           (50, ["--directions", "20"]), (50, ["--convergence"])])
def test_the_estimate_is_within_2x_of_the_measured_peak(samples, mode):
    """One process (--samples keeps lenet below the size that forks workers): its peak RSS
    from wait4, exact, against the estimate.  Through a small python that forks it: a
    child's peak starts at its spawner's size (Linux keeps the old image's high-water mark
    across exec), and pytest is large."""
    from cnngrad.config import load
    from cnngrad.resources import estimate

    wrap = ("import os, sys\npid = os.fork()\nif pid == 0:\n    os.dup2(2, 1)\n"
            "    os.execv(sys.executable, [sys.executable] + sys.argv[1:])\n"
            "_, status, usage = os.wait4(pid, 0)\nprint(usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n")
    run = subprocess.run([sys.executable, "-c", wrap, "-m", "cnngrad", "check", "lenet", "--samples", str(samples),
                          *mode, "--quiet"], capture_output=True, text=True, timeout=BOUND)
    maxrss_kb, code = map(int, run.stdout.split())
    assert code == 0, run.stderr
    kw = {"method": mode[1]} if mode[:1] == ["--method"] else {"directions": int(mode[1])} \
        if mode[:1] == ["--directions"] else {"convergence": True} if mode else {}
    est = estimate(load("lenet"), samples=samples, **kw)
    assert est.processes == 1
    peak = maxrss_kb / 1024
    assert 0.5 <= est.memory_mb / peak <= 2.0, (est.memory_mb, peak)


def test_ctrl_c_before_any_row_still_reports_the_config_and_writes_no_baseline(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cnngrad import cli

    def interrupted(*args, **kw):
        raise KeyboardInterrupt  # as if it came while loading or planning, before any row

    monkeypatch.setattr(cli, "run_check", interrupted)
    result = CliRunner().invoke(cli.main, ["check", "lenet", "seed"])
    assert result.exit_code == 130
    assert "lenet: interrupted after 0 finished tensors" in result.stdout
    assert "interrupted: 0 of 2 configs checked" in result.stderr
    out = tmp_path / "base.json"
    result = CliRunner().invoke(cli.main, ["baseline", "record", "lenet", "-o", str(out)])
    assert result.exit_code == 130 and not out.exists()
    assert "no baseline written" in result.stderr
