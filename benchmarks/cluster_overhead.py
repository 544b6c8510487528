"""Orchestration overhead per trial of a search on a two-node Ray cluster vs one node, for the same trials.

Runs the same small search on two set-ups, in one run, each search on a Ray cluster this script starts on this
machine for it and stops afterwards (by the process groups and temp dirs it started, never `ray stop`):

- one node: `ray start --head` with the trial CPUs; the trials run beside the driver and see the run directory;
- two nodes: a head with no CPU (the driver's node, where the study and the run directory live) and a second
  `ray start --address` node with the trial CPUs, started in a mount namespace where the runs' parent folder is
  an empty tmpfs (as tests/test_cluster.py does; needs root and `unshare`, else the second node sees the folder
  and the script says so). Every trial runs on the second node: it builds the teacher targets in a node-local
  cache and its files come back through Ray to a sink actor on the head.

Both searches are `sslc-search --ray-address ...` processes with the same settings: `random:tiny` teacher, demo
audio, budget 100% (every config is trained), the random sampler with a fixed seed (so both train the same
configs in the same order, whatever the timing), 2 concurrent trials of 1 CPU, no early stopping, no baselines.

Per trial, from the study's timestamps (a trial is asked when Tune wants to start one and told when its final
result reached the driver):
- in-trial overhead: ask -> tell minus the trial's own `seconds_training` (scheduling it on a node, building and
  measuring the student, held-out evaluation, sending its files, reporting back);
- gap: the previous trial's tell -> this trial's ask on the same slot (Tune's loop);
- the first trial on each slot also starts a worker process (imports, teacher, targets cache): shown apart.
The per-trial overhead of a set-up = median in-trial overhead of the trials that were not first on their slot
+ median gap (all trials when every trial was first, as in --quick). The headline is its ratio two-node /
one-node. This machine's load drifts (other jobs share its cores), so by default each set-up runs twice, in the
order one, two, two, one, and the medians pool both rounds; it also prints the overhead as a share of the median
training time of a trial, which a uniform slow-down leaves unchanged.

Both "nodes" share this machine's cores, so the two-node run also pays for a second raylet and its daemons on the
same CPUs: on real machines that part is not on the trials' cores. `--quick` runs 2 trials of 2 steps: it checks
that the benchmark works (CI runs it); its figure means nothing.

Measured here (2 shared cores, load average 4-6 from other jobs; 2 rounds of 10 trials x 30 steps, 5 min 41 s
in all): per-trial overhead 0.616 s on one node vs 0.783 s on two nodes (ratio 1.27; 0.138 vs 0.155 of a trial's
median training time); trial files through Ray 13.5 vs 41.0 ms for 0.24 MB; first trial on a slot 22.5 vs 23.3 s
beyond training; search wall time 63.4 vs 68.0 s. One earlier single round of 12 trials x 40 steps: 0.691 vs
0.983 s (1.42), its two-node search under a heavier load (training took 1.9x as long).

The last line is the headline: `cluster_overhead: <two-node / one-node per-trial overhead>`.

    python benchmarks/cluster_overhead.py [--trials 10] [--steps 30] [--rounds 2] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState
from search_overhead import (
    assign_slots,  # the sibling benchmark's slot assignment (this script's folder is on the path)
)

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
TEACHER = "random:tiny"
TRIALS = 10
STEPS = 30  # ~3-4 s of training a trial here: the overhead is not drowned in training time, the run stays short
ROUNDS = 2  # searches per set-up: one, two, two, one (a drift in this shared machine's load cancels)
SLOTS = 2  # trial CPUs on the node that runs the trials, in both set-ups
BATCH_SIZE = 4
CROP_SECONDS = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_ports() -> list[str]:
    # Two nodes on one machine: Ray's fixed default ports (the dashboard agent's 52365, ...) would clash.
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]


def can_hide() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


class Cluster:
    """Ray nodes started by this script: each `ray start` in a process group of its own (its daemons stay in
    it), stopped by that group's id; each node's temp dir removed afterwards."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs = env, logs
        self.groups: list[int] = []
        self.temp_dirs: list[Path] = []
        self.address: str | None = None

    def start(self, label: str, args: list[str], hide: Path | None = None) -> None:
        temp = Path("/tmp") / f"sslc-ray-{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths have a length limit
        self.temp_dirs.append(temp)
        command = [str(RAY), "start", f"--temp-dir={temp}", *node_ports(), *args]
        if hide is not None:
            command = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                       'mount -t tmpfs sslc-hidden "$0" && exec "$@"', str(hide), *command]
        log = self.logs / f"{label}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.groups.append(process.pid)
        if process.wait(timeout=180) != 0:
            raise RuntimeError(f"ray start ({label}) failed: {log.read_text()[-2000:]}")

    def head(self, cpus: int) -> None:
        port = free_port()
        self.start("head", ["--head", f"--port={port}", f"--num-cpus={cpus}", "--include-dashboard=false"])
        self.address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        for sig, pause in ((signal.SIGTERM, 5), (signal.SIGKILL, 0)):
            for group in reversed(self.groups):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, sig)
            time.sleep(pause)
        for temp in self.temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)


def run_search(address: str, run_dir: Path, trials: int, steps: int, env: dict) -> float:
    """One `sslc-search` on the cluster at `address`; returns its wall time (process start to exit)."""
    command = [
        sys.executable, "-m", "sslc.cli.search", "--ray-address", address, "--teacher", TEACHER, "--data", "demo",
        "--budget", "100%", "--trials", str(trials), "--steps", str(steps), "--batch-size", str(BATCH_SIZE),
        "--crop-seconds", str(CROP_SECONDS), "--sampler", "random", "--seed", "0", "--concurrency", str(SLOTS),
        "--latency-repeats", "1", "--name", "overhead", "--run-dir", str(run_dir),
        "--storage", f"sqlite:///{run_dir / 'study.db'}", "--no-report", "--no-baselines", "--no-early-stopping",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the search failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def measure(run_dir: Path, wall: float) -> dict:
    """One search's figures from its study (lists are per trial, pooled across rounds by `pool`)."""
    study = optuna.load_study(study_name="overhead", storage=f"sqlite:///{run_dir / 'study.db'}")
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) != len(trials):
        reasons = {t.number: t.user_attrs.get("fail_reason") for t in trials if t.state != TrialState.COMPLETE}
        raise RuntimeError(f"not every trial completed: {reasons}")

    def in_trial(t) -> float:
        return (t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["seconds_training"]

    lanes = assign_slots(complete, SLOTS)
    firsts = {lane[0].number for lane in lanes if lane}
    window = (max(t.datetime_complete for t in complete) - min(t.datetime_start for t in complete)).total_seconds()
    training = sum(t.user_attrs["seconds_training"] for t in complete)
    return {
        "trials": len(complete),
        "configs": [t.user_attrs["config"] for t in sorted(complete, key=lambda t: t.number)],
        "nodes": sorted({t.user_attrs.get("node", "?") for t in complete}),
        "wall": [wall],
        "window": [window],
        "training": [training],
        "training_per_trial": [t.user_attrs["seconds_training"] for t in complete],
        "first": [in_trial(t) for t in complete if t.number in firsts],
        "steady": [in_trial(t) for t in complete if t.number not in firsts],
        "gap": [(b.datetime_start - a.datetime_complete).total_seconds() for lane in lanes
                for a, b in zip(lane, lane[1:])],
        "window_per_trial": [(SLOTS * window - training) / len(complete)],
        "artifact_ms": [1e3 * t.user_attrs["artifact_seconds"] for t in complete],
        "artifact_mb": [t.user_attrs["artifact_bytes"] / 1e6 for t in complete],
    }


def pool(results: list[dict]) -> dict:
    """The rounds of one set-up together: lists concatenated; configs and nodes must agree."""
    pooled = {key: [v for r in results for v in r[key]] for key in results[0] if isinstance(results[0][key], list)}
    pooled.update(trials=results[0]["trials"], configs=results[0]["configs"],
                  nodes_per_search=max(len(r["nodes"]) for r in results))
    if any(r["configs"] != pooled["configs"] for r in results):
        raise RuntimeError("two rounds trained different configs: the comparison would not be fair")
    pooled["per_trial"] = statistics.median(pooled["steady"] or pooled["first"]) + (
        statistics.median(pooled["gap"]) if pooled["gap"] else 0.0)
    return pooled


def one_setup(label: str, two_nodes: bool, runs: Path, trials: int, steps: int, env: dict) -> dict:
    runs.mkdir()  # the runs' parent folder: hidden on the second node
    run_dir = runs / "run"
    cluster = Cluster(env, runs.parent)
    node_cache = None
    try:
        started = time.perf_counter()
        if two_nodes:
            cluster.head(cpus=0)  # the driver's node runs no trial
            cluster.start("worker", [f"--address={cluster.address}", f"--num-cpus={SLOTS}"],
                          hide=runs if can_hide() else None)
        else:
            cluster.head(cpus=SLOTS)
        print(f"{label}: cluster started in {time.perf_counter() - started:.1f} s; searching ...", flush=True)
        wall = run_search(cluster.address, run_dir, trials, steps, env)
        with contextlib.suppress(OSError):
            node_cache = Path(tempfile.gettempdir()) / "sslc-cache" / (run_dir / "cache" / "run-id").read_text().strip()
        return measure(run_dir, wall)
    finally:
        cluster.stop()
        if node_cache is not None:  # the second node's own targets cache for this run (none on one node)
            shutil.rmtree(node_cache, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="searches per set-up, in the order one, two, two, one, ... (load drift cancels)")
    parser.add_argument("--quick", action="store_true", help="2 trials of 2 steps, one round: does it still run?")
    args = parser.parse_args()
    trials, steps, rounds = (2, 2, 1) if args.quick else (args.trials, args.steps, args.rounds)
    # Ray's token authentication, as its `ray start` requires by default: a fresh token for these clusters.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    order = [["one node", "two nodes"][(i + i // 2) % 2] for i in range(2 * rounds)]  # one two two one one ...
    print(f"{'quick mode: ' if args.quick else ''}{trials} trials x {steps} steps (batch {BATCH_SIZE} x "
          f"{CROP_SECONDS:g} s) of {TEACHER} on demo audio, random sampler seed 0, {SLOTS} slots; {rounds} "
          f"round(s): {', '.join(order)}; {os.cpu_count()} CPU cores on this machine")
    if not can_hide():
        print("note: not root or no `unshare`: the second node sees the run directory (its caches are shared)")
    results: dict[str, list[dict]] = {"one node": [], "two nodes": []}
    with tempfile.TemporaryDirectory(prefix="sslc-cluster-") as tmp:
        for index, label in enumerate(order):
            result = one_setup(label, label == "two nodes", Path(tmp) / str(index), trials, steps, env)
            results[label].append(result)
            print(f"  {label}: search {result['wall'][0]:.1f} s, training {result['training'][0]:.1f} s in all",
                  flush=True)
    one, two = pool(results["one node"]), pool(results["two nodes"])
    if one["configs"] != two["configs"]:
        raise RuntimeError("the two set-ups trained different configs: the comparison would not be fair")
    print(f"same {one['trials']} configs trained in every search; within a search the trials ran on "
          f"{one['nodes_per_search']} node (one node) and {two['nodes_per_search']} node (two nodes: the second one, "
          f"e.g. {', '.join(results['two nodes'][-1]['nodes'])})")

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    rows = [
        ("sslc-search wall time, per search (s)", "wall", "{:.1f}"),
        ("trial window, first ask -> last tell, per search (s)", "window", "{:.1f}"),
        ("training, sum of seconds_training, per search (s)", "training", "{:.1f}"),
        ("training per trial, median (s)", "training_per_trial", "{:.2f}"),
        ("first trial on a slot, beyond training, median (s)", "first", "{:.2f}"),
        ("later trials: ask -> tell minus training, median (s)", "steady", "{:.3f}"),
        ("gap tell -> next ask on a slot, median (s)", "gap", "{:.3f}"),
        (f"window x {SLOTS} slots - training, per trial (slot-s)", "window_per_trial", "{:.3f}"),
        ("trial files through Ray, median (ms)", "artifact_ms", "{:.1f}"),
        ("trial files, median (MB)", "artifact_mb", "{:.2f}"),
    ]
    print(f"{'':56s} {'one node':>10s} {'two nodes':>10s}")
    for label, key, fmt in rows:
        cells = [fmt.format(median(r[key])) for r in (one, two)]
        print(f"{label:56s} {cells[0]:>10s} {cells[1]:>10s}")
    share = {name: r["per_trial"] / median(r["training_per_trial"]) for name, r in (("one", one), ("two", two))}
    print(f"per-trial overhead / median training per trial (a load-robust view): one node {share['one']:.3f}, "
          f"two nodes {share['two']:.3f}")
    print(f"per-trial orchestration overhead (median in-trial overhead of trials not first on their slot + median "
          f"gap): one node {one['per_trial']:.3f} s, two nodes {two['per_trial']:.3f} s")
    print(f"cluster_overhead: {two['per_trial'] / one['per_trial']:.2f}")


if __name__ == "__main__":
    main()
