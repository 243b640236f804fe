"""Memory estimates for a model, from its GGUF metadata and the manifest's engine settings.

An instance of a llama.cpp model costs the terms below. Each names the measurement it comes from: RSS growth
of a fresh process (``bench/estimate_accuracy.py``) after a prompt that fills the context (the worst case a
budget must cover), read beside llama.cpp's own buffer log (``verbose=True``), on SmolLM2-135M (llama, 49k
vocabulary), Gemma 3 270M (gemma3, sliding window, 262k vocabulary) and synthetic llama models; numbers in
``bench/README.md``.

- **weights**: the file, all of it: llama.cpp maps it with ``MAP_POPULATE``, so every page is resident after
  the load (measured: RSS after the load, before any prompt, is the file plus the KV cache plus the terms
  below). On the CPU, llama.cpp also copies some quantised matrices into an interleaved layout
  (``CPU_REPACK``) while the mapped original stays resident: Q4_0, Q4_K and IQ4_NL matrices other than the
  token embedding (measured: Gemma's Q4_K ``attn_output`` and ``ffn_down``, 12.66 MiB, and none of its
  Q5_0/Q6_K/Q8_0; ``REPACK_TYPES``).
- **KV cache**: per layer, 2 (K and V) x cells x KV heads x head size x 2 bytes (f16), zeroed at the load so
  resident at once. A sliding-window layer (``{arch}.attention.sliding_window``; which layers, from
  ``sliding_window_pattern`` or llama.cpp's default period for the architecture, ``SWA_PERIOD``) has as many
  cells as a global one when the cache is "full-size" (``swa_full``), else ``n_swa + n_ubatch`` rounded up to
  256. Measured: llama-cpp-python leaves llama.cpp's C default, ``swa_full = true`` (its log: "using full-size
  SWA cache"; Gemma at 2k: 15 SWA layers x 2048 cells = 30 MiB), while llama-server's default is false (1024
  cells for Gemma's window of 512 with ``n_ubatch`` 512: 15 MiB, the log again, with ``swa_full=False`` in
  process).
- **attention scratch** (flash attention off): the scores of a micro-batch of ``n_ubatch`` tokens against the
  longest cache, per head (~6.2 bytes a score once the softmax copies are counted), plus one f32 mask per kind
  of layer (global, sliding) over that kind's cells. Measured: Gemma 2k -> 8k (4 heads, 2 masks) grew the fill
  by 32.9 bytes per cell x micro-batch token; a window-sized SWA cache took 14 MiB (its mask) off at 8k. With
  flash attention the scores are never materialised: the masks are f16 (Gemma 2k -> 8k: 4.5 bytes per cell x
  token for two masks) and the micro-batch's activations remain (``FLASH_ACTIVATION_BYTES``).
- **vocabulary**: the tokenizer's tables (loaded) and, once tokens are sampled, the last token's logits and
  the sampler's candidate arrays: ~210 bytes per vocabulary entry, and ~240 per merge of a BPE tokenizer.
  Measured: the load less weights, KV and output buffer was 41.7 MiB for Gemma (262k entries, no merges) and
  20.7 for SmolLM2 (49k entries, 48.9k merges); the fill less the attention term 14 and 4.5 MiB; the
  synthetic models (264 entries) leave ~6 MiB for what does not depend on the vocabulary. An embedding model
  also keeps outputs for every token of a batch (2 x vocabulary x n_ubatch floats). Not counted: llama.cpp
  reserves a compute buffer sized for 512 outputs' logits (514 MiB for Gemma), but llama-cpp-python asks for
  one output per batch, so those pages are never touched and RSS never holds them.
- a fixed per-instance overhead (contexts, thread pools, the engine's Python objects): 6 MiB, what the
  synthetic models leave once the terms above are counted.

Every instance counts its own weights: ``parallel`` instances each map the file, and RSS, like VRAM, counts
each.

Three corrections come from GPU memory measured with NVML on an H100 (``bench/vram_estimate.py``):

- a ``llama-server`` process that offloads layers holds a CUDA context plus cuBLAS, kernels and the CUDA pool,
  ~700 MiB whatever the model (``GPU_PROCESS_OVERHEAD``). The in-process kind shares the gateway's one context
  across models, so it is not counted per model there;
- llama-server splits its KV cache between its ``parallel`` slots (not unified), each rounded up to a multiple
  of 256 tokens, so each slot attends over ``n_ctx / parallel`` and the attention scratch shrinks by that
  factor;
- with flash attention the scratch is not zero: activations of the micro-batch (~64 bytes per embedding
  dimension per token) and the mask (2 bytes per score).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from backends.gguf.reader import GgufError, read_gguf
from backends.spec import GgufSettings

MiB = 1024 * 1024
INSTANCE_OVERHEAD = 6 * MiB
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default KV cache type is f16
ATTENTION_BYTES_PER_SCORE = 6.2
MASK_BYTES = 4  # f32 mask per cell x micro-batch token, one per kind of layer; f16 (2) with flash attention
BYTES_PER_VOCAB_ENTRY = 210
BYTES_PER_MERGE = 240  # a BPE tokenizer's merge table (pairs of strings in a map)
GPU_PROCESS_OVERHEAD = 700 * MiB
FLASH_ACTIVATION_BYTES = 64  # per embedding dimension per micro-batch token
SLOT_PAD = 256  # llama.cpp rounds each slot's context (and a window-sized SWA cache) up to a multiple
# llama.cpp's period of sliding-window layers where the GGUF gives no pattern: every n-th layer is global
# (src/models/*.cpp, ``load_swa_pattern(ml, n)``; ``dense_first``: the first of each period is global).
SWA_PERIOD: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "cohere2": (4, False),
    "llama4": (4, False),
    "gpt-oss": (2, False),
    "exaone4": (4, False),
    "olmo2": (4, False),
    "modern-bert": (3, True),
}
# ggml types the CPU backend repacks (Q4_0, Q4_K, IQ4_NL) as (block elements, block bytes)
REPACK_TYPES = {2: (32, 18), 12: (256, 144), 20: (32, 18)}


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
    n_swa: int = 0  # the sliding window in tokens; 0: every layer attends over the whole context
    n_swa_layers: int = 0  # how many layers attend over the window only
    repacked_bytes: int = 0  # matrices the CPU backend copies into its interleaved layout
    n_merges: int = 0  # a BPE tokenizer's merges


def _swa_layers(arch: str, n_layers: int, pattern: tuple[int, ...] | int | None) -> int:
    if isinstance(pattern, tuple):  # one flag per layer
        return sum(1 for flag in pattern[:n_layers] if flag)
    period, dense_first = (pattern, False) if isinstance(pattern, int) else SWA_PERIOD.get(arch, (0, False))
    if period <= 0:  # llama.cpp: a period of 0 (or none known) makes every layer sliding
        return n_layers
    if dense_first:
        return sum(1 for il in range(n_layers) if il % period != 0)
    return sum(1 for il in range(n_layers) if il % period < period - 1)


def read_gguf_info(path: Path) -> GgufInfo:
    """Read the metadata that drives memory use. Raises ``ValueError`` for a file that is not GGUF."""
    gguf = read_gguf(path)
    meta = gguf.metadata

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
    n_layers = num(f"{arch}.block_count")
    head_k = num(f"{arch}.attention.key_length", n_embd // max(n_heads, 1))
    n_swa = num(f"{arch}.attention.sliding_window", 0)
    pattern_key = f"{arch}.attention.sliding_window_pattern"
    pattern = gguf.arrays.get(pattern_key, meta.get(pattern_key))
    repacked = 0
    for t in gguf.tensors:
        if t.ggml_type in REPACK_TYPES and t.name != "token_embd.weight":
            elements, size = REPACK_TYPES[t.ggml_type]
            repacked += t.elements // elements * size
    return GgufInfo(
        architecture=arch,
        n_layers=n_layers,
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
        n_swa=n_swa,
        n_swa_layers=_swa_layers(arch, n_layers, pattern if isinstance(pattern, (int, tuple)) else None)
        if n_swa > 0
        else 0,
        repacked_bytes=repacked,
        n_merges=num("tokenizer.ggml.merges", 0),
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


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def estimate_llama_cpp(
    info: GgufInfo, spec: GgufSettings, instances: int, server_slots: int | None = None
) -> Estimate:
    """``server_slots``: for a ``llama-server`` (a process or a container), its ``--parallel``: it splits its
    KV cache between that many slots, sizes sliding-window layers to the window (its ``swa_full`` is false),
    and a llama-server that offloads layers holds its own CUDA context. None for the in-process engine
    (llama-cpp-python: one sequence, full-size sliding-window caches)."""
    n_ctx = spec.n_ctx
    n_ubatch = min(spec.n_batch, 512, n_ctx)
    attended, slots = n_ctx, 1
    if server_slots is not None:  # llama-server splits its KV cache between its slots, each padded to 256
        attended, slots = _pad(-(-n_ctx // server_slots), SLOT_PAD), server_slots
    swa_cells = attended
    if info.n_swa_layers and server_slots is not None:
        swa_cells = min(attended, _pad(info.n_swa + n_ubatch, SLOT_PAD))
    per_cell = info.n_kv_heads * (info.head_dim_k + info.head_dim_v) * KV_BYTES_PER_ELEMENT
    global_layers = info.n_layers - info.n_swa_layers
    kv = slots * per_cell * (global_layers * attended + info.n_swa_layers * swa_cells)
    masked = (attended if global_layers else 0) + (swa_cells if info.n_swa_layers else 0)
    if spec.flash_attn:
        attention = n_ubatch * info.n_embd * FLASH_ACTIVATION_BYTES + masked * n_ubatch * MASK_BYTES // 2
    else:
        longest = attended if global_layers else swa_cells
        scores = longest * n_ubatch * info.n_heads * ATTENTION_BYTES_PER_SCORE
        attention = int(scores) + masked * n_ubatch * MASK_BYTES
    vocab = info.n_vocab * BYTES_PER_VOCAB_ENTRY + info.n_merges * BYTES_PER_MERGE
    if spec.embeddings:
        vocab += 2 * info.n_vocab * n_ubatch * 4
    gpu_process = GPU_PROCESS_OVERHEAD if server_slots is not None and spec.n_gpu_layers != 0 else 0
    repacked = info.repacked_bytes if spec.n_gpu_layers == 0 else 0
    return Estimate(
        weights=info.weights_bytes + repacked,
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
