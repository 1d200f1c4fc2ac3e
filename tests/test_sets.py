"""``cnngrad.sets``: np.unique's results without its import of numpy.ma."""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cnngrad.sets import unique, unique_inverse


@given(st.lists(st.integers(-5, 5), max_size=30))
def test_unique_is_np_unique(values):
    a = np.array(values, dtype=np.int64)
    want, want_inverse = np.unique(a, return_inverse=True)
    got, inverse = unique_inverse(a)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(unique(a), want)
    np.testing.assert_array_equal(inverse, want_inverse.reshape(-1))
    np.testing.assert_array_equal(got[inverse], a)
