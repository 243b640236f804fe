"""A model split by gguf-split counts every part's weights, not the first file's only."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from backends.gguf.memory import read_gguf_info, split_parts
from backends.gguf.reader import GgufError


def first_part(path: Path, count: int) -> Path:
    """A metadata-only GGUF, as gguf-split writes the first of ``count`` parts (tensors left out)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_vocab_size(100)
    w.add_uint16("split.count", count)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def test_every_part_of_a_split_model_counts(tmp_path: Path) -> None:
    first = first_part(tmp_path / "big-00001-of-00003.gguf", 3)
    for i, size in ((2, 5_000_000), (3, 7_000_000)):
        (tmp_path / f"big-0000{i}-of-00003.gguf").write_bytes(b"\0" * size)
    info = read_gguf_info(first)
    assert info.weights_bytes == first.stat().st_size + 12_000_000
    assert len(split_parts(first, 3)) == 3


def test_a_missing_part_is_an_error_naming_it(tmp_path: Path) -> None:
    first = first_part(tmp_path / "big-00001-of-00002.gguf", 2)
    with pytest.raises(GgufError, match=r"big-00002-of-00002\.gguf missing"):
        read_gguf_info(first)


def test_a_single_file_model_is_its_own_size(tmp_path: Path) -> None:
    one = first_part(tmp_path / "one.gguf", 1)
    assert read_gguf_info(one).weights_bytes == one.stat().st_size
