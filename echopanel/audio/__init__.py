"""Audio formats: PCM16 decoding, resampling, WAV reading."""
