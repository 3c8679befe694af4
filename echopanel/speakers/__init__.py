"""Speaker labels: a torch-free d-vector encoder (resemblyzer's weights), online and offline clustering, DER."""

from echopanel.speakers.clustering import OnlineClusterer, cluster, merge_threshold, recluster
from echopanel.speakers.embedding import SpeakerEncoder
from echopanel.speakers.metrics import DerResult, diarization_error_rate, read_rttm
from echopanel.speakers.tracker import SpeakerTracker, SpeakerTurn, main_speaker

__all__ = [
    "DerResult",
    "OnlineClusterer",
    "SpeakerEncoder",
    "SpeakerTracker",
    "SpeakerTurn",
    "cluster",
    "diarization_error_rate",
    "main_speaker",
    "merge_threshold",
    "read_rttm",
    "recluster",
]
