"""How the batch runner shares BATCH_LINES_IN_FLIGHT among tenants (``share_out``): by the
weights of the waiting room, within BATCH_TENANT_LINES_IN_FLIGHT, never taking lines back."""

from __future__ import annotations

from services.edge.openai.batch.runner import Demand, parse_weights, share_out


def test_a_newcomer_gets_the_next_free_lines_until_it_has_its_share() -> None:
    # big holds the whole budget: nothing is free, nothing is taken back
    assert share_out({"big": Demand(16, 1000), "small": Demand(0, 2)}, {}, 16, 16) == {
        "big": 0, "small": 0}
    # two of big's lines ended: both free lines go to small, which is below its share
    assert share_out({"big": Demand(14, 1000), "small": Demand(0, 2)}, {}, 16, 16) == {
        "big": 0, "small": 2}
    # small needs no more than it has waiting; the rest goes back to big
    assert share_out({"big": Demand(0, 1000), "small": Demand(0, 2)}, {}, 16, 16) == {
        "big": 14, "small": 2}


def test_free_lines_follow_the_weights() -> None:
    demands = {"a": Demand(0, 100), "b": Demand(0, 100)}
    assert share_out(demands, {"a": 3.0}, 16, 16) == {"a": 12, "b": 4}
    assert share_out(demands, {"a": 1.0, "b": 1.0}, 16, 16) == {"a": 8, "b": 8}
    # ties go to the tenant named first (the oldest batch)
    assert share_out(demands, {}, 3, 16) == {"a": 2, "b": 1}


def test_no_tenant_passes_its_own_cap() -> None:
    demands = {"a": Demand(0, 100), "b": Demand(3, 100)}
    assert share_out(demands, {"a": 10.0}, 16, 4) == {"a": 4, "b": 1}
    assert share_out({"a": Demand(6, 100)}, {}, 16, 4) == {"a": 0}, "above the cap: none"


def test_weights_are_read_as_the_coordinators_write_them() -> None:
    assert parse_weights({"acme": "3", "globex": "0.5", "odd": "x", "zero": "0"}) == {
        "acme": 3.0, "globex": 0.5}
