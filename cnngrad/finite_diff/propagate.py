"""Carrying a perturbation through the layers that offer shortcuts (``shortcuts.py``),
instead of whole forward passes; each shortcut is spot-checked against real passes.

* **Linear layers.** For conv and dense, z is linear in W and b, so the perturbed
  ``z(θ + t·e_k) = z(θ) + t·∂z/∂θ_k`` is written down directly (``forward_perturbed``).
* **One channel.** Such a perturbation moves one output channel only; channel-wise layers
  (activations, pooling) see just that channel, and the next layer linear in its input adds
  its response to the change to its unperturbed output (``sparse_forward``,
  ``forward_input_delta``).
* **Windows.** An input entry reaches only a window of each map through conv, pooling and
  activations; only the window is carried until a layer mixes the whole map (``windowed``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import conv as C
from ..sets import unique
from .shortcuts import kink_state

if TYPE_CHECKING:
    from .engine import FiniteDifferences

Array = np.ndarray
WINDOW_SHARE = 0.75  # a window carried until it would cover more than this share of its map


def local_end(fd: FiniteDifferences, start: int) -> int:
    """Where carrying a window stops paying: the first layer from ``start`` on that mixes a
    whole map (not conv, pooling or an activation on a (c, h, w) input), or whose output
    window would cover more than three quarters of its map (recomputing it whole is then
    cheaper: on the VGG rung, stopping at half its map cost 30% more)."""
    end, h, w = start, 1, 1
    zero = np.zeros(1, dtype=int)
    for l in range(start, len(fd.net.layers)):  # no slices: planning every δ stays linear in depth
        layer, caps = fd.net.layers[l], fd.caps[l]
        if fd.inputs[end].ndim != 4 or not (caps.can("window") or caps.can("region") or caps.can("elementwise")):
            break
        if not caps.can("elementwise"):
            _, _, h, w = layer.window(zero, zero, h, w)
            if h * w > WINDOW_SHARE * np.prod(layer.out_shape[1:]):
                break
        end += 1
    return end



def windowed(fd: FiniteDifferences, start: int, end: int, samples: Array, positions: Array,
             values: Array) -> tuple[Array, Array]:
    """Rows g = sample ``samples[g]`` of the input of layer ``start`` with entry
    ``positions[g]`` set to ``values[g]``, carried through layers start … end−1 as a
    window that holds every entry the change can reach; returns whole rows of the input
    of layer ``end`` and whether any unit crossed a kink on the way."""
    g = len(samples)
    base_in = fd.inputs[start]
    crossed = np.zeros(g, dtype=bool)
    dtype = np.result_type(base_in, values)
    if end == start:
        a = rows_of(base_in.reshape(fd.n, -1), samples, dtype)
        a[np.arange(g), positions] = values
        return a.reshape((g,) + base_in.shape[1:]), crossed
    ch, y0, x0 = np.unravel_index(positions, base_in.shape[1:])
    win = base_in[samples, :, y0, x0][:, :, None, None].astype(dtype)  # (G, c, 1, 1): the moved pixel
    win[np.arange(g), ch, 0, 0] = values
    h = w = 1
    for l in range(start, end):
        layer, a_prev, base, caps = fd.net.layers[l], fd.inputs[l], fd.base_kinks[l], fd.caps[l]
        if caps.can("elementwise"):
            out, cache = layer.forward(win)
            i0, j0, wh, ww = y0, x0, h, w
        elif caps.can("window"):  # linear: z moves by K ⋆ (the change)
            i0, j0, wh, ww = layer.window(y0, x0, h, w, tight=True)
            delta = win - C.crop_at(a_prev, y0, x0, h, w, samples)
            out = C.crop_at(fd.inputs[l + 1], i0, j0, wh, ww, samples) + \
                layer.window_delta(delta, y0, x0, i0, j0, wh, ww)
            cache = None
        else:  # pooling: re-pool the region the window's outputs read
            i0, j0, wh, ww = layer.window(y0, x0, h, w, tight=True)
            ry, rx, rh, rw = layer.region(i0, j0, wh, ww)
            region = C.crop_at(a_prev, ry, rx, rh, rw, samples).astype(dtype)
            C.paste_at(region, win, y0 - ry, x0 - rx)
            out, cache = layer.forward(region)
        if base is not None and cache is not None:
            moved = kink_state(layer, caps, cache) != C.crop_at(base, i0, j0, wh, ww, samples)
            crossed |= np.any(moved.reshape(g, -1), axis=1)  # type: ignore[union-attr]
        win, y0, x0, h, w = out, i0, j0, wh, ww
    a = rows_of(fd.inputs[end], samples, np.result_type(fd.inputs[end], win))
    C.paste_at(a, win, y0, x0)
    return a, crossed



def rows_of(a: Array, samples: Array, dtype: Any) -> Array:
    """``a[samples]`` in ``dtype``: one copy (a gather, then a cast only if the dtype differs)."""
    return np.take(a, samples, axis=0).astype(dtype, copy=False)


def sparse_forward(fd: FiniteDifferences, start: int, samples: Array, channel: Array,
                   values: Array) -> tuple[Array, int, Array]:
    """Carry rows that differ from the unperturbed pass in one channel only.

    Row r is sample ``samples[r]`` of the input of layer ``start`` with channel
    ``channel[r]`` replaced by ``values[r]`` (a map (h, w), or one unit of a flat input).
    Channel-wise layers (activations, pooling) only need that channel; a layer linear in
    its input (conv, dense) adds the response to the change to its unperturbed output
    (``forward_input_delta``).  Returns whole rows of the input of some layer l ≥ start,
    l, and whether a unit crossed a kink on the way.
    """
    rows = np.arange(len(samples))
    crossed = np.zeros(len(samples), dtype=bool)
    units: Any = None if values.ndim > 1 else channel[:, None]  # flat input: the units that moved
    if units is not None:
        values = values[:, None]
    for l in range(start, len(fd.net.layers)):
        layer, base_in, base, caps = fd.net.layers[l], fd.inputs[l], fd.base_kinks[l], fd.caps[l]
        flat = base_in.ndim == 2
        if flat and caps.can("elementwise") or not flat and caps.can("channelwise"):
            out, cache = layer.forward(values if flat else values[:, None])
            values = out if flat else out[:, 0]
            if base is not None:
                state = kink_state(layer, caps, cache)
                was = base[samples[:, None], units] if flat else base[samples, channel]
                crossed |= np.any((state if flat else state[:, 0]).reshape(len(rows), -1)  # type: ignore[union-attr, index]
                                  != was.reshape(len(rows), -1), axis=1)
        elif not flat and caps.can("reshape"):
            hw = values.shape[1] * values.shape[2]
            units = channel[:, None] * hw + np.arange(hw)
            values = values.reshape(len(rows), hw)
        elif caps.can("input_delta"):
            out = rows_of(fd.inputs[l + 1], samples, np.result_type(values, base_in))
            if flat and units.shape[1] == 1:  # one unit a row: a gather, no grouping
                out += layer.forward_input_delta(values - base_in[samples[:, None], units], units)
                return out, l + 1, crossed
            if not flat and np.all(channel == channel[0]):  # one channel moved in every row: no grouping
                c = int(channel[0])
                out += layer.forward_input_delta(values - base_in[samples, c], c)
                return out, l + 1, crossed
            for c in unique(channel):  # rows moved in the same channel share the product
                sel = np.flatnonzero(channel == c)
                if flat:
                    delta = values[sel] - base_in[samples[sel][:, None], units[sel]]
                    out[sel] += layer.forward_input_delta(delta, units[sel[0]])
                else:
                    out[sel] += layer.forward_input_delta(values[sel] - base_in[samples[sel], c], int(c))
            return out, l + 1, crossed
        else:
            break
    else:
        l = len(fd.net.layers)
    # whole rows: the unperturbed ones with the moved channel
    a = rows_of(fd.inputs[l], samples, np.result_type(values, fd.inputs[l]))
    if units is not None:
        a.reshape(len(rows), -1)[rows[:, None], units] = values
    else:
        a[rows, channel] = values
    return a, l, crossed



def agrees(fast: Array, real: Array, z0: Array) -> bool:
    """Equal to rounding: within √ε of the magnitudes involved."""
    scale = np.max(np.abs(real)) + np.max(np.abs(z0)) + 1.0
    return bool(np.all(np.abs(fast - real) <= np.sqrt(np.finfo(real.dtype).eps) * scale))

def spot_check_windows(fd: FiniteDifferences, start: int, end: int) -> bool:
    """The windowed pass against whole forward passes of the perturbed samples, at the
    first, a middle and the last entry of the input of layer ``start``, step 0.5."""
    a_flat = fd.inputs[start].reshape(fd.n, -1)
    samples = np.array([0, fd.n // 2, fd.n - 1])
    positions = np.array([0, a_flat.shape[1] // 2, a_flat.shape[1] - 1])
    values = a_flat[samples, positions] + np.asarray(0.5, dtype=a_flat.dtype)
    carried, _ = windowed(fd, start, end, samples, positions, values)
    real, _ = windowed(fd, start, start, samples, positions, values)
    for layer in fd.net.layers[start:end]:
        real, _ = layer.forward(real)
    return agrees(carried, real, fd.inputs[end])

def spot_check_perturbed(fd: FiniteDifferences, layer_index: int, name: str) -> bool:
    """Does ``forward_perturbed`` agree with a real forward pass with the parameter
    changed?  Checked on the first and last entry with a step of 0.5."""
    layer = fd.net.layers[layer_index]
    flat = layer.params[name].reshape(-1)
    idx = np.array([0] if flat.size == 1 else [0, flat.size - 1])
    steps = np.full(len(idx), 0.5, dtype=flat.dtype)
    z0 = fd.inputs[layer_index + 1]
    channel, values = layer.forward_perturbed(z0, fd.caches[layer_index], name, idx, steps)
    fast = np.broadcast_to(z0, (len(idx),) + z0.shape).copy()
    fast[np.arange(len(idx)), :, channel] = values
    for g, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + steps[g]
        try:
            real, _ = layer.forward(fd.inputs[layer_index])
        finally:
            flat[i] = old
        if not agrees(fast[g], real, z0):
            return False
    return True
