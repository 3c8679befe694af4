"""bench/soak's figures: the records it keeps while streaming, the analysis, and the printed report.

``bench/soak.py`` streams and samples; this module turns one session's samples and finals into windows (per minute,
per N minutes, first / last 5 minutes, first / last hour), the RSS slope after minute 10 and the RSS after close,
and prints them. See the docstring of ``bench/soak.py`` for what is measured and how.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jiwer

from bench.common import SAMPLE_RATE, fmt, normalize, pct

WINDOW_MIN = 5.0  # first / last minutes compared
HOUR_MIN = 60.0  # long runs also compare the first and the last hour
LONG_RUN_MIN = 120.0  # from this many minutes of audio: hour figures, and a coarser printed table
TARGET_GROWTH_MB = 50.0  # growth after the first audio minute (the 30-minute figure of docs/behaviour.md)
TARGET_GROWTH_AFTER_MB = 30.0  # issue 16: growth after minute 10, 8 hours of audio
TARGET_SLOPE_MB_H = 5.0  # issue 16: RSS slope after minute 10
RETAINED_WINDOW_S = 30.0  # wall time per retained-RSS point: the server's malloc-trim period (memory_trim_s)
TARGET_SESSIONS_MB = 30.0  # issue 16: RSS after the last close minus after the first, back-to-back sessions
TARGET_COST_RATIO = 1.1  # issue 16: per-utterance cost last hour / first hour


@dataclass(frozen=True)
class Placed:
    """One clip in the stream, in samples of the stream clock."""

    name: str
    start: int
    end: int
    reference: str
    source: str = "mic"


@dataclass
class Sample:
    wall_s: float
    sent_min: float  # the least-advanced source
    transcribed_min: float  # end of the latest response.done, any source
    rss_mb: float
    cpu_s: float
    other_cpus: float  # CPUs busy in other processes since the previous sample
    phase: str  # "idle" (before the session opened), "streaming", or "closed" (after the session ended)
    after_close_s: float | None = None  # phase "closed": seconds since the connection closed
    rss_min_mb: float | None = None  # the lowest RSS read (every 0.25 s) since the previous sample, this one included


@dataclass
class Final:
    item_id: str
    source: str
    start_ms: int
    end_ms: int
    compute_ms: float
    text: str
    repaired: bool

    @property
    def minute(self) -> int:
        return self.start_ms // 60_000

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ms - self.start_ms) / 1000


@dataclass
class MinuteRow:
    """One window of the table: ``minute`` is its first audio minute, ``width`` its length in minutes."""

    minute: int
    rss_mb: float | None  # max RSS while the server was transcribing this window
    finals: int
    mean_compute_ms: float | None
    compute_ms_per_audio_s: float | None
    wer: float | None  # over every source
    other_cpus: float | None  # mean CPUs busy in other processes while the server was on this window
    width: int = 1
    finals_by_source: dict[str, int] = field(default_factory=dict)
    wer_by_source: dict[str, float | None] = field(default_factory=dict)


@dataclass
class SoakResult:
    minutes: float
    wall_s: float
    samples: list[Sample]
    finals: list[Final]
    rows: list[MinuteRow]  # one per audio minute
    summary: dict[str, Any]
    errors: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    backpressure: dict[str, int] = field(default_factory=dict)
    session_stats: dict[str, Any] = field(default_factory=dict)
    close: dict[str, Any] = field(default_factory=dict)  # code, reason, closed_by
    degraded: list[dict[str, Any]] = field(default_factory=list)  # session.degraded events, if the server sends any
    sources: list[str] = field(default_factory=lambda: ["mic"])
    session: int = 1  # its number with --sessions
    profiles: list[dict[str, Any]] = field(default_factory=list)  # GET /debug/memory answers (--profile)


# -- analysis --------------------------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _spoken(finals: list[Final]) -> list[Final]:
    return [f for f in finals if f.text and not f.repaired]


def cost(finals: list[Final]) -> tuple[float | None, float | None]:
    """Mean compute_ms per utterance and compute ms per second of audio (non-empty live finals, every source)."""
    spoken = _spoken(finals)
    per_utt = _mean([f.compute_ms for f in spoken])
    audio_s = sum(f.duration_s for f in spoken)
    per_s = sum(f.compute_ms for f in spoken) / audio_s if audio_s > 0 else None
    return per_utt, per_s


def window_wer(
    finals: list[Final], placed: list[Placed], lo_ms: float, hi_ms: float, sources: list[str]
) -> float | None:
    """WER of ``sources``' finals in [lo, hi) against their clips that start in that window (whole clips only).

    Per source, an item belongs to the window when its midpoint falls inside the span of that source's clips in the
    window; several sources make one corpus WER (errors over reference words of all of them).
    """
    refs: list[str] = []
    hyps: list[str] = []
    for source in sources:
        clips = [p for p in placed if p.source == source and lo_ms <= p.start * 1000 / SAMPLE_RATE < hi_ms]
        if not clips:
            continue
        first_ms = clips[0].start * 1000 / SAMPLE_RATE
        last_ms = clips[-1].end * 1000 / SAMPLE_RATE
        hyp = " ".join(
            f.text for f in finals if f.source == source and first_ms <= (f.start_ms + f.end_ms) / 2 < last_ms + 500
        )
        refs.append(normalize(" ".join(p.reference for p in clips)))
        hyps.append(normalize(hyp) or "<empty>")
    return float(jiwer.wer(refs, hyps)) if refs else None


def window(
    finals: list[Final], placed: list[Placed], sources: list[str], lo_min: float, hi_min: float
) -> dict[str, Any]:
    """Cost and WER of the audio in [lo_min, hi_min): per utterance over every source, WER per source and over all."""
    lo_ms, hi_ms = lo_min * 60_000, hi_min * 60_000
    inside = [f for f in finals if lo_ms <= f.start_ms < hi_ms]
    per_utt, per_s = cost(inside)
    return {
        "from_min": lo_min,
        "to_min": hi_min,
        "utterances": len(_spoken(inside)),
        "finals_by_source": {s: sum(1 for f in inside if f.source == s and f.text) for s in sources},
        "mean_compute_ms": per_utt,
        "compute_ms_per_audio_s": per_s,
        "wer": window_wer(finals, placed, lo_ms, hi_ms, sources),
        "wer_by_source": {s: window_wer(finals, placed, lo_ms, hi_ms, [s]) for s in sources},
    }


def table_rows(r: SoakResult, placed: list[Placed], width: int) -> list[MinuteRow]:
    """The printed table of a long run: one row per ``width`` audio minutes."""
    finals = sorted(r.finals, key=lambda f: (f.start_ms, f.source))
    return _rows(r.minutes, r.samples, finals, placed, r.sources, width)


def _rows(
    minutes: float, samples: list[Sample], finals: list[Final], placed: list[Placed], sources: list[str], width: int
) -> list[MinuteRow]:
    """One row per ``width`` audio minutes."""
    n_minutes = int(minutes) + (1 if minutes % 1 else 0)
    rows: list[MinuteRow] = []
    for m in range(0, n_minutes, width):
        w = window(finals, placed, sources, m, m + width)
        here = [s for s in samples if s.phase == "streaming" and m <= s.transcribed_min < m + width]
        rss = [s.rss_mb for s in here]
        rows.append(
            MinuteRow(
                minute=m,
                width=width,
                rss_mb=max(rss) if rss else None,
                finals=sum(w["finals_by_source"].values()),
                finals_by_source=w["finals_by_source"],
                mean_compute_ms=w["mean_compute_ms"],
                compute_ms_per_audio_s=w["compute_ms_per_audio_s"],
                wer=w["wer"],
                wer_by_source=w["wer_by_source"],
                other_cpus=_mean([s.other_cpus for s in here]),
            )
        )
    return rows


def rss_slope(samples: list[Sample], from_min: float, until_min: float | None = None) -> dict[str, Any]:
    """The trend of every streaming sample's RSS (transient decode memory included) at or after ``from_min`` and,
    with ``until_min``, before that much audio was transcribed (the finishing phase is reported apart)."""
    points = [
        (s.transcribed_min, s.rss_mb)
        for s in samples
        if s.phase == "streaming" and (until_min is None or s.transcribed_min < until_min)
    ]
    return trend(points, from_min)


def retained_series(
    samples: list[Sample], window_s: float, until_min: float | None = None
) -> list[tuple[float, float]]:
    """(transcribed audio minute, retained RSS) per ``window_s`` of wall time while streaming.

    Retained RSS is the lowest RSS read in the window: what the server holds between decodes. Samples taken while
    a decode runs also count that decode's working set (encoder activations, beam caches: tens of MB that come and
    go within a second), which says nothing about what a long session accumulates. A window as long as the
    server's malloc-trim period holds at least one trim, so free heap waiting for it does not count either.
    ``until_min``: only samples taken before that much audio was transcribed (the end of the session, its final
    repairs and re-clustering, is reported apart).
    """
    during = [s for s in samples if s.phase == "streaming" and (until_min is None or s.transcribed_min < until_min)]
    out: list[tuple[float, float]] = []
    if not during:
        return out
    t0 = during[0].wall_s
    bucket: list[Sample] = []
    for s in during:
        if bucket and s.wall_s - t0 >= window_s:
            out.append((bucket[-1].transcribed_min, min(b.rss_min_mb or b.rss_mb for b in bucket)))
            bucket, t0 = [], s.wall_s
        bucket.append(s)
    if bucket and bucket[-1].wall_s - t0 >= window_s / 2:  # a last window of at least half the length
        out.append((bucket[-1].transcribed_min, min(b.rss_min_mb or b.rss_mb for b in bucket)))
    return out


def trend(points: list[tuple[float, float]], from_min: float) -> dict[str, Any]:
    """Least-squares slope (MB per hour of audio) and growth over the points at or after ``from_min``.

    ``growth_after_mb``: the highest point minus the first one (the one at ``from_min``).
    """
    points = [p for p in points if p[0] >= from_min]
    out: dict[str, Any] = {"from_min": from_min, "samples": len(points)}
    if not points:
        return out
    at_x, at_rss = points[0]
    top = max(points, key=lambda p: p[1])
    xs = [p[0] for p in points]
    out |= {
        "rss_at_from_mb": at_rss,
        "at_audio_min": at_x,
        "rss_max_after_mb": top[1],
        "rss_max_at_audio_min": top[0],
        "growth_after_mb": top[1] - at_rss,
        "last_mb": points[-1][1],
        "span_min": max(xs) - min(xs),
        "slope_mb_per_hour": None,
    }
    mean_x = sum(xs) / len(xs)
    mean_y = sum(p[1] for p in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if len(points) >= 2 and sxx > 0:
        sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
        out["slope_mb_per_hour"] = sxy / sxx * 60
    return out


def analyse(
    minutes: float,
    samples: list[Sample],
    finals: list[Final],
    placed: list[Placed],
    sources: list[str],
    *,
    slope_from_min: float = 10.0,
    retained_window_s: float = RETAINED_WINDOW_S,
) -> tuple[list[MinuteRow], dict[str, Any]]:
    finals = sorted(finals, key=lambda f: (f.start_ms, f.source))
    rows = _rows(minutes, samples, finals, placed, sources, 1)
    idle = [s for s in samples if s.phase == "idle"]
    during = [s for s in samples if s.phase == "streaming"]
    closed = [s for s in samples if s.phase == "closed"]
    baseline = next((s for s in during if s.transcribed_min >= 1.0), during[0] if during else None)
    after = [s for s in during if baseline is not None and s.wall_s >= baseline.wall_s]
    max_after = max(after, key=lambda s: s.rss_mb) if after else None
    growth = max_after.rss_mb - baseline.rss_mb if baseline and max_after else None
    idle_mb = idle[-1].rss_mb if idle else None
    close_mb = closed[0].rss_mb if closed else None
    settled = closed[-1] if closed else None

    def minus(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    span = min(WINDOW_MIN, minutes / 2)
    head = window(finals, placed, sources, 0, span)
    tail = window(finals, placed, sources, minutes - span, minutes)
    slope = rss_slope(samples, slope_from_min, until_min=minutes - 0.5)
    retained = retained_series(samples, retained_window_s, until_min=minutes - 0.5)
    finishing = [s for s in samples if s.phase == "streaming" and s.transcribed_min >= minutes - 0.5]
    summary: dict[str, Any] = {
        "audio_minutes": minutes,
        "sources": sources,
        "rss_idle_mb": idle_mb,
        "rss_max_during_mb": max((s.rss_mb for s in during), default=None),
        "rss_after_first_minute_mb": baseline.rss_mb if baseline else None,
        "rss_max_after_mb": max_after.rss_mb if max_after else None,
        "rss_max_at_audio_min": max_after.transcribed_min if max_after else None,
        "rss_growth_mb": growth,
        "growth_target_mb": TARGET_GROWTH_MB,
        "growth_pass": growth is not None and growth <= TARGET_GROWTH_MB,
        "rss_slope": slope,
        "retained_window_s": retained_window_s,
        "retained_series": retained,
        "retained": trend(retained, slope_from_min),
        "retained_first_minute_mb": next((mb for m, mb in retained if m >= 1.0), None),
        "rss_max_finishing_mb": max((s.rss_mb for s in finishing), default=None),
        "finishing_s": finishing[-1].wall_s - finishing[0].wall_s if len(finishing) > 1 else None,
        "growth_after_target_mb": TARGET_GROWTH_AFTER_MB,
        "slope_target_mb_per_hour": TARGET_SLOPE_MB_H,
        "rss_after_close_mb": close_mb,
        "rss_after_close_vs_idle_mb": minus(close_mb, idle_mb),
        "rss_settled_mb": settled.rss_mb if settled else None,
        "rss_settled_after_s": settled.after_close_s if settled else None,
        "rss_settled_vs_idle_mb": minus(settled.rss_mb if settled else None, idle_mb),
        "window_minutes": span,
        "first_window": head,
        "last_window": tail,
        "cost_ratio_per_utterance": _ratio(tail["mean_compute_ms"], head["mean_compute_ms"]),
        "cost_ratio_per_audio_s": _ratio(tail["compute_ms_per_audio_s"], head["compute_ms_per_audio_s"]),
        "wer_first_window": head["wer"],
        "wer_last_window": tail["wer"],
        "finals": sum(1 for f in finals if f.text),
        "finals_by_source": {s: sum(1 for f in finals if f.source == s and f.text) for s in sources},
        "wer_by_source": {s: window_wer(finals, placed, 0, minutes * 60_000, [s]) for s in sources},
        "wer": window_wer(finals, placed, 0, minutes * 60_000, sources),
        "empty_finals": sum(1 for f in finals if not f.text),
        "repaired_finals": sum(1 for f in finals if f.repaired),
        "compute_s_total": sum(f.compute_ms for f in finals) / 1000,
        "server_cpu_s": during[-1].cpu_s - during[0].cpu_s if len(during) > 1 else None,
    }
    if minutes >= LONG_RUN_MIN:
        first_h = window(finals, placed, sources, 0, HOUR_MIN)
        last_h = window(finals, placed, sources, minutes - HOUR_MIN, minutes)
        summary["first_hour"] = first_h
        summary["last_hour"] = last_h
        summary["hour_cost_ratio_per_utterance"] = _ratio(last_h["mean_compute_ms"], first_h["mean_compute_ms"])
        summary["hour_cost_ratio_per_audio_s"] = _ratio(
            last_h["compute_ms_per_audio_s"], first_h["compute_ms_per_audio_s"]
        )
    return rows, summary


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def across_sessions(results: list[SoakResult]) -> dict[str, Any]:
    """Back-to-back sessions on one server: RSS at each one's start, max during, after close, settled."""
    per = [
        {
            "session": r.session,
            "rss_start_mb": r.summary["rss_idle_mb"],
            "rss_max_during_mb": r.summary["rss_max_during_mb"],
            "rss_after_close_mb": r.summary["rss_after_close_mb"],
            "rss_settled_mb": r.summary["rss_settled_mb"],
            "finals": r.summary["finals"],
            "mean_compute_ms": cost(r.finals)[0],
            "wer": r.summary["wer"],
            "violations": len(r.violations),
            "errors": len(r.errors),
            "close_code": r.close.get("code"),
        }
        for r in results
    ]
    out: dict[str, Any] = {"sessions": per, "target_mb": TARGET_SESSIONS_MB}
    if len(per) >= 2:
        first, last = per[0], per[-1]
        for key in ("rss_after_close_mb", "rss_settled_mb"):
            a, b = first[key], last[key]
            out[f"last_minus_first_{key.removeprefix('rss_')}"] = b - a if a is not None and b is not None else None
        d = out["last_minus_first_settled_mb"]
        out["pass"] = d is not None and d <= TARGET_SESSIONS_MB
    return out


# -- report ----------------------------------------------------------------------------------------------------------


def _short(source: str) -> str:
    return {"system": "sys"}.get(source, source)


def print_table(rows: list[MinuteRow], sources: list[str]) -> None:
    multi = len(sources) > 1
    width = rows[0].width if rows else 1
    label = "minute" if width == 1 else "minutes"
    finals_head = "finals " + "/".join(_short(s) for s in sources) if multi else "finals"
    per_source = "".join(f" {'WER ' + _short(s):>8}" for s in sources) if multi else ""
    print(
        f"\n{label:>9} {'RSS MB':>8} {finals_head:>15} {'mean compute_ms':>16} {'compute ms/audio s':>19} "
        f"{'WER':>7}{per_source} {'other CPUs':>10}"
    )
    for row in rows:
        where = f"{row.minute}" if row.width == 1 else f"{row.minute}-{row.minute + row.width - 1}"
        finals = "/".join(str(row.finals_by_source.get(s, 0)) for s in sources) if multi else str(row.finals)
        wers = "".join(f" {pct(row.wer_by_source.get(s)):>8}" for s in sources) if multi else ""
        print(
            f"{where:>9} {fmt(row.rss_mb, '.1f'):>8} {finals:>15} {fmt(row.mean_compute_ms, '.1f'):>16} "
            f"{fmt(row.compute_ms_per_audio_s, '.1f'):>19} {pct(row.wer):>7}{wers} {fmt(row.other_cpus, '.2f'):>10}"
        )


def _wer_line(w: dict[str, Any], sources: list[str]) -> str:
    if len(sources) == 1:
        return pct(w["wer"])
    per = ", ".join(f"{s} {pct(w['wer_by_source'].get(s))}" for s in sources)
    return f"{pct(w['wer'])} ({per})"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _print_trend(what: str, sl: dict[str, Any], *, verdict: bool) -> None:
    """Slope and growth after ``from_min``; with ``verdict`` against issue 16's targets, else for information."""
    if not sl:
        return
    after = f"after minute {sl['from_min']:g}"
    if sl.get("slope_mb_per_hour") is None:
        why = "no samples" if not sl["samples"] else f"{sl['samples']} sample(s)"
        print(f"{what + ' slope ' + after:<46} n/a ({why} at or after audio minute {sl['from_min']:g})")
        return
    slope_ok = sl["slope_mb_per_hour"] <= TARGET_SLOPE_MB_H
    growth_ok = sl["growth_after_mb"] <= TARGET_GROWTH_AFTER_MB
    tail_slope = f"target <= {TARGET_SLOPE_MB_H:g}  {_verdict(slope_ok)}" if verdict else "(transient included)"
    tail_growth = f"target <= {TARGET_GROWTH_AFTER_MB:g} MB  {_verdict(growth_ok)}" if verdict else ""
    print(
        f"{what + ' slope ' + after:<46} {sl['slope_mb_per_hour']:+.1f} MB per hour   {tail_slope}"
        f"  (least squares, {sl['samples']} points over {sl['span_min']:.1f} audio min)"
    )
    where = (
        f"{sl['rss_at_from_mb']:.1f} MB at minute {sl['at_audio_min']:.1f}, max {sl['rss_max_after_mb']:.1f} MB"
        f" at {sl['rss_max_at_audio_min']:.1f}, last {sl['last_mb']:.1f} MB"
    )
    print(f"{what + ' growth ' + after:<46} {sl['growth_after_mb']:+.1f} MB   {tail_growth}  ({where})")


def print_report(r: SoakResult, table_rows_: list[MinuteRow] | None = None) -> None:
    """The table (``table_rows_``, else the per-minute rows) and the summary of one session."""
    print_table(table_rows_ if table_rows_ is not None else r.rows, r.sources)
    s = r.summary
    first, last = s["first_window"], s["last_window"]
    w = s["window_minutes"]
    audio_s = s["audio_minutes"] * 60
    tag = f" session {r.session}" if r.session > 1 or s.get("of_sessions", 1) > 1 else ""
    print(
        f"\n== soak{tag}: {s['audio_minutes']:g} min of audio, {len(r.sources)} source(s) {'+'.join(r.sources)}, in "
        f"{r.wall_s:.0f} s wall ({audio_s / r.wall_s:.1f}x real time); connection closed by "
        f"{r.close.get('closed_by')}: {r.close.get('code')} {r.close.get('reason')!r}"
    )
    busy = r.close.get("other_cpus", 0.0)
    warn = "  !! a loaded machine: cost figures are pessimistic" if busy > 0.2 else ""
    print(f"other processes used {busy:.2f} CPUs on average while streaming{warn}")
    if r.session_stats == {}:
        print("!! no session.summary arrived: the session did not end normally")
    if "speech_share" in s:
        share = ", ".join(f"{k} {pct(v, '.0f')}" for k, v in s["speech_share"].items())
        print(f"{'speech share of the stream':<46} {share} (overlap {pct(s.get('overlap_share'), '.1f')})")
    print(f"{'RSS idle (before the session)':<46} {fmt(s['rss_idle_mb'], '.1f', ' MB')}")
    print(f"{'RSS after the first audio minute':<46} {fmt(s['rss_after_first_minute_mb'], '.1f', ' MB')}")
    print(
        f"{'max RSS afterwards':<46} {fmt(s['rss_max_after_mb'], '.1f', ' MB')}"
        f" (at audio minute {fmt(s['rss_max_at_audio_min'], '.1f')})"
    )
    print(
        f"{'growth':<46} {fmt(s['rss_growth_mb'], '+.1f', ' MB')}   target <= {TARGET_GROWTH_MB:g} MB  "
        f"{_verdict(s['growth_pass'])}"
    )
    _print_trend("retained RSS", s.get("retained") or {}, verdict=True)
    if s.get("retained"):
        print(
            f"{'':<46} (the lowest RSS in each {s['retained_window_s']:g} s of wall time: what the server holds"
            " between decodes)"
        )
    _print_trend("RSS (every sample)", s["rss_slope"], verdict=False)
    if s.get("rss_max_finishing_mb") is not None:
        print(
            f"{'max RSS while finishing (repairs, re-clustering)':<46} {s['rss_max_finishing_mb']:.1f} MB"
            f" (the last {fmt(s.get('finishing_s'), '.0f', ' s')} before close, all audio transcribed)"
        )
    print(
        f"{'RSS right after close (vs idle)':<46} {fmt(s['rss_after_close_mb'], '.1f', ' MB')}"
        f" ({fmt(s['rss_after_close_vs_idle_mb'], '+.1f', ' MB')})"
    )
    print(
        f"{'RSS settled after close (vs idle)':<46} {fmt(s['rss_settled_mb'], '.1f', ' MB')}"
        f" ({fmt(s['rss_settled_vs_idle_mb'], '+.1f', ' MB')}, {fmt(s['rss_settled_after_s'], '.0f', ' s')} after"
        f" close)"
    )
    print(
        f"{f'mean compute_ms / utterance, first {w:g} min':<46} {fmt(first['mean_compute_ms'], '.1f')}"
        f"  ({first['utterances']} utterances, {fmt(first['compute_ms_per_audio_s'], '.1f')} ms per audio s)"
    )
    print(
        f"{f'mean compute_ms / utterance, last {w:g} min':<46} {fmt(last['mean_compute_ms'], '.1f')}"
        f"  ({last['utterances']} utterances, {fmt(last['compute_ms_per_audio_s'], '.1f')} ms per audio s)"
    )
    print(
        f"{'cost ratio last/first (per utterance)':<46} {fmt(s['cost_ratio_per_utterance'], '.2f', 'x')}   "
        f"(per audio second {fmt(s['cost_ratio_per_audio_s'], '.2f', 'x')}; should be ~1)"
    )
    print(f"{f'WER first {w:g} min':<46} {_wer_line(first, r.sources)}")
    print(f"{f'WER last {w:g} min':<46} {_wer_line(last, r.sources)}")
    if "first_hour" in s:
        fh, lh = s["first_hour"], s["last_hour"]
        ratio = s["hour_cost_ratio_per_utterance"]
        print(
            f"{'mean compute_ms / utterance, first hour':<46} {fmt(fh['mean_compute_ms'], '.1f')}"
            f"  ({fh['utterances']} utterances, {fmt(fh['compute_ms_per_audio_s'], '.1f')} ms per audio s)"
        )
        print(
            f"{'mean compute_ms / utterance, last hour':<46} {fmt(lh['mean_compute_ms'], '.1f')}"
            f"  ({lh['utterances']} utterances, {fmt(lh['compute_ms_per_audio_s'], '.1f')} ms per audio s)"
        )
        print(
            f"{'cost ratio last/first hour (per utterance)':<46} {fmt(ratio, '.2f', 'x')}   target <= "
            f"{TARGET_COST_RATIO:g}x  {_verdict(ratio is not None and ratio <= TARGET_COST_RATIO)}"
            f"  (per audio second {fmt(s['hour_cost_ratio_per_audio_s'], '.2f', 'x')})"
        )
        print(f"{'WER first hour':<46} {_wer_line(fh, r.sources)}")
        print(f"{'WER last hour':<46} {_wer_line(lh, r.sources)}")
    whole = {"wer": s["wer"], "wer_by_source": s["wer_by_source"]}
    print(f"{'WER whole session':<46} {_wer_line(whole, r.sources)}")
    by = ", ".join(f"{k} {v}" for k, v in s["finals_by_source"].items())
    print(
        f"{'finals (empty, repaired)':<46} {s['finals']} ({s['empty_finals']}, {s['repaired_finals']})"
        f"{f' [{by}]' if len(r.sources) > 1 else ''}; compute {s['compute_s_total']:.0f} s; server CPU "
        f"{fmt(s['server_cpu_s'], '.0f', ' s')}"
    )
    print(f"{'delta/final violations':<46} {len(r.violations)}")
    for v in r.violations[:10]:
        print(f"  violation: {v}")
    print(f"{'server error events':<46} {len(r.errors)}")
    for e in r.errors[:10]:
        print(f"  error: {e}")
    levels = ", ".join(f"{k} {v}" for k, v in sorted(r.backpressure.items())) or "none"
    print(f"{'backpressure notices':<46} {levels}")
    print(f"{'session.degraded events':<46} {len(r.degraded)}")
    for d in r.degraded:
        print(
            f"  at {d['wall_s']:.1f} s wall, audio minute {d['transcribed_min']:.2f}: level {d['level']} "
            f"{d['name']} ({d['reason']})"
        )
    print(f"{'session stats':<46} {r.session_stats}")
    print_profiles(r.profiles)


def print_profiles(profiles: list[dict[str, Any]]) -> None:
    """``GET /debug/memory`` answers: one header line each, then its ``top`` list, one allocation site a line."""
    if not profiles:
        return
    if all(not p.get("available") for p in profiles):
        why = profiles[0].get("error") or f"HTTP {profiles[0].get('status')}"
        print(f"\nmemory profile: memory debug not available ({why}; {len(profiles)} tries)")
        return
    for p in profiles:
        head = f"\nmemory profile {p['label']} (audio minute {p['transcribed_min']:.1f}, {p['wall_s']:.0f} s wall)"
        if not p.get("available"):
            print(f"{head}: memory debug not available ({p.get('error') or 'HTTP ' + str(p.get('status'))})")
            continue
        d = p["data"]
        print(
            f"{head}: rss {fmt(d.get('rss_mb'), '.1f', ' MB')}, traced {fmt(d.get('traced_mb'), '.1f', ' MB')}, "
            f"baseline {fmt(d.get('baseline_age_s'), '.0f', ' s')} old"
        )
        print(f"  {'size kB':>10} {'growth kB':>10} {'count':>8}  where")
        for t in d.get("top") or []:
            print(
                f"  {fmt(t.get('size_kb'), '.1f'):>10} {fmt(t.get('growth_kb'), '+.1f'):>10} "
                f"{t.get('count', ''):>8}  {t.get('where')}"
            )


def print_sessions(across: dict[str, Any]) -> None:
    per = across["sessions"]
    print(f"\n== {len(per)} sessions back to back on one server")
    print(
        f"{'session':>7} {'RSS start':>10} {'max during':>11} {'after close':>12} {'settled':>9} {'finals':>7} "
        f"{'compute_ms':>11} {'WER':>7} {'violations':>10} {'errors':>7} {'close':>6}"
    )
    for p in per:
        print(
            f"{p['session']:>7} {fmt(p['rss_start_mb'], '.1f'):>10} {fmt(p['rss_max_during_mb'], '.1f'):>11} "
            f"{fmt(p['rss_after_close_mb'], '.1f'):>12} {fmt(p['rss_settled_mb'], '.1f'):>9} {p['finals']:>7} "
            f"{fmt(p['mean_compute_ms'], '.1f'):>11} {pct(p['wer']):>7} {p['violations']:>10} {p['errors']:>7} "
            f"{p['close_code']!s:>6}"
        )
    if len(per) >= 2:
        n = per[-1]["session"]
        d = across["last_minus_first_settled_mb"]
        print(
            f"RSS after close {n} minus after close 1: settled {fmt(d, '+.1f', ' MB')}   target <= "
            f"{TARGET_SESSIONS_MB:g} MB  {_verdict(across['pass'])}; right after close "
            f"{fmt(across['last_minus_first_after_close_mb'], '+.1f', ' MB')}"
        )
