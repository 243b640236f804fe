"""Logprobs of the tokens the in-process engine samples, in OpenAI's two shapes (chat and completions).

``TokenLogprobs`` follows one generation. Its ``processor`` is the first logits processor, so it sees the
model's raw logits at each sampled position (before ``logit_bias``, penalties and temperature: the model's
own distribution, as vLLM's and llama-server's defaults report it) and keeps their log-softmax; ``sampled``,
the engine's ``on_sample`` hook (``backends.llama_cpp.engine``), then reads the picked token's logprob and the
top alternatives. Both run on the engine thread, once per token, only for a request that asks for logprobs.

Tokens are handed out with the text that holds them: llama-cpp-python yields text in whole tokens but holds
some back (a possible stop string, an incomplete UTF-8 character), so ``take`` gives each chunk of text the
tokens whose bytes it completes. At the end, ``rest`` gives the tokens that began inside the text; a token
that a stop string cut entirely off the text is not reported, and neither is the end-of-generation token.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Token:
    piece: bytes  # the token's text, as UTF-8 bytes (one token may hold part of a character)
    logprob: float
    top: list[tuple[bytes, float]]  # the most likely tokens at its position, best first
    start: int  # byte offset of the token in the generated text
    offset: int = 0  # character offset of the token in the generated text, once handed out


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


class TokenLogprobs:
    """One generation's sampled tokens with their logprobs; ``top`` alternatives at each position."""

    def __init__(self, llama: Any, top: int) -> None:
        self._llama = llama
        self._top = top
        self._logprobs: np.ndarray[Any, np.dtype[np.float32]] | None = None
        self._pending: deque[Token] = deque()
        self._recorded = 0  # bytes of the recorded tokens
        self._text = bytearray()  # the text handed out so far

    def processor(
        self, input_ids: np.ndarray[Any, Any], scores: np.ndarray[Any, Any]
    ) -> np.ndarray[Any, Any]:
        peak = float(scores.max())
        total = float(np.exp(scores - peak, dtype=np.float32).sum(dtype=np.float64))
        self._logprobs = (scores - np.float32(peak + np.log(total))).astype(np.float32)
        return scores

    def sampled(self, token: int) -> None:
        logprobs, self._logprobs = self._logprobs, None
        if logprobs is None or self._llama.is_eog(token):
            return
        piece = bytes(self._llama.detokenize([token]))
        top: list[tuple[bytes, float]] = []
        n = min(self._top, len(logprobs))
        if n:
            best = np.argpartition(logprobs, -n)[-n:]
            best = best[np.argsort(logprobs[best])[::-1]]
            top = [(bytes(self._llama.detokenize([int(i)], special=True)), float(logprobs[i])) for i in best]
        self._pending.append(Token(piece, float(logprobs[token]), top, self._recorded))
        self._recorded += len(piece)

    def _handed(self, token: Token) -> Token:
        token.offset = len(self._text[: token.start].decode("utf-8", errors="ignore"))
        return token

    def take(self, text: str) -> list[Token]:
        """The tokens that ``text``, the next piece of generated text, completes."""
        self._text += text.encode()
        out = []
        while self._pending and self._pending[0].start + len(self._pending[0].piece) <= len(self._text):
            out.append(self._handed(self._pending.popleft()))
        return out

    def rest(self) -> list[Token]:
        """At the end of the generation: the tokens left that began inside the generated text."""
        out = [self._handed(t) for t in self._pending if t.start < len(self._text)]
        self._pending.clear()
        return out


def chat_logprobs(tokens: list[Token]) -> dict[str, Any]:
    """OpenAI's ``choices[].logprobs`` of a chat completion (or of one chunk)."""
    return {
        "content": [
            {
                "token": _text(t.piece),
                "logprob": t.logprob,
                "bytes": list(t.piece),
                "top_logprobs": [{"token": _text(p), "logprob": lp, "bytes": list(p)} for p, lp in t.top],
            }
            for t in tokens
        ],
        "refusal": None,
    }


def completion_logprobs(tokens: list[Token]) -> dict[str, Any]:
    """OpenAI's ``choices[].logprobs`` of a (legacy) completion (or of one chunk)."""
    return {
        "tokens": [_text(t.piece) for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{_text(p): lp for p, lp in t.top} for t in tokens],
        "text_offset": [t.offset for t in tokens],
    }
