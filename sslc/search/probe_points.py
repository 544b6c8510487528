"""Several models probed at once (the finalists of `sslc-search --finalists`): Ray schedules them.

Each model is one Ray task on the driver's machine (the run's weights and the probe's audio are local files),
holding one GPU where the machine has GPUs, else its share of the CPUs (at least one, run on that many threads), as
`retrain_points` holds a point's: small students use a second intra-op thread poorly (measured for retrains
there), so on a CPU machine several models are probed side by side, one thread each, rather than one after
another on every core. Each task loads
its model and runs sslc-probe's probe (`sslc.probes.results.probe_target`); the rows come back to the driver,
which records them.
"""

from __future__ import annotations

from dataclasses import replace


def probe_resources(models: int, cpus: int | None = None) -> tuple[float, float]:
    """(CPUs, GPUs) one of `models` probes' task holds on the driver's machine (`cpus`: that many, no GPU)."""
    import ray

    if cpus is not None:
        return float(cpus), 0.0
    here = ray.get_runtime_context().get_node_id()
    node = next(n["Resources"] for n in ray.nodes() if n["NodeID"] == here)
    if node.get("GPU", 0) >= 1:
        return 1.0, 1.0
    return max(1.0, node.get("CPU", 1) // max(models, 1)), 0.0


def _probe_model(spec: str, examples, settings, units: str | None, threads: int) -> dict:
    """One model, in its Ray task: sslc-probe's result row."""
    import torch

    from sslc.probes.results import probe_target, resolve_targets

    torch.set_num_threads(threads)
    train, heldout = examples
    target = resolve_targets([spec], False, settings.device, say=lambda _: None)[0]
    return probe_target(target, train, heldout, settings, units)


def probe_points(specs: list[str], train, heldout, settings, units: str | None, cpus: int | None = None
                 ) -> list[dict]:
    """sslc-probe's row of each model named in `specs` (sslc-probe's MODEL forms), its probe trained on `train` and
    scored on `heldout` by `settings` (its device is replaced by the task's), each model a Ray task (Ray must be
    initialised) of `probe_resources`; rows in `specs`' order. A failed probe raises its error."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not specs:
        return []
    cpus, gpus = probe_resources(len(specs), cpus)
    settings = replace(settings, device="cuda" if gpus else "cpu")
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(_probe_model).options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=here, max_retries=0)
    examples = ray.put((list(train), list(heldout)))
    try:
        return ray.get([task.remote(spec, examples, settings, units, int(cpus)) for spec in specs])
    except ray.exceptions.RayTaskError as error:
        raise error.cause from None  # the probe's own error (a UserError stays one line)
