from echopanel.flow.ladder import DegradeLadder, LadderSettings, Level, LoadSample, partial_interval_ms

HIGH = LoadSample(utilization=1.0, final_wait_s=0.8, final_utilization=0.6, partial_wait_s=0.5)
MID = LoadSample(utilization=0.95, final_wait_s=0.3, final_utilization=0.6, partial_wait_s=0.5)
SEVERE = LoadSample(utilization=1.0, final_wait_s=1.2, final_utilization=0.9, partial_wait_s=2.5)
LOW = LoadSample(utilization=0.3, final_wait_s=0.05, final_utilization=0.1, partial_wait_s=0.1)


def run(ladder: DegradeLadder, start: float, seconds: float, load: LoadSample, step: float = 0.5) -> list[Level]:
    changes = []
    t = start
    while t <= start + seconds + 1e-9:
        if (lvl := ladder.update(t, load)) is not None:
            changes.append(lvl)
        t += step
    return changes


def test_climbs_one_step_per_period_of_sustained_high_load() -> None:
    ladder = DegradeLadder(LadderSettings(up_after_s=2.0, settle_s=3.0, shed_after_s=2.0))
    assert run(ladder, 0.0, 1.5, HIGH) == []  # not yet sustained
    assert run(ladder, 2.0, 0.0, HIGH) == [Level.SLOW_PARTIALS]
    # Each next step waits for the window to show the previous one (settle), then for sustained high load.
    assert run(ladder, 2.5, 4.0, HIGH) == []
    assert run(ladder, 7.0, 0.0, HIGH) == [Level.NO_SYSTEM_PARTIALS]
    assert run(ladder, 7.5, 15.0, HIGH) == [
        Level.NO_PARTIALS,
        Level.CHEAP_FINALS,
        Level.SHED_SYSTEM,
    ]
    assert run(ladder, 23.0, 10, HIGH) == []  # the top is the configured max (fallback comes with resilience)


def test_each_overload_signal_alone_climbs() -> None:
    for sample in (
        LoadSample(utilization=0.5, final_wait_s=1.0),
        LoadSample(utilization=0.95, final_wait_s=0.1, final_utilization=0.95),
        LoadSample(utilization=1.0, final_wait_s=0.1, partial_wait_s=1.5),
    ):
        assert run(DegradeLadder(), 0, 2, sample) == [Level.SLOW_PARTIALS]


def test_busy_workers_with_prompt_finals_are_not_overload() -> None:
    # Partials soak up idle capacity by design: utilization near 1 alone must not degrade anything.
    busy = LoadSample(utilization=1.0, final_wait_s=0.1, final_utilization=0.3, partial_wait_s=0.2)
    assert run(DegradeLadder(), 0, 60, busy) == []


def test_hysteresis_mid_load_holds_the_level() -> None:
    ladder = DegradeLadder()
    run(ladder, 0, 8, HIGH)
    level = ladder.level
    assert level == Level.NO_SYSTEM_PARTIALS
    assert run(ladder, 4.5, 60, MID) == []  # between the thresholds: neither up nor down
    assert ladder.level == level


def test_descends_one_step_per_period_of_low_load_and_recovers_fully() -> None:
    ladder = DegradeLadder(LadderSettings(down_after_s=4.0))
    run(ladder, 0, 40, HIGH)
    assert ladder.level == Level.SHED_SYSTEM
    assert run(ladder, 40.5, 3.0, LOW) == []
    changes = run(ladder, 44.0, 30, LOW)
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


def test_severe_overload_climbs_the_lossless_steps_faster_but_not_the_lossy_one() -> None:
    s = LadderSettings()  # defaults: hold 2 s / settle 3 s; severe: 1 s / 1.5 s; shedding after 6 s
    normal, severe = DegradeLadder(s), DegradeLadder(s)
    assert run(normal, 0.0, 0.5, HIGH) == [] and run(severe, 0.0, 0.5, SEVERE) == []
    assert run(severe, 1.0, 0.0, SEVERE) == [Level.SLOW_PARTIALS]  # after 1 s, not 2 s
    assert run(normal, 1.0, 0.5, HIGH) == [] and run(normal, 2.0, 0.0, HIGH) == [Level.SLOW_PARTIALS]
    # Each next step: settle 1.5 s, then 1 s of severe load.
    assert run(severe, 1.5, 0.5, SEVERE) == []
    assert run(severe, 2.5, 0.0, SEVERE) == [] and run(severe, 3.5, 0.0, SEVERE) == [Level.NO_SYSTEM_PARTIALS]
    assert run(severe, 4.0, 4.5, SEVERE) == [Level.NO_PARTIALS, Level.CHEAP_FINALS]
    assert severe.level == Level.CHEAP_FINALS  # at 8.5 s; the normal climb gets there at 17 s
    assert run(severe, 9.0, 6.5, SEVERE) == []  # the lossy step waits 1.5 s + shed_after_s (6 s)
    assert run(severe, 16.0, 0.0, SEVERE) == [Level.SHED_SYSTEM]


def test_just_below_severe_is_the_normal_pace() -> None:
    s = LadderSettings()
    almost = LoadSample(utilization=1.0, final_wait_s=0.99, partial_wait_s=1.99)
    ladder = DegradeLadder(s)
    assert run(ladder, 0.0, 1.5, almost) == []
    assert run(ladder, 2.0, 0.0, almost) == [Level.SLOW_PARTIALS]
