"""Graph-editor (UI-format) workflows ↔ API-format prompts, using a server's /object_info for widget order.

``build_ui_workflow`` writes workflows that load in the graph editor (the example_workflows/ files are made by
it); ``ui_to_api`` turns a UI workflow into what ``POST /prompt`` takes, as the frontend's graphToPrompt does
for plain graphs (no groups/subgraphs, muted nodes dropped).
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _input_specs(info: dict):
    """(name, spec) of every input in the order the node declares them (required, then optional)."""
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            yield name, spec


def _is_widget(spec) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def _has_control_widget(spec) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(options.get("control_after_generate"))


def _type_name(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def build_ui_workflow(nodes: list[dict], object_info: dict, extra: dict | None = None) -> dict:
    """nodes: [{"id", "type", "pos", "widgets": {name: value}, "links": {input: (from_id, slot)}, "title"?}]."""
    by_id = {node["id"]: node for node in nodes}
    links, ui_nodes = [], []
    outgoing: dict[tuple[int, int], list[int]] = {}
    for node in nodes:
        info = object_info[node["type"]]
        inputs, widgets_values = [], []
        for name, spec in _input_specs(info):
            link_id = None
            if name in node.get("links", {}):
                from_id, slot = node["links"][name]
                link_id = len(links) + 1
                links.append([link_id, from_id, slot, node["id"], len(inputs),
                              object_info[by_id[from_id]["type"]]["output"][slot]])
                outgoing.setdefault((from_id, slot), []).append(link_id)
            if _is_widget(spec):
                value = node.get("widgets", {}).get(name, (spec[1] if len(spec) > 1 else {}).get("default"))
                if value is None and isinstance(spec[0], list):
                    value = spec[0][0]
                widgets_values.append(value)
                if _has_control_widget(spec):
                    widgets_values.append("fixed")
                if link_id is not None:
                    inputs.append({"name": name, "type": _type_name(spec), "link": link_id,
                                   "widget": {"name": name}})
            else:
                inputs.append({"name": name, "type": _type_name(spec), "link": link_id})
        ui_nodes.append({"id": node["id"], "type": node["type"], "pos": node["pos"],
                         "size": node.get("size", [300, 120]), "flags": {}, "order": len(ui_nodes), "mode": 0,
                         "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": node["type"]},
                         "widgets_values": widgets_values, **({"title": node["title"]} if "title" in node else {})})
    for ui_node in ui_nodes:
        info = object_info[ui_node["type"]]
        for slot, (kind, name) in enumerate(zip(info["output"], info.get("output_name", info["output"]))):
            ui_node["outputs"].append({"name": name, "type": kind, "slot_index": slot,
                                       "links": outgoing.get((ui_node["id"], slot), [])})
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": extra or {}, "version": 0.4}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue  # muted (2) / bypassed (4) nodes are not executed
        if node["type"] not in object_info:
            raise KeyError(f"workflow node {node['id']} has unknown type {node['type']!r}")
        info = object_info[node["type"]]
        linked = {entry["name"]: links[entry["link"]] for entry in node.get("inputs", [])
                  if entry.get("link") is not None}
        values = iter(node.get("widgets_values", []))
        inputs = {}
        for name, spec in _input_specs(info):
            if _is_widget(spec):
                # a workflow saved before the node gained a widget lacks its value: the editor keeps the default
                value = next(values, (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}).get("default"))
                if _has_control_widget(spec):
                    next(values, None)
                inputs[name] = value
            if name in linked:
                link = linked[name]
                inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
