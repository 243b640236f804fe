"""Memory estimates for a model, from its GGUF metadata and the manifest's engine settings.

An instance of a llama.cpp model costs:

- weights: the bytes of its tensors;
- KV cache: 2 (K and V) x layers x context x KV heads x head size x 2 bytes (f16);
- attention scratch: llama.cpp materialises the attention scores of a batch of ``n_ubatch`` tokens against the
  whole context, for every head (about 6.25 bytes per score once the softmax copies are counted); flash
  attention avoids it;
- vocabulary-sized buffers: sampling state and the last token's logits (about 640 bytes per vocabulary entry);
  an embedding model also keeps outputs for every token of a batch (2 x vocabulary x n_ubatch floats);
- a fixed per-instance overhead (contexts, thread pools, the engine's Python objects).

The per-score and per-entry constants were fitted to measured RSS growth after a prompt that fills the context
(the worst case a budget must cover): ``bench/estimate_accuracy.py``, numbers in ``bench/README.md``. Every
instance counts its own weights: ``parallel`` instances each map the file, and RSS, like VRAM, counts each.

Three corrections come from GPU memory measured with NVML on an H100 (``bench/vram_estimate.py``):

- a ``llama-server`` process that offloads layers holds a CUDA context plus cuBLAS, kernels and the CUDA
  pool, ~700 MiB whatever the model (``GPU_PROCESS_OVERHEAD``). The in-process kind shares the gateway's one
  context across models, so it is not counted per model there;
- llama-server splits its KV cache between its ``parallel`` slots (not unified), each rounded up to a
  multiple of 256 tokens, so each slot attends over ``n_ctx / parallel`` and the attention scratch shrinks
  by that factor;
- with flash attention the scratch is not zero: activations of the micro-batch (~64 bytes per embedding
  dimension per token) and the mask (2 bytes per score).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from backends.gguf.reader import GgufError, read_metadata
from backends.spec import GgufSettings

MiB = 1024 * 1024
INSTANCE_OVERHEAD = 8 * MiB
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default KV cache type is f16
ATTENTION_BYTES_PER_SCORE = 6.25
BYTES_PER_VOCAB_ENTRY = 640
GPU_PROCESS_OVERHEAD = 700 * MiB
FLASH_ACTIVATION_BYTES = 64  # per embedding dimension per micro-batch token
SLOT_PAD = 256  # llama.cpp rounds each slot's context up to a multiple of this


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


def read_gguf_info(path: Path) -> GgufInfo:
    """Read the metadata that drives memory use. Raises ``ValueError`` for a file that is not GGUF."""
    meta = read_metadata(path)

    def num(key: str, default: int | None = None) -> int:
        value = meta.get(key, default)
        if value is None or isinstance(value, str):
            raise GgufError(f"GGUF metadata has no number '{key}'")
        return int(value)

    arch = str(meta.get("general.architecture", ""))
    if not arch:
        raise GgufError("GGUF metadata has no 'general.architecture'")
    n_embd = num(f"{arch}.embedding_length")
    n_heads = num(f"{arch}.attention.head_count")
    head_k = num(f"{arch}.attention.key_length", n_embd // max(n_heads, 1))
    return GgufInfo(
        architecture=arch,
        n_layers=num(f"{arch}.block_count"),
        n_embd=n_embd,
        n_heads=n_heads,
        n_kv_heads=num(f"{arch}.attention.head_count_kv", n_heads),
        head_dim_k=head_k,
        head_dim_v=num(f"{arch}.attention.value_length", head_k),
        n_ff=num(f"{arch}.feed_forward_length", 4 * n_embd),
        n_vocab=num(f"{arch}.vocab_size", num("tokenizer.ggml.tokens", 32000)),
        ctx_train=num(f"{arch}.context_length", 0),
        # The tensor data is the file less its metadata; the metadata (mostly the vocabulary) is a few MB.
        # A split model (gguf-split) has its tensors in every part: all of them count.
        weights_bytes=sum(p.stat().st_size for p in split_parts(path, num("split.count", 1))),
    )


_SPLIT = re.compile(r"^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_parts(path: Path, count: int) -> list[Path]:
    """Every file of a model split by ``gguf-split`` (``name-00001-of-00003.gguf``...), given the first one
    and its ``split.count``; ``[path]`` for a model in one file. A missing part is a ``GgufError``."""
    if count <= 1:
        return [path]
    match = _SPLIT.match(path.name)
    if match is None or int(match["count"]) != count:
        raise GgufError(f"{path.name} says it is split in {count} parts but is not named as part 1 of them")
    parts = [path.with_name(f"{match['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise GgufError(f"split model: {', '.join(missing)} missing beside {path.name}")
    return parts


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv_cache: int
    compute: int
    overhead: int
    instances: int

    @property
    def per_instance(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead

    @property
    def total(self) -> int:
        return self.instances * self.per_instance


def estimate_llama_cpp(
    info: GgufInfo, spec: GgufSettings, instances: int, server_slots: int | None = None
) -> Estimate:
    """``server_slots``: for a ``llama-server`` (a process or a container), its ``--parallel``: it splits its
    KV cache between that many slots, and a llama-server that offloads layers holds its own CUDA context. None
    for the in-process engine."""
    n_ctx = spec.n_ctx
    n_ubatch = min(spec.n_batch, 512, n_ctx)
    attended, cached = n_ctx, n_ctx
    if server_slots is not None:  # llama-server splits its KV cache between its slots, each padded to 256
        attended = -(-n_ctx // server_slots // SLOT_PAD) * SLOT_PAD
        cached = attended * server_slots
    kv = info.n_layers * cached * info.n_kv_heads * (info.head_dim_k + info.head_dim_v) * KV_BYTES_PER_ELEMENT
    if spec.flash_attn:
        attention = n_ubatch * info.n_embd * FLASH_ACTIVATION_BYTES + attended * n_ubatch * 2
    else:
        attention = int(attended * n_ubatch * info.n_heads * ATTENTION_BYTES_PER_SCORE)
    vocab = info.n_vocab * BYTES_PER_VOCAB_ENTRY
    if spec.embeddings:
        vocab += 2 * info.n_vocab * n_ubatch * 4
    gpu_process = GPU_PROCESS_OVERHEAD if server_slots is not None and spec.n_gpu_layers != 0 else 0
    return Estimate(
        weights=info.weights_bytes,
        kv_cache=kv,
        compute=attention + vocab,
        overhead=INSTANCE_OVERHEAD + gpu_process,
        instances=instances,
    )


def estimate_gguf(
    model: Path, spec: GgufSettings, instances: int, server_slots: int | None = None
) -> tuple[int, str]:
    """The budgeted bytes of ``instances`` engines of a GGUF model, and where the number comes from. A damaged
    GGUF file still gets a budget (its size), so that its load can run and report the real error."""
    try:
        return estimate_llama_cpp(read_gguf_info(model), spec, instances, server_slots).total, "GGUF estimate"
    except (OSError, ValueError) as exc:
        return model.stat().st_size * instances, f"unreadable GGUF ({exc}): file size"
