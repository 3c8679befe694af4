"""What a finished session says: summary, action items, decisions, risks, questions, entities, topics, exports.

Pure functions over the transcript (``Utterance`` items with speakers and times); rule-based, no model downloads.
"""

from echopanel.analysis.report import analyse, talk_time
from echopanel.analysis.text import Utterance

__all__ = ["Utterance", "analyse", "talk_time"]
