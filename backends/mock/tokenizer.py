"""A byte-level tokenizer: token ids 0..255 are the bytes of the UTF-8 encoding.

Two special tokens follow the bytes: ``256`` is ``<|eos|>`` and ``257`` is ``<|pad|>``, so the
vocabulary has 258 entries. It satisfies ``tinker_std.backend.Tokenizer`` and needs no files.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ByteTokenizer", "EOS_TOKEN_ID", "PAD_TOKEN_ID", "VOCAB_SIZE"]

EOS_TOKEN_ID = 256
PAD_TOKEN_ID = 257
VOCAB_SIZE = 258

_SPECIAL_NAMES: dict[int, str] = {EOS_TOKEN_ID: "<|eos|>", PAD_TOKEN_ID: "<|pad|>"}


class ByteTokenizer:
    """UTF-8 bytes as tokens, plus ``<|eos|>`` (256) and ``<|pad|>`` (257).

    ``encode`` never adds special tokens (``add_special_tokens`` is accepted for compatibility).
    ``decode`` turns runs of byte ids into text with ``errors="replace"`` (an incomplete or invalid
    UTF-8 sequence becomes U+FFFD) and renders special ids as their names unless
    ``skip_special_tokens``. Ids outside ``0..257`` raise ``ValueError``.
    """

    eos_token_id: int | None = EOS_TOKEN_ID
    pad_token_id: int = PAD_TOKEN_ID
    vocab_size: int = VOCAB_SIZE
    eos_token: str = _SPECIAL_NAMES[EOS_TOKEN_ID]
    pad_token: str = _SPECIAL_NAMES[PAD_TOKEN_ID]

    def __init__(self, name_or_path: str = "mock/byte") -> None:
        self.name_or_path = name_or_path

    def __len__(self) -> int:
        return VOCAB_SIZE

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The UTF-8 bytes of ``text``."""
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``token_ids``; see the class docstring for special and invalid ids."""
        parts: list[str] = []
        run = bytearray()
        for token in token_ids:
            token = int(token)
            if 0 <= token < 256:
                run.append(token)
                continue
            if token not in _SPECIAL_NAMES:
                raise ValueError(f"token id {token} is outside the vocabulary 0..{VOCAB_SIZE - 1}")
            parts.append(run.decode("utf-8", errors="replace"))
            run.clear()
            if not skip_special_tokens:
                parts.append(_SPECIAL_NAMES[token])
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"ByteTokenizer(name_or_path={self.name_or_path!r}, vocab_size={VOCAB_SIZE})"
