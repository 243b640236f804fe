"""Memory estimate vs. GPU memory (NVML) of llama-server with every layer offloaded.

Each case starts llama-server with the flags the gateway gives it (``backends/llama_server/replica.py``:
``-c``, ``-b``, ``-np``, ``-ngl``, ``-fa``, ``--metrics``, ``--cont-batching``) for a ``kind: llama_server``
manifest with ``n_gpu_layers: -1``, waits for ``/health``, then sends one request per slot, all at once, each
with a prompt that fills its slot's context (the worst case a budget must cover), and reads the server
process's GPU memory from NVML (``nvmlDeviceGetComputeRunningProcesses``) every 20 ms, keeping the peak. That
peak is compared with the ``llama_server`` kind's estimate (``backends.gguf.memory``) for the same manifest.
The buffer sizes llama.cpp logs (weights, KV cache, compute) are shown beside it, so that the rest (the CUDA
context, the CUDA pool) can be read off. Results are appended to a JSON-lines file, one line per case, so that
an interrupted run resumes where it stopped; the table is printed from that file.

Needs a CUDA build of llama-server, NVML (``nvidia-ml-py``), ``gguf`` and pydantic. The models are the
random-weight llama-architecture files of ``tests/synthetic_gguf.py`` (f16, written on first use). Run on a
lent H100 on 2026-11-22 (results in ``bench/README.md``): llama.cpp's sources (the gateway's pinned version,
less docs, tests, models and non-CUDA backends) and wheels of gguf, pydantic, pydantic-settings and their
pure-Python needs travelled as an ignored folder; then, from the repository root:

    pip install --no-index --no-deps --target /tmp/site WHEELS; export PYTHONPATH=/tmp/site
    cd /tmp/llama && cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
        && cmake --build build -j 16 --target llama-server      # about 5 minutes on 16 cores
    PYTHONUNBUFFERED=1 python3 bench/vram_estimate.py --server /tmp/llama/build/bin/llama-server \
        --models /tmp/models --results /tmp/res/vram.jsonl      # about 1 minute for the 24 cases

``--table-only`` prints the table of an existing results file; ``--generate-only`` writes the models.
``--set validation`` runs other shapes and settings than the default set, from which the estimate's GPU
constants were read (an out-of-sample check; give it its own ``--results`` file).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.gguf.memory import MiB, estimate_llama_cpp, read_gguf_info  # noqa: E402
from backends.llama_server.args import process_args as server_args  # noqa: E402
from backends.llama_server.kind import LLAMA_SERVER  # noqa: E402
from backends.llama_server.spec import LlamaServerBackend  # noqa: E402
from tests.synthetic_gguf import Shape, write_model  # noqa: E402

# ctx_train must reach the largest n_ctx: llama-server caps a slot's context at the training context.
MODELS: dict[str, Shape] = {
    "syn-0.1G": Shape(embd=1024, layers=4, heads=16, kv_heads=8, ff=4096, ctx_train=32768, dtype="f16"),
    "syn-1G": Shape(embd=2048, layers=8, heads=16, kv_heads=8, ff=8192, ctx_train=32768, dtype="f16"),
    "syn-4G": Shape(embd=4096, layers=9, heads=32, kv_heads=8, ff=14336, ctx_train=32768, dtype="f16"),
}
CONTEXTS = (4096, 32768)
PARALLEL = (1, 4)
FLASH = (False, True)

# ``--set validation``: an out-of-sample check of the estimate's constants, which were read off the default
# set. Other head layouts (24 heads of 128, 12 heads of 128 with 2 KV heads), other widths and depths,
# contexts and slot counts (2 and 3: n_ctx / 3 is not a whole number of tokens) that the fit never saw.
VALIDATION_MODELS: dict[str, Shape] = {
    "val-4.8G": Shape(embd=3072, layers=24, heads=24, kv_heads=8, ff=8192, ctx_train=16384, dtype="f16"),
    "val-0.8G": Shape(embd=1536, layers=12, heads=12, kv_heads=2, ff=6144, ctx_train=16384, dtype="f16"),
}
VALIDATION_CASES: list[tuple[str, int, int, bool]] = [  # (model, n_ctx, parallel, flash attention)
    ("val-4.8G", 16384, 2, False),
    ("val-4.8G", 16384, 2, True),
    ("val-4.8G", 8192, 3, False),
    ("val-4.8G", 8192, 3, True),
    ("val-0.8G", 16384, 3, False),
    ("val-0.8G", 16384, 3, True),
    ("val-0.8G", 8192, 2, False),
    ("val-0.8G", 8192, 2, True),
]
SETS: dict[str, tuple[dict[str, Shape], list[tuple[str, int, int, bool]]]] = {
    "default": (
        MODELS,
        [(m, c, p, f) for m in MODELS for c in CONTEXTS for p in PARALLEL for f in FLASH],
    ),
    "validation": (VALIDATION_MODELS, VALIDATION_CASES),
}

LOG_BUFFERS = {
    "weights": re.compile(r"CUDA0 model buffer size =\s*([\d.]+) MiB"),
    "kv": re.compile(r"CUDA0 KV buffer size =\s*([\d.]+) MiB"),
    "compute": re.compile(r"CUDA0 compute buffer size =\s*([\d.]+) MiB"),
    "host_compute": re.compile(r"CUDA_Host compute buffer size =\s*([\d.]+) MiB"),
}
# Not the gateway's: llama.cpp logs its buffer sizes at this verbosity only.
BUFFER_LOG_ARGS = ("-lv", "4")
OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def case_name(model: str, n_ctx: int, parallel: int, flash: bool) -> str:
    return f"{model} ctx {n_ctx} np {parallel} fa {'on' if flash else 'off'}"


class Nvml:
    def __init__(self) -> None:
        import pynvml

        self.nv = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.name = str(pynvml.nvmlDeviceGetName(self.handle))
        self.driver = str(pynvml.nvmlSystemGetDriverVersion())

    def device_used(self) -> int:
        return int(self.nv.nvmlDeviceGetMemoryInfo(self.handle).used)

    def process_used(self, pid: int) -> int | None:
        for p in self.nv.nvmlDeviceGetComputeRunningProcesses(self.handle):
            if p.pid == pid:
                return int(p.usedGpuMemory or 0)
        return None


CONTEXT_CHILD = r"""
import ctypes, ctypes.util, sys, time
for name in (ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13", "libcudart.so.12",
             "/usr/local/cuda/lib64/libcudart.so"):
    try:
        rt = ctypes.CDLL(name)
        break
    except (OSError, TypeError):
        pass
assert rt.cudaFree(None) == 0
print("ready", flush=True)
sys.stdin.read()
"""


def cuda_context_bytes(nvml: Nvml) -> int | None:
    """GPU memory of a process that only created a CUDA context (``cudaFree(0)``), the floor of any case."""
    child = subprocess.Popen(
        [sys.executable, "-c", CONTEXT_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        if child.stdout is None or child.stdout.readline().strip() != "ready":
            return None
        return nvml.process_used(child.pid)
    finally:
        child.communicate("")


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 600) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("llama-server did not become healthy")


def measure(server: Path, nvml: Nvml, spec: LlamaServerBackend, log_path: Path) -> dict[str, Any]:
    before = nvml.device_used()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        command = [str(server), *server_args(spec, port), *BUFFER_LOG_ARGS]
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        wait_healthy(base, proc)
        load_s = time.monotonic() - t0
        idle = nvml.process_used(proc.pid)
        props = http_json(base + "/props")
        n_ctx_slot = int(props.get("default_generation_settings", {}).get("n_ctx") or 0)
        n_ctx_slot = n_ctx_slot or spec.n_ctx // spec.parallel
        token = http_json(base + "/tokenize", {"content": " hello"})["tokens"][0]
        fill = [token] * (n_ctx_slot - 16)

        peak = [idle or 0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                used = nvml.process_used(proc.pid)
                if used is not None:
                    peak[0] = max(peak[0], used)
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        body = {"prompt": fill, "n_predict": 8, "cache_prompt": False}
        t0 = time.monotonic()
        with ThreadPoolExecutor(spec.parallel) as pool:
            replies = list(pool.map(lambda _: http_json(base + "/completion", body), range(spec.parallel)))
        fill_s = time.monotonic() - t0
        after = nvml.process_used(proc.pid)
        device_after = nvml.device_used()
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], after or 0)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Wait until the driver has released the process's memory, so that the next case starts clean.
    deadline = time.monotonic() + 30
    while nvml.process_used(proc.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)

    text = log_path.read_text(errors="replace")
    buffers = {}
    for key, rx in LOG_BUFFERS.items():
        found = rx.findall(text)  # the last one is the serving context's (a fit pass may log earlier ones)
        buffers[key] = float(found[-1]) if found else None
    offloaded = OFFLOADED.findall(text)
    return {
        "device_before": before,
        "device_after": device_after,
        "idle": idle,
        "after": after,
        "peak": peak[0],
        "n_ctx_slot": n_ctx_slot,
        "prompt_tokens": [r.get("timings", {}).get("prompt_n") for r in replies],
        "load_s": round(load_s, 2),
        "fill_s": round(fill_s, 2),
        "buffers_mib": buffers,
        "offloaded": "/".join(offloaded[-1]) if offloaded else None,
    }


def model_path(models: Path, name: str, shape: Shape) -> Path:
    path = models / f"{name}.gguf"
    if not path.exists():
        models.mkdir(parents=True, exist_ok=True)
        write_model(path.with_suffix(".tmp"), shape).rename(path)
    return path


def fmt(n: float | None) -> str:
    return "" if n is None else f"{n:.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| case | estimate MiB | NVML used MiB (peak) | error | llama.cpp weights / KV / compute MiB "
        "| NVML idle MiB | rest MiB |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['case']} | {r['estimate'] / MiB:.0f} | failed: {r['error']} | | | | |")
            continue
        m = r["measured"]
        b = m["buffers_mib"]
        peak = m["peak"] / MiB
        logged = sum(b[k] or 0 for k in ("weights", "kv", "compute"))
        err = (r["estimate"] / MiB - peak) / peak * 100
        out.append(
            f"| {r['case']} | {r['estimate'] / MiB:.0f} | {peak:.0f} | {err:+.1f}% "
            f"| {fmt(b['weights'])} / {fmt(b['kv'])} / {fmt(b['compute'])} "
            f"| {fmt(m['idle'] / MiB if m['idle'] is not None else None)} | {peak - logged:.0f} |"
        )
    return "\n".join(out)


def load(results: Path) -> list[dict[str, Any]]:
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", type=Path, default=Path("llama-server"))
    p.add_argument("--models", type=Path, default=Path("/tmp/models"))
    p.add_argument("--results", type=Path, default=Path("vram_estimate.jsonl"))
    p.add_argument("--only", default="", help="run only the cases whose name contains this")
    p.add_argument(
        "--set", default="default", choices=sorted(SETS), help="the fitted cases, or the out-of-sample ones"
    )
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--table-only", action="store_true")
    a = p.parse_args()

    if a.table_only:
        print(table(load(a.results)))
        return
    shapes, cases = SETS[a.set]
    paths = {name: model_path(a.models, name, shape) for name, shape in shapes.items()}
    if a.generate_only:
        for path in paths.values():
            print(path, path.stat().st_size)
        return

    nvml = Nvml()
    print(f"# {nvml.name}, driver {nvml.driver}", flush=True)
    if not a.only:
        context = cuda_context_bytes(nvml)
        print(f"# a CUDA context alone: {fmt(None if context is None else context / MiB)} MiB", flush=True)
    done = {r["case"] for r in load(a.results)}
    for name, n_ctx, parallel, flash in cases:
        path = paths[name]
        case = case_name(name, n_ctx, parallel, flash)
        if case in done or a.only not in case:
            continue
        spec = LlamaServerBackend(
            kind="llama_server", model=path, n_ctx=n_ctx, parallel=parallel, flash_attn=flash, n_gpu_layers=-1
        )
        estimate, source = LLAMA_SERVER.estimate(spec)
        parts = estimate_llama_cpp(read_gguf_info(path), spec, spec.instances, server_slots=spec.parallel)
        row: dict[str, Any] = {
            "case": case,
            "estimate": estimate,
            "source": source,
            "estimate_parts": {
                "weights": parts.weights,
                "kv": parts.kv_cache,
                "compute": parts.compute,
                "overhead": parts.overhead,
            },
            "device": nvml.name,
        }
        log = a.results.parent / f"{case.replace(' ', '_')}.log"
        try:
            row["measured"] = measure(a.server, nvml, spec, log)
        except Exception as exc:  # a failed case is a row of the table, not the end of the run
            row["error"] = repr(exc)[:200]
        with a.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print(table(load(a.results)))


if __name__ == "__main__":
    main()
