"""Properties over random networks built by `cnngrad.strategies.configs`."""
from __future__ import annotations

from hypothesis import given

from cnngrad import check
from cnngrad.config import validate
from cnngrad.strategies import configs


@given(configs(dtypes=("float64", "float32")))
def test_every_generated_network_passes(raw):
    config = validate(raw)  # valid by construction: this must not raise
    report = check(config)
    assert report.passed, "\n".join(
        f"layers[{r.layer}] {r.kind} {r.tensor}: norm rel {r.metrics.norm_rel:.3e}; {r.worst_entry()}"
        for r in report.failures)
