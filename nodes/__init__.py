"""ComfyUI adapters of FlowScope: V3 nodes (``comfy_api.latest``) that call the pure-torch core in samplers/."""
from __future__ import annotations

from .. import samplers as core
from . import demo_nodes, diagnostic_nodes, sampler_nodes, schedule_nodes, solver_file_nodes
from .comfy_io import ComfyExtension, io
from .registration import register_samplers, register_schedulers


class FlowScopeExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*demo_nodes.NODES, *sampler_nodes.NODES, *schedule_nodes.NODES, *solver_file_nodes.NODES,
                *diagnostic_nodes.NODES]


async def comfy_entrypoint() -> FlowScopeExtension:
    register_samplers(core.SAMPLERS)
    register_schedulers(schedule_nodes.DROPDOWN_SCHEDULERS)
    solver_file_nodes.register_solver_folder()
    return FlowScopeExtension()
