"""The streaming recognizer of one source: voice activity, utterance segmentation, re-decodes and local agreement."""
