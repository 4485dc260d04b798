"""The vocabulary of the synthetic models: a SentencePiece-style ("llama")
tokenizer small enough to write by hand, filled with placeholder pieces up
to any size (a 49,152- or 152,064-token vocabulary for speed measurements)."""
from __future__ import annotations

import string

import gguf

__all__ = ["BOS_ID", "EOS_ID", "UNK_ID", "WORDS", "build_vocab"]

SPACE = "\u2581"  # SentencePiece word-boundary marker '▁'
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
WORDS = ["hello", "world", "the", "and", "yes", "no", "cat", "dog", "good", "bad", "answer", "question"]


def build_vocab(n_vocab: int, *, fill: bool = False,
                added: tuple[str, ...] = ()) -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style vocab: <unk> <s> </s>, 256 byte tokens, then word
    pieces; with ``fill``, placeholder pieces up to any ``n_vocab``. ``added``
    tokens (such as ``<tool_call>``) take the last ids, as user-defined
    tokens that the tokenizer matches whole, as a model's added tokens are."""
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]  # UNK_ID, BOS_ID, EOS_ID first
    types_ = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256
    pieces: list[str] = [SPACE] + [c for c in string.printable[:94]]  # digits, letters, punctuation
    pieces += [SPACE + c for c in string.ascii_lowercase]
    for word in WORDS:  # every prefix, so SPM bigram merges can build the whole word
        pieces += [SPACE + word[:i] for i in range(2, len(word) + 1)]
    pieces += [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]  # padding bigrams
    pieces = list(dict.fromkeys(pieces))  # dedupe, keep order
    n_pieces = n_vocab - len(tokens)
    if fill and n_pieces > len(pieces):
        # no text contains these, so tokenization is that of the pieces above
        pieces += [f"<fill{i}>" for i in range(n_pieces - len(pieces))]
    if not 0 < n_pieces <= len(pieces):
        raise ValueError(f"n_vocab must be in ({len(tokens)}, {len(tokens) + len(pieces)}]")
    pieces = pieces[:n_pieces]
    tokens += pieces
    types_ += [T.NORMAL] * n_pieces
    # Longer pieces score higher so they win SPM merges; special/byte tokens score 0.
    scores = [0.0] * 259 + [-100.0 + 10.0 * len(p) - 0.01 * i for i, p in enumerate(pieces)]
    if added:
        if len(added) >= n_pieces or len(set(added)) != len(added) or set(added) & set(tokens[:-len(added)]):
            raise ValueError(f"added tokens must be new, distinct and fewer than the pieces: {added!r}")
        tokens[-len(added):] = added
        types_[-len(added):] = [T.USER_DEFINED] * len(added)
        scores[-len(added):] = [0.0] * len(added)
    return tokens, scores, [int(t) for t in types_]
