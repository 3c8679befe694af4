"""Streaming pipeline: voice activity, utterance segmentation, local agreement, inference scheduling."""
