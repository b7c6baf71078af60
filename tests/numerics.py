"""Float tolerances derived from the computation, not from one CPU.

Other CPUs take other kernels (MKL and ATen pick code paths per CPU; ``MKL_CBWR=COMPATIBLE`` and
``ATEN_CPU_CAPABILITY=avx2`` do the same on one machine), which sum in other orders. Two ways to
bound what that may change, used by the tests:

- :func:`summation_bound`: Higham's bound on the error of a float sum of n terms in ANY order
  (blocked, pairwise, with FMA), ``gamma_n * sum |terms|``, for a computation whose terms are
  written out in float64;
- :func:`assert_as_accurate_as`: a float32 result against the float64 result of the same
  function, allowed ``SLACK`` times the error of a trusted float32 path of that function on
  the same machine (its own float32 error, measured, not assumed).
"""

from __future__ import annotations

import torch

U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53  # unit roundoff of float64

# Two float32 paths of one function with the same reduction lengths but other summation orders
# have errors of one order of magnitude; their largest elementwise errors differ by a small
# factor. 8 leaves room for that and still fails on any error larger than a few roundings.
SLACK = 8.0


def gamma(n: int, unit: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u): relative bound of n rounded operations."""
    if n * unit >= 1:
        raise ValueError(f"gamma_{n} is unbounded at unit roundoff {unit}")
    return n * unit / (1 - n * unit)


def summation_bound(abs_terms: torch.Tensor, n: int, unit: float = U32) -> torch.Tensor:
    """Elementwise bound on the error of sums of n terms whose absolute values sum to
    ``abs_terms`` (float64), whatever the order of summation."""
    return gamma(n, unit) * abs_terms


def assert_within(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor | float, name: str = "") -> None:
    """|got - want| <= bound elementwise (want and bound in float64)."""
    error = (got.detach().double() - want.detach()).abs()
    if isinstance(bound, torch.Tensor):
        bound = bound.detach()
    excess = error - bound
    if excess.numel() and float(excess.max()) > 0:
        i = int(excess.flatten().argmax())
        bound_i = bound if isinstance(bound, float) else float(torch.as_tensor(bound).expand_as(error).flatten()[i])
        raise AssertionError(f"{name}: error {float(error.flatten()[i]):.3e} at flat index {i} exceeds its bound "
                             f"{bound_i:.3e} (max error {float(error.max()):.3e})")


def assert_as_accurate_as(got: torch.Tensor, trusted: torch.Tensor, exact: torch.Tensor, name: str = "") -> None:
    """``got`` (float32, a new path) is within SLACK times the trusted float32 path's own largest
    error against ``exact`` (the trusted path in float64), or within a few roundings of the
    largest value where the trusted path happens to be exact."""
    exact, trusted = exact.detach().double(), trusted.detach()
    floor = 4 * U32 * float(exact.abs().max()) if exact.numel() else 0.0
    own_error = float((trusted.double() - exact).abs().max()) if exact.numel() else 0.0
    assert_within(got, exact, SLACK * max(own_error, floor), name)
