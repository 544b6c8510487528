"""Audio data: decoding (by seeking), corpus discovery, fixed and random crops, length-bucketed batching, demo corpus."""

from sslc.data.audio import SAMPLE_RATE, AudioReadError, load_audio, read_crop
from sslc.data.corpus import AUDIO_SUFFIXES, AudioFile, discover_audio, split_heldout
from sslc.data.demo import DEMO_NOTE, make_demo_corpus, resolve_data
from sslc.data.sampler import LengthBucketBatchSampler, iter_batches
from sslc.data.segments import (
    Segment,
    SegmentDataset,
    collate,
    make_segments,
    random_crops,
    segments_fingerprint,
)

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
    "random_crops",
    "read_crop",
    "resolve_data",
    "segments_fingerprint",
    "split_heldout",
]
