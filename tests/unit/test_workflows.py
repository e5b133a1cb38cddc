"""UI-format workflow → API prompt (scripts/workflows.py) with a hand-written /object_info."""
from scripts.workflows import build_ui_workflow, ui_to_api

OBJECT_INFO = {
    "Source": {"input": {"required": {"seed": ["INT", {"default": 0, "control_after_generate": True}]}},
               "output": ["LATENT"]},
    "Fitter": {"input": {"required": {"latent": ["LATENT"], "mode": [["a", "b"]]},
                         "optional": {"steps": ["INT", {"default": 8}], "history": ["INT", {"default": 2}]}},
               "output": ["SAMPLER"]},
}


def test_widget_values_and_links_become_prompt_inputs():
    workflow = build_ui_workflow([
        {"id": 1, "type": "Source", "pos": [0, 0], "widgets": {"seed": 5}},
        {"id": 2, "type": "Fitter", "pos": [300, 0], "widgets": {"mode": "b", "steps": 4, "history": 0},
         "links": {"latent": (1, 0)}}], OBJECT_INFO)
    assert workflow["nodes"][0]["widgets_values"] == [5, "fixed"]
    assert ui_to_api(workflow, OBJECT_INFO) == {
        "1": {"class_type": "Source", "inputs": {"seed": 5}},
        "2": {"class_type": "Fitter", "inputs": {"latent": ["1", 0], "mode": "b", "steps": 4, "history": 0}}}


def test_a_workflow_saved_before_a_widget_was_added_gets_its_default():
    """As the graph editor loads it: the values it has, positionally, and the new trailing widget's default."""
    workflow = build_ui_workflow([
        {"id": 1, "type": "Source", "pos": [0, 0]},
        {"id": 2, "type": "Fitter", "pos": [300, 0], "widgets": {"mode": "b", "steps": 4},
         "links": {"latent": (1, 0)}}], OBJECT_INFO)
    workflow["nodes"][1]["widgets_values"] = ["b", 4]  # saved when Fitter had no "history" input
    assert ui_to_api(workflow, OBJECT_INFO)["2"]["inputs"] == {"latent": ["1", 0], "mode": "b", "steps": 4,
                                                               "history": 2}
