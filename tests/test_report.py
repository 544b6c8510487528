"""The HTML report of a tiny real search: the figures' data against the study, and the file on disk."""

from __future__ import annotations

import re

import pytest
from optuna.trial import TrialState

from sslc.cli.report import main as report_main
from sslc.dashboards import build_report, write_report
from sslc.dashboards.architecture import PANELS, teacher_architecture
from sslc.dashboards.history import reference_point
from sslc.models import tiny_config
from sslc.runs.record import open_run


@pytest.fixture(scope="module")
def run(tiny_run):
    return open_run(tiny_run)


@pytest.fixture(scope="module")
def report(run):
    return build_report(run)


def traces(figure, kind):
    return [t for t in figure.data if t.meta == kind]


def points_of(figure, kind) -> list:
    found = traces(figure, kind)
    return list(found[0].customdata) if found else []


def by_category(run):
    trials = run.study.get_trials()
    return {
        # An over-budget trial is COMPLETE in Optuna too (placeholder values, positive constraint), never trained.
        "complete": [t for t in trials if t.state == TrialState.COMPLETE and not t.user_attrs.get("infeasible")],
        "pruned": [t for t in trials if t.state == TrialState.PRUNED],
        "infeasible": [t for t in trials if t.user_attrs.get("infeasible")],
        "failed": [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("infeasible")],
    }


def test_pareto_trace_is_the_studys_best_trials(run, report):
    figure = report.section("front").figure
    best = run.study.best_trials
    pareto = traces(figure, "pareto")[0]
    assert sorted(pareto.customdata) == sorted(t.number for t in best)
    by_number = {t.number: t for t in best}
    for number, x, y in zip(pareto.customdata, pareto.x, pareto.y):
        trial = by_number[number]
        assert y == pytest.approx(trial.values[0])  # loss is the first objective
        assert x == pytest.approx(trial.user_attrs["macs"] / 1e9) == pytest.approx(trial.values[1])
    assert list(pareto.x) == sorted(pareto.x)  # drawn left to right


def test_point_counts_equal_the_studys_trials_by_state(run, report):
    figure = report.section("front").figure
    groups = by_category(run)
    assert groups["infeasible"], "the 40% budget makes the sampler propose over-budget configs"
    complete = points_of(figure, "pareto") + points_of(figure, "complete")
    assert sorted(complete) == sorted(t.number for t in groups["complete"])
    assert sorted(points_of(figure, "pruned")) == sorted(t.number for t in groups["pruned"])
    assert sorted(points_of(figure, "infeasible")) == sorted(t.number for t in groups["infeasible"])
    failed = points_of(figure, "failed") + points_of(figure, "interrupted")
    assert sorted(failed) == sorted(t.number for t in groups["failed"])
    # Trials without a loss sit on the strip (second row), at their MACs.
    for kind in ("pruned", "infeasible"):
        for trace in traces(figure, kind):
            assert trace.yaxis == "y2"
            macs = {t.number: t.user_attrs["macs"] for t in groups[kind]}
            assert list(trace.x) == pytest.approx([macs[n] / 1e9 for n in trace.customdata])


def test_budget_teacher_and_baselines_are_marked(run, report):
    figure = report.section("front").figure
    lines = sorted({shape.x0 for shape in figure.layout.shapes})  # one line per panel
    assert lines == pytest.approx(sorted([run.study.user_attrs["budget"]["max_macs"] / 1e9, run.study.user_attrs["teacher"]["macs"] / 1e9]))
    labels = [a.text for a in figure.layout.annotations]
    assert any(text.startswith("budget") for text in labels) and any(text.startswith("teacher") for text in labels)
    scored = [b for b in run.study.user_attrs["baselines"] if b.get("heldout_loss") is not None]
    assert scored, "the uniform baseline fits a 40% budget and is trained"
    baseline = traces(figure, "baseline")[0]
    assert list(baseline.customdata) == [b["name"] for b in scored]
    assert list(baseline.y) == pytest.approx([b["heldout_loss"] for b in scored])
    latency = report.section("front-latency").figure
    measured = {t.number: t.user_attrs["latency_ms"] for t in run.study.best_trials}
    pareto = traces(latency, "pareto")[0]
    assert list(pareto.x) == pytest.approx([measured[n] for n in pareto.customdata])


def test_summary_states_the_evaluation_protocol(run, report):
    """Every loss in the report was measured one way: the report says which (targets, held-out set, averaging)."""
    protocol = run.study.user_attrs["protocol"]
    rows = dict(report.summary)
    layers = ", ".join(str(t) for t in protocol["targets"])
    assert f"mean over teacher layers {layers} " in rows["score"]
    assert f"on {protocol['heldout_segments']} held-out segments" in rows["score"]


def test_per_layer_view_matches_the_configs(run, report):
    figure = report.section("architecture").figure
    teacher = tiny_config()
    assert teacher_architecture(run) == teacher
    front = sorted(run.study.best_trials, key=lambda t: (t.user_attrs["macs"], t.number))
    heatmaps = {trace.meta: trace for trace in figure.data}
    assert set(heatmaps) == {panel for panel, _ in PANELS}
    for row, trial in enumerate(front):
        config = trial.user_attrs["config"]
        assert heatmaps["heads"].customdata[row][0] == trial.number
        kept = dict(zip(config["layers"], range(len(config["layers"]))))
        for layer in range(teacher.num_layers):
            heads, ffn = heatmaps["heads"], heatmaps["ffn"]
            if layer not in kept:
                assert heads.z[row][layer] is None and heads.text[row][layer] == "dropped"
                continue
            k = kept[layer]
            assert heads.z[row][layer] == pytest.approx(config["heads"][k] / teacher.layers[layer].heads)
            assert heads.text[row][layer] == f"{config['heads'][k]}/{teacher.layers[layer].heads}"
            assert ffn.z[row][layer] == pytest.approx(config["ffn"][k] / teacher.layers[layer].ffn_dim)
            rank = config["attn_rank"][k]
            # A projection from the student's hidden width to its heads: full rank is the smaller of the two.
            full = min(config.get("hidden") or teacher.embed_dim, config["heads"][k] * teacher.head_dim)
            assert heatmaps["attn_rank"].z[row][layer] == pytest.approx(1.0 if rank is None else rank / full)
        conv = heatmaps["conv_channels"]
        assert list(conv.z[row]) == pytest.approx(
            [c / spec.channels for c, spec in zip(config["conv_channels"], teacher.conv_layers)]
        )


def _hypervolume_2d(points, reference) -> float:
    """Area dominated by `points` (minimised) inside the box up to `reference`, by a sweep over x."""
    inside = sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1])
    area, best_y = 0.0, reference[1]
    for i, (x, y) in enumerate(inside):
        next_x = inside[i + 1][0] if i + 1 < len(inside) else reference[0]
        best_y = min(best_y, y)
        area += (next_x - x) * (reference[1] - best_y)
    return area


def test_hypervolume_history_matches_an_independent_computation(run, report):
    figure = report.section("hypervolume").figure
    complete = run.study.get_trials(states=(TrialState.COMPLETE,))
    reference = reference_point(run)
    assert reference[1] == pytest.approx(run.study.user_attrs["budget"]["max_macs"] / 1e9)  # the budget bounds the MACs axis
    trace = figure.data[0]
    assert list(trace.x) == [t.number for t in complete]
    # An over-budget trial is COMPLETE with placeholder values and a positive constraint: it adds no volume.
    assert any(t.user_attrs.get("infeasible") for t in complete), "the 40% budget rules some configs out"
    for i in range(len(complete)):
        counted = [tuple(t.values) for t in complete[: i + 1] if not t.user_attrs.get("infeasible")]
        expected = _hypervolume_2d(counted, reference) if counted else 0.0
        assert trace.y[i] == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_table_lists_the_pareto_points_with_ratios(run, report):
    table = report.section("table").html
    rows = re.findall(r'<tr class="pareto">(.*?)</tr>', table)
    front = sorted(run.study.best_trials, key=lambda t: (t.user_attrs["macs"], t.number))
    assert len(rows) == len(front)
    from sslc.dashboards.table import COLUMNS

    column = {key: i for i, (key, _) in enumerate(COLUMNS)}
    for row, trial in zip(rows, front):
        cells = re.findall(r"<td>(.*?)</td>", row)
        assert len(cells) == len(COLUMNS)
        assert cells[column["trial"]] == str(trial.number)
        assert cells[column["loss"]] == f"{trial.values[0]:.4f}"
        assert cells[column["mac_ratio"]] == f"{trial.user_attrs['macs'] / run.study.user_attrs['teacher']['macs']:.1%}"
    assert '<tr class="teacher">' in table and "baseline: uniform" in table


def _hand_made_run(tmp_path, losses: list[float]):
    """A run whose complete trials are made by hand: `depth` and `ffn` vary, `quantize` never does."""
    tmp_path.mkdir(parents=True)
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="hand",
                                directions=["minimize", "minimize"])
    distributions = {"depth": IntDistribution(1, 8), "ffn": IntDistribution(16, 64),
                     "quantize": CategoricalDistribution(["none", "int8"])}
    for i, loss in enumerate(losses):
        params = {"depth": 1 + i, "ffn": 64 - 8 * i, "quantize": "none"}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, values=[loss, 1.0 + i]))
    return open_run(tmp_path)


def test_importances_and_parallel_coordinates_need_two_complete_trials(tmp_path):
    from sslc.dashboards.history import importance_figure, parallel_figure

    one = _hand_made_run(tmp_path / "one", [0.5])
    for draw in (importance_figure, parallel_figure):
        figure, note = draw(one)
        assert figure is None and "at least 2" in note

    two = _hand_made_run(tmp_path / "two", [0.9, 0.7])  # fewer trials than knobs: ranked, but said to be noise
    figure, note = importance_figure(two)
    assert "2 complete trials over 3 searched knobs" in note and "mostly noise" in note
    assert "mostly noise" in figure.layout.title.text

    five = _hand_made_run(tmp_path / "five", [0.9, 0.7, 0.6, 0.4, 0.3])
    figure, note = importance_figure(five)
    assert figure is not None and "5 complete trials over 3 searched knobs" in note and "noise" not in note
    importances = dict(zip(figure.data[0].y, figure.data[0].x))
    assert set(importances) == {"depth", "ffn", "quantize"}  # every searched knob, as a bar
    assert importances["quantize"] == min(importances.values()) < 0.05  # a knob that never varied explains little
    figure, note = parallel_figure(five)
    assert figure is not None and note == ""
    axes = list(figure.layout.xaxis.ticktext)
    assert axes[0] == "held-out loss" and set(axes[1:]) == {"depth", "ffn", "quantize"}
    lines = [trace for trace in figure.data if trace.mode == "lines"]
    assert len(lines) == 5  # one line per complete trial, through every axis
    assert all(len(line.y) == len(axes) for line in lines)


def test_written_file_is_self_contained(tiny_run, tmp_path):
    out = write_report(tiny_run, tmp_path / "r.html")
    text = out.read_text()
    assert text.count("plotly.js v") == 1  # the library is embedded once
    assert not re.search(r"<script[^>]+src=", text)  # and nothing is fetched: works offline
    for key in ("front", "table", "hypervolume", "architecture"):
        assert f"id='{key}'" in text and (key == "table" or f'id="fig-{key}"' in text)
    assert "random weights" in text


def test_cli_writes_default_file_and_rejects_bad_run_dirs(tiny_run, tmp_path, capsys):
    assert report_main([str(tiny_run)]) == 0
    assert (tiny_run / "report.html").is_file()
    assert report_main([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert "does not exist" in errors[0] and "holds no study" in errors[1]


def _early_run(tmp_path):
    """A run as a report sees it early on: three objectives, one trial done, one over budget, one running."""
    import optuna
    from optuna.distributions import IntDistribution

    from sslc.compress import CompressionConfig
    from sslc.metrics import count_macs

    run_dir = tmp_path / "early"
    run_dir.mkdir()
    teacher = tiny_config()
    study = optuna.create_study(storage=f"sqlite:///{run_dir / 'study.db'}", study_name="early",
                                directions=["minimize"] * 3)
    teacher_macs = count_macs(teacher, seconds=10).total
    study.set_user_attr("objective_names", ["loss", "macs", "latency"])
    study.set_user_attr("budget", {"max_macs": teacher_macs // 2, "seconds": 10.0, "max_latency_ms": 50.0})
    study.set_user_attr("teacher", {"spec": "random:tiny", "macs": teacher_macs, "params": 100_000})
    small = CompressionConfig.first_n(teacher, 1).to_dict()
    macs = count_macs(CompressionConfig.first_n(teacher, 1).student_architecture(teacher), seconds=10).total
    depth = {"depth": IntDistribution(1, 2)}
    study.add_trial(optuna.trial.create_trial(
        values=[0.9, macs / 1e9, 3.0], params={"depth": 1}, distributions=depth,
        user_attrs={"config": small, "macs": macs, "params": 50_000, "latency_ms": 3.0, "heldout_loss": 0.9},
    ))
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={"depth": 2}, distributions=depth,
        user_attrs={"infeasible": True, "macs": teacher_macs, "fail_reason": "over budget"},
    ))
    study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, params={"depth": 1}, distributions=depth,
                                              user_attrs={"macs": macs}))
    return run_dir


def test_report_of_an_early_three_objective_run(tmp_path):
    run_dir = _early_run(tmp_path)
    report = build_report(open_run(run_dir))
    front = report.section("front").figure
    assert points_of(front, "pareto") == [0]
    assert points_of(front, "infeasible") == [1] and points_of(front, "running") == [2]
    assert traces(front, "pareto")[0].mode == "markers"  # three objectives: no line through the 2-D projection
    latency = report.section("front-latency").figure
    assert {shape.x0 for shape in latency.layout.shapes} == {50.0}  # the latency limit
    hypervolume = report.section("hypervolume").figure
    assert list(hypervolume.data[0].x) == [0]
    assert report.section("importance").figure is None and "at least 2" in report.section("importance").note
    assert write_report(run_dir).is_file()


def test_published_anchors_are_reference_markers_and_the_front_a_rug(run, report):
    from sslc.dashboards.anchors import published_anchors

    anchors = published_anchors()
    assert all(a["source"] and a["params_m"] > 0 for a in anchors)
    teacher = next(a for a in anchors if a.get("role") == "teacher")
    assert teacher["superb_gmacs"] == 1669.0 and teacher["pr_per"] == 5.41  # HuBERT Base, as published
    figure = report.section("anchors").figure
    placed = [t for t in figure.data if t.meta == "anchors"]
    with_per = [a for a in anchors if a["superb_gmacs"] is not None and a["pr_per"] is not None]
    assert list(placed[0].text) == [a["name"] for a in with_per]
    assert list(placed[0].x) == [a["superb_gmacs"] for a in with_per] and list(placed[0].y) == [a["pr_per"] for a in with_per]
    assert "not sslc runs" in placed[0].name
    rug = [t for t in figure.data if t.meta == "sslc"][0]  # the MACs panel
    front = {t.number: t for t in run.study.best_trials}
    assert sorted(rug.customdata) == sorted(front)
    for number, x in zip(rug.customdata, rug.x):
        assert x == pytest.approx(front[number].user_attrs["macs_superb"] / 1e9)
    assert "not a trained HuBERT Base" in report.section("anchors").note  # the tiny random teacher


def test_anchor_labels_stay_inside_their_panels_and_apart(report):
    """"HuBERT Base" (the widest anchor) reads leftwards, inside its panel's x range; the anchors with a size but
    no PER carry no label on the floor (they piled up there) but are named in the note and on hover."""
    from sslc.dashboards.anchors import published_anchors

    figure = report.section("anchors").figure
    size_only = [a for a in published_anchors() if a["pr_per"] is None]
    for placed, floor, axis, key in zip([t for t in figure.data if t.meta == "anchors"],
                                        [t for t in figure.data if t.meta == "anchors-size-only"],
                                        (figure.layout.xaxis, figure.layout.xaxis2), ("superb_gmacs", "params_m")):
        widest = max(range(len(placed.x)), key=lambda i: placed.x[i])
        assert placed.text[widest] == "HuBERT Base" and placed.textposition[widest] == "middle left"
        assert all(position == "middle right" for i, position in enumerate(placed.textposition) if i != widest)
        low, high = axis.range
        assert all(low < x < high for x in [*placed.x, *floor.x])
        assert high >= 1.05 * max(placed.x)
        assert floor.mode == "markers" and not floor.text
        assert list(floor.customdata) == [a["name"] for a in size_only if a[key] is not None]
    note = report.section("anchors").note
    assert all(a["name"] in note for a in size_only)


def test_an_outlier_loss_leaves_the_front_readable(copy_run):
    """One baseline 100x above the front (the demo's uniform baseline once sat at 32 where the front was below
    1): the loss axis spans the rest, and the outlier is a labelled marker at the top edge at its MACs."""
    from sslc.runs.study import record_baselines

    run = open_run(copy_run("outlier"))
    front = [t.heldout_loss for t in run.front()]
    baselines = run.record.baselines
    scored = next(b for b in baselines if b.heldout_loss is not None)
    scored.heldout_loss = 100 * max(front)
    record_baselines(run.study, baselines)
    run.reload()
    figure = build_report(run).section("front").figure
    low, high = figure.layout.yaxis.range
    others = [y for t in figure.data if t.meta in ("pareto", "complete") for y in t.y]
    assert low < min(others) and max(others) < high < scored.heldout_loss
    (marker,) = traces(figure, "off-scale")
    assert list(marker.customdata) == [scored.heldout_loss] and list(marker.x) == [pytest.approx(scored.macs / 1e9)]
    assert low < marker.y[0] < high and marker.text[0] == f"{scored.name}: {scored.heldout_loss:.3g}"
    untouched = build_report(open_run(copy_run("no-outlier"))).section("front").figure
    assert untouched.layout.yaxis.range is None and not traces(untouched, "off-scale")  # autorange when all fit


def test_each_trial_records_how_its_latency_was_measured_and_the_report_says_it(run, report):
    """The trials time their students with the trial's threads (--cpus-per-trial), after one warm-up, with the
    search's --latency-repeats, on the CPU; each records that beside its latency, and the latency chart's note
    says it (sslc-info's idle, all-core figure differs: that is why)."""
    from sslc.metrics import describe_conditions

    timed = [t for t in run.trials() if t.latency_ms is not None]
    assert timed
    threads = run.record.trainer["num_threads"]
    for trial in timed:
        measured = trial.latency_measurement
        assert measured["torch_threads"] == threads and measured["warmup"] == 1 and measured["device"] == "cpu"
        assert measured["repeats"] == run.record.settings["latency_repeats"] == 1
        assert measured["seconds"] == run.record.budget_seconds and measured["batch"] == 1
        assert not any(key.endswith("_ms") for key in measured)  # conditions only: the timing is latency_ms
    note = " ".join(report.section("front-latency").note.split())
    way = describe_conditions({k: v for k, v in timed[0].latency_measurement.items()
                               if k not in ("load_average", "cpus")})
    assert way in note and f"({len(timed)} trials)" in note and "load average" in note
    cpu_name = timed[0].latency_measurement["device_name"]
    assert cpu_name and way == (f"median of 1 after 1 warm-up, 1 x {run.record.budget_seconds:g} s on cpu "
                                f"({cpu_name}), {threads} torch thread(s)")


def test_retrained_points_sit_beside_their_short_trial_and_probe_scores(tmp_path):
    """The retrains section ranks each retrained point by its short-trial loss, its retrained loss and its probe
    score (error rate: lower is better); the verdict says whether the short trials' order held (tau recomputed)."""
    import optuna
    from scipy.stats import kendalltau

    from sslc.dashboards.retrains import ranking_html
    from sslc.runs.study import record_probe, record_retrain

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="ranks",
                                directions=["minimize", "minimize"])
    # (short-trial loss, retrained loss, PER): trials 0 and 1 swap places after retraining.
    scores = {0: (0.50, 0.30, 0.40), 1: (0.60, 0.20, 0.35), 2: (0.90, 0.70, 0.60)}
    for number, (short, long, per) in scores.items():
        record_retrain(study, number, {"heldout_loss": long, "short_trial_heldout_loss": short, "steps": 40,
                                       "recipe": {"name": "quick"}, "macs": 10**9 * (number + 1),
                                       "validation": [[20, long + 0.1], [40, long]]})
        record_probe(study, "ctc", number, {"metric": per, "metric_name": "error_rate", "weights": "retrained",
                                            "macs": 10**9, "params": 10**6})
    markup = ranking_html(open_run(tmp_path))
    rows = re.findall(r"<tr><td>(\d+)</td><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td><td>[^<]*</td><td>([^<]*)</td>",
                      markup)
    assert rows == [("0", "0.5000 (1)", "0.3000 (2)", "0.4000 (retrained, 2)"),
                    ("1", "0.6000 (2)", "0.2000 (1)", "0.3500 (retrained, 1)"),
                    ("2", "0.9000 (3)", "0.7000 (3)", "0.6000 (retrained, 3)")]
    tau = kendalltau([s for s, _, _ in scores.values()], [r for _, r, _ in scores.values()]).statistic
    assert f"ranking of these 3 points changed after retraining (Kendall tau {tau:.2f}" in markup
