"""SUPERB-style probes of frozen encoders (`sslc-probe`): how much a teacher or compressed student still knows.

labels (what the corpus says each file is, and the speaker-disjoint split) -> model (the softmax-weighted sum of
hidden states and the head) -> train (encode once, train the head, score the held-out files) -> results (which
models, the rows, the study record).
"""

from .labels import TASKS, UNITS, Example, train_and_heldout
from .model import ClassifyProbe, CTCProbe, WeightedSum, edit_distance, greedy_ctc_decode, normalize_states
from .train import ProbeOutcome, ProbeSettings, run_probe

__all__ = [
    "TASKS", "UNITS", "Example", "train_and_heldout", "ClassifyProbe", "CTCProbe", "WeightedSum", "edit_distance",
    "greedy_ctc_decode", "normalize_states", "ProbeOutcome", "ProbeSettings",
    "run_probe",
]
