"""`run_search`: the whole search, from settings to a Pareto front on disk.

Order: check everything a user can get wrong (budget, space, teacher, data) before starting Ray; open or resume
the study; run trials with Ray Tune (the searcher asks Optuna, the trainable distils); then, whatever happened,
leave no trial RUNNING and write the Pareto front.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch

from sslc.budget import Budget, BudgetSpec, parse_budget, parse_count
from sslc.errors import SearchFailed, UserError, one_line
from sslc.metrics import (
    count_macs,
    count_macs_superb,
    count_params,
    count_params_from_config,
    format_macs,
    macs_in_convention,
)
from sslc.models.teachers import describe_teacher
from sslc.runs.storage import check_driver, default_storage_url, make_storage, mark_study, shown_url
from sslc.runs.study import (
    BaselineRecord,
    StudyRecord,
    TeacherRecord,
    record_anytime,
    record_baselines,
    record_trial_devices,
)
from sslc.runs.trials import count_trained, pending_retries, rung_history, stopping_history
from sslc.search.inputs import prepare_inputs, train_crops
from sslc.spaces import SearchSpace
from sslc.trainers import EvaluationProtocol, TrainerConfig, parse_targets

from .anytime import anytime_dir, check_space, train_shared_weights
from .artifacts import start_sink
from .baselines import baseline_configs, warm_start_configs
from .device_gate import start_gate
from .devices import TrialDevices, trial_devices, visible_gpus
from .finalists import check_finalists, run_finalists
from .pareto import pareto_table, write_pareto
from .plan import plan_search
from .progress import SearchProgress
from .samplers import make_sampler, startup_trials
from .scheduler import DominanceStopper, ParetoHalving
from .searcher import OptunaAskTellSearcher
from .settings import FIDELITY_ETA, SearchSettings
from .storage import open_study, recover_interrupted
from .trial import BeforeTraining, TrialSetup, train_baseline, train_candidate

log = logging.getLogger("sslc.search")
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress line and the study say what happened

__all__ = ["SearchSettings", "SearchResult", "run_search", "search_budget", "trainer_config"]


@dataclass
class SearchResult:
    run_dir: Path
    storage_url: str
    study_name: str
    pareto: list[dict]
    interrupted: bool
    counts: dict
    finalists: dict | None = None  # the finalist stage's record (sslc.search.finalists), when it ran


def _run_dir(settings: SearchSettings) -> tuple[str, Path]:
    name = settings.name or time.strftime("search-%Y%m%d-%H%M%S")
    run_dir = Path(settings.run_dir) if settings.run_dir else Path("runs") / name
    return name, run_dir.resolve()  # created by prepare_inputs once teacher and data load: bad input leaves none


def search_budget(settings: SearchSettings, teacher_macs: int, spec: BudgetSpec | None = None) -> Budget:
    """The limits a search with `settings` enforces, for a teacher of `teacher_macs` MACs (in
    `settings.macs_convention`: per budget_seconds, or SUPERB's sum); `spec` is `settings.budget` parsed, when the
    caller has parsed it already."""
    spec = parse_budget(settings.budget) if spec is None else spec
    max_params = parse_count(settings.max_params) if settings.max_params else None
    if settings.max_latency_ms is not None and not settings.max_latency_ms > 0:
        raise UserError("--max-latency-ms must be > 0")
    return Budget(
        spec.resolve(teacher_macs), settings.budget_seconds, max_params, settings.max_latency_ms,
        settings.macs_convention,
    )


# Before a search, this many configs are drawn at random from the space; when fewer than MIN_FEASIBLE_SHARE of
# them fit the budget, the sampler would mostly propose over-budget configs (recorded, never trained) and could
# run into MAX_INFEASIBLE_IN_A_ROW, so the budget is refused at once with the range the space can reach.
FEASIBILITY_DRAWS = 400
MIN_FEASIBLE_SHARE = 0.02


def _check_feasible(space: SearchSpace, teacher_config, budget: Budget, seed: int = 0) -> None:
    """A budget below the smallest config of the space cannot be met, and one that only a sliver of the space
    meets would mostly be missed: say so before anything is trained."""

    def cost(config) -> tuple[int, int]:  # MACs in the budget's convention, params
        arch = config.student_architecture(teacher_config)
        return macs_in_convention(arch, budget.convention, budget.seconds), count_params_from_config(arch)

    low, high = cost(space.smallest(teacher_config)), cost(space.largest(teacher_config))
    reach = f"its configs need {format_macs(low[0])} to {format_macs(high[0])} MACs"
    problems = budget.violations(*low)
    if problems:
        raise UserError(
            f"budget cannot be met: the smallest config of space '{space.name}' needs {problems[0].split(' > ')[0]} "
            f"({'; '.join(problems)}); {reach}; raise the budget or use a space with smaller configs"
        )
    rng = random.Random(seed)
    draws = [cost(space.sample(teacher_config, rng)) for _ in range(FEASIBILITY_DRAWS)]
    fit = sum(not budget.violations(*draw) for draw in draws)
    if fit < MIN_FEASIBLE_SHARE * FEASIBILITY_DRAWS:
        tenth = sorted(macs for macs, _ in draws)[FEASIBILITY_DRAWS // 10]
        raise UserError(
            f"budget {format_macs(budget.max_macs)}MACs is barely reachable in space '{space.name}': {reach}, "
            f"and only {fit} of {FEASIBILITY_DRAWS} random configs fit, so the search would propose almost only "
            f"over-budget configs; raise --budget to {format_macs(tenth)}MACs or more (a tenth of the configs fit "
            "that) or use a space whose ranges start lower"
        )


def trainer_config(settings: SearchSettings, targets: list[int] | None = None) -> TrainerConfig:
    """How every short trial of a search with `settings` is trained and scored: on `targets` (resolved teacher
    layers; None: the protocol's default targets of whatever teacher it trains from)."""
    return TrainerConfig(
        steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, crop_seconds=settings.crop_seconds,
        seed=settings.seed, log_every=max(1, settings.steps // 10), device="auto",
        num_threads=max(1, int(settings.cpus_per_trial)), targets=targets,
    ).validate()


def _check_reachable(address: str) -> None:
    """Fail fast on a host:port nobody listens on (Ray itself retries for minutes); "auto" is left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise UserError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}") from None


def _start_ray(settings: SearchSettings) -> bool:
    return start_ray(settings.ray_address)


def start_ray(address: str | None) -> bool:
    """Start a local Ray sized to this machine (or join the cluster at `address`); True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address:
        from ray.exceptions import AuthenticationError

        try:
            ray.init(address=address, **kwargs)
        except AuthenticationError:
            # Ray's own text is several sentences; this is what a user sets (docs.ray.io ray-security/token-auth).
            raise UserError(
                f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token "
                "and the cluster's token in RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH, default "
                "~/.ray/auth_token; `ray get-auth-token` on the head node prints it)"
            ) from None
        except (ConnectionError, RuntimeError, ValueError) as error:
            # A cluster with token authentication refuses a driver without the token as a plain connection
            # failure (after pages of InvalidAuthToken logs); Ray reads a saved token only for address "auto".
            hint = "" if os.environ.get("RAY_AUTH_MODE") else (
                " (if the cluster uses token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or "
                "RAY_AUTH_TOKEN_PATH)"
            )
            raise UserError(f"cannot join the Ray cluster at {address}: {one_line(error)}{hint}") from None
    else:
        # The GPUs torch sees, as Ray would detect them (CUDA_VISIBLE_DEVICES), said explicitly: the trials'
        # GPU resources then follow what this process sees.
        ray.init(num_cpus=os.cpu_count(), num_gpus=visible_gpus(), **kwargs)
    return True


def _concurrency(settings: SearchSettings, devices: TrialDevices) -> int:
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    fit = max(1, int(cpus // devices.cpus))
    if devices.gpus > 0:
        fit = min(fit, max(1, int(ray.cluster_resources().get("GPU", 0) / devices.gpus + 1e-6)))
    return min(settings.concurrency or fit, settings.trials)


def _run_baselines(study, setup: TrialSetup, teacher_config, say, devices: TrialDevices) -> None:
    """Short trials of the simple baselines, once per study (kept in its user attrs for the report).

    They run as Ray tasks with the trials' resources, so they train on the same kind of device, in the same
    precision and threads, as the trials they are compared with (the driver may see a GPU the trials do not).
    An over-budget baseline is recorded as such and not trained (nor built); each result is printed as it comes.
    """
    import ray

    if StudyRecord.read(study).baselines is not None:
        return
    rows = []
    budget = setup.budget
    # The data-driven baselines need the teacher and data: not in anytime mode (removed blocks are not elastic).
    configs = baseline_configs(teacher_config, budget.max_macs, budget.seconds, budget.convention,
                               inputs=setup.run if setup.shared is None else None)
    if setup.shared is not None:  # --mode anytime: scored on the shared weights, like the trials
        configs = {name: setup.shared.in_its_order(config) for name, config in configs.items()}
        say(f"baselines, for comparison: {', '.join(configs)} (scored on the shared weights, like a trial)")
    else:
        steps = setup.trainer.steps * setup.fidelities[-1]  # multi-fidelity: through every rung, as the front's
        say(f"baselines, for comparison: {', '.join(configs)} ({steps} steps each, like a trial"
            f"{' at the top fidelity' if len(setup.fidelities) > 1 else ''})")
    task = ray.remote(train_baseline).options(num_cpus=devices.cpus, num_gpus=devices.gpus, max_retries=0)
    shipped = ray.put(setup)  # one copy of the teacher and data in the object store for every baseline
    runs = {}
    for name, config in configs.items():
        arch = config.student_architecture(teacher_config)
        macs, params = count_macs(arch, seconds=budget.seconds).total, count_params_from_config(arch)
        over = budget.violations(macs_in_convention(arch, budget.convention, budget.seconds), params)
        runs[name] = (config, arch, macs, params, over, None if over else task.remote(shipped, config.to_dict(), macs))
    for name, (config, arch, macs, params, over, pending) in runs.items():
        if over:
            result = {"status": "infeasible", "reason": "; ".join(over)}
        else:
            try:
                result = ray.get(pending)
            except ray.exceptions.RayError as error:  # its process died (a failure inside it is a result)
                result = {"status": "error", "reason": f"the baseline's process failed: {one_line(error)}"}
        rows.append(BaselineRecord.measured(name, config.to_dict(), macs, params, result, within_budget=not over,
                                            macs_superb=count_macs_superb(arch)))
        say(f"baseline {name}: {_baseline_outcome(result, macs)}")
    record_baselines(study, rows)


def _baseline_outcome(result: dict, macs: int) -> str:
    if result["status"] == "infeasible":
        return f"{format_macs(macs)} MACs, over budget ({result.get('reason')}): not trained"
    if result.get("heldout_loss") is None:
        return f"{format_macs(macs)} MACs, {result['status']}: {result.get('reason') or 'no held-out loss'}"
    latency = f", latency {result['latency_ms']:.1f} ms" if result.get("latency_ms") is not None else ""
    return f"held-out loss {result['heldout_loss']:.4f}, {format_macs(macs)} MACs{latency}"


def run_search(
    settings: SearchSettings,
    sampler: optuna.samplers.BaseSampler | None = None,
    before_training: BeforeTraining | None = None,
    plan_only: bool = False,
) -> SearchResult:
    """`plan_only`: print the plan (see `sslc.search.plan`) and return, creating no study. Seams for tests:
    `sampler`, an Optuna sampler to use instead of the one `settings.sampler` names; `before_training(trial_number,
    student)`, called in each trial before it trains (see `TrialSetup`)."""
    settings.check()  # a malformed budget, --targets or option fails before the teacher is loaded
    if settings.ray_address:
        _check_reachable(settings.ray_address)
    budget_spec = parse_budget(settings.budget)
    if settings.storage:
        check_driver(settings.storage)  # and a database driver that is not installed
    space = SearchSpace.load(settings.space)
    check_finalists(settings)
    if settings.mode == "anytime":
        check_space(space)
        # Resolved into the settings the study records: a resumed anytime search must train the same way.
        settings = replace(settings, anytime_steps=settings.once_for_all_steps)
    name, run_dir = _run_dir(settings)
    console = SearchProgress.make_console(settings.quiet)
    say = console.print

    context = prepare_inputs(settings.teacher, settings.data, run_dir, settings.crop_seconds, settings.seed,
                             train_crops(settings.to_dict()))
    context.ship_audio()  # a small corpus travels decoded with the context: no node needs a copy of the files
    teacher_config = context.teacher.config
    teacher_macs = count_macs(teacher_config, seconds=settings.budget_seconds)
    teacher_superb = count_macs_superb(teacher_config)
    teacher_budgeted = teacher_superb if settings.macs_convention == "superb" else teacher_macs.total
    budget = search_budget(settings, teacher_budgeted, budget_spec)
    _check_feasible(space, teacher_config, budget, settings.seed)
    targets = parse_targets(settings.targets, teacher_config.num_layers)
    trainer = trainer_config(settings, targets)
    protocol = EvaluationProtocol.for_heldout(targets, context.data.heldout, settings.crop_seconds)
    say(f"teacher: {describe_teacher(context.teacher)}")
    say(f"data: {context.data.note}")
    say(protocol.describe())
    quoted = "in the SUPERB convention" if budget.convention == "superb" else f"for {budget.seconds:g} s of audio"
    say(
        f"budget: {format_macs(budget.max_macs)} MACs {quoted} "
        f"({budget.max_macs / teacher_budgeted:.0%} of the teacher's {format_macs(teacher_budgeted)})"
    )
    plan = plan_search(context, trainer, budget, budget.max_macs / teacher_budgeted, targets, settings.trials,
                       settings.cache_limit)  # refuses a cache that cannot fit, before any work
    say(plan.text())
    context.live_training = plan.live_training

    storage_url = settings.storage or default_storage_url(run_dir)
    if plan_only:
        return SearchResult(run_dir, storage_url, name, [], False, {})
    study_name = name
    record = StudyRecord(
        settings=settings.to_dict(), objectives=list(settings.objectives), space=space.to_dict(),
        trainer=trainer.to_dict(), budget=budget, protocol=protocol.to_dict(),
        teacher=TeacherRecord(
            spec=settings.teacher, description=describe_teacher(context.teacher),
            is_random=bool(getattr(context.teacher, "is_random", False)), macs=teacher_macs.total,
            macs_superb=teacher_superb, params=count_params(context.teacher), macs_breakdown=teacher_macs.as_dict(),
            architecture=teacher_config.to_dict(),
        ),
    )
    study = open_study(
        make_storage(storage_url), study_name, ["minimize"] * len(settings.objectives), sampler, record
    )
    if sampler is None:
        # Seeded with the seed plus the trials already in the study: a fresh run is reproducible, and a resumed
        # one does not replay the first run's proposals (the same configs again, in the same order).
        seed = settings.seed + len(study.get_trials(deepcopy=False))
        study.sampler = make_sampler(settings.sampler, seed, settings.trials, settings.concurrency or 1)
    mark_study(run_dir, storage_url, study_name)
    recover_interrupted(study)
    retries = len(pending_retries(study))
    if retries:
        say(f"resuming run '{name}': {retries} interrupted trial(s) will run again")

    setup = TrialSetup(context, run_dir, trainer, budget, settings.latency_repeats, before_training=before_training,
                       latency_device=settings.latency_device, fidelities=list(settings.fidelities))
    context.build_targets(targets, progress=not settings.quiet)  # before any trial: no trial builds or waits
    interrupted, failure = False, None
    started_ray = False
    try:
        import ray

        started_ray = _start_ray(settings)
        devices = trial_devices(settings, ray.cluster_resources(), context, space, trainer)
        say(devices.note)
        record_trial_devices(study, {**devices.resources(), "note": devices.note})
        setup = replace(setup, gate=start_gate())
        if settings.mode == "anytime":
            say(f"anytime: one elastic student distilled for every size ({settings.anytime_steps} once-for-all "
                f"steps, resumable in {anytime_dir(run_dir)}), then each config scored on its shared weights")
            shared, summary = train_shared_weights(context, space, budget, trainer, settings.anytime_steps, run_dir,
                                                   progress=not settings.quiet)
            interrupted = shared is None
            if shared is not None:
                record_anytime(study, summary)
                setup = replace(setup, shared=shared)
        if not interrupted and count_trained(study) < settings.trials:
            # An injected sampler (a test's) is asked from the first trial: the start-up draws are the named one's.
            startup = startup_trials(settings.sampler, settings.trials) if sampler is None else 0
            warm_start = (warm_start_configs(teacher_config, budget.max_macs, budget.seconds, budget.convention)
                          if settings.warm_start and sampler is None else None)
            interrupted = _tune(settings, study, space, teacher_config, budget, setup, run_dir, console, startup,
                                devices, warm_start)
        if settings.baselines and not interrupted:
            try:
                _run_baselines(study, setup, teacher_config, say, devices)
            except KeyboardInterrupt:
                interrupted = True
    except Exception as error:  # the sampler, the storage or the driver: end the search cleanly, say why
        failure = _failure(error, run_dir)
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    try:
        recover_interrupted(study)  # nothing may stay RUNNING or WAITING
        pareto = write_pareto(study, run_dir)
    except Exception as error:
        if failure is None:
            raise
        # The storage itself may be what failed: the first cause is the one to report.
        raise type(failure)(f"{failure}; the study could not be updated either ({one_line(error)})") from None
    if failure is not None:
        raise type(failure)(
            f"{failure}; {len(pareto)} Pareto point(s) written to {run_dir / 'pareto.json'}; rerun with "
            f"--name {name} to resume"
        ) from None
    counts = SearchProgress(study, settings.trials, console).counts()
    if pareto:
        say(pareto_table(pareto, title=f"Pareto front of '{name}' ({counts['done']} complete trials)"))
    else:
        say("no trial completed yet: no Pareto front")
    finalists = None
    if settings.finalists and pareto and not interrupted:  # the pick after retraining, once the trials are done
        finalists = run_finalists(settings, run_dir, say, progress=not settings.quiet)
        pareto = write_pareto(study, run_dir)  # the rows now carry the finalists' retrained scores
    say(f"study: {shown_url(storage_url)} (watch it with: sslc-dashboard {run_dir})")
    return SearchResult(run_dir, storage_url, study_name, pareto, interrupted, counts, finalists)


def _failure(error: Exception, run_dir: Path) -> UserError:
    """The one-line error that ends a search stopped by `error`; a fault's traceback goes to the run directory."""
    cause, seen = error, set()
    while cause is not None and not isinstance(cause, UserError) and id(cause) not in seen:
        seen.add(id(cause))  # Ray may wrap what the searcher raised: look down the chain
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, UserError):
        cause = None
    if cause is not None and not isinstance(cause, SearchFailed):
        return cause  # bad input found during the search (e.g. a budget too tight): already one clear line
    path = run_dir / "search-error.txt"
    path.write_text("".join(traceback.format_exception(error)))
    what = str(cause) if cause is not None else f"the search driver failed: {one_line(error)}"
    return SearchFailed(f"the search stopped: {what} (traceback in {path})")


def _scheduler(settings: SearchSettings, study, rungs: list[int]) -> DominanceStopper | None:
    """Multi-fidelity: promotion by successive halving (with early stopping within a rung at `rungs`); else
    early stopping alone, when there are rungs to stop at."""
    peers = stopping_history(study, rungs)  # a resumed search: the trials trained before it
    if len(settings.fidelities) > 1:
        return ParetoHalving(FIDELITY_ETA, rung_history(study), rungs, peers, **settings.stopping_rule)
    return DominanceStopper(rungs, peers=peers, **settings.stopping_rule) if rungs else None


def _tune(settings, study, space, teacher_config, budget, setup, run_dir: Path, console, startup: int,
          devices: TrialDevices, warm_start: dict | None = None) -> bool:
    """Run the remaining trials with Ray Tune; True when the search was interrupted (Ctrl-C)."""
    # The classic Tune reporter honours verbose=0; the newer one prints an experiment box regardless.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune
    from ray.tune import FailureConfig, RunConfig, TuneConfig, Tuner

    progress = SearchProgress(study, settings.trials, console)
    rungs = sorted({max(1, settings.steps // 3), max(1, 2 * settings.steps // 3)} - {settings.steps})
    scheduler = _scheduler(settings, study, rungs if settings.early_stopping else [])
    searcher = OptunaAskTellSearcher(
        study, space, teacher_config, budget, settings.objectives, settings.trials, on_event=progress,
        early_stopped=scheduler.stopped if scheduler else (),
        startup_trials=startup, seed=settings.seed,
        warm_start=warm_start,
    )
    # Trial files come back through Ray (a sink actor on this node), so workers on other nodes need no shared disk.
    setup = replace(setup, sink=start_sink(run_dir))
    trainable = tune.with_resources(
        tune.with_parameters(train_candidate, setup=setup),
        devices.resources(),
    )
    tuner = Tuner(
        trainable,
        tune_config=TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=-1, reuse_actors=True,
            max_concurrent_trials=_concurrency(settings, devices),
        ),
        run_config=RunConfig(
            name=time.strftime("tune-%Y%m%d-%H%M%S"), storage_path=settings.storage_path or str(run_dir / "ray"), verbose=0,
            failure_config=FailureConfig(max_failures=0), log_to_file=True,
        ),
    )
    interrupted = False
    # Trials run in their own processes; in the driver one thread keeps the GP sampler off their cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with progress:
            tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        try:
            # Trials still in flight (Ctrl-C, a fault, or Ray stopping them) must not stay RUNNING in the study.
            searcher.abandon_running()
        finally:
            torch.set_num_threads(threads)
    return interrupted or count_trained(study) < settings.trials
