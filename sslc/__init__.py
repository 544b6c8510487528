"""sslc: find the best way to compress a self-supervised speech model under a compute budget.

The top-level names are imported lazily so `import sslc` stays light (no Ray, Optuna or transformers).
"""

__version__ = "0.1.0"
__all__ = ["load_teacher", "load_student", "__version__"]


def load_teacher(spec, seed: int = 0):
    """A teacher encoder from a transformers checkpoint dir / hub id, torchaudio bundle, or random:<preset>."""
    from sslc.models.teachers import load_teacher as _load

    return _load(spec, seed=seed)


def load_student(path, map_location="cpu"):
    """A student exported by `sslc-export`, without Ray, Optuna or the run directory."""
    from sslc.export import load_student as _load

    return _load(path, map_location=map_location)
