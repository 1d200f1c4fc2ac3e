"""Property tests that work as written (cnngrad/property.py): the shipped hypothesis
settings have no deadline, and a failing property run's reproducer folder keeps the shrunk
failure only."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cnngrad import property as prop
from cnngrad import strategies

pytest_plugins = ["pytester"]


def test_the_shipped_settings_never_trip_a_deadline() -> None:
    assert strategies.settings is prop.settings
    assert prop.settings.deadline is None
    assert hsettings.get_profile("cnngrad").deadline is None
    assert HealthCheck.too_slow in prop.settings.suppress_health_check
    ran = []

    @hsettings(prop.settings, max_examples=3, database=None)  # the shipped ones, with more of one's own
    @given(st.integers(0, 10))
    def slow(n: int) -> None:
        ran.append(n)
        start = time.perf_counter()  # slow work, past hypothesis' default 200 ms deadline (nothing waits
        while time.perf_counter() - start < 0.3:  # on it and nothing is timed: it must simply not fail)
            sum(range(1000))

    slow()
    assert len(ran) >= 1


def test_a_failing_property_keeps_only_the_shrunk_reproducer(pytester: pytest.Pytester) -> None:
    """A property that fails for every config with a tanh layer: hypothesis tries many
    failing examples and shrinks; the folder must end with one file, the last one written,
    which is the config hypothesis reports as the minimal example."""
    pytester.makepyfile(test_prop="""
        import json
        from pathlib import Path

        from hypothesis import given, settings

        import cnngrad
        from cnngrad.layers import Activation
        from cnngrad.strategies import configs, settings as cnngrad_settings

        real = Activation.backward
        WRITTEN = []

        def broken(self, delta, cache):  # tanh's backward forgets σ'
            return (delta, {}) if self.function == "tanh" else real(self, delta, cache)

        @settings(cnngrad_settings, max_examples=60, database=None, derandomize=True)
        @given(configs(max_layers=3, max_size=6, activations=["tanh", "relu"], losses=["mse"]))
        def test_backprop(raw):
            Activation.backward = broken
            try:
                report = cnngrad.check(raw)
            finally:
                Activation.backward = real
            if not report.passed:
                WRITTEN.append((str(report.write_reproducer("repro/")), raw))
                Path("written.json").write_text(json.dumps(WRITTEN))
            assert report.passed
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    import json

    written = json.loads((pytester.path / "written.json").read_text())
    assert len({path for path, _ in written}) > 1  # several failing examples were written on the way
    files = sorted(p.name for p in (pytester.path / "repro").iterdir())
    last_path, last_raw = written[-1]
    assert files == [last_path.split("/")[-1]]
    kept = pytester.path / last_path
    assert "tanh" in kept.read_text()
    from hypothesis.vendor.pretty import pretty

    # hypothesis prints the minimal example with its own pretty printer, over lines that pytest
    # prefixes with "E": compare without the prefixes and the white space
    lines = [ln[1:] if ln.startswith("E ") else ln for ln in result.stdout.lines]
    falsifying = "".join("".join(lines).split())
    assert "Falsifyingexample" in falsifying and "".join(pretty(last_raw["layers"]).split()) in falsifying
