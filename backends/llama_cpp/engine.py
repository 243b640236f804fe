"""The engine an in-process replica runs: llama-cpp-python's ``Llama`` plus one hook, the id of each token as
the sampler picks it.

Why not llama-cpp-python's own logprobs: it reports them only for an engine built with ``logits_all=True``,
which keeps an ``n_ctx x n_vocab`` float32 array (400 MB for SmolLM2 at n_ctx 2048, more than the model
itself) and computes logits for every prompt token, for every request, whether or not it asks for logprobs;
and its streamed logprobs sort the whole vocabulary in Python for each token. The logits of the position
being sampled already reach a logits processor (``backends.llama_cpp.logprobs``); what no public hook says is
which token the sampler chain then picked (it is yielded only after the text that holds it is built, and a
generation cut by ``max_tokens`` never feeds its last token back). ``on_sample`` says it: a last sampler,
added to the chain that each generation builds, reads the candidate the chain selected. That is
llama-cpp-python's private ``_init_sampler``; ``tests/test_request_fields.py`` fails if a new version changes
it.

Importing this module imports llama_cpp (~40 MB): only code that builds an engine imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llama_cpp


class Engine(llama_cpp.Llama):
    """``Llama`` with ``on_sample``: when set, called on the engine's thread with every sampled token id,
    before the text that holds it is yielded. Set it before a generation starts; it holds for that one."""

    on_sample: Callable[[int], None] | None = None

    def _init_sampler(self, *args: Any, **kwargs: Any) -> Any:
        sampler = super()._init_sampler(*args, **kwargs)
        hook = self.on_sample
        if hook is not None:

            def selected(candidates: Any) -> None:
                array = candidates.contents
                hook(int(array.data[array.selected].id))

            sampler.add_custom(selected)
        return sampler

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends generation (EOS, end of turn): it is sampled but never part of the text."""
        return bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, token))
