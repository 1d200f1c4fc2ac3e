"""Finite differences of the scalar loss C, entry by entry, many entries per pass.

Where each piece lives:

* ``methods.py`` — the difference formulas (``Method``, the ``METHODS`` registry: central,
  forward, Richardson, complex step), ``select`` (which entries to check) and ``directions``
  (random unit directions, for ``--directions``).
* ``shortcuts.py`` — what a layer declares (``per_sample``, ``complex_safe``, ``kink_state``)
  and the ``Shortcuts`` protocol of the built-in layers' shortcuts (``offers``).
* ``planning.py`` — per tensor: the rows a chunk of entries becomes, chunks sized to the
  memory budget by what a row holds for the whole chunk (a window, one channel, or whole
  rows from where they start), prefix reuse (a parameter of layer l only changes layers l…).
* ``propagate.py`` — carrying a change through layers that offer shortcuts: linear layers'
  perturbed outputs written down, one channel or one window carried instead of whole maps.
* ``workers.py`` — running the chunks, here or on forked processes, a few chunks a trip
  (same numbers bit for bit).
* ``engine.py`` — ``FiniteDifferences``: the unperturbed pass, running rows from a layer on
  (stacked while layers are per-sample, a cache-sized slice of rows at a time, one pass per
  perturbed copy of the batch through a layer that is not), the quotient, and
  ``directional`` (v·∇C, directions chunked by memory).

The quotient uses the step the dtype actually took, and differences are taken per sample
before the batch mean, so a sample the perturbation does not reach adds an exact zero.
A shortcut is taken only where every layer it relies on declares what it needs; where it is
not, ``FiniteDifferences.fast_fallbacks`` says so and why.
"""
from __future__ import annotations

from .engine import FiniteDifferences, Interrupted, Numeric
from .methods import METHODS, Method, directions, get_method, select
from .planning import Plan
from .shortcuts import Capabilities, Shortcuts, capabilities

__all__ = ["FiniteDifferences", "Interrupted", "Numeric", "METHODS", "Method", "get_method", "select", "directions",
           "Plan", "Capabilities", "Shortcuts", "capabilities"]
