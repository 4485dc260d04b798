"""Write a tiny random-weight llama-architecture GGUF model.

For fast unit tests of the linear-alignment sampler math and the engine on a
real llama.cpp model, without needing the 98 MB default model. The weights are
random (deterministic for a given seed), so the text is gibberish, but logits
are finite and clearly spread out, so distinct tokens get distinct scores.

    python models/make_tiny_gguf.py OUT.gguf [--seed N] [--n-vocab N] ...

The same writer, given real shapes, makes stand-ins of larger models for
speed measurements (benchmarks/make_synthetic_model.py): vocabularies past
the built-in pieces are filled with placeholder tokens that text never
merges into, and weights can be written as F16.
"""
from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np

import gguf

SPACE = "\u2581"  # SentencePiece word-boundary marker '▁'
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
# Chat templates of model families whose templates refuse what linalign's
# default placement does (a system message; roles that do not alternate),
# in the form their GGUFs carry them (tests/test_placement.py).
TEMPLATES = {
    # Gemma (2, instruction-tuned): no system role at all
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
    ),
    # Mistral (7B Instruct v0.1): user and assistant only, alternating
    "mistral": (
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
    ),
    # Llama 2 (chat): a system message only as the first one, folded into the first user turn
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
        "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
    ),
}
WORDS = ["hello", "world", "the", "and", "yes", "no", "cat", "dog", "good", "bad", "answer", "question"]


def build_vocab(n_vocab: int, *, fill: bool = False) -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style vocab: <unk> <s> </s>, 256 byte tokens, then word
    pieces; with ``fill``, placeholder pieces up to any ``n_vocab``."""
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
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
    return tokens, scores, [int(t) for t in types_]


def write_tiny_gguf(path, *, n_vocab: int = 400, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
                    n_head_kv: int = 2, n_ff: int = 128, n_ctx_train: int = 512, seed: int = 0,
                    f16: bool = False, tie_output: bool = False, name: str = "linalign-tiny-random",
                    chat_template: str = CHAT_TEMPLATE) -> Path:
    """Write a random-weight llama GGUF to `path` (F32, or F16 with ``f16``;
    with ``tie_output`` the output layer is the token embedding, as in small
    models; ``chat_template`` a Jinja chat template, such as one of
    TEMPLATES) and return it as a Path."""
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must be divisible by n_head, and n_head by n_head_kv")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head

    dtype = np.float16 if f16 else np.float32

    def rand(*shape: int, std: float) -> np.ndarray:
        # numpy shape is (rows, cols) = reversed ggml ne, i.e. PyTorch Linear (out, in).
        return (rng.standard_normal(shape) * std).astype(dtype)

    ones = lambda: np.ones(n_embd, dtype=np.float32)  # noqa: E731  (norms stay F32, as llama.cpp writes them)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)

    tokens, scores, token_types = build_vocab(n_vocab, fill=True)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)

    # After RMS norm the hidden state is ~unit scale, so a logit's std is the
    # output weights' std times sqrt(n_embd): 0.3 * sqrt(64) = 2.4 for the
    # tiny model; a tied embedding is scaled to give the same spread.
    embd_std = 2.4 / np.sqrt(n_embd) if tie_output else 1.0
    writer.add_tensor("token_embd.weight", rand(n_vocab, n_embd, std=embd_std))
    for i in range(n_layer):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones())
        writer.add_tensor(f"{blk}.attn_q.weight", rand(n_head * head_dim, n_embd, std=0.2))
        writer.add_tensor(f"{blk}.attn_k.weight", rand(n_head_kv * head_dim, n_embd, std=0.2))
        writer.add_tensor(f"{blk}.attn_v.weight", rand(n_head_kv * head_dim, n_embd, std=0.2))
        writer.add_tensor(f"{blk}.attn_output.weight", rand(n_embd, n_head * head_dim, std=0.1))
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones())
        writer.add_tensor(f"{blk}.ffn_gate.weight", rand(n_ff, n_embd, std=0.2))
        writer.add_tensor(f"{blk}.ffn_up.weight", rand(n_ff, n_embd, std=0.2))
        writer.add_tensor(f"{blk}.ffn_down.weight", rand(n_embd, n_ff, std=0.1))
    writer.add_tensor("output_norm.weight", ones())
    if not tie_output:
        writer.add_tensor("output.weight", rand(n_vocab, n_embd, std=0.3))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output .gguf path")
    parser.add_argument("--seed", type=int, default=0)
    for name, default in [("n_vocab", 400), ("n_embd", 64), ("n_layer", 2), ("n_head", 4),
                          ("n_head_kv", 2), ("n_ff", 128), ("n_ctx_train", 512)]:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=default)
    args = vars(parser.parse_args(argv))
    out = write_tiny_gguf(args.pop("out"), **args)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
