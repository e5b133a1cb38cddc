"""The registry: every sampler runs with the k-diffusion contract on any latent shape, never calls the model
at σ = 0, and rejects bad input with a ValueError naming itself and the problem. No ComfyUI imports."""
import ast
import inspect
import pathlib

import pytest
import torch

from tests.unit.analytic_problems import denoiser_of, make_mixture, uniform
from samplers import (SAMPLER_INFO, SAMPLER_SPECS, SAMPLERS, SCHEDULE_INFO, SCHEDULES, optimizers,
                      sampler_table_markdown, solve_adaptive)
from samplers.common import validate_latent, validate_sigmas

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Top-level modules and packages of ComfyUI's source tree (what ``import X`` reaches inside a ComfyUI process).
COMFY_MODULES = {"alembic_db", "api_server", "app", "comfy", "comfy_api", "comfy_api_nodes", "comfy_config",
                 "comfy_execution", "comfy_extras", "comfyui_version", "cuda_malloc", "execution", "folder_paths",
                 "hook_breaker_ac10a0", "latent_preview", "main", "middleware", "new_updater", "node_helpers",
                 "nodes", "protocol", "server", "utils"}
# The layers below nodes/ and the pack packages each may import: data flows nodes → diagnostics → samplers.
LAYERS = {"samplers": {"samplers"}, "diagnostics": {"diagnostics", "samplers"}, "models": {"models", "samplers"}}


NAMES = ["fs_euler", "fs_heun", "fs_midpoint", "fs_ralston", "fs_rk3", "fs_rk4", "fs_rk38", "fs_bosh3",
         "fs_dopri5", "fs_ab2", "fs_ab3", "fs_ab4", "fs_abm", "fs_exp_abm", "fs_noise_abm", "fs_vp_abm",
         "fs_heavy_ball", "fs_nesterov", "fs_grad_est", "fs_secant", "fs_langevin_pc", "fs_flow_sde", "fs_ddim"]


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


def test_samplers_info_and_readme_table_come_from_one_spec_list():
    """SAMPLERS and SAMPLER_INFO are the spec list's columns, in its order; the README shows exactly the table
    :func:`sampler_table_markdown` renders from it, between the sampler-table markers."""
    assert [spec.name for spec in SAMPLER_SPECS] == list(SAMPLERS) == list(SAMPLER_INFO)
    for spec in SAMPLER_SPECS:
        assert SAMPLERS[spec.name] is spec.fn
        assert SAMPLER_INFO[spec.name] == {"order": spec.order, "nfe_per_step": spec.nfe_per_step,
                                           "advice": spec.advice}
        assert "|" not in spec.advice + spec.nfe_per_step + spec.measured and "\n" not in spec.advice, spec.name
        measured = spec.measured.split()[0] if spec.measured else ""
        if measured.replace(".", "", 1).isdigit():  # a measured slope must lie within ±0.3 of the stated order
            assert abs(float(measured) - spec.order) < 0.3, (spec.name, spec.measured)
    table = sampler_table_markdown()
    assert table.splitlines()[2:] == [spec.table_row() for spec in SAMPLER_SPECS]
    assert "| `fs_rk4` | 4 (3.84) | 4 |" in table and "| `fs_dopri5` | 5 | adaptive, 6 per attempt |" in table
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15_000, "README.md is a user's guide of at most 15 KB; method details go to docs/"
    start, end = "<!-- sampler-table:start -->\n", "\n<!-- sampler-table:end -->"
    assert readme.count(start) == 1 and readme.count(end) == 1, "README.md needs the sampler-table markers once"
    shown = readme[readme.index(start) + len(start):readme.index(end)]
    assert shown == table, ("README.md's sampler table differs from samplers.sampler_table_markdown(); paste its "
                            "output between the markers:\n" + table)


def imported_modules(path: pathlib.Path, root: pathlib.Path = ROOT):
    """(line, absolute module, relative) of every import in ``path`` — module level, in functions, under ``if``
    — and of every ``importlib.import_module``/``__import__`` with a literal name. Relative imports are resolved
    against the file's package below ``root`` (``from ..x import y`` in samplers/a/b.py → samplers.x)."""
    package = list(path.relative_to(root).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, False
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module, False
            else:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                assert node.level - 1 <= len(package), (path, node.lineno)
                yield node.lineno, ".".join(base + ([node.module] if node.module else [])), True
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if name in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value, False


def test_imported_modules_resolves_absolute_relative_and_dynamic_imports(tmp_path):
    source = tmp_path / "samplers" / "pkg" / "mod.py"
    source.parent.mkdir(parents=True)
    source.write_text("import os.path\nfrom . import sibling\nfrom ..common import x\n"
                      "def f():\n    import comfy.samplers\n    from ...nodes import y\n"
                      "    importlib.import_module('folder_paths')\n")
    found = [(line, module, relative) for line, module, relative in imported_modules(source, tmp_path)]
    assert sorted(found) == [(1, "os.path", False), (2, "samplers.pkg", True), (3, "samplers.common", True),
                             (5, "comfy.samplers", False), (6, "nodes", True), (7, "folder_paths", False)]


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_core_layers_import_no_comfyui_and_nothing_above_them(layer):
    """samplers/, diagnostics/ and models/ promise to work without ComfyUI: no import of any ComfyUI module
    anywhere in them (also inside functions), and no import of a pack layer above them (nodes/, or diagnostics/
    and models/ from samplers/)."""
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, layer
    comfy, upward = [], []
    for path in files:
        for line, module, relative in imported_modules(path):
            root = module.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line} {module}"
            if relative:
                if root not in LAYERS[layer]:
                    upward.append(where)
            elif root in COMFY_MODULES:
                comfy.append(where)
    assert comfy == [], comfy
    assert upward == [], upward


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
