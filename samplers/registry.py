"""The sampler registry: one :class:`SamplerSpec` per dropdown sampler, from which ``SAMPLERS`` (name → function),
``SAMPLER_INFO`` (name → order, NFE per step, advice) and the README's sampler table
(:func:`sampler_table_markdown`) are all derived.

Orders are convergence orders of the default options (weak order for the stochastic samplers); ``measured`` is the
slope of log error against log step count that the unit tests measure on the analytic Gaussian mixture (float64,
16–128 steps, reference error < 1e-11), which must lie within ±0.3 of ``order``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .adaptive import sample_fs_bosh3, sample_fs_dopri5
from .multistep import sample_fs_ab2, sample_fs_ab3, sample_fs_ab4
from .optimizers import sample_gradient_estimation, sample_heavy_ball, sample_nesterov, sample_secant
from .predictor_corrector import sample_fs_abm, sample_fs_exp_abm, sample_fs_noise_abm, sample_fs_vp_abm
from .runge_kutta import (sample_fs_euler, sample_fs_heun, sample_fs_midpoint, sample_fs_ralston, sample_fs_rk3,
                          sample_fs_rk4, sample_fs_rk38)
from .stochastic import sample_ddim, sample_flow_sde, sample_langevin_pc


@dataclass(frozen=True)
class SamplerSpec:
    """One dropdown sampler. ``name``: the ``fs_`` name registered in ComfyUI; ``fn``: the k-diffusion-style
    function; ``order``: convergence order with the default options; ``measured``: the measured order (or a note
    such as "weak"), "" when not measured; ``nfe_per_step``: model evaluations per grid step with the default
    options; ``advice``: when to use it (one line of markdown)."""
    name: str
    fn: Callable
    order: int
    measured: str
    nfe_per_step: str
    advice: str

    def info(self) -> dict:
        return {"order": self.order, "nfe_per_step": self.nfe_per_step, "advice": self.advice}

    def table_row(self) -> str:
        order = f"{self.order} ({self.measured})" if self.measured else str(self.order)
        return f"| `{self.name}` | {order} | {self.nfe_per_step} | {self.advice} |"


SAMPLER_SPECS = (
    SamplerSpec('fs_euler', sample_fs_euler, 1, '0.99', '1',
                "Baseline; bit-identical to ComfyUI's `euler`."),
    SamplerSpec('fs_heun', sample_fs_heun, 2, '1.82', '2',
                'Second order, also on the last step to σ = 0 of flow models.'),
    SamplerSpec('fs_midpoint', sample_fs_midpoint, 2, '1.84', '2',
                "Second order; Heun's cost, evaluates mid-step."),
    SamplerSpec('fs_ralston', sample_fs_ralston, 2, '1.84', '2',
                'Second order with the smallest error bound of its family.'),
    SamplerSpec('fs_rk3', sample_fs_rk3, 3, '2.96', '3',
                "Kutta's third order; a middle ground."),
    SamplerSpec('fs_rk4', sample_fs_rk4, 4, '3.84', '4',
                'Classic RK4; smooth (flow) paths at moderate NFE.'),
    SamplerSpec('fs_rk38', sample_fs_rk38, 4, '3.87', '4',
                '3/8-rule RK4; an alternative to `fs_rk4`.'),
    SamplerSpec('fs_bosh3', sample_fs_bosh3, 3, '', 'adaptive, 3 per attempt',
                'Adaptive 3(2) with error control (rtol 1e-3); the σ grid seeds the step size.'),
    SamplerSpec('fs_dopri5', sample_fs_dopri5, 5, '', 'adaptive, 6 per attempt',
                'Adaptive 5(4): references; `nfe_budget` (node) caps the cost.'),
    SamplerSpec('fs_ab2', sample_fs_ab2, 2, '1.83', '1',
                "Second order at Euler's cost (momentum, β = ½)."),
    SamplerSpec('fs_ab3', sample_fs_ab3, 3, '2.82', '1',
                'Third order at 1 NFE/step; pays off from ~10 steps.'),
    SamplerSpec('fs_ab4', sample_fs_ab4, 4, '4.12', '1',
                'Fourth order at 1 NFE/step; smooth paths, many steps.'),
    SamplerSpec('fs_abm', sample_fs_abm, 3, '2.95', '1',
                'Adams–Bashforth–Moulton PEC in σ (AB2 + 3-point corrector, no extra NFE); flow models.'),
    SamplerSpec('fs_exp_abm', sample_fs_exp_abm, 3, '2.95 on a karras-like grid', '1',
                'Data-prediction exponential multistep PEC in log σ (DPM-Solver++ + UniC-type corrector); EPS/VE '
                'models.'),
    SamplerSpec('fs_noise_abm', sample_fs_noise_abm, 3, 'pre-asymptotic 3.45 on a (1 − t)² grid', '1',
                'Noise-prediction exponential multistep PEC in log σ (DPM-Solver-type); EPS models on karras.'),
    SamplerSpec('fs_vp_abm', sample_fs_vp_abm, 3, 'pre-asymptotic 3.76', '1',
                'Velocity multistep PEC in the VP time of DEIS (up to 3 points + corrector, lower order on long '
                'steps); flow models.'),
    SamplerSpec('fs_heavy_ball', sample_heavy_ball, 2, '1.80', '1',
                'Heavy-ball momentum; β = ½ is exactly AB2.'),
    SamplerSpec('fs_nesterov', sample_nesterov, 2, '1.80', '1 (2 on the first step)',
                'Nesterov look-ahead evaluation; second order at look-ahead ½.'),
    SamplerSpec('fs_grad_est', sample_gradient_estimation, 1, '0.94', '1',
                "ComfyUI's gradient estimation (γ = 2)."),
    SamplerSpec('fs_secant', sample_secant, 2, '1.88', '1',
                'Quasi-Newton: exponential AB2 step with a secant curvature estimate.'),
    SamplerSpec('fs_langevin_pc', sample_langevin_pc, 1, 'weak', '1 + correctors',
                'Langevin corrections pull samples onto the marginal; adds noise.'),
    SamplerSpec('fs_flow_sde', sample_flow_sde, 1, 'weak', '1',
                'Stochastic flow sampling (DDIM-η, η = 1); marginal-preserving.'),
    SamplerSpec('fs_ddim', sample_ddim, 1, '0.99', '1',
                'DDIM data-prediction step (= Euler in x0 form); η > 0 (node) adds noise.'),
)

SAMPLERS = {spec.name: spec.fn for spec in SAMPLER_SPECS}
SAMPLER_INFO = {spec.name: spec.info() for spec in SAMPLER_SPECS}

TABLE_HEADER = ("| dropdown name | order (measured) | NFE per step | use it when |", "|---|---|---|---|")


def sampler_table_markdown(specs=SAMPLER_SPECS) -> str:
    """The README's sampler table (markdown, no trailing newline): one row per spec, in registration order."""
    return "\n".join([*TABLE_HEADER, *(spec.table_row() for spec in specs)])
