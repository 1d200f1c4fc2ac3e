"""benchmarks/ladder.py's floors (the FLOPs a scope must spend, what `vs floor` divides by),
against a count made by hand on a net small enough to follow."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ladder  # noqa: E402

from cnngrad import config as cfg  # noqa: E402
from cnngrad.network import build  # noqa: E402

TINY = {"name": "tiny", "seed": 0, "input": {"batch": 1, "channels": 1, "height": 4, "width": 4},
        "layers": [{"conv": {"filters": 1, "kernel": 3, "padding": 1}}, "flatten", {"dense": {"units": 2}}],
        "loss": "mse"}


def test_network_floors_tensor_by_tensor_by_hand() -> None:
    # two evaluations (central differences) of what each entry changes, 2 FLOPs a multiply-add:
    # x: 16 entries, each the window of the conv's output it reaches (9 taps each) — 3x3 for the 4
    # inner entries, 2x3 for the 8 on an edge, 2x2 for the 4 corners: 100 outputs in all — and the
    # whole dense (2x16)
    # conv W: 9 entries, each the conv's one output map (16 outputs x 9 taps) and the dense
    # conv b: 1 entry, the output map (16 adds) and the dense; dense W and b: the dense's own (2 x fan 16)
    floors = ladder.network_floors(build(cfg.validate(TINY)))
    dense = 2 * 2 * 16
    assert floors == {"x": 2 * (2 * 9 * (4 * 9 + 8 * 6 + 4 * 4) + 16 * dense),
                      "layers[0].W": 2 * 9 * (2 * 16 * 9 + dense),
                      "layers[0].b": 2 * 1 * (2 * 16 + dense),
                      "layers[2].W": 2 * 32 * (2 * 16),
                      "layers[2].b": 2 * 2 * (2 * 16)}


def test_the_network_floor_is_the_sum_of_its_tensors_and_the_layer_floor_their_own_layers() -> None:
    problem = build(cfg.validate(TINY))
    floors = ladder.floors(problem)
    assert floors["network"] == sum(ladder.network_floors(problem).values())
    # layer scope: each layer's input δ and parameters through that layer alone — x the window of
    # the conv it reaches (100 outputs over the 16 entries, as above), flatten's input none (a
    # reshape), the dense's input 16 entries of 2x16 each
    assert floors["layer"] == (2 * 2 * 9 * 100 + 2 * 9 * 2 * 16 * 9 + 2 * 1 * 2 * 16
                               + 2 * 16 * 2 * 2 * 16 + 2 * 32 * 2 * 16 + 2 * 2 * 2 * 16)


def test_a_window_is_clipped_where_the_map_ends() -> None:
    """The input's floor, position by position (the reach of each layer worked out by a plain
    loop over the rows and columns an entry can change), on a padded, strided, pooled net: an
    entry by a border changes a smaller window, one in a stride's untiled last column nothing."""
    raw = {"name": "clip", "seed": 0, "input": {"batch": 2, "channels": 2, "height": 9, "width": 7},
           "layers": [{"conv": {"filters": 3, "kernel": 5, "padding": 1}}, {"activation": "tanh"},
                      {"conv": {"filters": 2, "kernel": [3, 2], "stride": 2}}, {"pool": {"kind": "max", "size": 2}},
                      "flatten", {"dense": {"units": 2}}], "loss": "mse"}
    problem = build(cfg.validate(raw))
    costs = ladder._layer_costs(problem)

    def reach(c, rows: set[int], axis: int) -> set[int]:
        """The window (rows first to last, a dilated kernel's gaps included: what a window holds)
        of outputs that read any of ``rows``."""
        if c["kind"] not in ("conv", "pool"):
            return rows
        layer = c["layer"]
        k, s, size = layer.k[axis], layer.s[axis], c["out"][1 + axis]
        p, d = getattr(layer, "p", (0, 0))[axis], getattr(layer, "d", (1, 1))[axis]
        hit = [i for i in range(size) if rows and any(min(rows) <= i * s + u * d - p <= max(rows) for u in range(k))]
        return set(range(hit[0], hit[-1] + 1)) if hit else set()  # a stride's untiled last rows: read by none

    total = 0.0
    for y in range(9):
        for x in range(7):
            rows, cols, channels = {y}, {x}, 1
            for c in costs[:4]:
                rows, cols = reach(c, rows, 0), reach(c, cols, 1)
                channels = c["out"][0] if c["kind"] == "conv" else channels
                total += 2 * channels * c["fan"] * len(rows) * len(cols)
            total += 2 * 2 * costs[-1]["fan"] if rows and cols else 0  # the dense (2 units), whole; flatten: none
    assert ladder.network_floors(problem)["x"] == 2 * 2 * 2 * total  # two evaluations, batch 2, channels 2
