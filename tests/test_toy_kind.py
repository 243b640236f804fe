"""A backend kind that lives outside ``backends/`` and ``gateway/``: declared here, in the test suite, and
served end to end (manifest validation and its errors, memory and demand, lazy load, balancing over its
replicas, plain and streamed answers through the OpenAI SDK, the admin API) without a change to the gateway.
This is what ``backends.kinds`` promises: a kind is one package with a ``kind.py``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from backends.base import Backend, OpenAIRequest, ReplicaInfo, UpstreamResponse
from backends.builtin import builtin_kinds
from backends.demand import Option, Unit, on_host
from backends.kinds import Hosts, Kinds, MakeBackends, Model
from gateway.config.loading import load_directory
from tests.conftest import RunningGateway

MiB = 2**20


class ToySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["toy"]
    gateway_validates: ClassVar[bool] = False
    greeting: str = Field(min_length=1)
    replicas: int = Field(2, ge=1)
    memory_mib: int = Field(10, ge=1)


class ToyReplica:
    """Answers every chat with its greeting and its own label, as an OpenAI server would."""

    def __init__(self, greeting: str, label: str) -> None:
        self.greeting = greeting
        self.label = label
        self.started = False

    @property
    def capacity(self) -> int:
        return 1

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def health(self) -> bool:
        return self.started

    def describe(self) -> ReplicaInfo:
        return ReplicaInfo(url=f"toy://{self.label}")

    async def forward(self, request: OpenAIRequest) -> UpstreamResponse:
        text = f"{self.greeting} from {self.label}"
        base = {"id": "toy-1", "created": int(time.time()), "model": request.body["model"]}
        finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def body() -> AsyncIterator[bytes]:
            if request.stream:
                for word in text.split(" "):
                    delta = {
                        "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]
                    }
                    chunk = {**base, "object": "chat.completion.chunk", **delta}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                yield b"data: [DONE]\n\n"
            else:
                message = {"role": "assistant", "content": text}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
                answer = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
                yield json.dumps(answer).encode()
            finished.set_result(True)

        kind = "text/event-stream" if request.stream else "application/json"
        return UpstreamResponse(200, {"content-type": kind}, body(), lambda: None, finished)


class ToyKind:
    name = "toy"
    spec: Any = ToySpec
    tags: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.made: list[ToyReplica] = []

    def check(self, spec: ToySpec, memory: int | None) -> None:
        if memory is not None:
            raise ValueError("a toy knows its memory: give memory_mib instead")

    def estimate(self, spec: ToySpec) -> tuple[int, str]:
        return spec.replicas * spec.memory_mib * MiB, "toy: memory_mib per replica"

    def demand(self, spec: ToySpec, total: int, hosts: Hosts) -> list[Unit]:
        return on_host(total)

    def factory(self, model: Model, spec: ToySpec, hosts: Hosts) -> MakeBackends:
        def make(_: Sequence[Option]) -> list[Backend]:
            replicas = [ToyReplica(spec.greeting, f"{model.name}-{i}") for i in range(spec.replicas)]
            self.made += replicas
            return list[Backend](replicas)

        return make


def toy_manifest(name: str, **backend: Any) -> dict[str, Any]:
    return {
        "name": name,
        "aliases": [f"{name}-alias"],
        "backend": {"kind": "toy", "greeting": "hello", **backend},
    }


@pytest.fixture
def kinds() -> tuple[Kinds, ToyKind]:
    toy = ToyKind()
    return builtin_kinds().with_kind(toy), toy


def test_a_toy_kind_is_served_end_to_end(
    serve: Callable[..., RunningGateway], kinds: tuple[Kinds, ToyKind], model_files: dict[str, Path]
) -> None:
    registry, toy = kinds
    gw = serve(
        [
            toy_manifest("toy-model", greeting="bonjour", replicas=2, memory_mib=30),
            {
                "name": "next-door",
                "backend": {"kind": "llama_cpp", "model": str(model_files["a"]), "n_ctx": 256},
            },
        ],
        kinds=registry,
    )
    assert gw.model_state("toy-model")["state"] == "unloaded"  # lazy, like every kind
    client = gw.client()

    answers = {
        client.chat.completions.create(model="toy-model-alias", messages=[{"role": "user", "content": "hi"}])
        .choices[0]
        .message.content
        for _ in range(8)
    }
    assert {a.split(" from ")[0] for a in answers if a} == {"bonjour"}
    assert answers == {"bonjour from toy-model-0", "bonjour from toy-model-1"}  # balanced over both replicas

    stream = client.chat.completions.create(
        model="toy-model", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.strip().startswith("bonjour from toy-model-")

    state = gw.model_state("toy-model")
    assert state["state"] == "ready"
    assert state["kind"] == "toy"
    assert state["memory_by_device"] == {"host": 2 * 30 * MiB}  # its own estimate, on the device it asked for
    assert [r["url"] for r in state["replicas"]] == ["toy://toy-model-0", "toy://toy-model-1"]
    assert len(toy.made) == 2 and all(r.started for r in toy.made)


def test_a_toy_manifest_is_validated_by_its_own_spec(tmp_path: Path, kinds: tuple[Kinds, ToyKind]) -> None:
    registry, _ = kinds
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(toy_manifest("bad", greeting="")))
    (tmp_path / "rule.yaml").write_text(yaml.safe_dump({**toy_manifest("rule"), "memory": "1GiB"}))
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(toy_manifest("good", replicas=3)))

    result = load_directory(tmp_path, registry)
    assert [m.manifest.name for m in result.models] == ["good"]
    problems = {p.file.name: p for p in result.problems}
    assert problems["bad.yaml"].field == "backend.greeting"  # the kind's tag is not shown as a field
    assert "at least 1 character" in problems["bad.yaml"].reason
    assert "give memory_mib instead" in problems["rule.yaml"].reason

    # Without the toy kind in the registry, the same manifest names the kinds there are.
    unknown = load_directory(tmp_path).problems
    assert any("'toy'" in p.reason and "llama_cpp" in p.reason for p in unknown)
