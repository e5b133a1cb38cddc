"""ComfyUI-FlowScope: flow-matching and diffusion samplers, schedulers and trajectory diagnostics.

The ComfyUI imports happen inside ``comfy_entrypoint`` so that the pure-torch parts of the pack (samplers/,
models/) can be imported and unit-tested without ComfyUI.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .diagnostics.charts import warn_if_matplotlib_missing
    from .nodes import comfy_entrypoint as entrypoint

    warn_if_matplotlib_missing()  # once per start-up: the chart nodes need it (requirements.txt)
    return await entrypoint()


__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
