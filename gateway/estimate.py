"""Memory estimates for a model, from its GGUF metadata and the manifest's engine settings.

An instance of a llama.cpp model costs:

- weights: the bytes of its tensors;
- KV cache: 2 (K and V) x layers x context x KV heads x head size x 2 bytes (f16);
- compute buffer: the scratch memory of the largest graph llama.cpp reserves for a batch of ``n_ubatch``
  tokens: the attention scores (context x heads x ubatch floats, without flash attention) and the output
  logits (vocabulary x ubatch floats), plus activations;
- a fixed per-instance overhead (contexts, thread pools, the engine's Python objects).

The constants were calibrated against measured RSS growth (``bench/estimate_accuracy.py``; numbers in
``bench/README.md``). On a CPU the weights are a shared read-only mapping of the file, so ``parallel``
instances of one file hold the weights once; offloaded to a GPU, each instance holds its own copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFReader

from gateway.config import LlamaCppBackend

MiB = 1024 * 1024
INSTANCE_OVERHEAD = 12 * MiB
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default KV cache type is f16


@dataclass(frozen=True)
class GgufInfo:
    architecture: str
    n_layers: int
    n_embd: int
    n_heads: int
    n_kv_heads: int
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    ctx_train: int
    weights_bytes: int


def _scalar(reader: GGUFReader, key: str, default: int | None = None) -> int:
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"GGUF metadata has no '{key}'")
        return default
    value = field.contents()
    if isinstance(value, list):  # per-layer values (e.g. head counts): the largest bounds the memory
        value = max(value)
    return int(value)


def read_gguf_info(path: Path) -> GgufInfo:
    """Read the metadata that drives memory use. Raises ``ValueError`` for a file that is not GGUF."""
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # the reader raises bare ValueError/struct errors on damaged files
        raise ValueError(f"not a readable GGUF file: {exc}") from exc
    arch = str(reader.fields["general.architecture"].contents())
    n_embd = _scalar(reader, f"{arch}.embedding_length")
    n_heads = _scalar(reader, f"{arch}.attention.head_count")
    n_kv = _scalar(reader, f"{arch}.attention.head_count_kv", n_heads)
    head_k = _scalar(reader, f"{arch}.attention.key_length", n_embd // max(n_heads, 1))
    head_v = _scalar(reader, f"{arch}.attention.value_length", head_k)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_vocab = _scalar(reader, f"{arch}.vocab_size", len(tokens.data) if tokens is not None else 32000)
    return GgufInfo(
        architecture=arch,
        n_layers=_scalar(reader, f"{arch}.block_count"),
        n_embd=n_embd,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim_k=head_k,
        head_dim_v=head_v,
        n_ff=_scalar(reader, f"{arch}.feed_forward_length", 4 * n_embd),
        n_vocab=n_vocab,
        ctx_train=_scalar(reader, f"{arch}.context_length", 0),
        weights_bytes=sum(int(t.n_bytes) for t in reader.tensors),
    )


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv_cache: int
    compute: int
    overhead: int
    instances: int
    weights_shared: bool

    @property
    def per_instance(self) -> int:
        own_weights = 0 if self.weights_shared else self.weights
        return own_weights + self.kv_cache + self.compute + self.overhead

    @property
    def total(self) -> int:
        return (self.weights if self.weights_shared else 0) + self.instances * self.per_instance


def estimate_llama_cpp(info: GgufInfo, spec: LlamaCppBackend) -> Estimate:
    n_ctx = spec.n_ctx
    n_ubatch = min(spec.n_batch, 512, n_ctx)
    kv = (
        info.n_layers
        * n_ctx
        * info.n_kv_heads
        * (info.head_dim_k + info.head_dim_v)
        * KV_BYTES_PER_ELEMENT
    )
    attention = 0 if spec.flash_attn else n_ctx * n_ubatch * info.n_heads * 4
    activations = n_ubatch * (3 * info.n_embd + 2 * info.n_ff) * 4
    logits = info.n_vocab * 4 * (n_ubatch if spec.embeddings else 1)
    return Estimate(
        weights=info.weights_bytes,
        kv_cache=kv,
        compute=attention + activations + logits,
        overhead=INSTANCE_OVERHEAD,
        instances=spec.parallel,
        weights_shared=spec.n_gpu_layers == 0,
    )


def estimate_bytes(spec: LlamaCppBackend, override: int | None) -> tuple[int, str | None]:
    """The budgeted bytes for a model and, if the file could not be read, why (the load will say more)."""
    if override is not None:
        return override, None
    try:
        return estimate_llama_cpp(read_gguf_info(spec.model), spec).total, None
    except (OSError, ValueError, KeyError) as exc:
        # A damaged file still gets a budget (its size) so that its load can run and report the real error.
        return spec.model.stat().st_size * spec.parallel, str(exc)
