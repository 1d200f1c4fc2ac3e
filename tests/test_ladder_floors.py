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
    # x: 16 entries, each a 3x3 window of the conv's output (9 taps each) and the whole dense (2x16)
    # conv W: 9 entries, each the conv's one output map (16 outputs x 9 taps) and the dense
    # conv b: 1 entry, the output map (16 adds) and the dense; dense W and b: the dense's own (2 x fan 16)
    floors = ladder.network_floors(build(cfg.validate(TINY)))
    dense = 2 * 2 * 16
    assert floors == {"x": 2 * 16 * (2 * 9 * 9 + dense),
                      "layers[0].W": 2 * 9 * (2 * 16 * 9 + dense),
                      "layers[0].b": 2 * 1 * (2 * 16 + dense),
                      "layers[2].W": 2 * 32 * (2 * 16),
                      "layers[2].b": 2 * 2 * (2 * 16)}


def test_the_network_floor_is_the_sum_of_its_tensors_and_the_layer_floor_their_own_layers() -> None:
    problem = build(cfg.validate(TINY))
    floors = ladder.floors(problem)
    assert floors["network"] == sum(ladder.network_floors(problem).values())
    # layer scope: each layer's input δ and parameters through that layer alone — x a 3x3 window
    # of the conv, flatten's input none (a reshape), the dense's input 16 entries of 2x16 each
    assert floors["layer"] == (2 * 16 * 2 * 9 * 9 + 2 * 9 * 2 * 16 * 9 + 2 * 1 * 2 * 16
                               + 2 * 16 * 2 * 2 * 16 + 2 * 32 * 2 * 16 + 2 * 2 * 2 * 16)
