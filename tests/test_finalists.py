"""sslc-search --finalists: the right front points are retrained, the winner is the best recorded score, pareto.json
and the report name it, a rerun retrains nothing, bad K is one line (exit 2)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

import sslc.search.probe_points as probe_points_module
import sslc.search.retrain as retrain_module
from sslc.budget import Budget
from sslc.cli.search import main as search_main
from sslc.dashboards import build_report
from sslc.runs.record import RunRecord, open_run
from sslc.runs.study import retrain_key
from sslc.search.finalists import NEAR_BUDGET, pick_finalists, run_finalists, transformer_distance
from sslc.search.settings import SearchSettings
from tests.test_probe import make_sequences

K, STEPS, TRIALS = 2, 6, 8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(run_dir, probe_dir, *extra) -> list[str]:
    """A tiny search whose front has more points within the budget than K (checked below): three objectives,
    every trial to the end."""
    return ["--teacher", "random:tiny", "--data", "demo", "--budget", "60%", "--trials", str(TRIALS), "--steps", "3",
            "--batch-size", "4", "--crop-seconds", "1", "--name", "finalists", "--run-dir", str(run_dir),
            "--latency-repeats", "1", "--sampler", "random", "--no-report", "--no-baselines", "--concurrency", "1",
            "--no-early-stopping", "--objectives", "loss,macs,latency",
            "--finalists", str(K), "--finalist-steps", str(STEPS), "--probe-data", str(probe_dir / "train"),
            "--probe-heldout", str(probe_dir / "heldout"), "--probe-units", "tokens", "--probe-epochs", "2", *extra]


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe-data")
    make_sequences(root / "train", 8, seed=3)
    make_sequences(root / "heldout", 4, seed=4)
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory, probe_dir):
    """A tiny search ended by its finalist stage (~40 s on 2 cores)."""
    run_dir = tmp_path_factory.mktemp("finalists") / "run"
    assert search_main(_args(run_dir, probe_dir)) == 0
    assert len(open_run(run_dir).front()) >= K, "the test needs K front points to compare"
    return run_dir


def _expected_finalists(study: optuna.Study, k: int) -> list[int]:
    """The rule recomputed from the study's raw records: complete trained trials (repeats left out) within the
    budget, those costing >= NEAR_BUDGET of it; the lowest short-trial loss (the lead), the best of the depth
    farthest from it, the lead's twin with the other CNN (whole vs cut against the recorded teacher's CNN; the
    closest Transformer by mean relative difference of hidden width, heads and FFN, ties to the lower loss), then
    repeatedly the best of the depth whose nearest taken depth is farthest (ties to the lower loss), then the
    lowest losses left; best first (single fidelity here)."""
    budget = study.user_attrs["budget"]["max_macs"]
    teacher = study.user_attrs["teacher"]["architecture"]
    whole_cnn, width = sum(c["channels"] for c in teacher["conv_layers"]), teacher["embed_dim"]
    trials = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
              if t.user_attrs.get("heldout_loss") is not None and t.user_attrs.get("repeat_of") is None
              and t.user_attrs["macs"] <= budget]
    pool = [t for t in trials if t.user_attrs["macs"] >= NEAR_BUDGET * budget]
    if len(pool) < k:
        pool = sorted(trials, key=lambda t: (-t.user_attrs["macs"], t.number))[:k]
    loss = lambda t: (t.user_attrs["heldout_loss"], t.number)  # noqa: E731
    config = lambda t: t.user_attrs["config"]  # noqa: E731
    depth = lambda t: len(config(t)["layers"])  # noqa: E731
    cut = lambda t: sum(config(t)["conv_channels"]) < whole_cnn  # noqa: E731

    def unlike(a, b):
        pairs = [(config(a).get("hidden") or width, config(b).get("hidden") or width)]
        pairs += [p for knob in ("heads", "ffn") for p in zip(config(a)[knob], config(b)[knob])]
        return sum(abs(x - y) / max(x, y) for x, y in pairs if max(x, y)) / len(pairs)

    best = {d: min((t for t in pool if depth(t) == d), key=loss) for d in {depth(t) for t in pool}}
    chosen = [min(pool, key=loss)]

    def farthest():
        left = [d for d in best if d not in {depth(t) for t in chosen}]
        if not left:
            return None
        gap = {d: min(abs(d - depth(t)) for t in chosen) for d in left}
        return best[max(left, key=lambda d: (gap[d], [-x for x in loss(best[d])]))]

    lead = chosen[0]
    twins = [t for t in pool if depth(t) == depth(lead) and cut(t) != cut(lead)]
    twin = min(twins, key=lambda t: (unlike(t, lead), loss(t))) if twins else None
    for pick in (farthest(), twin):
        if len(chosen) < k and pick is not None and pick not in chosen:
            chosen.append(pick)
    while len(chosen) < k and (pick := farthest()) is not None:
        chosen.append(pick)
    chosen += sorted((t for t in pool if t not in chosen), key=loss)
    return [t.number for t in sorted(chosen[:k], key=loss)]


def test_the_rules_finalists_are_retrained_and_no_other_point(finished):
    run = open_run(finished)
    record = run.record.finalists
    expected = _expected_finalists(run.study, K)
    assert [r["trial"] for r in record["finalists"]] == expected
    retrained = {n: r for n, r in run.record.retrains.items()}
    assert len(expected) == K and sorted(retrained) == sorted(expected)
    for n in expected:
        assert retrained[n]["status"] == "completed" and retrained[n]["steps"] == STEPS
        assert (finished / "retrain" / str(n) / "student.pt").is_file()


def test_the_winner_is_the_best_recorded_probe_and_pareto_json_names_it(finished):
    run = open_run(finished)
    record = run.record.finalists
    numbers = [r["trial"] for r in record["finalists"]]
    probes = {n: run.record.probes["ctc"][n]["metric"] for n in numbers}  # what sslc-probe's code recorded
    losses = {n: run.record.retrains[n]["heldout_loss"] for n in numbers}
    assert record["winner"] == min(numbers, key=lambda n: (probes[n], losses[n], n))
    assert record["winner_by"].startswith("probe")
    assert record["lowest_retrained_loss"] == min(numbers, key=lambda n: (losses[n], n))
    document = json.loads((finished / "pareto.json").read_text())
    assert document["finalists"]["winner"] == record["winner"]
    assert {r["trial"]: r["retrained_loss"] for r in document["finalists"]["finalists"]} == losses
    # A finalist on the front (a twin with another CNN, or a depth's best, may be dominated) shows its retrain there.
    rows = {p["trial"]: p for p in document["points"]}
    assert all(rows[n]["retrained"]["loss"] == losses[n] for n in numbers if n in rows)
    report = build_report(run)
    summary = dict(report.summary)
    assert f"trial {record['winner']} (by probe" in summary["winner"]
    assert report.section("table").html.count("<td>winner</td>") == 1


def test_each_finalists_probe_is_sslc_probes_probe_of_its_retrained_weights(finished, probe_dir):
    """The finalists are probed as Ray tasks (one thread each here): each recorded error rate is what sslc-probe's
    code gives the retrained weights when run again in this process, on one thread."""
    from sslc.probes import ProbeSettings, train_and_heldout
    from sslc.probes.results import probe_target, resolve_targets

    run = open_run(finished)
    train, heldout = train_and_heldout(probe_dir / "train", "ctc", "tokens", probe_dir / "heldout")
    for row in run.record.finalists["finalists"]:
        target = resolve_targets([f"{finished}:{row['trial']}"], False, "cpu", say=lambda line: None)[0]
        assert target.extractor.metadata["source"] == "retrained"
        again = probe_target(target, train, heldout, ProbeSettings("ctc", epochs=2), "tokens")
        assert again["metric"] == pytest.approx(row["probe_metric"], abs=1e-9)
        assert again["train_loss"] == pytest.approx(run.record.probes["ctc"][row["trial"]]["train_loss"], rel=1e-5)


def test_a_probe_that_fails_in_its_task_is_its_own_one_line_error(finished, probe_dir, tmp_path):
    from sslc.errors import UserError
    from sslc.probes import ProbeSettings, train_and_heldout
    from sslc.search.runner import start_ray

    start_ray(None)
    train, heldout = train_and_heldout(probe_dir / "train", "ctc", "tokens", probe_dir / "heldout")
    missing = tmp_path / "missing"
    with pytest.raises(UserError) as caught:
        probe_points_module.probe_points([f"{finished}:1", str(missing)], train, heldout,
                                         ProbeSettings("ctc", epochs=1), "tokens")
    assert str(missing) in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_without_a_probe_the_winner_is_the_lowest_retrained_loss(finished, spy):
    run = open_run(finished)
    settings = SearchSettings(budget="40%", trials=5, finalists=K, finalist_steps=STEPS)
    trained = spy(retrain_module, "train_full")
    record = run_finalists(settings, finished, say=lambda line: None, progress=False)
    assert trained == []  # the same finalists, already retrained with these settings
    losses = {r["trial"]: run.record.retrains[r["trial"]]["heldout_loss"] for r in record["finalists"]}
    assert record["winner"] == min(losses, key=lambda n: (losses[n], n)) == record["lowest_retrained_loss"]
    assert record["winner_by"] == "retrained_loss" and record["probe"] is None


def test_rerun_after_the_finalists_retrains_and_probes_nothing(finished, probe_dir, spy, capsys):
    before = open_run(finished).record
    retrains, probes = before.retrains, before.probes
    trained, probed = spy(retrain_module, "train_full"), spy(probe_points_module, "probe_points")
    assert search_main(_args(finished, probe_dir)) == 0
    assert trained == [] and probed == []
    run = open_run(finished)
    assert run.record.retrains == retrains and run.record.probes == probes  # rows (with their times) kept
    assert run.record.finalists["winner_by"].startswith("probe")
    printed = capsys.readouterr()
    assert f"winner within the budget: trial {run.record.finalists['winner']}" in printed.out + printed.err
    print(printed.err)


@pytest.mark.parametrize("extra, message", [
    (["--finalists", "0"], f"--finalists must be between 1 and --trials ({TRIALS}), got 0"),
    (["--finalists", "-2"], f"--finalists must be between 1 and --trials ({TRIALS}), got -2"),
    (["--finalists", str(TRIALS + 1)], f"--finalists must be between 1 and --trials ({TRIALS}), got {TRIALS + 1}"),
    (["--finalist-recipe", "slow"], "unknown recipe 'slow'"),
])
def test_bad_finalist_options_are_one_line(tmp_path, probe_dir, capsys, extra, message):
    code = search_main(_args(tmp_path / "run", probe_dir, *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_options_of_the_stage_need_finalists():
    with pytest.raises(Exception, match="--probe-data goes with --finalists K"):
        replace(SearchSettings(budget="40%"), probe_data="x").check()


def test_a_stage_killed_after_its_first_finalist_retrains_only_the_rest(finished, spy, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir, ignore=shutil.ignore_patterns("ray", "study.txt"))
    run = open_run(run_dir)
    first, last = (r["trial"] for r in run.record.finalists["finalists"])
    # As a kill during the second finalist's retrain leaves it: no result, nothing recorded.
    (run_dir / "retrain" / str(last) / "result.json").unlink()
    run.study.set_user_attr(retrain_key(last), None)
    kept = (run_dir / "retrain" / str(first) / "result.json").read_text()
    settings = SearchSettings(budget="60%", trials=TRIALS, finalists=K, finalist_steps=STEPS)
    # Several points retrain as Ray tasks (sslc.search.retrain_points), so what is redone is read from their files:
    # the first finalist's result is kept as it was, the second's is written again.
    record = run_finalists(settings, run_dir, say=lambda line: None, progress=False)
    assert (run_dir / "retrain" / str(first) / "result.json").read_text() == kept
    assert json.loads((run_dir / "retrain" / str(last) / "result.json").read_text())["status"] == "completed"
    assert open_run(run_dir).record.retrains[last]["steps"] == STEPS and record["finalists"][0]["trial"] == first


def _front_study(points: dict[int, tuple], teacher_cnn: int | None = None) -> RunRecord:
    """A study whose complete trials are `points`: number -> (short-trial loss, MACs, latency ms, depth[, CNN
    channels kept[, hidden width]]); budget 100 MACs and 50 ms; `teacher_cnn`: the recorded teacher's CNN channels
    (one layer)."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_user_attr("budget", Budget(100, 10.0, None, 50.0).to_dict())
    if teacher_cnn is not None:
        study.set_user_attr("teacher", {"architecture": {"conv_layers": [{"channels": teacher_cnn}]}})
    for number in sorted(points):
        loss, macs, latency, depth, *rest = points[number]
        config = {"layers": list(range(depth))}
        if rest:
            config["conv_channels"] = rest[:1]
        if len(rest) > 1:
            config["hidden"] = rest[1]
        study.add_trial(optuna.trial.create_trial(
            values=[loss, macs / 1e9], state=optuna.trial.TrialState.COMPLETE,
            user_attrs={"macs": macs, "heldout_loss": loss, "latency_ms": latency, "params": 1, "config": config}))
    return RunRecord(Path("."), study)


# Trials near a budget of 100 MACs: 2-layer near-twins just under it (5, 4), a 12-layer student at equal MACs with a
# higher loss (7: dominated, off the front), 4-layer ones at 55-70% (2, 3), one below half (1); 6 is over the
# latency limit.
TRIALS_NEAR = {1: (0.50, 20, 5.0, 2), 2: (0.40, 55, 5.0, 4), 3: (0.37, 70, 5.0, 4), 4: (0.305, 93, 5.0, 2),
               5: (0.30, 95, 5.0, 2), 6: (0.29, 99, 80.0, 2), 7: (0.33, 96, 5.0, 12)}


@pytest.mark.parametrize("k, expected", [
    (1, [5]),  # the lowest loss within every limit (6 is over the latency limit)
    (2, [5, 7]),  # the best 2-layer and the best 12-layer trial: not the twin 4, and 7 although it is dominated
    (3, [5, 7, 3]),  # and the best 4-layer one (3 beats 2)
    (4, [5, 4, 7, 3]),  # three depths: the lowest loss left (the twin 4) fills the fourth place
    (7, [5, 4, 7, 3, 2, 1]),  # fewer than K at >= half the budget: the K costliest within the limits (6 is not)
])
def test_the_rule_takes_each_depths_best_near_the_budget(k, expected):
    # add_trial numbers the trials from 0 in the order given: the key n is trial n - 1
    assert [t.number + 1 for t in pick_finalists(_front_study(TRIALS_NEAR), k)] == expected


# The 12-layer student (7) now scores worse than every shallower depth, as thin-deep students do on short trials;
# a 6-layer one (8) sits between. The K depths with the lowest losses (2, 4, 6 layers) would leave it out.
DEEP_SCORES_WORST = {**TRIALS_NEAR, 7: (0.45, 96, 5.0, 12), 8: (0.38, 90, 5.0, 6)}


@pytest.mark.parametrize("k, expected", [
    (2, [5, 7]),  # the lowest loss (2 layers), then the farthest depth from it: 12, not the better-scoring 4 or 6
    (3, [5, 8, 7]),  # then the depth farthest from both 2 and 12: 6 (4 away from 2) before 4 (2 away)
    (4, [5, 3, 8, 7]),  # every depth
    (5, [5, 4, 3, 8, 7]),  # and the lowest loss left (the 2-layer twin)
])
def test_the_rule_spreads_over_depth_though_the_deepest_scores_worst(k, expected):
    assert [t.number + 1 for t in pick_finalists(_front_study(DEEP_SCORES_WORST), k)] == expected


# The lead (1) is 12 layers with the whole CNN (256 channels); its CNN-cut twin (3) scores worse than a 6-layer
# student (4), as a short trial under-rates a cut CNN; a 2-layer student with the cut CNN (5) scores worst.
CNN_CUT = {1: (0.30, 95, 5.0, 12, 256), 2: (0.32, 94, 5.0, 2, 256), 3: (0.40, 96, 5.0, 12, 192),
           4: (0.35, 90, 5.0, 6, 256), 5: (0.45, 93, 5.0, 2, 192)}


@pytest.mark.parametrize("k, expected", [
    (2, [1, 2]),  # the lead, then the farthest depth
    (3, [1, 2, 3]),  # then the lead's depth with the other CNN: 3, not the better-scoring 6-layer 4
    (4, [1, 2, 4, 3]),  # then the depth left (6)
    (5, [1, 2, 4, 3, 5]),  # and the lowest loss left
])
def test_the_rule_retrains_the_leads_depth_with_the_other_cnn(k, expected):
    assert [t.number + 1 for t in pick_finalists(_front_study(CNN_CUT), k)] == expected
    # With the teacher recorded (here its CNN has 256 channels) the result is the same.
    assert [t.number + 1 for t in pick_finalists(_front_study(CNN_CUT, teacher_cnn=256), k)] == expected


def test_the_other_cnn_is_judged_against_the_teachers_whole_cnn():
    # A teacher of 512 channels: every trial cuts its CNN, so the lead has no twin with the other CNN, and the
    # third finalist is the 6-layer student, as under depth alone.
    assert [t.number + 1 for t in pick_finalists(_front_study(CNN_CUT, teacher_cnn=512), 3)] == [1, 2, 4]
    # The lead cuts its CNN (192 < 256): its twin is the one with the whole CNN.
    cut_lead = {**CNN_CUT, 1: (0.30, 95, 5.0, 12, 192), 3: (0.40, 96, 5.0, 12, 256)}
    assert [t.number + 1 for t in pick_finalists(_front_study(cut_lead, teacher_cnn=256), 3)] == [1, 2, 3]


def test_the_leads_twin_is_the_closest_transformer_not_the_lowest_loss():
    # Two 12-layer students cut the CNN: 3 is the lead's 144-wide Transformer, 6 a 192-wide one (uniform pruning's
    # shape) with a lower short-trial loss; the twin is 3.
    study = {**{n: (*p, 144) for n, p in CNN_CUT.items()}, 6: (0.38, 97, 5.0, 12, 160, 192)}
    assert [t.number + 1 for t in pick_finalists(_front_study(study, teacher_cnn=256), 3)] == [1, 2, 3]
    # Without it, the closest is 6 (add_trial numbers the trials in key order from 0: key 6 is trial 4).
    del study[3]
    assert [t.number for t in pick_finalists(_front_study(study, teacher_cnn=256), 3)] == [0, 1, 4]


@pytest.mark.parametrize("a, b, expected", [
    ({"hidden": 144, "heads": [2, 2], "ffn": [100, 100]}, {"hidden": 144, "heads": [2, 2], "ffn": [100, 100]}, 0.0),
    # hidden 144 vs the teacher's 192 (None): 0.25; heads 2 vs 3 in both layers: 1/3 each; FFN equal
    ({"hidden": 144, "heads": [2, 2], "ffn": [100, 100]}, {"heads": [3, 3], "ffn": [100, 100]}, (0.25 + 2 / 3) / 5),
])
def test_transformer_distance(a, b, expected):
    assert transformer_distance(a, b, 192) == pytest.approx(expected)
    assert transformer_distance(b, a, 192) == pytest.approx(expected)
