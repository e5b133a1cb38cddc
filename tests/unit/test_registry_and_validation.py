"""The registry: every sampler runs with the k-diffusion contract on any latent shape, never calls the model
at σ = 0, and rejects bad input with a ValueError naming itself and the problem. No ComfyUI imports."""
import inspect
import pathlib
import re

import pytest
import torch

from tests.unit.analytic_problems import denoiser_of, make_mixture, uniform
from samplers import SAMPLER_INFO, SAMPLERS, SCHEDULE_INFO, SCHEDULES, optimizers, solve_adaptive
from samplers.common import validate_latent, validate_sigmas

NAMES = ["fs_euler", "fs_heun", "fs_midpoint", "fs_ralston", "fs_rk3", "fs_rk4", "fs_rk38", "fs_bosh3",
         "fs_dopri5", "fs_ab2", "fs_ab3", "fs_ab4", "fs_abm", "fs_exp_abm", "fs_heavy_ball", "fs_nesterov",
         "fs_grad_est", "fs_secant", "fs_langevin_pc", "fs_flow_sde", "fs_ddim"]


def test_registry_names_and_info():
    assert list(SAMPLERS) == NAMES
    assert set(SAMPLER_INFO) == set(NAMES)
    for name, info in SAMPLER_INFO.items():
        assert set(info) == {"order", "nfe_per_step", "advice"} and info["advice"]
    for name, fn in SAMPLERS.items():
        parameters = list(inspect.signature(fn).parameters)
        assert parameters[:6] == ["model", "x", "sigmas", "extra_args", "callback", "disable"], name
        assert "data_end_sigma" in parameters, name
    assert {"uniform", "sd3_shift", "flux_shift", "cosine", "linear_quadratic"} <= set(SCHEDULES)
    assert set(SCHEDULE_INFO) == set(SCHEDULES)


def test_no_comfy_imports():
    root = pathlib.Path(__file__).resolve().parents[2] / "samplers"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+comfy", text, re.MULTILINE), path.name


class Recorder:
    def __init__(self, model):
        self.model, self.sigmas, self.extra = model, [], []

    def __call__(self, x, sigma, **extra_args):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype and sigma.device == x.device
        self.sigmas.append(float(sigma.min()))
        self.extra.append(extra_args)
        return self.model(x, sigma)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_on_a_4d_latent(name, dtype):
    mixture = make_mixture(dim=12)
    model = Recorder(denoiser_of(mixture.to(dtype=dtype)))
    x = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0)).to(dtype)
    sigmas = uniform(6).to(dtype)
    seen = []
    out = SAMPLERS[name](model, x, sigmas, extra_args={"seed": 3}, callback=seen.append, disable=True,
                         data_end_sigma=1e-4)
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert [c["i"] for c in seen] == list(range(6)), name
    assert min(model.sigmas) >= 1e-4 * 0.999, name
    assert all(extra == {"seed": 3} for extra in model.extra)
    for c in seen:
        assert c["denoised"].shape == x.shape and c["x"].shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_without_data_end_sigma_the_model_never_sees_zero(name):
    model = Recorder(denoiser_of(make_mixture(dim=6)))
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = SAMPLERS[name](model, x, uniform(4), extra_args={"seed": 1}, disable=True)
    assert torch.isfinite(out).all() and min(model.sigmas) > 0


BAD_SIGMAS = [
    (torch.tensor([1.0]), "sigmas needs at least 2 entries"),
    (torch.tensor([1.0, float("nan"), 0.0]), r"sigmas\[1\] = nan is not finite"),
    (torch.tensor([0.5, 0.75, 0.0]), r"sigmas must be decreasing .*sigmas\[0\] = 0.5 < sigmas\[1\] = 0.75"),
    (torch.tensor([1.0, 0.5, 0.5, 0.75, 0.0]), r"sigmas must be decreasing .*sigmas\[2\] = 0.5 < sigmas\[3\] = 0.75"),
    (torch.tensor([1.0, 0.5, -0.1]), r"sigmas\[2\] = -0.1\d* is negative"),
    (torch.ones(2, 2), "sigmas must be a 1-D tensor"),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sigmas, problem", BAD_SIGMAS)
def test_bad_sigmas_name_the_sampler_and_the_problem(name, sigmas, problem):
    model = denoiser_of(make_mixture(dim=6))
    with pytest.raises(ValueError, match=f"^{name}: {problem}"):
        SAMPLERS[name](model, torch.zeros(2, 6), sigmas)


@pytest.mark.parametrize("name", NAMES)
def test_bad_latent_and_data_end_sigma(name):
    model = denoiser_of(make_mixture(dim=6))
    x = torch.zeros(2, 6)
    x[1, 3] = float("inf")
    with pytest.raises(ValueError, match=f"^{name}: the latent x contains NaN or Inf"):
        SAMPLERS[name](model, x, uniform(3))
    with pytest.raises(ValueError, match=f"^{name}: the latent x must be a torch.Tensor"):
        SAMPLERS[name](model, [[0.0] * 6], uniform(3))
    with pytest.raises(ValueError, match=f"^{name}: data_end_sigma = -1.0 must be a positive"):
        SAMPLERS[name](model, torch.zeros(2, 6), uniform(3), data_end_sigma=-1.0)


def test_validators_directly():
    assert validate_sigmas(torch.tensor([2.0, 1.0, 0.0]), "w") == [2.0, 1.0, 0.0]
    assert validate_sigmas(torch.tensor([2.0, 1.0, 1.0, 0.0, 0.0]), "w") == [2.0, 1.0, 1.0, 0.0, 0.0]  # equal: kept
    validate_latent(torch.zeros(1, 4), "w")
    with pytest.raises(ValueError, match="w: the latent x must be floating point"):
        validate_latent(torch.zeros(1, 4, dtype=torch.int64), "w")
    with pytest.raises(ValueError, match="w: the latent x needs a non-empty leading batch dimension"):
        validate_latent(torch.zeros(0, 4), "w")


class SyncCounter:
    """Counts the tensor → Python conversions that force a device sync (item, tolist, float, int, bool, cpu)."""

    METHODS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")

    def __init__(self, monkeypatch):
        self.count = 0
        for method in self.METHODS:
            original = getattr(torch.Tensor, method)
            monkeypatch.setattr(torch.Tensor, method, self._wrap(original))

    def _wrap(self, original):
        def wrapper(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)
        return wrapper


@pytest.mark.parametrize("name", NAMES)
def test_host_syncs_do_not_grow_with_the_number_of_steps(name, monkeypatch):
    """GPU discipline: the fixed-step samplers convert tensors to Python only before the loop; the
    adaptive ones once per attempted step (the controller). fs_secant reads its [B] coefficients on the host
    only on the CPU (no sync there); its accelerator path is checked here."""
    monkeypatch.setattr(optimizers, "HOST_COEFFICIENT_DEVICES", ())
    model = denoiser_of(make_mixture(dim=6))
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas_short, sigmas_long = uniform(5), uniform(20)
    counter = SyncCounter(monkeypatch)
    counts = []
    for sigmas in (sigmas_short, sigmas_long):
        counter.count = 0
        if name in ("fs_bosh3", "fs_dopri5"):  # one sync per step attempt for the step-size controller
            _, stats = solve_adaptive(model, x, sigmas, extra_args={"seed": 1}, disable=True, data_end_sigma=1e-4,
                                      method=name[3:], rtol=1e-2, atol=1e-2)
            counts.append(counter.count - (stats.accepted + stats.rejected))
            continue
        SAMPLERS[name](model, x, sigmas, extra_args={"seed": 1}, disable=True, data_end_sigma=1e-4)
        counts.append(counter.count)
    assert counts[0] == counts[1] <= 4, counts
