"""Write small random-weight llama-architecture GGUF files that llama.cpp loads and runs.

They stand in for real models where a test needs many distinct models, or a model of a chosen size: the
weights are random, so the text is noise, but every code path of llama.cpp (tokenizer, chat template, KV
cache, sampling, embeddings) runs for real. Usable from the command line to make big files on a GPU host:

    python tests/synthetic_gguf.py out.gguf --embd 4096 --layers 32
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class Shape:
    embd: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ff: int = 128
    ctx_train: int = 4096
    dtype: str = "f32"  # "f32" or "f16"


def _vocab() -> tuple[list[bytes], list[float], list[int]]:
    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>".encode())
        types.append(gguf.TokenType.BYTE)
    # A few whole-word pieces so that tokenization is not purely byte-level.
    for word in ("\u2581the", "\u2581a", "\u2581hello", "\u2581world", "\u2581is"):
        tokens.append(word.encode())
        types.append(gguf.TokenType.NORMAL)
    scores = [0.0] * len(tokens)
    return tokens, scores, [int(t) for t in types]


def write_model(path: Path, shape: Shape = Shape(), seed: int = 0) -> Path:
    """Write a llama-architecture GGUF with random weights to ``path`` and return it."""
    rng = np.random.default_rng(seed)
    dtype = np.float16 if shape.dtype == "f16" else np.float32
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    head_dim = shape.embd // shape.heads

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(path.stem)
    w.add_context_length(shape.ctx_train)
    w.add_embedding_length(shape.embd)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.ff)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if shape.dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)

    def tensor(name: str, *dims: int, norm: bool = False) -> None:
        if norm:
            data = np.ones(dims, dtype=np.float32)  # norms stay f32, as llama.cpp expects
        else:
            data = (rng.standard_normal(dims, dtype=np.float32) * 0.05).astype(dtype)
        w.add_tensor(name, data)

    tensor("token_embd.weight", n_vocab, shape.embd)
    for i in range(shape.layers):
        kv = head_dim * shape.kv_heads
        tensor(f"blk.{i}.attn_norm.weight", shape.embd, norm=True)
        tensor(f"blk.{i}.attn_q.weight", shape.embd, shape.embd)
        tensor(f"blk.{i}.attn_k.weight", kv, shape.embd)
        tensor(f"blk.{i}.attn_v.weight", kv, shape.embd)
        tensor(f"blk.{i}.attn_output.weight", shape.embd, shape.embd)
        tensor(f"blk.{i}.ffn_norm.weight", shape.embd, norm=True)
        tensor(f"blk.{i}.ffn_gate.weight", shape.ff, shape.embd)
        tensor(f"blk.{i}.ffn_up.weight", shape.ff, shape.embd)
        tensor(f"blk.{i}.ffn_down.weight", shape.embd, shape.ff)
    tensor("output_norm.weight", shape.embd, norm=True)
    # Only printable ASCII bytes get output weights, so sampled text is valid UTF-8 (llama-cpp-python holds
    # back partial characters without counting them against max_tokens) and </s> is rare.
    output = rng.standard_normal((n_vocab, shape.embd), dtype=np.float32)
    printable = [i for i, t in enumerate(tokens) if t.startswith(b"<0x") and 0x20 <= int(t[3:5], 16) < 0x7F]
    mask = np.zeros(n_vocab, dtype=np.float32)
    mask[printable] = 1.0
    w.add_tensor("output.weight", (output * mask[:, None]).astype(dtype))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", type=Path)
    p.add_argument("--embd", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ff", type=int, default=0, help="feed-forward width (default 4 x embd)")
    p.add_argument("--dtype", choices=("f32", "f16"), default="f16")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    shape = Shape(a.embd, a.layers, a.heads, a.kv_heads, a.ff or 4 * a.embd, 4096, a.dtype)
    write_model(a.path, shape, a.seed)
    print(a.path, a.path.stat().st_size)


if __name__ == "__main__":
    main()
