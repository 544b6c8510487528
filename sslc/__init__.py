"""sslc: find the best way to compress a self-supervised speech model under a compute budget.

The top-level names are imported lazily so `import sslc` stays light (no Ray, Optuna or transformers).
"""

__version__ = "0.1.0"
__all__ = ["load_teacher", "load_student", "load_anytime", "__version__"]


def load_teacher(spec, seed: int = 0):
    """A teacher encoder from a transformers checkpoint dir / hub id, torchaudio bundle, or random:<preset>.

    Returns sslc's `SpeechEncoder` in eval mode: `teacher(waveforms, lengths=None)` takes 16 kHz mono float
    waveforms [B, samples] and returns an output with `hidden_states` (list of [B, T, D]) and `frame_lengths`.
    """
    from sslc.models.teachers import load_teacher as _load

    return _load(spec, seed=seed)


def load_student(path, map_location="cpu", budget=None):
    """A student exported by `sslc-export`, without Ray, Optuna or the run directory.

    `student(waveforms)` takes 16 kHz mono float waveforms ([B, samples], or a list of 1-D ones) and returns the
    list of hidden states [B, T, D]; `student.sample_rate` is 16000, and `student(w, sample_rate=sr)` refuses
    any other rate. See `sslc.runs.student_file.ExportedStudent`.

    budget: for an anytime file only (which holds every size): the best student within the budget, e.g.
    "20GMACs" or "40%" of the teacher's MACs (one 10 s waveform); refused for an ordinary student file.
    """
    from sslc.runs.student_file import load_student as _load

    return _load(path, map_location=map_location, budget=budget)


def load_anytime(path, map_location="cpu"):
    """The whole model of an anytime file: `.front` (the chosen sizes, their MACs and scores), and
    `model(waveforms, lengths, budget=...)`, `run` / `resume` (split execution) and `student(budget)` for any
    budget. See `sslc.runs.anytime_file.AnytimeStudent`."""
    from sslc.runs.anytime_file import load_anytime as _load

    return _load(path, map_location=map_location)
