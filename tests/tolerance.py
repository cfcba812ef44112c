"""Tolerances for comparisons against fixtures computed elsewhere, derived from rounding alone.

A fixture made by reference code on another machine holds float32 results whose last bits depend
on that machine's kernels (blocking, vector width, summation order). A tolerance for them must
follow from the dtype, the result's magnitude and the depth of the computation, never from the
machine: the rule below.

The rule
--------
One layer whose outputs are dot products of length ``reduction`` (a conv's C_in*kh*kw, a linear's
in_features, an LSTM step's inputs plus hidden units) rounds each output by about
``eps * sqrt(reduction)`` times the magnitude of its terms: the statistical estimate for rounding
errors of a sum (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 2.8).
The worst-case bound ``reduction * eps`` assumes every rounding errs the same way, which blocked
and pairwise kernels never approach. Long reductions that torch sums in cascade (BatchNorm
statistics, means) add only ``~eps * log2(N)``, which is below one conv's ``sqrt(reduction)`` term for the
sizes in these tests. Layers separated by normalisation and saturating
activations (BatchNorm, tanh, sigmoid, softmax) pass an error on with a gain of about one, so
along a path of ``depth`` such layers the errors add at most linearly:

    atol = SAFETY * computations * eps(dtype) * depth * sqrt(reduction) * scale,   rtol = 0

* ``scale`` is the magnitude of the values whose rounding reaches the result, by default
  ``max |expected|``. Pass it explicitly when a result is small but computed from large values
  (a mean with cancellation, a loss built from logits multiplied by a gain such as DAMSM's
  gammas): then it is the largest intermediate times the gains after it.
* ``rtol`` is 0 because the rounding of one element of a deep network depends on the
  magnitude of the intermediates it came from, not on its own value. A small output element
  (produced by cancellation) is not more accurate than a large one, so a relative term would
  only loosen the test for the large elements.
* ``computations`` is 1 when our side runs in float64 (its own error, ~1e-16 relative, is
  negligible, so the difference is the reference's own fp32 rounding and our machine's fp32
  kernels play no part). Use 2 when both sides are float32 from different kernels, because
  their errors add. Prefer float64 wherever a fixture stores the weights and inputs.

The safety factor
-----------------
``SAFETY = 2`` covers the layers whose gain is above one: BatchNorm on a batch of 3 divides by a
small standard deviation, GLU multiplies two rounded halves, and attention and gating products
do the same. Measured on the DM-GAN fixture (BatchNorm in training mode on a batch of 3, the worst
case here): the reference's 256 px image differs from our float64 run by 1.7e-5 = 139 eps at scale 1,
against 2 * 29 * sqrt(576) = 1392 eps (1.66e-4) allowed, a 10x margin. A 1e-3 change to one weight
of a 256 px-stage conv moves that image by 3e-3 to 2e-2, 19x to 120x the tolerance, so a wrong
layer still fails. The bound is an upper one: on networks without such gains it is far above the
measured error (GALIP's generator: 9 eps at scale 1, against 2 * 104 * sqrt(576) eps allowed).
"""

from __future__ import annotations

import math

import torch

SAFETY = 2.0


def rounding_tolerance(
    expected: torch.Tensor,
    depth: int,
    reduction: int = 1,
    *,
    scale: float | None = None,
    computations: int = 1,
    dtype: torch.dtype = torch.float32,
    safety: float = SAFETY,
) -> float:
    """The absolute tolerance of the module rule for a `dtype` result of `depth` layers of dot products of length `reduction`."""
    if depth < 1 or reduction < 1 or computations < 1:
        raise ValueError("depth, reduction and computations must be >= 1")
    if scale is None:
        scale = float(expected.detach().abs().max())
    return safety * computations * torch.finfo(dtype).eps * depth * math.sqrt(reduction) * scale


def fp32_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    depth: int,
    reduction: int = 1,
    *,
    scale: float | None = None,
    computations: int = 1,
    safety: float = SAFETY,
    msg: str | None = None,
) -> None:
    """Assert `actual` equals the float32 result `expected` up to the rounding of `depth` fp32 layers.

    Compared in float64, with the absolute tolerance of `rounding_tolerance` and rtol 0 (see the
    module docstring). `actual` should come from a float64 run of the same weights and inputs
    (computations=1). With a float32 `actual` from other kernels, pass computations=2.
    """
    atol = rounding_tolerance(expected, depth, reduction, scale=scale, computations=computations, safety=safety)
    torch.testing.assert_close(
        actual.detach().double(), expected.detach().double(), atol=atol, rtol=0,
        msg=(lambda m: f"{m} (fp32 rounding tolerance {atol:.2e}: depth {depth}, reduction {reduction})"
             + (f": {msg}" if msg else "")),
    )
