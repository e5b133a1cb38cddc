"""Start, drive and stop a real ComfyUI server on 127.0.0.1 with only this pack enabled.

Used by the integration tests, the browser tests and ``scripts/run_demo.py``. The ComfyUI install is the one
``scripts/provision.sh`` made under ``.comfyui/`` unless ``COMFYUI_DIR`` points at another one.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACK_FOLDER = "ComfyUI-FlowScope"
IMPORT_FAILURE_MARKERS = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint")


def comfyui_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("COMFYUI_DIR") or ROOT / ".comfyui" / "ComfyUI")
    if not (path / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI at {path}: run scripts/provision.sh or set COMFYUI_DIR")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PromptFailed(RuntimeError):
    def __init__(self, message, history=None):
        super().__init__(message)
        self.history = history


class ComfyServer:
    def __init__(self, base_dir: pathlib.Path | None = None, extra_env: dict | None = None,
                 extra_args: list[str] | None = None, extra_custom_nodes: dict[str, pathlib.Path] | None = None,
                 python: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._own_base = base_dir is None
        self.base_dir = pathlib.Path(base_dir or tempfile.mkdtemp(prefix="flowscope-comfy-"))
        self.output_dir = self.base_dir / "output"
        self.log_path = self.base_dir / "server.log"
        self.extra_env = extra_env or {}
        self.extra_args = extra_args or []
        self.extra_custom_nodes = extra_custom_nodes or {}  # folder name → path, loaded beside the pack
        self.python = python or sys.executable  # the interpreter that runs ComfyUI's main.py
        self.process: subprocess.Popen | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> "ComfyServer":
        for sub in ("custom_nodes", "output", "input", "user", "models", "temp"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        for folder, target in {PACK_FOLDER: ROOT, **self.extra_custom_nodes}.items():
            link = self.base_dir / "custom_nodes" / folder
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        command = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(self.base_dir),
                   "--database-url", "sqlite:///:memory:", "--disable-all-custom-nodes",
                   "--whitelist-custom-nodes", PACK_FOLDER, *self.extra_custom_nodes, *self.extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=comfyui_dir(), stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} at start-up:\n{self.log()}")
            try:
                self.get("/object_info/FlowScopeDemoModelLoader", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        else:
            self.stop()
            raise RuntimeError(f"ComfyUI did not become ready in {timeout} s:\n{self.log()}")
        failures = [line for line in self.log().splitlines()
                    if PACK_FOLDER in line and any(m in line for m in IMPORT_FAILURE_MARKERS)]
        if failures or "FlowScopeDemoModelLoader" not in self.get("/object_info/FlowScopeDemoModelLoader"):
            log = self.log()
            self.stop()
            raise RuntimeError(f"the FlowScope pack failed to import:\n{log}")
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()
        self.process = None

    def cleanup(self):
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- HTTP -----------------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def post(self, path: str, payload, timeout: float = 30):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
                return response.status, (json.loads(body) if body else None)
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body)
            except json.JSONDecodeError:
                return error.code, body.decode(errors="replace")

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        if status != 200:
            raise PromptFailed(f"prompt rejected with HTTP {status}: {json.dumps(body)[:4000]}", body)
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if history and prompt_id in history and history[prompt_id].get("status", {}).get("completed") \
                    is not None and (history[prompt_id]["status"]["completed"]
                                     or history[prompt_id]["status"].get("status_str") == "error"):
                return history[prompt_id]
            if not self.alive():
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log()[-5000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Queue a prompt, wait for it and raise PromptFailed (with the error messages) unless it succeeded."""
        history = self.wait(self.queue(prompt), timeout)
        if history["status"].get("status_str") != "success":
            raise PromptFailed(f"prompt failed: {json.dumps(error_messages(history))[:4000]}", history)
        return history

    def output_images(self, history: dict, node_id: str):
        from PIL import Image

        images = []
        for entry in history["outputs"].get(node_id, {}).get("images", []):
            path = self.output_dir / entry.get("subfolder", "") / entry["filename"]
            with Image.open(path) as image:
                images.append(image.convert("RGB").copy())
        return images


    def output_latents(self, history: dict, node_id: str):
        """Tensors written by a SaveLatent node."""
        from safetensors.torch import load_file

        return [load_file(str(self.output_dir / entry.get("subfolder", "") / entry["filename"]))["latent_tensor"]
                for entry in history["outputs"].get(node_id, {}).get("latents", [])]


def error_messages(history: dict) -> list[dict]:
    return [message[1] for message in history.get("status", {}).get("messages", [])
            if message[0] == "execution_error"]
