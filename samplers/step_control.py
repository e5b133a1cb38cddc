"""PI step-size controller, separate from the stepper (Hairer & Wanner II, §IV.2; Gustafsson 1991;
Söderlind 2002, "Automatic control and adaptive time-stepping").

After a step with scaled error ``err`` (≤ 1 accepts) the next step is ``h·factor`` with
``factor = safety · err^(−β1/k) · err_prev^(β2/k)`` clipped to ``[factor_min, factor_max]``,
``k = error_order + 1`` (the order of the local error estimate). After a rejection the factor is the pure
I-controller ``safety · err^(−1/k)`` clipped to ``[factor_min, 1]`` and the memory is not updated.
Defaults β1 = 0.7, β2 = 0.4 are Gustafsson's PI values (k_I = 0.3, k_P = 0.4); β2 = 0 is the classic
I-controller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class PIController:
    error_order: int  # order of the embedded (lower-order) solution; the estimate is O(h^(error_order+1))
    beta1: float = 0.7
    beta2: float = 0.4
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 5.0
    previous_error: float = field(default=1.0, init=False)

    def __post_init__(self):
        if not self.error_order >= 1:
            raise ValueError(f"PIController: error_order = {self.error_order} must be ≥ 1")
        if not 0 < self.safety <= 1:
            raise ValueError(f"PIController: safety = {self.safety} must lie in (0, 1]")
        if not 0 < self.factor_min < 1 < self.factor_max:
            raise ValueError(f"PIController: need 0 < factor_min < 1 < factor_max, got "
                             f"{self.factor_min}, {self.factor_max}")

    @property
    def k(self) -> int:
        return self.error_order + 1

    def accepts(self, error: float) -> bool:
        """A finite scaled error ≤ 1 is accepted (NaN/Inf is rejected)."""
        return math.isfinite(error) and error <= 1.0

    def factor(self, error: float, accepted: bool) -> float:
        """Step-size factor after a step with scaled ``error``; updates the controller memory on accept."""
        if not math.isfinite(error):
            return self.factor_min
        error = max(error, 1e-10)
        if not accepted:
            return min(1.0, max(self.factor_min, self.safety * error ** (-1.0 / self.k)))
        factor = self.safety * error ** (-self.beta1 / self.k) * self.previous_error ** (self.beta2 / self.k)
        self.previous_error = error
        return min(self.factor_max, max(self.factor_min, factor))

    def reset(self):
        self.previous_error = 1.0
