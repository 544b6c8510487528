"""Trial files reach the run directory through Ray, never through a path a worker assumes it shares.

A trial worker may run on another node whose disk has no run directory (or a different one at the same path).
So it writes what the run keeps (`config.json`, `student.pt`, `error.txt`) into a temp directory of its own and
sends the bytes to an `ArtifactSink`: a zero-CPU actor pinned to the driver's node, which writes them into
`<run_dir>/trials/<n>/`. The bytes travel through Ray's object store.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class ArtifactSink:
    """Runs on the driver's node (see `start_sink`): writes each trial's files into the run directory."""

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)

    def store(self, trial_number: int, files: dict[str, bytes]) -> int:
        """Write `files` (name -> bytes) into trials/<trial_number>/, each atomically; returns the bytes written."""
        trial_dir = self.run_dir / "trials" / str(int(trial_number))
        trial_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            if Path(name).name != name:  # only plain file names from a trial's own directory
                raise ValueError(f"bad artifact name {name!r}")
            partial = trial_dir / f".{name}.partial"
            partial.write_bytes(data)
            os.replace(partial, trial_dir / name)
        return sum(len(data) for data in files.values())


def start_sink(run_dir: Path):
    """The sink actor, on this (the driver's) node; Ray must be initialised."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0)(ArtifactSink).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    )
    return actor.remote(str(run_dir))


def send_trial_files(sink, trial_number: int, local_dir: Path) -> dict:
    """In a worker: send every file of `local_dir` to the sink and wait until written. Returns what it cost."""
    import ray

    started = time.perf_counter()
    files = {path.name: path.read_bytes() for path in sorted(local_dir.iterdir()) if path.is_file()}
    written = ray.get(sink.store.remote(trial_number, files))
    return {"artifact_bytes": written, "artifact_seconds": time.perf_counter() - started}


def node_name() -> str:
    """This worker's node, for messages: its IP and the start of its Ray node id."""
    import ray

    try:
        return f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"
    except Exception:  # not inside Ray (an in-process call)
        import socket

        return socket.gethostname()
