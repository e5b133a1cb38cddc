"""A manual install that skipped ``pip install -r requirements.txt``: ComfyUI runs in a Python without matplotlib.

The environment is a real venv (``python -m venv``) whose site-packages holds every package of the test Python
except the files that matplotlib's own install record (``dist-info/RECORD``) lists — what ``pip uninstall
matplotlib`` would remove — so ``import matplotlib`` fails in it exactly as after a plain ``git clone`` into
``custom_nodes`` of a ComfyUI that lacks it. A real ComfyUI server runs the pack in it.
"""
from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys

import pytest

from diagnostics.charts import REQUIREMENTS
from scripts.comfy_server import ComfyServer, error_messages
from tests.integration.prompts import ksampler_prompt, recording_prompt

pytestmark = pytest.mark.integration

WARNING = "[FlowScope] matplotlib is not installed in the Python that runs ComfyUI"


def site_directories() -> list[pathlib.Path]:
    """The site-packages folders on this interpreter's path, in import order (one for a plain venv; two for the
    ComfyUI 0.8.0 overlay venv of scripts/provision_comfy080.sh, whose .pth file adds the test venv's)."""
    return [pathlib.Path(entry) for entry in sys.path
            if entry.endswith("site-packages") and pathlib.Path(entry).is_dir()]


def venv_without(distribution: str, destination: pathlib.Path) -> pathlib.Path:
    """Create a venv at ``destination`` whose site-packages holds the current interpreter's packages (symlinks,
    earlier site folders first, as imports resolve them) minus the top-level files and folders of
    ``distribution``'s install record. Returns the venv's python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(destination)], check=True)
    python = destination / "bin" / "python"
    target = pathlib.Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    owned = {pathlib.PurePath(file).parts[0] for file in importlib.metadata.distribution(distribution).files}
    owned -= {"..", "__pycache__"}  # scripts in bin/ and the shared top-level bytecode folder
    assert owned, f"no installed files recorded for {distribution}"
    sources = site_directories()
    for source in sources:
        for entry in source.iterdir():
            if entry.name in owned or entry.name == "__pycache__" or (target / entry.name).is_symlink():
                continue
            if entry.suffix == ".pth" and {line.strip() for line in entry.read_text().splitlines()
                                           if line.strip()} <= {str(site) for site in sources}:
                continue  # a .pth that only chains in another site folder, whose entries are linked here
            (target / entry.name).symlink_to(entry)
    return python


@pytest.fixture(scope="module")
def server_without_matplotlib(tmp_path_factory):
    python = venv_without("matplotlib", tmp_path_factory.mktemp("venv-without-matplotlib") / "venv")
    probe = subprocess.run([str(python), "-c", "import torch, numpy, PIL\nimport matplotlib"],
                           capture_output=True, text=True)
    assert "No module named 'matplotlib'" in probe.stderr, probe.stderr
    server = ComfyServer(python=str(python))
    server.start()
    yield server
    server.cleanup()


def test_start_up_log_says_once_that_matplotlib_is_missing_and_how_to_install_it(server_without_matplotlib):
    log = server_without_matplotlib.log()
    assert log.count(WARNING) == 1, log
    line = next(line for line in log.splitlines() if WARNING in line)
    assert f'"{server_without_matplotlib.python}" -m pip install -r "{REQUIREMENTS}"' in line, line
    assert REQUIREMENTS.read_text().split() == ["matplotlib"]


def test_chart_node_error_names_the_node_and_the_install_command(server_without_matplotlib):
    prompt = recording_prompt("digits-flow", "fs_heun", steps=6, prefix="no_mpl")
    prompt["21"] = {"class_type": "FlowScopeStraightnessMeter", "inputs": {"trajectory": ["5", 2]}}
    history = server_without_matplotlib.wait(server_without_matplotlib.queue(prompt))
    assert history["status"]["status_str"] == "error"
    errors = error_messages(history)
    assert len(errors) == 1 and errors[0]["node_type"] == "FlowScopeStraightnessMeter", errors
    assert errors[0]["exception_type"].endswith("ModuleNotFoundError"), errors
    message = errors[0]["exception_message"]
    assert message.startswith("FlowScope · Straightness Meter: drawing the chart image needs matplotlib"), message
    assert f'"{server_without_matplotlib.python}" -m pip install -r "{REQUIREMENTS}"' in message, message
    assert server_without_matplotlib.alive()


def test_compare_samplers_error_names_the_install_command(server_without_matplotlib):
    prompt = recording_prompt("digits-flow", "euler", steps=4, prefix="no_mpl_compare")
    prompt["30"] = {"class_type": "FlowScopeCompareSamplers", "inputs": {
        "noise": ["13", 0], "guider": ["12", 0], "latent_image": ["4", 0], "samplers": "euler, fs_heun",
        "steps": "4, 8", "scheduler": "simple", "reference_rtol": 1e-4}}
    history = server_without_matplotlib.wait(server_without_matplotlib.queue(prompt))
    errors = error_messages(history)
    assert [e["node_type"] for e in errors] == ["FlowScopeCompareSamplers"], errors
    assert "FlowScope · Compare Samplers: drawing the chart image needs matplotlib" in errors[0]["exception_message"]


def test_the_rest_of_the_pack_works_without_matplotlib(server_without_matplotlib):
    """Samplers, schedulers, recording and the export need no matplotlib: the pack still loads and runs."""
    history = server_without_matplotlib.run(ksampler_prompt("digits-flow", sampler="fs_heun", scheduler="fs_cosine",
                                                           steps=6, prefix="no_mpl_ksampler"))
    assert len(server_without_matplotlib.output_images(history, "8")) == 2
    prompt = recording_prompt("digits-flow", "fs_rk3", steps=6, prefix="no_mpl_export")
    prompt["23"] = {"class_type": "FlowScopeExportTrajectory", "inputs": {
        "trajectory": ["5", 2], "filename_prefix": "flowscope/no_mpl_export"}}
    server_without_matplotlib.run(prompt)


def test_no_warning_where_matplotlib_is_installed(comfy):
    assert WARNING not in comfy.log()
