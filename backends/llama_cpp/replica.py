"""In-process llama.cpp (llama-cpp-python): one ``Llama`` instance per replica, each on its own thread.

llama.cpp releases the GIL while it computes, so instances on separate threads run in parallel, and the event
loop never waits on the engine. An instance serves one request at a time (``capacity`` 1); the gateway's
queue holds the rest, so a new request never interrupts a running stream (unlike llama-cpp-python's own
server).

Tokens cross from the engine thread to the event loop through an asyncio queue fed with
``call_soon_threadsafe``; the response body reads from it as the tokens are made. Closing a response sets
the job's cancel flag, which the engine thread checks after every token. ``finished`` is the job's own
future: it resolves ``False`` only when the engine itself failed, not for a cancelled job or a rejected input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backends.base import OpenAIRequest, ReplicaInfo, UpstreamResponse
from backends.errors import GatewayError, InvalidRequest, ModelUnavailable, UpstreamError, sse_error_event
from backends.llama_cpp.jobs import RUNNERS, Cancelled, Job, check
from backends.llama_cpp.spec import LlamaCppBackend

log = logging.getLogger(__name__)

_POOLING = {"mean": 1, "cls": 2, "last": 3}  # llama.cpp's LLAMA_POOLING_TYPE_* values
_END = object()

SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}
JSON_HEADERS = {"content-type": "application/json"}


def build_llama(spec: LlamaCppBackend, n_threads: int) -> Any:
    """Construct the engine. Blocks for the whole load; call it on the replica's thread."""
    import llama_cpp  # imported here: the import alone costs ~40 MB, and only running models need it

    from backends.llama_cpp.engine import Engine  # llama_cpp.Llama that reports each sampled token (logprobs)

    kwargs: dict[str, Any] = {
        "model_path": str(spec.model),
        "n_ctx": spec.n_ctx,
        "n_batch": spec.n_batch,
        "n_threads": n_threads,
        "n_gpu_layers": spec.n_gpu_layers,
        "flash_attn": spec.flash_attn,
        "seed": spec.seed if spec.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED,
        "verbose": False,
    }
    if spec.embeddings:
        kwargs.update(embedding=True, pooling_type=_POOLING[spec.pooling])
    if spec.chat_format:
        kwargs["chat_format"] = spec.chat_format
    llama = Engine(**kwargs)
    if spec.chat_template is not None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        formatter = Jinja2ChatFormatter(
            template=spec.chat_template.read_text(),
            eos_token=llama.detokenize([llama.token_eos()]).decode(errors="ignore"),
            bos_token=llama.detokenize([llama.token_bos()]).decode(errors="ignore"),
        )
        llama.chat_handler = formatter.to_chat_handler()
    return llama


def allocated_bytes(llama: Any) -> int | None:
    """The memory llama.cpp reports for a loaded instance: its weights plus its context's state size (the KV
    cells in use and the output buffers); None where this llama-cpp-python lacks the calls."""
    import llama_cpp

    try:
        weights = int(llama_cpp.llama_model_size(llama.model))
        state = int(llama_cpp.llama_state_get_size(llama.ctx))
    except (AttributeError, TypeError):
        return None
    return weights + state


def default_threads(spec: LlamaCppBackend) -> int:
    # Threads x instances must not exceed the cores: oversubscribed, aggregate decode drops (ENVIRONMENT.md).
    return spec.n_threads or max(1, (os.cpu_count() or 1) // spec.parallel)


class LlamaCppReplica:
    """One engine instance. See ``backends.base`` for the contract."""

    def __init__(self, spec: LlamaCppBackend, label: str) -> None:
        self._spec = spec
        self._label = label
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{label}")
        self._llama: Any = None
        self._jobs: set[Job] = set()
        self._allocated: int | None = None  # llama.cpp's own count: weights + context state, once loaded
        self.phase: str | None = None  # while starting (backends.base)

    @property
    def capacity(self) -> int:
        return 1

    async def start(self) -> None:
        if self._llama is not None:
            return
        loop = asyncio.get_running_loop()
        self.phase = "loading weights"
        try:
            self._llama = await loop.run_in_executor(
                self._executor, build_llama, self._spec, default_threads(self._spec)
            )
        except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError for bad files
            raise UpstreamError(f"llama.cpp could not load {self._spec.model.name}: {exc}") from exc
        finally:
            self.phase = None
        self._allocated = allocated_bytes(self._llama)

    async def stop(self) -> None:
        for job in list(self._jobs):
            job.cancelled.set()
        if self._llama is None:
            return
        llama, self._llama = self._llama, None
        # Runs after any job still on the thread, which ends within a token now that it is cancelled.
        await asyncio.get_running_loop().run_in_executor(self._executor, _free, llama)
        self._executor.shutdown(wait=False)  # a replica is not restarted: each load makes new ones

    async def health(self) -> bool:
        return self._llama is not None

    def describe(self) -> ReplicaInfo:
        # In this process: no URL, pid or logs of its own. Its KV cache holds one sequence: the running
        # request's tokens over the context (an int read across threads; a stale value is harmless).
        llama = self._llama
        if llama is None:
            return ReplicaInfo(in_process=True)
        used = llama.n_tokens / max(1, llama.n_ctx()) if self._jobs else 0.0
        return ReplicaInfo(kv_cache_usage=min(1.0, used), memory_bytes=self._allocated, in_process=True)

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        llama = self._llama
        if llama is None:
            raise UpstreamError(f"replica {self._label} is not running")
        check(request, self._spec.chat_format, llama.n_vocab())  # what the model can do, or a 400
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def emit(data: bytes) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, data)

        job = Job(request, emit)
        self._jobs.add(job)
        finished = loop.run_in_executor(self._executor, _run, llama, job, queue, loop)
        finished.add_done_callback(lambda _: self._jobs.discard(job))

        try:
            first = await queue.get()
        except BaseException:  # the client left before the first token: stop the job at its next token
            job.cancelled.set()
            raise
        if isinstance(first, GatewayError):
            raise first
        return UpstreamResponse(
            status=200,
            # Not streamed: the first item is the whole JSON body.
            headers=SSE_HEADERS if request.stream else {**JSON_HEADERS, "content-length": str(len(first))},
            body=_body(first, queue, request.stream),
            close=job.cancelled.set,
            finished=finished,
        )


def _run(llama: Any, job: Job, queue: asyncio.Queue[Any], loop: asyncio.AbstractEventLoop) -> bool:
    """The worker-thread side of a request: run it, then post the end marker or the error. Returns whether the
    engine did its part (a cancelled job or a rejected input is not the engine's failure)."""
    outcome: Any = _END
    ok = True
    try:
        if job.cancelled.is_set():  # cancelled while it waited for the thread
            raise Cancelled
        RUNNERS[job.request.endpoint](llama, job)
    except Cancelled:
        outcome = ModelUnavailable("the model was unloaded while generating; retry", retry_after=1)
    except ValueError as exc:  # llama-cpp-python's way of rejecting input (context overflow, bad grammar)
        outcome = InvalidRequest(str(exc))
    except Exception as exc:
        log.exception("engine failure")
        outcome = UpstreamError(f"llama.cpp failed: {exc}")
        ok = False
    with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown): nobody is listening
        loop.call_soon_threadsafe(queue.put_nowait, outcome)
    return ok


async def _body(first: bytes, queue: asyncio.Queue[Any], stream: bool) -> AsyncIterator[bytes]:
    yield first
    while True:
        item = await queue.get()
        if item is _END:
            return
        if isinstance(item, GatewayError):
            if stream:
                yield sse_error_event(item)
            return
        yield item


def _free(llama: Any) -> None:
    llama.close()
