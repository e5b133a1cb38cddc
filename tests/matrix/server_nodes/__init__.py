"""A test-only ComfyUI custom node that serves the tiny real-architecture families of tests/matrix/families.py as
MODEL, CONDITIONING and LATENT, so that integration tests drive them through the real server's HTTP API. Loaded
only by the test server (``ComfyServer(extra_custom_nodes=...)``); never shipped (tests/ is in .comfyignore)."""
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after ComfyUI's own folders: its top-level `tests` and `nodes` keep precedence

_spec = importlib.util.spec_from_file_location("flowscope_test_families", ROOT / "tests" / "matrix" / "families.py")
families = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = families
_spec.loader.exec_module(families)


class TinyFamilyModel:
    """One family, built with seeded random weights in the requested dtype."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (sorted(families.FAMILIES),),
                             "dtype": (["float32", "bfloat16", "float16"],),
                             "batch_size": ("INT", {"default": 2, "min": 1, "max": 8})}}

    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("model", "positive", "negative", "latent")
    FUNCTION = "load"
    CATEGORY = "FlowScope/tests"

    def load(self, family, dtype, batch_size):
        import torch

        # half precision computes in that dtype, as on a GPU (on the CPU the loader would pick a float32 cast)
        built = families.build_family(family, dtype=getattr(torch, dtype), compute_in_dtype=dtype != "float32")
        return built.model, built.positive, built.negative, {"samples": built.latent(batch_size)}


NODE_CLASS_MAPPINGS = {"FlowScopeTestTinyFamily": TinyFamilyModel}
