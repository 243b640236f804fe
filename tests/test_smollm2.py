"""End to end with the real bundled model: the shipped manifests, SmolLM2-135M-Instruct, the official SDK.

The budget holds one SmolLM2 configuration at a time, so the chat -> embeddings -> chat sequence below loads,
evicts and reloads for real.
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.config.settings import Settings
from tests.conftest import ROOT, SMOLLM2, RunningGateway, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def default_gateway() -> RunningGateway:
    assert SMOLLM2.is_file(), "run `llm-gateway fetch-model` first (README's commands do)"
    settings = Settings(manifests=ROOT / "manifests", port=free_port(), memory_budget=400 * 2**20)
    with RunningGateway(settings) as gw:
        yield gw  # type: ignore[misc]


def test_real_model_chat_stream_embeddings_and_swap(default_gateway: RunningGateway) -> None:
    gw = default_gateway
    client = gw.client()
    assert {"smollm2", "gpt-3.5-turbo", "smollm2-embed", "smollm2-long"} <= {
        m.id for m in client.models.list()
    }
    # README's first command: every shipped model fits the 400 MiB budget on its own
    assert [(m["name"], m["never_fits_reason"]) for m in gw.admin()["models"] if not m["fits"]] == []

    r = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    answer = r.choices[0].message.content or ""
    assert len(answer.split()) >= 3  # words from a 135M model; what it knows is not under test
    assert r.usage is not None and r.usage.prompt_tokens > 5

    pieces = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        if c.choices
    ]
    assert "".join(pieces) == answer  # streamed and not streamed agree token for token

    e = client.embeddings.create(model="text-embedding-3-small", input=["a cat", "a kitten", "tax law"])
    vectors = [np.array(d.embedding) for d in e.data]
    assert len(vectors) == 3 and vectors[0].shape == (576,)
    states = {m["name"]: m["state"] for m in gw.admin()["models"]}
    assert states["smollm2-embed"] == "ready" and states["smollm2"] == "unloaded"  # evicted to fit

    again = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert again.choices[0].message.content == answer
    assert gw.model_state("smollm2")["loads"] == 2


def test_check_command_on_the_shipped_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(["check", "--manifests", str(ROOT / "manifests")]) == 0
    out = capsys.readouterr().out
    assert "smollm2" in out and "GGUF estimate" in out
