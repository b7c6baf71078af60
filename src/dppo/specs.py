"""The settings of a loss and of an optimisation run, as plain dataclasses.

Kept free of torch and transformers so that the Snakefile can validate a config (and a dry
run can plan the paper's grid) without importing either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOSS_NAMES = ("dpo", "minll", "unll", "conll", "ipo", "slic", "flex_dpo", "dpo_sft")
WEIGHTING_NAMES = ("linear", "quadratic", "sqrt", "expectile")
R_MODES = ("policy", "implicit")
UNLL_LEVELS = ("token", "sequence")
PENALIZED_LOSSES = ("minll", "unll", "conll")


@dataclass(frozen=True)
class LossConfig:
    name: str = "dpo"
    f: str = "linear"
    alpha: float = 0.0
    beta: float = 0.1
    zeta: float = 0.5
    r_mode: str = "policy"
    unll_level: str = "token"
    beta_w: float | None = None
    beta_l: float | None = None
    tau: float = 0.1
    slic_delta: float = 1.0
    slic_lambda: float = 0.1
    sft_lambda: float = 0.1

    def validate(self) -> None:
        _check_choice("name", self.name, LOSS_NAMES)
        _check_choice("f", self.f, WEIGHTING_NAMES)
        _check_choice("r_mode", self.r_mode, R_MODES)
        _check_choice("unll_level", self.unll_level, UNLL_LEVELS)
        # `not (x >= 0)` rather than `x < 0` so that NaN is rejected too.
        for field in ("alpha", "slic_lambda", "sft_lambda"):
            if not _finite(getattr(self, field)) or not getattr(self, field) >= 0:
                raise ValueError(f"LossConfig.{field} must be a finite number >= 0, got {getattr(self, field)!r}")
        for field in ("beta", "tau", "beta_w", "beta_l"):
            value = getattr(self, field)
            if field in ("beta_w", "beta_l") and value is None:
                continue
            if not _finite(value) or not value > 0:
                raise ValueError(f"LossConfig.{field} must be a finite number > 0, got {value!r}")
        if not _finite(self.zeta) or not 0.0 <= self.zeta <= 1.0:
            raise ValueError(f"LossConfig.zeta must be in [0, 1], got {self.zeta!r}")
        if not _finite(self.slic_delta):
            raise ValueError(f"LossConfig.slic_delta must be a finite number, got {self.slic_delta!r}")

    @property
    def needs_gen(self) -> bool:
        """True when the loss penalizes y_gen, so training must forward y_gen too."""
        return self.name in PENALIZED_LOSSES

    @property
    def beta_chosen(self) -> float:
        return self.beta if self.beta_w is None else self.beta_w

    @property
    def beta_rejected(self) -> float:
        return self.beta if self.beta_l is None else self.beta_l


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_choice(field: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"LossConfig.{field}={value!r} is not one of: {', '.join(valid)}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation settings shared by SFT and preference training."""

    lr: float = 1e-3
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32  # effective batch size, whatever the device count
    micro_batch_size: int | None = None  # per device; None: the whole batch at once
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    save_steps: int = 100
    seed: int = 0
    bf16: bool = True  # used only where a GPU supports it
    gradient_checkpointing: bool = False
    # batch rows of similar length (less padding); which rows share a batch changes, not a batch's loss
    group_by_length: bool = False
