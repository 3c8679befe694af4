from echopanel.pipeline.ladder import DegradeLadder, LadderSettings, Level, LoadSample, partial_interval_ms

HIGH = LoadSample(utilization=0.97, final_wait_s=0.1)
MID = LoadSample(utilization=0.7, final_wait_s=0.1)
LOW = LoadSample(utilization=0.2, final_wait_s=0.0)


def run(ladder: DegradeLadder, start: float, seconds: float, load: LoadSample, step: float = 0.5) -> list[Level]:
    changes = []
    t = start
    while t <= start + seconds + 1e-9:
        if (lvl := ladder.update(t, load)) is not None:
            changes.append(lvl)
        t += step
    return changes


def test_climbs_one_step_per_period_of_sustained_high_load() -> None:
    ladder = DegradeLadder(LadderSettings(up_after_s=2.0))
    assert run(ladder, 0.0, 1.5, HIGH) == []  # not yet sustained
    assert run(ladder, 2.0, 0.0, HIGH) == [Level.SLOW_PARTIALS]
    assert run(ladder, 2.5, 9.5, HIGH) == [
        Level.NO_SYSTEM_PARTIALS,
        Level.NO_PARTIALS,
        Level.CHEAP_FINALS,
        Level.SHED_SYSTEM,
    ]
    assert run(ladder, 12.5, 10, HIGH) == []  # the top is the configured max (fallback comes with resilience)


def test_final_wait_alone_is_high_load() -> None:
    ladder = DegradeLadder()
    assert run(ladder, 0, 2, LoadSample(utilization=0.5, final_wait_s=1.0)) == [Level.SLOW_PARTIALS]


def test_hysteresis_mid_load_holds_the_level() -> None:
    ladder = DegradeLadder()
    run(ladder, 0, 4, HIGH)
    level = ladder.level
    assert level == Level.NO_SYSTEM_PARTIALS
    assert run(ladder, 4.5, 60, MID) == []  # between the thresholds: neither up nor down
    assert ladder.level == level


def test_descends_one_step_per_period_of_low_load_and_recovers_fully() -> None:
    ladder = DegradeLadder(LadderSettings(down_after_s=6.0))
    run(ladder, 0, 12, HIGH)
    assert ladder.level == Level.SHED_SYSTEM
    assert run(ladder, 12.5, 5.0, LOW) == []
    changes = run(ladder, 18.0, 30, LOW)
    assert changes == [
        Level.CHEAP_FINALS,
        Level.NO_PARTIALS,
        Level.NO_SYSTEM_PARTIALS,
        Level.SLOW_PARTIALS,
        Level.NORMAL,
    ]


def test_a_blip_resets_the_timer() -> None:
    ladder = DegradeLadder(LadderSettings(up_after_s=2.0))
    ladder.update(0.0, HIGH)
    ladder.update(1.5, HIGH)
    ladder.update(1.6, LOW)  # load dipped
    assert ladder.update(2.0, HIGH) is None
    assert ladder.update(3.5, HIGH) is None
    assert ladder.update(4.0, HIGH) == Level.SLOW_PARTIALS


def test_adaptive_cadence() -> None:
    assert partial_interval_ms(300, Level.NORMAL, 0.1) == 300
    assert partial_interval_ms(300, Level.NORMAL, 0.7) == 450
    assert partial_interval_ms(300, Level.NORMAL, 0.95) == 600
    assert partial_interval_ms(300, Level.SLOW_PARTIALS, 0.1) == 900
