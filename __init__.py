"""ComfyUI-FlowScope: flow-matching and diffusion samplers, schedulers and trajectory diagnostics.

The ComfyUI imports happen inside ``comfy_entrypoint`` so that the pure-torch parts of the pack (samplers/,
models/) can be imported and unit-tested without ComfyUI.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entrypoint

    return await entrypoint()


__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
