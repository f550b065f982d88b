"""The server round-trip benchmark runs the same clicks both ways (no timing is asserted)."""

from __future__ import annotations

import math

from lesionsam.serve.bench import bench_round_trip


def test_round_trip_compares_the_same_work(served_case, bright_sessions, kit) -> None:
    centre = kit.blob_centre_ijk(1)
    result = bench_round_trip(
        served_case.image, bright_sessions, first=centre, refine=[(centre, False), (centre, True)], repeats=2
    )
    assert result.same_masks  # the server's label map after the clicks equals the library's
    assert result.answer_bytes > 0
    assert all(math.isfinite(t) and t > 0 for t in (result.first_http, result.first_direct, result.refine_http))
    assert "refining click" in result.table()


def test_remote_round_trip_compares_the_same_work(served_case, bright_sessions, kit) -> None:
    from lesionsam.serve.remote.bench import bench_remote_round_trip

    centre = kit.blob_centre_ijk(1)
    result = bench_remote_round_trip(
        served_case.volume, bright_sessions, first=centre, refine=[(centre, False), (centre, True)], repeats=2
    )
    assert result.same_masks  # the client's buffer after the points equals the library's label map
    assert all(math.isfinite(t) and t > 0 for t in (result.first_client, result.refine_client, result.refine_library))
    assert "refining point" in result.table()
