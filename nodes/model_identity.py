"""Which model (and guidance, latent shape) a fit was made for: recorded with a Fitted Solver and checked when a
saved solver is loaded for a MODEL."""
from __future__ import annotations

import hashlib

_FINGERPRINT_TENSORS = 4  # parameters sampled at each end of the state dict
_FINGERPRINT_VALUES = 16  # leading values of each sampled parameter


def model_fingerprint(base_model) -> str:
    """A short hash of a model's parameter names, shapes and dtypes plus the leading values of its first and last
    few parameters: equal for the same weights, different for another checkpoint of the same architecture, and
    cheap (a few hundred values leave the device)."""
    digest = hashlib.sha256(type(base_model).__name__.encode())
    named = list(base_model.state_dict().items())
    for name, tensor in named:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    for _, tensor in named[:_FINGERPRINT_TENSORS] + named[-_FINGERPRINT_TENSORS:]:
        values = tensor.detach().flatten()[:_FINGERPRINT_VALUES].float().cpu()
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


def model_provenance(model_patcher) -> dict:
    """What identifies the model a solver is fitted for: its class, sampling type and weight fingerprint."""
    base_model = model_patcher.model
    return {"model": type(base_model).__name__, "model_sampling": type(base_model.model_sampling).__name__,
            "model_fingerprint": model_fingerprint(base_model)}


def fit_provenance(guider, latent_image: dict) -> dict:
    """Provenance of a fit made through ``guider`` on ``latent_image`` (saved with the solver)."""
    cfg = getattr(guider, "cfg", None)
    return {**model_provenance(guider.model_patcher), "cfg": "none" if cfg is None else f"{float(cfg):g}",
            "latent_shape": latent_shape(latent_image["samples"])}


def _parts(samples) -> list:
    """The parts of a multi-part latent (``comfy.nested_tensor.NestedTensor``), or ``[samples]``."""
    return list(samples.unbind()) if getattr(samples, "is_nested", False) else [samples]


def latent_batch(latent_image: dict) -> int:
    """The number of latents in a LATENT (the pilot size of a planning node)."""
    return int(_parts(latent_image["samples"])[0].shape[0])


def latent_shape(samples) -> str:
    """'C×H×W' of one LATENT input (without the batch) as given to the node; multi-part latents list each part,
    joined by '+'."""
    return "+".join("×".join(str(n) for n in part.shape[1:]) for part in _parts(samples))


def model_mismatch(recorded: dict, current: dict) -> str:
    """'' when ``current`` is the model ``recorded`` describes, else what differs."""
    differences = [f"{key} {recorded[key]} (file) vs {current[key]} (this MODEL)" for key in
                   ("model", "model_sampling", "model_fingerprint") if key in recorded and recorded[key] != current[key]]
    if not differences:
        return ""
    return "the solver was fitted for another model: " + "; ".join(differences)
