"""Running a benchmark script the way a user does (a subprocess from the repository root) and reading its result
files: shared by the benchmark smoke tests."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_benchmark(script: str, *args, timeout: int = 900, command=None) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> args…`` (or ``command`` + args) from the repository root; its output is
    returned, not checked (callers assert on returncode with the output in the message)."""
    argv = (command or [sys.executable, f"benchmarks/{script}"]) + [str(arg) for arg in args]
    return subprocess.run(argv, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)


def run_ok(script: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """:func:`run_benchmark`, asserting it succeeded (the tail of its output in the failure message)."""
    completed = run_benchmark(script, *args, **kwargs)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    return completed


def results(path) -> dict:
    """The JSON result file a benchmark wrote."""
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
