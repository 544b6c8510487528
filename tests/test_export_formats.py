"""Students in other tools' formats: each written file is loaded in a fresh process that does not import sslc
(`python -I`, and it reports whether `sslc` got imported) and every hidden state is compared with sslc's own
forward, on a padded batch and an unpadded one of another length (the graphs' batch and time axes are dynamic).

Tolerance: TOL absolute on hidden states of magnitude ~1 (float32; onnxruntime's and transformers' kernels sum in
another order than sslc's)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import sslc
from sslc.compress.elastic import make_elastic
from sslc.errors import UserError
from sslc.metrics import count_macs
from sslc.models import LayerSpec, tiny_config
from sslc.models.formats import write_conversion
from sslc.models.formats.transformers_dir import plain_problems
from sslc.runs.anytime_file import load_anytime, save_anytime
from sslc.runs.student_file import save_student
from tests.builders import pre_ln_tiny, random_teacher

TOL = 1e-4
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def per_layer_student():
    """Per-layer heads (WavLM: which teacher heads kept), FFN units, a low-rank factor and CNN channels: no
    transformers config holds it."""
    config = tiny_config("wavlm")
    config.conv_layers[1].channels = 24
    config.layers = [LayerSpec(heads=2, ffn_dim=96, ranks={"fc1": 8}, head_index=[1, 3]),
                     LayerSpec(heads=3, ffn_dim=64, head_index=[0, 2, 3])]
    return random_teacher(config.validate())


def plain_student(family="hubert"):
    """Depth 3, FFN 96 and per-layer CNN channels: what HubertConfig expresses (conv_dim)."""
    config = tiny_config(family)
    config.conv_layers[2].channels = 16
    config.layers = [LayerSpec(heads=4, ffn_dim=96) for _ in range(3)]
    return random_teacher(config.validate())


def thin_student():
    """The lighthubert-small baseline's shape (half the width, heads and FFN) compressed from a tiny teacher: its
    kept residual channels are a subset of the teacher's, its heads fill its width."""
    from sslc.compress import compress
    from sslc.search.baselines import thin_config

    teacher = random_teacher(tiny_config())
    student = compress(teacher, thin_config(teacher.config, 0.5, 0.5, 4.0)).eval()
    assert student.config.embed_dim == 32 and student.config.residual_index is not None
    return student


def batches():
    """(waveforms, lengths, padded): two rows, the second zero-padded; one unpadded row of another length."""
    generator = torch.Generator().manual_seed(0)
    padded = 0.1 * torch.randn(2, 16000, generator=generator)
    padded[1, 11000:] = 0.0
    single = 0.1 * torch.randn(1, 20800, generator=generator)
    return [(padded, torch.tensor([16000, 11000]), True), (single, torch.tensor([20800]), False)]


def reference(encoder):
    """sslc's hidden states: with lengths for the padded batch, without any for the unpadded one."""
    with torch.no_grad():
        return [list(encoder(w, n if padded else None).hidden_states) for w, n, padded in batches()]


CHILD = r"""
import importlib, json, os, sys
import torch


def run(fmt, path, waves, lengths, padded, report):
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outs = session.run(None, {"waveforms": waves.numpy(), "lengths": lengths.numpy()})
        report["metadata"] = json.loads(session.get_modelmeta().custom_metadata_map["sslc"])
        return [torch.from_numpy(o) for o, n in zip(outs, names) if n.startswith("hidden_state_")]
    if fmt == "onnx-split":
        import onnxruntime
        client = onnxruntime.InferenceSession(os.path.join(path, "client.onnx"), providers=["CPUExecutionProvider"])
        server = onnxruntime.InferenceSession(os.path.join(path, "server.onnx"), providers=["CPUExecutionProvider"])
        first = client.run(None, {"waveforms": waves.numpy(), "lengths": lengths.numpy()})
        rest = server.run(None, {"stream": first[-2], "frame_lengths": first[-1]})
        return [torch.from_numpy(o) for o in first[:-1] + rest[:-1]]
    if fmt == "torchscript":
        with torch.no_grad():
            return list(torch.jit.load(path)(waves, lengths)[:-2])
    if fmt == "transformers":
        from transformers import AutoModel
        model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        report["class"] = type(model).__name__
        report["custom_code"] = os.path.exists(os.path.join(path, "modeling_sslc_student.py"))
        mask = (torch.arange(waves.shape[1])[None] < lengths[:, None]).long() if padded else None
        with torch.no_grad():
            return list(model(waves, attention_mask=mask, output_hidden_states=True).hidden_states)
    if fmt == "s3prl":
        sys.path.insert(0, os.path.dirname(path))
        hubconf = importlib.import_module(os.path.basename(path) + ".hubconf")
        upstream = hubconf.sslc_student().eval()
        wavs = [w[:n] for w, n in zip(waves, lengths.tolist())]
        with torch.no_grad():
            hidden = upstream(wavs)["hidden_states"]
        report["downsample_rate"] = upstream.get_downsample_rates("hidden_states")
        try:  # s3prl's own featurizer, when s3prl imports here
            from s3prl.upstream.interfaces import Featurizer
        except Exception:
            report["s3prl"] = False
        else:
            featurizer = Featurizer(upstream, "hidden_states", upstream_device="cpu")
            with torch.no_grad():
                feature = featurizer(wavs, upstream(wavs))
            report.setdefault("s3prl", []).append([list(f.shape) for f in feature])
            report["s3prl_rate"] = featurizer.downsample_rate
        return list(hidden)
    raise ValueError(fmt)


jobs, inputs, out = json.loads(sys.argv[1]), torch.load(sys.argv[2]), sys.argv[3]
results, reports = {}, {}
for name, (fmt, path) in jobs.items():
    reports[name] = {}
    results[name] = [run(fmt, path, w, l, p, reports[name]) for w, l, p in inputs]
torch.save(results, out)
imported = sorted(m for m in sys.modules if m == "sslc" or m.startswith("sslc."))
print(json.dumps({"reports": reports, "sslc_imported": imported}))
"""


def run_child(jobs: dict, tmp_path) -> tuple[dict, dict]:
    """Run {name: (format, path)} in one fresh process without sslc: ({name: hidden states per batch},
    {name: what it reported})."""
    torch.save(batches(), tmp_path / "inputs.pt")
    done = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, json.dumps({k: [f, str(p)] for k, (f, p) in jobs.items()}),
         str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["sslc_imported"] == []
    return torch.load(tmp_path / "out.pt"), answer["reports"]


def assert_close(got, expected):
    assert len(got) == len(expected)
    for batch_got, batch_expected in zip(got, expected):
        assert len(batch_got) == len(batch_expected)
        for a, b in zip(batch_got, batch_expected):
            assert a.shape == b.shape
            assert float((a - b).abs().max()) < TOL


def metadata_of(encoder):
    return {"architecture": encoder.config.to_dict(), "provenance": {"test": True}}


# ---- sslc's own file, safetensors container ----------------------------------------------------------------------
def test_safetensors_student_file_holds_no_pickle_and_loads_in_sslc(tmp_path):
    encoder = per_layer_student()
    path = save_student(tmp_path / "student.safetensors", encoder, {"quantize": None}, "random:tiny",
                        {"run": "r"}, {"macs": 5}, container="safetensors")
    script = ("import json, sys; from safetensors import safe_open\n"
              "f = safe_open(sys.argv[1], 'pt'); m = json.loads(f.metadata()['sslc'])\n"
              "print(json.dumps({'arch': m['architecture'], 'keys': sorted(f.keys()), 'sum': float(sum("
              "f.get_tensor(k).double().sum() for k in f.keys())), 'meta': [m['teacher'], m['provenance'], "
              "m['metrics']], 'sslc': [k for k in sys.modules if k.startswith('sslc')]}))")
    done = subprocess.run([sys.executable, "-I", "-c", script, str(path)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    state = encoder.state_dict()
    assert seen["sslc"] == [] and seen["arch"] == encoder.config.to_dict() and seen["keys"] == sorted(state)
    assert seen["sum"] == pytest.approx(float(sum(v.double().sum() for v in state.values())), rel=1e-12)
    assert seen["meta"] == ["random:tiny", {"run": "r"}, {"macs": 5}]
    with open(path, "rb") as handle:
        assert b"\x80\x02" not in handle.read(64)  # not a pickle stream
    student = sslc.load_student(path)
    waves, lengths, _ = batches()[0]
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(student(waves, lengths), encoder(waves, lengths).hidden_states))
    assert student.metadata["metrics"] == {"macs": 5}


def test_safetensors_anytime_file_equals_the_torch_one(tmp_path):
    teacher = random_teacher(tiny_config())
    elastic = make_elastic(teacher)
    points = [(elastic.config_for(depth=1), None, 0.5), (elastic.config_for(), None, 0.2)]
    save_anytime(tmp_path / "a.pt", elastic, points)
    save_anytime(tmp_path / "a.safetensors", elastic, points, container="safetensors")
    waves, lengths, _ = batches()[0]
    small = count_macs(points[0][0].student_architecture(teacher.config)).total
    for budget in (small, None):
        models = [load_anytime(tmp_path / name) for name in ("a.pt", "a.safetensors")]
        with torch.no_grad():
            a, b = (m(waves, lengths, budget=budget).hidden_states for m in models)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sslc.load_student(tmp_path / "a.safetensors", budget=small).num_layers == 1


# ---- conversions -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_torch_thread):
    """Every conversion written, then run in ONE fresh process without sslc (a process start with transformers
    costs ~10-30 s on a shared machine): {name: (encoder or reference states, format result, states, report)}."""
    root = tmp_path_factory.mktemp("formats")
    onnx = True
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        onnx = False
    students = {
        "onnx": ("onnx", per_layer_student()),
        "torchscript": ("torchscript", per_layer_student()),
        "torchscript-pre-ln": ("torchscript", random_teacher(pre_ln_tiny())),
        "hf-hubert": ("transformers", plain_student("hubert")),
        "hf-wav2vec2": ("transformers", plain_student("wav2vec2")),
        "hf-wavlm": ("transformers", plain_student("wavlm")),
        "hf-pre-ln": ("transformers", random_teacher(pre_ln_tiny())),
        "hf-thin": ("transformers", thin_student()),
        "hf-remote": ("transformers", per_layer_student()),
        "s3prl": ("s3prl", plain_student()),
    }
    if not onnx:
        students.pop("onnx")
    written, jobs, expected = {}, {}, {}
    for name, (fmt, encoder) in students.items():
        target = root / ("sslc_student" if fmt == "s3prl" else name + (".onnx" if fmt == "onnx" else ""))
        written[name] = write_conversion(fmt, encoder, target, metadata_of(encoder))
        jobs[name] = (fmt, target)
        expected[name] = reference(encoder)
        written[name]["encoder"] = encoder
    if onnx:  # an anytime model's point, split after layer 1 into a client and a server graph
        teacher = random_teacher(tiny_config("wavlm"))
        elastic = make_elastic(teacher)
        config = elastic.config_for(depth=2, heads=[3, 2], ffn=[64, 100],
                                    conv_channels=[c.channels for c in teacher.config.conv_layers], hidden=48)
        save_anytime(root / "any.pt", elastic, [(config, None, 0.1)])
        model = load_anytime(root / "any.pt")
        encoder = model.student().encoder
        written["split"] = write_conversion("onnx", encoder, root / "split", metadata_of(encoder), split_layer=1)
        jobs["split"] = ("onnx-split", root / "split")
        with torch.no_grad():  # the anytime model's own split execution is the reference
            expected["split"] = [
                list(model.resume(model.run(w, n if p else None, until_layer=1, keep_states=True)).hidden_states)
                for w, n, p in batches()]
    states, reports = run_child(jobs, root)
    return {name: (expected[name], written[name], states[name], reports[name]) for name in jobs}


def test_onnx_per_layer_wavlm_runs_in_onnxruntime(exported):
    if "onnx" not in exported:
        pytest.skip("onnxruntime is not installed (pip install 'sslc[onnx]')")
    expected, written, got, report = exported["onnx"]
    assert_close(got, expected)
    assert report["metadata"]["architecture"] == written["encoder"].config.to_dict()
    import onnx

    assert onnx.load(written["files"][0]).opset_import[0].version == 18


def test_split_onnx_composes_to_the_anytime_student(exported):
    if "split" not in exported:
        pytest.skip("onnxruntime is not installed (pip install 'sslc[onnx]')")
    expected, written, got, _ = exported["split"]
    assert [p.rsplit("/", 1)[-1] for p in written["files"]] == ["client.onnx", "server.onnx"]
    # the ONNX client always takes lengths; sslc's unpadded forward takes none: the same frames either way
    assert_close(got, expected)


@pytest.mark.parametrize("name", ["torchscript", "torchscript-pre-ln"])
def test_torchscript_runs_with_torch_alone(exported, name):
    expected, _, got, _ = exported[name]
    assert_close(got, expected)


@pytest.mark.parametrize("name", ["hf-hubert", "hf-wav2vec2", "hf-wavlm", "hf-pre-ln", "hf-thin"])
def test_transformers_plain_config_loads_without_custom_code(exported, name):
    expected, written, got, report = exported[name]
    assert written["kind"] == "plain" and plain_problems(written["encoder"].config) == []
    expected_class = {"hf-hubert": "HubertModel", "hf-wav2vec2": "Wav2Vec2Model", "hf-wavlm": "WavLMModel",
                      "hf-pre-ln": "HubertModel", "hf-thin": "HubertModel"}[name]
    assert report == {"class": expected_class, "custom_code": False}
    assert_close(got, expected)


def test_transformers_remote_code_for_per_layer_students(exported):
    expected, written, got, report = exported["hf-remote"]
    problems = written["notes"][0]
    assert written["kind"] == "remote-code" and "differ between layers" in problems and "low-rank" in problems
    assert report == {"class": "SslcStudentModel", "custom_code": True}
    assert_close(got, expected)


def test_s3prl_upstream_follows_the_contract(exported):
    expected, _, got, report = exported["s3prl"]
    assert report["downsample_rate"] == 320
    # The upstream pads a list of waveforms itself: the padded batch is sslc's padded forward.
    assert_close(got, expected)
    if report["s3prl"] is not False:  # s3prl's Featurizer took it: a weighted sum of every layer per waveform
        assert report["s3prl_rate"] == 320
        assert report["s3prl"] == [[[49, 64], [34, 64]], [[64, 64]]]


def test_conversion_refusals(tmp_path):
    encoder = plain_student()
    with pytest.raises(ValueError, match="only written as ONNX"):
        write_conversion("torchscript", encoder, tmp_path / "x.pt", {}, split_layer=1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="other files"):
        write_conversion("transformers", encoder, tmp_path / "busy", {})
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"
    thin = dataclasses.replace(tiny_config("wavlm"), embed_dim=32, residual_index=list(range(0, 64, 2)),
                               layers=[LayerSpec(heads=2, ffn_dim=64, head_index=[0, 2])])
    assert any("thin WavLM" in p for p in plain_problems(thin.validate()))


def test_cli_formats(tiny_run, tmp_path, capsys):
    from sslc.cli.export import main as export_main
    from sslc.runs.record import open_run
    from sslc.runs.trials import front_trials

    trial = front_trials(open_run(tiny_run).study)[0].number
    reference_file = tmp_path / "student.pt"
    assert export_main([str(tiny_run), "--trial", str(trial), "-o", str(reference_file)]) == 0
    # No --format: the suffix decides; safetensors is the default and loses nothing (same states, same metadata).
    assert export_main([str(tiny_run), "--trial", str(trial), "-o", str(tmp_path / "student.safetensors")]) == 0
    assert "format safetensors" in capsys.readouterr().out
    a, b = sslc.load_student(reference_file), sslc.load_student(tmp_path / "student.safetensors")
    waves, lengths, _ = batches()[0]
    with torch.no_grad():
        assert all(torch.equal(x, y) for x, y in zip(a(waves, lengths), b(waves, lengths)))
    assert {k: v for k, v in a.metadata.items() if k != "provenance"} == {
        k: v for k, v in b.metadata.items() if k != "provenance"}
    assert export_main([str(tiny_run), "--trial", str(trial), "--format", "torchscript",
                        "-o", str(tmp_path / "student.ts")]) == 0
    with torch.no_grad():
        traced = torch.jit.load(str(tmp_path / "student.ts"))(waves, lengths)
        assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(traced, a(waves, lengths)))
    capsys.readouterr()
    cases = [
        (["--format", "torchscript", "--split-layer", "1", "-o", str(tmp_path / "x")], "--format onnx"),
        (["--format", "yaml"], "invalid choice"),
        (["--budget", "40%"], "with --anytime"),
        (["--remote-code", "-o", str(tmp_path / "y.onnx")], "--format transformers only"),
    ]
    for extra, message in cases:
        assert export_main([str(tiny_run), "--trial", str(trial), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_onnxruntime_latency_beside_torch(exported, capsys):
    if "onnx" not in exported:
        pytest.skip("onnxruntime is not installed (pip install 'sslc[onnx]')")
    from sslc.cli.info import main as info_main
    from sslc.models.formats.onnx_file import OnnxRuntimeStudent

    expected, written, _, _ = exported["onnx"]
    runtime = OnnxRuntimeStudent(written["files"][0])  # what sslc-info times computes the student's states
    waves, lengths, _ = batches()[0]
    assert_close([runtime(waves, lengths)], expected[:1])
    assert info_main(["--teacher", "random:tiny", "--seconds", "1", "--onnx", "--latency-repeats", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    torch_latency, onnx_latency = report["latency"], report["latency_onnxruntime"]
    assert onnx_latency["median_ms"] > 0 and onnx_latency["repeats"] == torch_latency["repeats"] == 2
    assert onnx_latency["threads"] == torch_latency["torch_threads"] == torch.get_num_threads()


def test_int8_students_are_exported_as_float_and_say_so(tmp_path):
    from sslc.runs.export import write_student
    from sslc.runs.student_file import student_payload

    encoder = plain_student()
    payload = student_payload(encoder, {"quantize": "int8"}, "random:tiny")
    written = write_student(encoder, payload, tmp_path / "s.ts", "torchscript")
    assert any("int8 is applied by sslc.load_student only" in note for note in written["notes"])
    waves, lengths, _ = batches()[0]
    with torch.no_grad():  # the float weights, as sslc.load_student(path, quantize=False) would run them
        traced = torch.jit.load(str(tmp_path / "s.ts"))(waves, lengths)
        assert all(float((a - b).abs().max()) < TOL for a, b in zip(traced, encoder(waves, lengths).hidden_states))
