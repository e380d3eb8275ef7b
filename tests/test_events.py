"""Events from the windows' labels (beam_jobs.events): windows of one label merged, `unknown` ending them,
overlapping windows meeting halfway so that events tile the video, events.csv rows and WebVTT tracks."""

from __future__ import annotations

import pytest

from beam_jobs import events


def segment(index: int, start: float, end: float, label: str, confidence: float) -> dict:
    return {"segment": str(index), "start_s": f"{start:.3f}", "end_s": f"{end:.3f}", "label": label,
            "confidence": f"{confidence:.6f}"}


def test_events_merge_windows_of_one_label_and_unknown_ends_them():
    rows = [segment(0, 0, 10, "run", 0.9), segment(1, 10, 20, "run", 0.7), segment(2, 20, 30, "unknown", 0.3),
            segment(3, 30, 40, "jump", 0.8), segment(4, 40, 45, "run", 0.6)]
    found = events.merge_events(events.window_spans(rows, 10.0))
    assert found == [events.Event("run", 0.0, 20.0, pytest.approx(0.8), 2), events.Event("jump", 30.0, 40.0, 0.8, 1),
                     events.Event("run", 40.0, 45.0, 0.6, 1)]
    assert events.event_values("v.mp4", found[0]) == ["v.mp4", "run", "00:00:00.000", "00:00:20.000", "0.000",
                                                      "20.000", "0.800000", "2"]


def test_overlapping_windows_give_events_that_meet_halfway():
    # 10 s windows every 5 s: each stands for the 5 s around its centre, so events tile the video.
    rows = [segment(0, 0, 10, "a", 0.9), segment(1, 5, 15, "a", 0.9), segment(2, 10, 20, "b", 0.9),
            segment(3, 15, 22, "b", 0.9)]
    spans = events.window_spans(rows, 10.0)
    assert [(s[0], s[1]) for s in spans] == [(0.0, 7.5), (7.5, 12.5), (12.5, 17.5), (17.5, 22.0)]
    assert [(e.label, e.start_s, e.end_s) for e in events.merge_events(spans)] == [("a", 0.0, 12.5), ("b", 12.5, 22.0)]


def test_webvtt_track_and_clock():
    track = events.webvtt([events.Event("<run> & jump", 0.0, 3723.5, 0.91, 3), events.Event("b", 3723.5, 3724, 0.5, 1)])
    assert track == ("WEBVTT\n\n1\n00:00:00.000 --> 01:02:03.500\n&lt;run&gt; &amp; jump (91%)\n"
                     "\n2\n01:02:03.500 --> 01:02:04.000\nb (50%)\n")
    assert events.clock(36000.0004) == "10:00:00.000" and events.track_path("a/b.mp4") == "tracks/a/b.mp4.vtt"
