"""The estimate before any maths (cnngrad/resources.py) counts the layers inside blocks.

Oracle: the built network itself — its parameter arrays, counted here."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from cnngrad import check
from cnngrad import config as cfg
from cnngrad.network import build
from cnngrad.resources import estimate, suffix_row_bytes

RESNET_20K = Path(__file__).resolve().parent.parent / "benchmarks" / "resnet-20k.yaml"


def entries_built(config: cfg.Config) -> int:
    """Every parameter entry of the built network (inner layers' included) and the input's."""
    p = build(config)
    return sum(p.net.layers[path[0]].params[key].size for path, _, key in p.net.refs()) + p.x.size


@pytest.mark.parametrize("ref", ["resnet-block", "mobilenet-block", "inception-mini", "unet-mini", str(RESNET_20K)])
def test_entries_to_difference_are_the_built_networks(ref):
    config = cfg.load(ref)
    assert estimate(config).entries == entries_built(config)


def deeper(raw: dict) -> dict:
    """resnet-20k with one more conv in the first block's residual path."""
    raw = copy.deepcopy(raw)
    raw["layers"][2]["block"]["paths"][0].append({"conv": {"filters": 16, "kernel": 3, "padding": 1}})
    return raw


def test_the_estimate_grows_with_the_inner_layers():
    raw = yaml.safe_load(RESNET_20K.read_text())
    small, big = cfg.validate(raw), cfg.validate(deeper(raw))
    a, b = estimate(small, workers=1), estimate(big, workers=1)
    assert b.entries - a.entries == 16 * 16 * 9 + 16 == entries_built(big) - entries_built(small)
    assert b.work > a.work and b.memory_mb > a.memory_mb and b.layer_calls > a.layer_calls
    rows_a, rows_b = suffix_row_bytes(small), suffix_row_bytes(big)
    assert rows_b[0] > rows_a[0] and rows_b[3:] == rows_a[3:]  # the block and what is before it carry more


def test_max_params_counts_the_inner_parameters():
    """resnet-20k's 19,434 entries are nearly all inside its blocks: a limit below them refuses it."""
    with pytest.raises(cfg.ConfigError, match="19,434 entries to difference"):
        check(str(RESNET_20K), max_params=5000)
