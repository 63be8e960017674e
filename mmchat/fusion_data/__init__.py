"""Procedural training and evaluation data for the fusion module.

Images of coloured shapes (:mod:`.images`) and spoken requests / transcripts (:mod:`.grammar`,
:mod:`.speech`), written as a directory of media files plus ``samples.jsonl`` (:mod:`.records`)
by :func:`build_dataset` (:mod:`.dataset`). Run ``python -m mmchat.fusion_data --help``.
"""

from mmchat.fusion_data.dataset import build_dataset
from mmchat.fusion_data.images import ImageConfig
from mmchat.fusion_data.records import QA, Sample, dataset_hash, load_samples, validate_dataset
from mmchat.fusion_data.speech import SpeechConfig

__all__ = ["QA", "ImageConfig", "Sample", "SpeechConfig", "build_dataset", "dataset_hash",
           "load_samples", "validate_dataset"]
