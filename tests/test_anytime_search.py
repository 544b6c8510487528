"""`sslc-search --mode anytime`: one elastic student trained once, every config scored on its shared weights, the
same study and Pareto files as a trial search, and `sslc-export --anytime` writing one model for every budget."""

from __future__ import annotations

import json

import pytest
import torch
from optuna.trial import TrialState

import sslc
from sslc.cli.export import main as export_main
from sslc.cli.search import main as search_main
from sslc.compress import CompressionConfig
from sslc.errors import UserError
from sslc.metrics import count_macs, count_macs_of_model
from sslc.runs.record import open_run
from sslc.runs.storage import load_study
from sslc.search.runner import SearchSettings, run_search
from sslc.trainers.once_for_all import load_once_for_all, score_subnetwork


@pytest.fixture(scope="module")
def anytime_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("anytime")
    settings = SearchSettings(
        teacher="random:tiny", data="demo", budget="70%", mode="anytime", space="anytime", trials=5, steps=2,
        anytime_steps=6, batch_size=2, crop_seconds=1.0, name="any", run_dir=tmp / "any", latency_repeats=1,
        baselines=True, quiet=True, report=False,
    )
    result = run_search(settings)
    return settings, result, load_study(settings.run_dir)


def test_configs_are_scored_on_the_shared_weights_without_training(anytime_run):
    settings, result, study = anytime_run
    run = open_run(settings.run_dir)
    assert run.record.mode == "anytime" and run.record.settings["anytime_steps"] == 6
    assert run.record.anytime["status"] == "completed" and run.record.anytime["steps"] == 6
    trained = load_once_for_all(run.anytime_dir)
    assert trained.finished and trained.step == 6
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
                and t.user_attrs.get("repeat_of") is None]
    assert len([t for t in complete if t.user_attrs.get("steps_done") == 0]) >= 5
    # Each trial's score is the protocol's held-out score of its sub-network on the shared weights, with its
    # heads fitted as a trial's start: recomputed.
    from sslc.search.retrain import prepare_context
    from sslc.trainers import TrainerConfig

    context = prepare_context(run)
    trainer = TrainerConfig.from_dict(run.record.trainer)
    for trial in complete[:2]:
        config = CompressionConfig.from_dict(trial.user_attrs["config"])
        loss, _ = score_subnetwork(trained.elastic, trained.heads, config, context.targets(), context.data.heldout,
                                   trainer, fit_heads_on=context.data.train)
        assert trial.values[0] == pytest.approx(loss, rel=1e-5)
    front = {row["trial"] for row in result.pareto}
    assert front and front <= {t.number for t in complete}
    baselines = {b.name: b for b in run.record.baselines}
    assert baselines["uniform"].heldout_loss is not None  # scored on the shared weights too


def test_export_anytime_serves_every_budget_on_the_front(anytime_run, tmp_path, capsys):
    settings, result, _ = anytime_run
    output = tmp_path / "model.pt"
    assert export_main([str(settings.run_dir), "--anytime", "-o", str(output)]) == 0
    model = sslc.load_anytime(output)
    assert {p.macs for p in model.front} == {
        count_macs(CompressionConfig.from_dict(row["config"]).student_architecture(model.elastic.config)).total
        for row in result.pareto
    }
    largest = max(p.macs for p in model.front)
    student = sslc.load_student(output, budget=int(largest))
    samples = 16000
    assert count_macs(student.config, num_samples=samples).total == count_macs_of_model(student.encoder, samples)
    waves = torch.randn(1, samples)
    split = model.run(waves, until_layer=1, budget=int(largest))
    full = model(waves, budget=int(largest)).last_hidden_state
    assert torch.allclose(model.resume(split, budget=int(largest)).last_hidden_state, full, atol=1e-5)
    smallest = min(p.macs for p in model.front)
    code = export_main([str(settings.run_dir), "--trial", str(next(iter(result.pareto))["trial"]),
                        "-o", str(tmp_path / "one.pt")])
    assert code == 0
    with pytest.raises(UserError, match="smallest needs"):
        sslc.load_student(output, budget=max(1, smallest // 2))


def test_a_non_elastic_space_is_refused_in_anytime_mode(tmp_path, capsys):
    # Refused before anything is loaded or trained: one line, exit 2.
    code = search_main(["--mode", "anytime", "--space", "combined", "--teacher", "random:tiny", "--data", "demo",
                        "--budget", "70%",
                        "--run-dir", str(tmp_path / "r"), "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be searched with --mode anytime" in err and "attn_rank" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_trial_run_is_not_an_anytime_run(tmp_path, capsys):
    settings = SearchSettings(teacher="random:tiny", data="demo", budget="70%", trials=1, steps=1, batch_size=2,
                              crop_seconds=1.0, name="t", run_dir=tmp_path / "t", latency_repeats=1,
                              baselines=False, quiet=True, report=False)
    run_search(settings)
    code = export_main([str(settings.run_dir), "--anytime", "-o", str(tmp_path / "m.pt")])
    assert code == 2 and "--mode trials" in capsys.readouterr().err
    assert json.loads((settings.run_dir / "pareto.json").read_text())["points"]


def test_sslc_retrain_starts_an_anytime_trial_from_its_shared_weights(anytime_run, spy):
    """sslc-retrain extracts the chosen point from the shared weights (not `compress` from the teacher) and keeps
    its shared-weight score beside the retrained one."""
    import sslc.compress.elastic as elastic_module
    from sslc.cli.retrain import main as retrain_main

    settings, result, study = anytime_run
    number = result.pareto[0]["trial"]
    extracted = spy(elastic_module.ElasticStudent, "extract")
    assert retrain_main([str(settings.run_dir), "--trial", str(number), "--steps", "1", "--no-progress"]) == 0
    assert extracted, "the retrained student did not come from the shared weights"
    summary = json.loads((settings.run_dir / "retrain" / str(number) / "result.json").read_text())
    assert summary["short_trial_heldout_loss"] == pytest.approx(study.trials[number].values[0])
    assert summary["steps"] == 1


def test_export_anytime_in_other_formats(anytime_run, tmp_path, capsys):
    settings, _, _ = anytime_run
    run_dir = str(settings.run_dir)
    assert export_main([run_dir, "--anytime", "-o", str(tmp_path / "m.pt")]) == 0
    assert export_main([run_dir, "--anytime", "-o", str(tmp_path / "m.safetensors")]) == 0  # format from suffix
    capsys.readouterr()
    torch_file, safe = sslc.load_anytime(tmp_path / "m.pt"), sslc.load_anytime(tmp_path / "m.safetensors")
    waves = torch.randn(2, 16000)
    budget = max(p.macs for p in torch_file.front)
    with torch.no_grad():
        assert torch.equal(torch_file(waves, budget=budget).last_hidden_state,
                           safe(waves, budget=budget).last_hidden_state)
    # One budget's student as TorchScript: the student load_student(path, budget=...) extracts.
    assert export_main([run_dir, "--anytime", "--budget", str(budget), "--format", "torchscript",
                        "-o", str(tmp_path / "point.pt")]) == 0
    assert "the best front point within" in capsys.readouterr().out
    student = sslc.load_student(tmp_path / "m.pt", budget=budget)
    lengths = torch.tensor([16000, 12000])
    with torch.no_grad():
        traced = torch.jit.load(str(tmp_path / "point.pt"))(waves, lengths)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(traced, student(waves, lengths)))
    # A format that holds one student needs a budget: one line, exit 2.
    assert export_main([run_dir, "--anytime", "--format", "onnx", "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --budget" in err[0]
