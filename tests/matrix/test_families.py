"""Every tiny family of tests/matrix/families.py builds from ComfyUI's classes and samples with ComfyUI's stock euler.

For each family and weight dtype (float32, bfloat16, float16): the model is the spec's ``comfy.model_base`` class,
its ``model_sampling`` mixes the expected ``comfy.model_sampling`` prediction and sigma-schedule classes, the
weights are stored in the requested dtype with the manual-cast dtype ComfyUI's loader would choose for this device,
and ``comfy.sample.sample(model, noise, 3, 2.0, "euler", "simple", positive, negative, latent)`` on a batch of 2
returns a finite float32 latent of shape (2, *latent_shape). Sampling runs under ``torch.inference_mode()`` as in
ComfyUI's executor.
"""
import pytest
import torch

from tests.matrix.families import FAMILIES, SAMPLING_CLASSES, build_family

pytestmark = pytest.mark.matrix

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@pytest.fixture(scope="module", autouse=True)
def comfy_in_process():
    """ComfyUI imported in this process (build_family boots it too; tests below import comfy before building)."""
    from benchmarks.comfy_inprocess import boot

    boot()


def _euler(fam, positive=None, negative=None, steps=3, cfg=2.0, seed=0):
    import comfy.sample

    latent = fam.latent(2)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return comfy.sample.sample(fam.model, noise, steps, cfg, "euler", "simple",
                                   fam.positive if positive is None else positive,
                                   fam.negative if negative is None else negative,
                                   latent, disable_pbar=True, seed=seed)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("key", list(FAMILIES))
def test_family_builds_and_samples_with_stock_euler(key, dtype_name):
    import comfy.model_management
    import comfy.model_sampling

    dtype = DTYPES[dtype_name]
    fam = build_family(key, dtype)
    spec = fam.spec
    model = fam.model.model

    assert type(model).__name__ == spec.model_class
    prediction, schedule = SAMPLING_CLASSES[spec.sampling]
    mro = type(model.model_sampling).__mro__
    assert isinstance(model.model_sampling, getattr(comfy.model_sampling, schedule)), mro
    # V_PREDICTION derives from EPS and EDM from V_PREDICTION: the most derived prediction class must be the one.
    predictions = {getattr(comfy.model_sampling, n) for n in ("EPS", "V_PREDICTION", "EDM", "CONST")}
    assert next(c for c in mro if c in predictions) is getattr(comfy.model_sampling, prediction), mro
    assert model.get_dtype() == dtype
    expected_cast = comfy.model_management.unet_manual_cast(dtype, fam.model.load_device,
                                                            fam.config.supported_inference_dtypes)
    assert model.manual_cast_dtype == expected_cast

    out = _euler(fam)
    assert out.shape == (2, *spec.latent_shape)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all(), f"{key} {dtype_name}: non-finite output"
    assert out.abs().max() > 0


@pytest.mark.parametrize("key", list(FAMILIES))
def test_conditioning_reaches_the_model(key):
    """Swapping positive and negative changes the CFG result, so the made-up conditioning is wired in."""
    fam = build_family(key)
    a = _euler(fam)
    b = _euler(fam, positive=fam.negative, negative=fam.positive)
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


def test_build_is_reproducible_and_seeded():
    """Same seed: the same weights (cached or rebuilt); another seed: other weights."""
    from tests.matrix import families

    a = build_family("flux", seed=0)
    rebuilt = families._build("flux", torch.float32, 0, compute_in_dtype=False)
    other = build_family("flux", seed=1)
    wa = a.model.model.diffusion_model.img_in.weight
    assert torch.equal(wa, rebuilt.model.model.diffusion_model.img_in.weight)
    assert not torch.equal(wa, other.model.model.diffusion_model.img_in.weight)
    # float32 and bfloat16 builds of one seed are the same network up to bfloat16 rounding.
    wb = build_family("flux", torch.bfloat16, seed=0).model.model.diffusion_model.img_in.weight
    torch.testing.assert_close(wb.float(), wa, rtol=1e-2, atol=1e-3)


def test_build_family_returns_independent_patchers():
    """Each call hands out its own ModelPatcher clone and conditioning lists over the shared weights."""
    a, b = build_family("sd15"), build_family("sd15")
    assert a.model is not b.model and a.model.model is b.model.model
    a.model.model_options["transformer_options"]["flowscope_test"] = 1
    assert "flowscope_test" not in b.model.model_options["transformer_options"]
    a.positive[0][1]["extra"] = 1
    assert "extra" not in b.positive[0][1]


def test_ltxv_sees_one_timestep_per_token():
    """LTXV's conditioning carries the image-to-video mask, so the diffusion model gets per-token timesteps
    (zero on the conditioning frame's tokens)."""
    import comfy.patcher_extension

    fam = build_family("ltxv")
    seen = []

    def record(executor, x, timestep, *args, **kwargs):
        seen.append(timestep.detach().clone())
        return executor(x, timestep, *args, **kwargs)

    comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                 "flowscope_test_timesteps", record,
                                                 fam.model.model_options, is_model_options=True)
    _euler(fam)
    channels, frames, h, w = fam.spec.latent_shape
    assert len(seen) == 3
    for t in seen:
        # batch 2 x (positive, negative) in one CFG batch; one timestep per latent token (patch size 1)
        assert t.shape == (4, frames * h * w, 1)
        assert (t[:, : h * w] == 0).all() and (t[:, h * w:] > 0).all()


def test_latent_helper():
    fam = build_family("wan21")
    assert torch.equal(fam.latent(3), torch.zeros(3, *fam.spec.latent_shape))
    a, b = fam.latent(2, seed=5), fam.latent(2, seed=5)
    assert a.dtype == torch.float32 and torch.equal(a, b) and a.std() > 0.5
