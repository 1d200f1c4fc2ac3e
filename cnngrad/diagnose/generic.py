"""Catalogue families that need no geometry: built from the numeric gradient alone (zeroed
regions, samples left out, one-pixel shifts, flips / transposes / reshapes of a parameter)
or from the layer's own backward run one sample at a time."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .case import Candidate, Case, Raw, close

Array = np.ndarray


def masks_family(c: Case) -> Iterator[Raw]:
    n = c.n
    if c.ref.is_delta and c.delta_out is not None and c.delta_out.shape == n.shape:
        yield ("δ below the layer equals δ above it: the layer passed δ down unchanged — σ' (its ⊙ σ'(z)) is missing",
               c.delta_out.astype(np.float64), None)
    if c.ref.is_delta and n.ndim >= 2 and n.shape[0] > 1:
        only = np.zeros_like(n)
        only[0] = n[0]
        yield f"{c.what} is right for sample 0 and zero for the other {n.shape[0] - 1}: taken from sample 0 only", \
            only, None
        yield f"{c.what} of every sample is sample 0's: taken from sample 0 only", np.broadcast_to(n[:1], n.shape), None
    if n.ndim == 4 and c.ref.is_delta:
        h, w = n.shape[2:]
        g = c.geometry
        widths = range(1, max(1, *(g.padding if g else (1, 1))) + 1)
        for width in widths:
            if h > 2 * width and w > 2 * width:
                kept = n.copy()
                kept[..., :width, :], kept[..., -width:, :], kept[..., :width], kept[..., -width:] = 0, 0, 0, 0
                yield (f"{c.what} is the numeric one with the border zeroed: wrong only within {width} "
                       f"pixel{'s' if width > 1 else ''} of the border — padding / crop handled wrong"), kept, None
        if g is not None and g.stride != (1, 1):
            sh, sw = g.stride
            for oy in range(sh):
                for ox in range(sw):
                    on = np.zeros((h, w), dtype=bool)
                    on[oy::sh, ox::sw] = True
                    where = "" if (oy, ox) == (0, 0) else f" at offset ({oy}, {ox})"
                    grid = f"stride-{sh}" if sh == sw else f"stride-({sh}, {sw})"
                    yield (f"{c.what} is right on the {grid} grid{where} and wrong off it (zero there): the "
                           f"stride's zeros were not inserted (or put in the wrong places)"), np.where(on, n, 0.0), None


def shifts_family(c: Case) -> Iterator[Raw]:
    n = c.n
    if n.ndim != 4 or not c.ref.is_delta or min(n.shape[2:]) < 3:
        return
    names = {(1, 0): "down", (-1, 0): "up", (0, 1): "right", (0, -1): "left"}
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if (dy, dx) == (0, 0):
                continue
            shifted = np.roll(n, (-dy, -dx), axis=(2, 3))  # shifted[i] = n[i + dy]
            mask = np.zeros(n.shape, dtype=bool)
            h, w = n.shape[2:]
            mask[:, :, max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)] = True
            name = names.get((dy, dx)) or f"diagonally ({'down' if dy > 0 else 'up'}-{'right' if dx > 0 else 'left'})"
            yield (f"δ matches the numeric δ one pixel {name} (compared where both exist): a one-pixel offset — "
                   f"padding cropped from one side, or the stride's zeros at the wrong offset"), shifted, mask


def params_family(c: Case) -> Iterator[Raw]:
    n, what = c.n, c.what
    if c.ref.is_delta or n.ndim < 2:
        return
    if n.ndim == 4:
        yield (f"{what} matches ROT180(numeric): the kernel is rotated where it should not be (or not where it "
               f"should)"), n[..., ::-1, ::-1], None
        yield f"{what} matches numeric flipped upside down: one axis flipped — ROT180 flips both", n[..., ::-1, :], None
        yield f"{what} matches numeric flipped left-right: one axis flipped — ROT180 flips both", n[..., :, ::-1], None
        if n.shape[2] == n.shape[3]:
            yield f"{what} matches numeric with each kernel transposed (W[u, v] as W[v, u])", n.swapaxes(2, 3), None
            yield f"{what} matches numeric rotated by 90°", np.rot90(n, 1, axes=(2, 3)), None
            yield f"{what} matches numeric rotated by −90°", np.rot90(n, -1, axes=(2, 3)), None
        if n.shape[0] == n.shape[1]:
            yield (f"{what} matches numeric with in/out channels swapped: W[o, c] read as W[c, o]",
                   n.swapaxes(0, 1), None)
    flat = n.reshape(n.shape[0], -1)
    if n.ndim == 2 and flat.shape[0] == flat.shape[1]:
        yield f"{what} matches numeric transposed: Wᵀ where W belongs", n.T, None
    elif flat.shape[0] != flat.shape[1]:
        yield (f"{what} matches numeric's transpose reshaped to W's shape: a reshape where a transpose belongs "
               f"(({flat.shape[1]}, {flat.shape[0]}) read as {n.shape})"), flat.T.reshape(n.shape), None


def per_sample_family(c: Case) -> Iterator[Raw]:
    """The layer's own backward, one sample at a time: if those add up to the numeric
    gradient, the layer is right per sample and the batch is what it gets wrong."""
    layer, n = c.layer, c.n
    if not getattr(layer, "per_sample", False) or c.delta_out is None or c.a_prev is None or c.batch < 2:
        return
    parts = []
    for s in range(c.batch):
        _, cache = layer.forward(c.a_prev[s: s + 1])
        d_in, grads = layer.backward(c.delta_out[s: s + 1].copy(), cache)
        parts.append(np.asarray(d_in if c.ref.is_delta else grads[c.ref.name], dtype=np.float64))
    total = np.concatenate(parts) if c.ref.is_delta else np.sum(parts, axis=0)
    if not c.fits(total.reshape(n.shape)):
        return
    # and the same backward on the whole batch gives the analytic gradient: the two differ by the batch only
    _, cache = layer.forward(c.a_prev)
    d_in, grads = layer.backward(c.delta_out.copy(), cache)
    batched = np.asarray(d_in if c.ref.is_delta else grads[c.ref.name], dtype=np.float64)
    if batched.shape != n.shape or close(c.a, batched) > c.tol:
        return
    if not c.ref.is_delta:
        yield (f"{c.what} is sample 0's share alone: the other {c.batch - 1} samples are left out (taken from "
               f"sample 0 only)"), parts[0].reshape(n.shape), None
        yield (f"{c.what} is the last sample's share alone: the loop over samples keeps only its last pass",
               parts[-1].reshape(n.shape), None)
    yield Candidate(f"{c.what} is right for one sample at a time but wrong on a batch of {c.batch} (the layer's own "
                    f"backward, run per sample and summed, matches numeric): right only for batch size 1 — the batch "
                    f"axis is mixed in (a reshape or sum over the wrong axis)", total.reshape(n.shape), None, True)
