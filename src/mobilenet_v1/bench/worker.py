"""One process per configuration, timed in interleaved rounds.

Each worker builds its backend(s) and warms up while the others sit idle, then waits. The parent asks
the workers for one round at a time, alternating A B C … then … C B A, so slow drifts in machine load
(other jobs on a shared host) hit every configuration alike and the ratios between them hold.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass

import numpy as np

from .backends import Job, build

WARMUP_ITERS = 3
# Before each timed round too (at least 2 runs and 50 ms): the worker timed just before may leave threads
# spinning for a while (ONNX Runtime's pool and OpenMP both spin before they sleep), and its data in the caches.
ROUND_WARMUP_ITERS, ROUND_WARMUP_S = 2, 0.05


@contextlib.contextmanager
def omp_wait_policy(policy: str | None):
    """``OMP_WAIT_POLICY`` as a spawned worker will see it (``None``: unset, the OpenMP runtime's default).

    libgomp reads it once, when torch loads. PASSIVE (threads sleep between parallel regions), which this
    project's CI exports so that concurrent test processes don't starve each other, adds a wake-up to each
    of the ~60 parallel regions of a batch-1 forward: our fused PyTorch path took 20.4 ms instead of 14.9 ms
    on a 2-core AVX2 CPU. A bench worker runs alone, so by default it gets the runtime's own policy.
    """
    before = os.environ.get("OMP_WAIT_POLICY")
    os.environ.pop("OMP_WAIT_POLICY", None)
    if policy:
        os.environ["OMP_WAIT_POLICY"] = policy
    try:
        yield
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)
        if before is not None:
            os.environ["OMP_WAIT_POLICY"] = before


def _serve(conn, jobs: list[Job], batches: list[int], threads: int) -> None:
    """Worker main loop: build every (job, batch) runner, warm each up, then answer timing requests."""
    try:
        runners = {}
        for j, job in enumerate(jobs):
            for batch in batches:
                run = build(job, batch, threads)
                for _ in range(WARMUP_ITERS):  # includes torch.compile's compilation and oneDNN's first packing
                    run()
                runners[j, batch] = run
        conn.send(("ready", None))
    except Exception as e:  # reported to the parent, which lists the backend as skipped with the reason
        conn.send(("error", f"{type(e).__name__}: {e}".splitlines()[0] or traceback.format_exc(limit=1)))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        _, j, batch, iters = msg
        run, times = runners[j, batch], []
        start, warm = time.perf_counter(), 0
        while warm < ROUND_WARMUP_ITERS or time.perf_counter() - start < ROUND_WARMUP_S:
            run()
            warm += 1
        for _ in range(iters):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        conn.send(("times", times))


@dataclass
class Worker:
    name: str
    process: mp.Process
    conn: object

    def round(self, job: int, batch: int, iters: int) -> list[float]:
        self.conn.send(("round", job, batch, iters))
        kind, payload = self.conn.recv()
        return payload

    def stop(self) -> None:
        try:
            self.conn.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def start_worker(
    name: str, jobs: list[Job], batches: list[int], threads: int, wait_policy: str | None = None
) -> tuple[Worker | None, str | None]:
    """Start and warm up one worker; blocks until it is ready so builds never overlap with timing."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: no state (threads, compiled kernels) shared with us
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(child, jobs, batches, threads), daemon=True)
    with omp_wait_policy(wait_policy):  # the child copies our environment when it starts
        process.start()
    child.close()
    try:
        kind, payload = parent.recv()
    except EOFError:
        kind, payload = "error", f"worker exited with code {process.exitcode} while building"
    worker = Worker(name, process, parent)
    if kind == "error":
        worker.stop()
        return None, payload
    return worker, None


def interleave(
    workers: list[Worker], job_index: int, batch: int, rounds: int, iters: int
) -> dict[str, list[list[float]]]:
    """``rounds`` rounds of ``iters`` iterations per worker, in alternating order; seconds per iteration."""
    times: dict[str, list[list[float]]] = {w.name: [] for w in workers}
    for r in range(rounds):
        order = workers if r % 2 == 0 else workers[::-1]
        for w in order:
            times[w.name].append(w.round(job_index, batch, iters))
    return times


def summarize(rounds: list[list[float]]) -> tuple[float, float, tuple[float, float]]:
    """(median of round medians, p90 of all iterations, (min, max) of round medians), all in ms."""
    medians = [float(np.median(r)) * 1e3 for r in rounds]
    every = np.concatenate([np.asarray(r) for r in rounds]) * 1e3
    return float(np.median(medians)), float(np.percentile(every, 90)), (min(medians), max(medians))
