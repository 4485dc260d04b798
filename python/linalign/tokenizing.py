"""Text to the token lists the engine decodes, as llama-cpp-python
tokenizes (BOS per the model's metadata), with each prompt checked against
the vocabulary and the context window before it reaches the engine.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

__all__ = ["PromptType", "Tokenizer"]

PromptType = Union[str, bytes, Sequence[int]]


class Tokenizer:
    """Tokenizes for one model and context window of ``n_ctx`` tokens."""

    def __init__(self, model: Any, n_ctx: int) -> None:
        self._model = model
        self.n_ctx = n_ctx

    def tokenize(self, text: str | bytes, *, add_bos: bool = True, special: bool = True) -> list[int]:
        if isinstance(text, str):
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"text is not valid Unicode (lone surrogate at {e.start}): {e.reason}") from None
        elif isinstance(text, (bytes, bytearray)):
            data = bytes(text)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"text is not valid UTF-8 (byte {e.start}): {e.reason}") from None
        else:
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        return self._model.tokenize(data, add_bos, special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self._model.token_to_piece(int(t), False) for t in tokens).decode("utf-8", "replace")

    def prompt_tokens(self, name: str, prompt: PromptType, *, add_bos: bool = True) -> list[int]:
        """``prompt`` (text, or token ids) as tokens that fit the context with
        room to generate; ``name`` is the argument's, for the error."""
        model = self._model
        if isinstance(prompt, (str, bytes, bytearray)):
            tokens = self.tokenize(prompt, add_bos=add_bos) if len(prompt) else [model.bos]
        elif isinstance(prompt, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            tokens = list(prompt)
            for t in tokens:
                if not 0 <= t < model.n_vocab:
                    raise ValueError(f"{name} holds token id {t}, outside the vocabulary [0, {model.n_vocab})")
        else:
            raise TypeError(f"{name} must be a string, bytes or a list of token ids")
        if len(tokens) == 0:
            raise ValueError(f"{name} is empty")
        if len(tokens) >= self.n_ctx:
            raise ValueError(
                f"{name}: requested tokens ({len(tokens)}) exceed context window of {self.n_ctx} (leave room to generate)"
            )
        return tokens

    def has_control_text(self, text: str) -> bool:
        """Whether ``text`` holds a control token's spelling (it would
        tokenize to that token with special tokens parsed)."""
        if not text:
            return False
        data = text.encode("utf-8", "surrogatepass")
        return self._model.tokenize(data, False, True) != self._model.tokenize(data, False, False)

    def literal_tokens(self, rendered: str, mark: str, principle: str, add_bos: bool) -> list[int]:
        """``rendered`` with each ``mark`` replaced by ``principle``'s tokens
        as plain text (a principle that spells a control token is text)."""
        parts = rendered.split(mark)
        tokens = self.tokenize(parts[0], add_bos=add_bos) if parts[0] or add_bos else []
        for part in parts[1:]:
            tokens += self.tokenize(principle, add_bos=False, special=False)
            if part:
                tokens += self.tokenize(part, add_bos=False)
        return self.prompt_tokens("messages", tokens)
