"""Audio data: decoding, corpus discovery, fixed training segments, length-bucketed batching, demo corpus."""

from sslc.data.audio import SAMPLE_RATE, AudioReadError, load_audio
from sslc.data.corpus import AUDIO_SUFFIXES, AudioFile, discover_audio, split_heldout
from sslc.data.demo import DEMO_NOTE, make_demo_corpus, resolve_data
from sslc.data.sampler import LengthBucketBatchSampler, iter_batches
from sslc.data.segments import Segment, SegmentDataset, collate, make_segments

__all__ = [
    "AUDIO_SUFFIXES",
    "DEMO_NOTE",
    "SAMPLE_RATE",
    "AudioFile",
    "AudioReadError",
    "LengthBucketBatchSampler",
    "Segment",
    "SegmentDataset",
    "collate",
    "discover_audio",
    "iter_batches",
    "load_audio",
    "make_demo_corpus",
    "make_segments",
    "resolve_data",
    "split_heldout",
]
