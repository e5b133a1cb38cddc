"""ComfyUI adapters of FlowScope: V3 nodes (``comfy_api.latest``) that call the pure-torch core in samplers/."""
from __future__ import annotations

from .comfy_io import ComfyExtension, io
from . import demo_nodes


class FlowScopeExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*demo_nodes.NODES]


async def comfy_entrypoint() -> FlowScopeExtension:
    return FlowScopeExtension()
