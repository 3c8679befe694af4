"""Speech engines behind one small streaming interface (see base.py)."""
