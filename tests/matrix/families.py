"""Tiny models of real ComfyUI architectures, built from ComfyUI's own classes, for in-process sampler tests.

Each family is built the way ``comfy.sd.load_diffusion_model_state_dict`` builds a checkpoint's model, minus the
checkpoint: the family's ``comfy.supported_models`` config class is instantiated with a shrunken ``unet_config``
(few channels, one or two blocks, few heads), the weight dtype and ComfyUI's manual-cast dtype are set with
``set_inference_dtype`` (manual cast chosen by ``comfy.model_management.unet_manual_cast`` exactly as the loader
does), ``config.get_model(state_dict, "")`` returns the real ``comfy.model_base`` class with its real
``model_sampling`` (EPS, V-prediction, discrete flow with shift, Flux's exponential time shift, continuous EDM,
continuous V), the parameters get seeded random values, and the model is wrapped in
``comfy.model_patcher.ModelPatcher``. Conditioning is made directly in ComfyUI's CONDITIONING layout
(``[[cond_tensor, {extra keys}]]``) with the feature sizes the family's text encoders produce and a short token
count; no text encoder, VAE or checkpoint is loaded, downloaded or shipped.

ComfyUI runs sampling under ``torch.inference_mode()`` (its executor wraps every node); callers should do the same.
The model is built under ``torch.inference_mode()`` too, so its parameters are inference tensors.

Versions: checked against ComfyUI 0.3.75 (the provisioned one) and the 0.8.0 source; keys that only one of them
knows (``txt_ids_dims``, ``meanflow_sum``, Chroma's ``vec_in_dim``) are passed only when the installed parameter
class declares them (``_declared``).
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field

import torch

__all__ = ["FamilySpec", "FAMILIES", "NOT_BUILDABLE", "SAMPLING_CLASSES", "BuiltFamily", "build_family"]


@dataclass(frozen=True)
class FamilySpec:
    key: str                 # e.g. "sd15"
    config_class: str        # name in comfy.supported_models, e.g. "SD15"
    model_class: str         # the comfy.model_base class it builds, e.g. "BaseModel"/"SDXL"/"Flux"/"WAN21"
    sampling: str            # model-sampling kind: "eps", "v", "flow", "flow_flux", "edm", "v_continuous"
    latent_shape: tuple      # per-sample latent shape WITHOUT batch
    exercises: str           # one line: what this row exercises


FAMILIES: dict[str, FamilySpec] = {s.key: s for s in [
    FamilySpec("sd15", "SD15", "BaseModel", "eps", (4, 16, 16),
               "UNet (ResBlocks + spatial transformers), discrete EPS prediction, 1000 discrete sigmas"),
    FamilySpec("sd21v", "SD20", "BaseModel", "v", (4, 8, 8),
               "UNet with linear transformer projections, discrete V-prediction (SD 2.1 768-v)"),
    FamilySpec("sdxl", "SDXL", "SDXL", "eps", (4, 8, 8),
               "UNet with ADM vector conditioning (pooled CLIP-G + size embeddings), discrete EPS"),
    FamilySpec("sd3", "SD3", "SD3", "flow", (16, 8, 8),
               "MMDiT joint blocks with pooled vector, 16-channel latent, discrete flow (CONST) with shift 3"),
    FamilySpec("flux", "Flux", "Flux", "flow_flux", (16, 8, 8),
               "2x2 packing into tokens, guidance embedding, pooled CLIP-L vector, RoPE ids, Flux time shift"),
    FamilySpec("chroma", "Chroma", "Chroma", "flow_flux", (16, 8, 8),
               "Flux-style DiT without pooled vector: modulations from the distilled-guidance approximator"),
    FamilySpec("qwen_image", "QwenImage", "QwenImage", "flow_flux", (16, 1, 8, 8),
               "single-frame 5-D latent (Wan 2.1 format), MMDiT with RMS-normed 3584-d text, Flux-style shift"),
    FamilySpec("wan21", "WAN21_T2V", "WAN21", "flow", (16, 3, 8, 8),
               "5-D video latent (B,C,T,H,W), 3-D patches, cross-attention, discrete flow with shift 8"),
    FamilySpec("hunyuan_video", "HunyuanVideo", "HunyuanVideo", "flow", (16, 3, 8, 8),
               "5-D video latent, token refiner, guidance embedding, pooled CLIP-L vector, flow shift 7"),
    FamilySpec("ltxv", "LTXV", "LTXV", "flow_flux", (128, 3, 4, 4),
               "5-D 128-channel video latent, per-token timesteps (first frame masked as conditioning)"),
    FamilySpec("cosmos", "CosmosT2V", "CosmosVideo", "edm", (16, 3, 8, 8),
               "continuous EDM sigmas (sigma_data 0.5, sigma 0.002..80), 5-D video latent, AdaLN-LoRA DiT"),
    FamilySpec("stable_audio", "StableAudio", "StableAudio1", "v_continuous", (64, 32),
               "3-D audio latent (B,C,L), continuous V-prediction (sigma 0.03..500), seconds embedders"),
    FamilySpec("ace_step", "ACEStep", "ACEStep", "flow", (8, 16, 32),
               "music latent (B,8,16,L), lyric token conditioning through the conformer encoder, flow shift 3"),
]}

# FamilySpec.sampling -> (prediction class, sigma-schedule class) in comfy.model_sampling; the model's
# model_sampling object is an instance of both (comfy.model_base.model_sampling mixes them).
SAMPLING_CLASSES: dict[str, tuple[str, str]] = {
    "eps": ("EPS", "ModelSamplingDiscrete"),
    "v": ("V_PREDICTION", "ModelSamplingDiscrete"),
    "flow": ("CONST", "ModelSamplingDiscreteFlow"),
    "flow_flux": ("CONST", "ModelSamplingFlux"),
    "edm": ("EDM", "ModelSamplingContinuousEDM"),
    "v_continuous": ("V_PREDICTION", "ModelSamplingContinuousV"),
}

# Families asked for that cannot be built with the recipe above, with the exact reason.
NOT_BUILDABLE: dict[str, str] = {}


@dataclass
class BuiltFamily:
    spec: FamilySpec
    model: "comfy.model_patcher.ModelPatcher"  # noqa: F821
    positive: list           # ComfyUI CONDITIONING: [[cond_tensor, {extra keys e.g. pooled_output, guidance}]]
    negative: list
    noise_mask: torch.Tensor | None = None   # the latent noise mask an image-to-video node would set (LTXV)
    config: object = field(default=None, repr=False)   # the comfy.supported_models config instance

    def latent(self, batch: int = 2, seed: int | None = None) -> torch.Tensor:
        """Zeros (an empty latent) if ``seed`` is None, else seeded standard normal; float32, (batch, *latent_shape)."""
        shape = (batch, *self.spec.latent_shape)
        if seed is None:
            return torch.zeros(shape, dtype=torch.float32)
        return torch.randn(shape, dtype=torch.float32, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------
# Recipes: one function per family returning the shrunken unet_config, the state dict get_model sees, the
# conditioning and any buffer ComfyUI leaves for the checkpoint to fill.

@dataclass
class _Parts:
    unet_config: dict
    positive: list
    negative: list
    state_dict: dict = field(default_factory=dict)
    fill_buffers: object = None          # callable(model) for buffers a checkpoint would supply
    noise_mask: torch.Tensor | None = None


def _declared(params_class, **candidates):
    """The ``candidates`` that the installed ComfyUI's parameter dataclass (e.g. FluxParams) declares."""
    names = {f.name for f in dataclasses.fields(params_class)}
    return {k: v for k, v in candidates.items() if k in names}


def _text(gen, tokens, dim):
    return torch.randn((1, tokens, dim), generator=gen)


def _pair(gen, tokens, dim, **extra_fn):
    """Positive and negative CONDITIONING with independent random token embeddings and extras."""
    out = []
    for _ in range(2):
        extras = {k: (fn(gen) if callable(fn) else fn) for k, fn in extra_fn.items()}
        out.append([[_text(gen, tokens, dim), extras]])
    return out[0], out[1]


def _pooled(dim):
    return lambda gen: torch.randn((1, dim), generator=gen)


def _sd15(gen):
    cfg = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
               adm_in_channels=None, in_channels=4, model_channels=32, num_res_blocks=[1, 1],
               transformer_depth=[0, 1], channel_mult=[1, 2], transformer_depth_middle=1,
               use_linear_in_transformer=False, context_dim=768, transformer_depth_output=[0, 0, 1, 1],
               use_temporal_attention=False, use_temporal_resblock=False)
    pos, neg = _pair(gen, 8, 768)
    return _Parts(cfg, pos, neg)


def _sd21v(gen):
    # SD20's unet_extra_config fixes 64 channels per head, so every level with attention has at least 64 channels.
    cfg = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
               adm_in_channels=None, in_channels=4, model_channels=64, num_res_blocks=[1, 1],
               transformer_depth=[1, 1], channel_mult=[1, 1], transformer_depth_middle=1,
               use_linear_in_transformer=True, context_dim=1024, transformer_depth_output=[1, 1, 1, 1],
               use_temporal_attention=False, use_temporal_resblock=False)
    # SD20.model_type tells a 768-v checkpoint by the spread of this last-block norm bias (std > 0.09); the state
    # dict handed to get_model carries such a tensor, as the real checkpoint does.
    sd = {"output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.randn((1280,), generator=gen) * 0.5}
    pos, neg = _pair(gen, 8, 1024)
    return _Parts(cfg, pos, neg, state_dict=sd)


def _sdxl(gen):
    cfg = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
               num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=64,
               num_res_blocks=[1, 1], transformer_depth=[0, 1], channel_mult=[1, 1], transformer_depth_middle=1,
               use_linear_in_transformer=True, context_dim=2048, transformer_depth_output=[0, 0, 1, 1],
               use_temporal_attention=False, use_temporal_resblock=False)
    # SDXL.encode_adm: pooled CLIP-G (1280) + six 256-d size embeddings = adm_in_channels 2816.
    pos, neg = _pair(gen, 8, 2048, pooled_output=_pooled(1280), width=128, height=128)
    return _Parts(cfg, pos, neg)


def _sd3(gen):
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    depth, grid = 2, 8
    hidden = 64 * depth  # MMDiT fixes 64 channels per head and depth heads
    cfg = dict(in_channels=16, out_channels=16, patch_size=2, depth=depth, input_size=None, adm_in_channels=2048,
               context_embedder_config={"target": "torch.nn.Linear",
                                        "params": {"in_features": 4096, "out_features": hidden}},
               num_patches=grid * grid, pos_embed_max_size=grid, pos_embed_scaling_factor=None,
               x_block_self_attn_layers=[])

    def fill(model):
        # SD3 checkpoints carry the fixed 2-D sin-cos table over the pos_embed_max_size grid in this buffer.
        table = torch.as_tensor(mmdit.get_2d_sincos_pos_embed(hidden, grid), dtype=torch.float32)
        buf = model.diffusion_model.pos_embed
        buf.copy_(table.reshape(buf.shape).to(buf.dtype))

    pos, neg = _pair(gen, 8, 4096, pooled_output=_pooled(2048))
    return _Parts(cfg, pos, neg, fill_buffers=fill)


def _flux(gen):
    import comfy.ldm.flux.model as flux
    cfg = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
               hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
               theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
    cfg.update(_declared(flux.FluxParams, txt_ids_dims=[]))
    pos, neg = _pair(gen, 8, 4096, pooled_output=_pooled(768), guidance=3.5)
    return _Parts(cfg, pos, neg)


def _chroma(gen):
    import comfy.ldm.chroma.model as chroma
    cfg = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=4096, hidden_size=64,
               mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000,
               patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=32, n_layers=1)
    cfg.update(_declared(chroma.ChromaParams, txt_ids_dims=[], vec_in_dim=None))
    # Chroma's text encoder (T5-XXL, pixart_t5) yields no pooled vector: CLIPTextEncode stores pooled_output None.
    pos, neg = _pair(gen, 8, 4096, pooled_output=None)
    return _Parts(cfg, pos, neg)


def _qwen_image(gen):
    cfg = dict(image_model="qwen_image", in_channels=64, out_channels=16, num_layers=1, attention_head_dim=32,
               num_attention_heads=2, joint_attention_dim=3584, axes_dims_rope=(8, 12, 12), patch_size=2)
    pos, neg = _pair(gen, 8, 3584)
    return _Parts(cfg, pos, neg)


def _wan21(gen):
    cfg = dict(image_model="wan2.1", model_type="t2v", dim=64, out_dim=16, num_heads=2, ffn_dim=128,
               num_layers=1, patch_size=(1, 2, 2), freq_dim=256, window_size=(-1, -1), qk_norm=True,
               cross_attn_norm=True, eps=1e-6, in_dim=16, text_dim=4096)
    pos, neg = _pair(gen, 8, 4096)
    return _Parts(cfg, pos, neg)


def _hunyuan_video(gen):
    import comfy.ldm.hunyuan_video.model as hv
    cfg = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2], vec_in_dim=768,
               axes_dim=[8, 12, 12], meanflow=False, context_in_dim=4096, hidden_size=64, mlp_ratio=4.0,
               num_heads=2, depth=1, depth_single_blocks=1, theta=256, qkv_bias=True, byt5=False,
               guidance_embed=True, use_cond_type_embedding=False, vision_in_dim=None)
    cfg.update(_declared(hv.HunyuanVideoParams, meanflow_sum=False))
    pos, neg = _pair(gen, 8, 4096, pooled_output=_pooled(768), guidance=6.0)
    return _Parts(cfg, pos, neg)


def _ltxv(gen):
    heads, head_dim = 2, 32
    cfg = dict(image_model="ltxv", in_channels=128, num_layers=1, attention_head_dim=head_dim,
               num_attention_heads=heads, cross_attention_dim=heads * head_dim, caption_channels=4096)
    # LTXVImgToVideo's noise mask: 0 on the conditioning (first) latent frame, 1 elsewhere. As "concat_mask" in the
    # conditioning, LTXV.extra_conds turns it into the denoise_mask that process_timestep expands to one timestep
    # per token on every call.
    frames, h, w = FAMILIES["ltxv"].latent_shape[1:]
    mask = torch.ones((1, 1, frames, h, w))
    mask[:, :, 0] = 0.0
    # The T5-XXL encoder of LTXV (genmo.T5XXLModel) returns an integer attention mask; two padding tokens here.
    tokens = 8
    attention_mask = torch.ones((1, tokens), dtype=torch.long)
    attention_mask[:, -2:] = 0
    pos, neg = _pair(gen, tokens, 4096, attention_mask=attention_mask, concat_mask=mask, frame_rate=25)
    return _Parts(cfg, pos, neg, noise_mask=mask)


def _cosmos(gen):
    cfg = dict(image_model="cosmos", max_img_h=16, max_img_w=16, max_frames=8, in_channels=16, out_channels=16,
               patch_spatial=2, patch_temporal=1, model_channels=64, block_config="FA-CA-MLP",
               concat_padding_mask=True, pos_emb_cls="rope3d", pos_emb_learnable=False,
               pos_emb_interpolation="crop", block_x_format="THWBD", affline_emb_norm=True, use_adaln_lora=True,
               adaln_lora_dim=16, num_blocks=1, num_heads=2, extra_per_block_abs_pos_emb=True,
               rope_h_extrapolation_ratio=1.0, rope_w_extrapolation_ratio=1.0, rope_t_extrapolation_ratio=2.0,
               extra_per_block_abs_pos_emb_type="learnable", crossattn_emb_channels=1024)
    pos, neg = _pair(gen, 8, 1024, frame_rate=24)
    return _Parts(cfg, pos, neg)


def _stable_audio(gen):
    import comfy.ldm.audio.embedders as embedders
    # Stable Audio Open 1.0 cross-attends the 768-d T5 tokens unprojected (project_cond_tokens False); its
    # Attention then has 768/dim_heads key-value heads, which must divide the embed_dim/dim_heads query heads, so
    # that layout needs embed_dim >= 768. The tiny model projects the tokens to its 64-d width instead.
    cfg = dict(audio_model="dit1.0", io_channels=64, embed_dim=64, depth=1, num_heads=2, cond_token_dim=768,
               global_cond_dim=1536, project_cond_tokens=True, project_global_cond=True)
    # StableAudio.get_model loads the seconds_start / seconds_total NumberConditioners (768-d, hard-wired in
    # StableAudio1) from the checkpoint; the state dict carries a freshly built pair, whose values _randomize then
    # replaces with the seeded ones like every other parameter.
    sd = {}
    for name in ("seconds_start", "seconds_total"):
        for k, v in embedders.NumberConditioner(768, min_val=0, max_val=512).state_dict().items():
            sd[f"conditioner.conditioners.{name}.{k}"] = v

    def fill(model):
        # RotaryEmbedding allocates inv_freq empty for the checkpoint to fill; the checkpoint holds the standard
        # RoPE frequencies 1 / 10000^(2i/dim) (the formula commented beside that buffer in comfy/ldm/audio/dit.py).
        buf = model.diffusion_model.transformer.rotary_pos_emb.inv_freq
        dim = 2 * buf.numel()
        buf.copy_((1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))).to(buf.dtype))

    pos, neg = _pair(gen, 8, 768, seconds_start=0, seconds_total=1)
    return _Parts(cfg, pos, neg, state_dict=sd, fill_buffers=fill)


def _ace_step(gen):
    vocab = 64
    cfg = dict(audio_model="ace", attention_head_dim=32, in_channels=8, max_height=16, max_position=32768,
               max_width=64, mlp_ratio=2.5, num_attention_heads=2, num_layers=1, out_channels=8,
               patch_size=[16, 1], rope_theta=1000000.0, speaker_embedding_dim=512, text_embedding_dim=768,
               ssl_encoder_depths=[1, 1], ssl_latent_dims=[1024, 768], ssl_names=["mert", "m-hubert"],
               lyric_encoder_vocab_size=vocab, lyric_hidden_size=1024)

    def lyrics(g):
        return torch.randint(0, vocab, (1, 1), generator=g)

    pos, neg = _pair(gen, 8, 768, conditioning_lyrics=lyrics)
    return _Parts(cfg, pos, neg)


_RECIPES = {
    "sd15": _sd15, "sd21v": _sd21v, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "chroma": _chroma,
    "qwen_image": _qwen_image, "wan21": _wan21, "hunyuan_video": _hunyuan_video, "ltxv": _ltxv,
    "cosmos": _cosmos, "stable_audio": _stable_audio, "ace_step": _ace_step,
}

# ----------------------------------------------------------------------------------------------------------------

_NORM_TYPES = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)


def _randomize(model: torch.nn.Module, gen: torch.Generator):
    """Seeded random parameters: weights N(0, 1/fan_in), norm gains 1 + N(0, 0.02²), other vectors N(0, 0.02²).

    Values are drawn in float32 in ``named_parameters`` order and then cast, so the float32, bfloat16 and float16
    builds of one seed are the same network up to rounding.
    """
    norm_params = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()
        if is_norm:
            for p in module.parameters(recurse=False):
                norm_params.add(id(p))
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            fan_in = p[0].numel()
            value = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
        elif id(p) in norm_params or name.endswith((".scale", "norm.weight")):
            value = 1.0 + 0.02 * torch.randn(p.shape, generator=gen)
        else:
            value = 0.02 * torch.randn(p.shape, generator=gen)
        p.copy_(value.to(p.dtype))


_CACHE: dict = {}


def _ensure_comfy():
    """Boot ComfyUI in this process (benchmarks.comfy_inprocess.boot, idempotent) unless it already runs here,
    as when a ComfyUI server loads this module from a test custom node."""
    if "comfy.model_management" in sys.modules and "nodes" in sys.modules:
        return
    from benchmarks.comfy_inprocess import boot
    boot()


def _build(key: str, dtype: torch.dtype, seed: int, compute_in_dtype: bool) -> BuiltFamily:
    _ensure_comfy()
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    spec = FAMILIES[key]
    gen = torch.Generator().manual_seed(seed)
    # Some constructors draw from the global generator (e.g. Cosmos' Fourier features); fork it so the build is
    # reproducible and the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        parts = _RECIPES[key](torch.Generator().manual_seed(seed + 1))
        config = getattr(comfy.supported_models, spec.config_class)(parts.unet_config)
        load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
        manual_cast = (None if compute_in_dtype else
                       mm.unet_manual_cast(dtype, load_device, config.supported_inference_dtypes))
        config.set_inference_dtype(dtype, manual_cast)
        model = config.get_model(parts.state_dict, "")
        model = model.to(offload_device)
        _randomize(model, gen)
        if parts.fill_buffers is not None:
            parts.fill_buffers(model)
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise RuntimeError(f"build_family({key!r}): {name} is not finite after initialisation")
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    if type(model).__name__ != spec.model_class:
        raise RuntimeError(f"build_family({key!r}): {spec.config_class}.get_model built {type(model).__name__}, "
                           f"expected {spec.model_class}")
    return BuiltFamily(spec, patcher, parts.positive, parts.negative, parts.noise_mask, config)


def _copy_conditioning(cond):
    return [[c[0], dict(c[1])] for c in cond]


def build_family(key: str, dtype: torch.dtype = torch.float32, seed: int = 0,
                 compute_in_dtype: bool = False) -> BuiltFamily:
    """The tiny ``key`` model (see FAMILIES) with weights in ``dtype``, seeded by ``seed``.

    ``compute_in_dtype``: no manual cast — the layers compute in ``dtype`` as they do on a GPU that supports it
    (ComfyUI's loader picks a float32 manual cast for half-precision weights on the CPU).
    Models are cached per (key, dtype, seed, compute_in_dtype); every call returns a fresh ``ModelPatcher.clone()`` (shared weights,
    own model_options) and fresh conditioning lists, so callers may patch them as ComfyUI nodes do.
    """
    if key not in FAMILIES:
        raise KeyError(f"build_family: unknown family {key!r}; known: {sorted(FAMILIES)}"
                       + (f"; not buildable: {NOT_BUILDABLE[key]}" if key in NOT_BUILDABLE else ""))
    cache_key = (key, dtype, seed, compute_in_dtype)
    if cache_key not in _CACHE:
        _CACHE[cache_key] = _build(key, dtype, seed, compute_in_dtype)
    base = _CACHE[cache_key]
    return BuiltFamily(base.spec, base.model.clone(), _copy_conditioning(base.positive),
                       _copy_conditioning(base.negative), base.noise_mask, base.config)


def _measure(keys=None, steps: int = 10, repeats: int = 3):
    """Per family and dtype: build seconds, milliseconds per model call, diffusion-model parameter count.

    One call is one step of ComfyUI's euler at CFG 2 on a batch of 2 (cond and uncond in one batch of 4), timed as
    the median over ``repeats`` runs of ``steps`` steps after a warm-up run.
    """
    import statistics
    import time

    _ensure_comfy()
    import comfy.sample

    rows = []
    for key in keys or FAMILIES:
        row = {"family": key}
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
            t = time.perf_counter()
            fam = build_family(key, dtype)
            built = time.perf_counter() - t
            latent = fam.latent(2)
            noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
            times = []
            with torch.inference_mode():
                for i in range(repeats + 1):
                    t = time.perf_counter()
                    comfy.sample.sample(fam.model, noise, steps, 2.0, "euler", "simple", fam.positive, fam.negative,
                                        latent, disable_pbar=True, seed=0)
                    if i:
                        times.append((time.perf_counter() - t) / steps)
            row[name] = (built, 1000 * statistics.median(times))
        row["params"] = sum(p.numel() for p in fam.model.model.diffusion_model.parameters())
        rows.append(row)
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("| family | params | float32 build s / ms per call | bfloat16 | float16 |")
    print("|---|---:|---:|---:|---:|")
    for r in _measure(sys.argv[1:] or None):
        cells = " | ".join(f"{r[d][0]:.2f} / {r[d][1]:.1f}" for d in ("float32", "bfloat16", "float16"))
        print(f"| {r['family']} | {r['params']:,} | {cells} |")
