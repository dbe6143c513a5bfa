"""`ArrivingBodies`, the per-client count of inference requests whose body is still arriving
(gateway/frontends/http_admission.py), on its own."""

from __future__ import annotations

from modelgate.gateway.frontends.http_admission import ArrivingBodies


def test_each_client_holds_at_most_its_share_and_gets_it_back() -> None:
    refusals: list[None] = []
    bodies = ArrivingBodies(2, on_refuse=lambda: refusals.append(None))
    assert bodies.begin("10.0.0.1")
    assert bodies.begin("10.0.0.1")
    assert not bodies.begin("10.0.0.1")  # refused: nothing counted
    assert len(refusals) == 1  # but the refusal is
    assert bodies.of("10.0.0.1") == 2
    assert bodies.begin("10.0.0.2")  # another client has its own share
    bodies.end("10.0.0.1")
    assert bodies.begin("10.0.0.1")
    for _ in range(2):
        bodies.end("10.0.0.1")
    bodies.end("10.0.0.2")
    assert bodies.of("10.0.0.1") == bodies.of("10.0.0.2") == 0
