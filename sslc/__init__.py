"""sslc: find the best way to compress a self-supervised speech model under a compute budget.

The top-level names are imported lazily so `import sslc` stays light (no Ray, Optuna or transformers).
"""

__version__ = "0.1.0"
__all__ = ["load_teacher", "load_student", "__version__"]


def load_teacher(spec, seed: int = 0):
    """A teacher encoder from a transformers checkpoint dir / hub id, torchaudio bundle, or random:<preset>.

    Returns sslc's `SpeechEncoder` in eval mode: `teacher(waveforms, lengths=None)` takes 16 kHz mono float
    waveforms [B, samples] and returns an output with `hidden_states` (list of [B, T, D]) and `frame_lengths`.
    """
    from sslc.models.teachers import load_teacher as _load

    return _load(spec, seed=seed)


def load_student(path, map_location="cpu"):
    """A student exported by `sslc-export`, without Ray, Optuna or the run directory.

    `student(waveforms)` takes 16 kHz mono float waveforms ([B, samples], or a list of 1-D ones) and returns the
    list of hidden states [B, T, D]; `student.sample_rate` is 16000, and `student(w, sample_rate=sr)` refuses
    any other rate. See `sslc.runs.student_file.ExportedStudent`.
    """
    from sslc.runs.student_file import load_student as _load

    return _load(path, map_location=map_location)
