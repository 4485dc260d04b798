"""Write a tiny random-weight GGUF model: llama, gemma3 or mamba architecture.

For fast unit tests of the linear-alignment sampler math and the engine on a
real llama.cpp model, without needing the 98 MB default model. The weights are
random (deterministic for a given seed), so the text is gibberish, but logits
are finite and clearly spread out, so distinct tokens get distinct scores.

    python models/make_tiny_gguf.py OUT.gguf [--arch gemma3] [--seed N] [--n-vocab N] ...

The other architectures give llama.cpp's other kinds of memory to test the
engine's prompt cache on (tests/test_memory_kinds.py): gemma3 a sliding-window
KV cache (every other layer attends over the last n_swa positions only, whose
cells llama.cpp may drop), mamba a recurrent state (one per sequence, which
holds only its last position and cannot be cut back).

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

# Tool-aware templates, in the shape of those the GGUFs of two model families
# carry (abridged, written here): tests/test_tool_calls.py
TOOL_TEMPLATES = {
    # Qwen 2.5 / Hermes 2 Pro: tools in the system message, calls as
    # <tool_call>{"name", "arguments"}</tool_call>, results as <tool_response>
    "qwen2.5": (
        "{%- if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
        "{% else %}You are a helpful assistant.{% endif %}\n\n# Tools\n\nYou may call one or more functions to assist "
        "with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>"
        "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\nFor each function call, return a json "
        "object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
        "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
        "{%- endif %}{%- for message in messages %}"
        "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or "
        "(message.role == 'assistant' and not message.tool_calls) %}"
        "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
        "{%- elif message.role == 'assistant' %}<|im_start|>assistant{% if message.content %}\n{{ message.content }}"
        "{% endif %}{% for tool_call in message.tool_calls %}\n<tool_call>\n{\"name\": \"{{ tool_call.function.name }}\", "
        "\"arguments\": {{ tool_call.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n"
        "{%- elif message.role == 'tool' %}{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
        "<|im_start|>user{% endif %}\n<tool_response>\n{{ message.content }}\n</tool_response>"
        "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
        "{%- endif %}{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    # Llama 3.1: tools in the first user message, a call as one JSON object
    # {"name", "parameters"} (one per turn), results in the ipython role
    "llama3.1": (
        "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
        "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
        "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n\n{{ system_message }}<|eot_id|>"
        "{%- if tools is not none %}{%- set first_user_message = messages[0]['content'] %}"
        "{%- set messages = messages[1:] %}<|start_header_id|>user<|end_header_id|>\n\nGiven the following "
        "functions, please respond with a JSON for a function call with its proper arguments that best answers the "
        "given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": dictionary of argument name "
        "and its value}. Do not use variables.\n\n{% for t in tools %}{{ t | tojson }}\n\n{% endfor %}"
        "{{ first_user_message }}<|eot_id|>{%- endif %}{%- for message in messages %}"
        "{%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}"
        "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
        "{%- elif 'tool_calls' in message %}{%- if not message.tool_calls|length == 1 %}"
        "{{- raise_exception('This model only supports single tool-calls at once!') }}{%- endif %}"
        "{%- set tool_call = message.tool_calls[0].function %}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{\"name\": \"{{ tool_call.name }}\", \"parameters\": {{ tool_call.arguments | tojson }}}<|eot_id|>"
        "{%- elif message.role == 'tool' or message.role == 'ipython' %}<|start_header_id|>ipython<|end_header_id|>"
        "\n\n{{ message.content }}<|eot_id|>{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"
    ),
}

# Gemma 3's own template (text content only), which gemma3 models get: a system
# message is folded into the first user turn
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}"
    "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

ARCHS = ("llama", "gemma3", "mamba")
MAMBA_D_CONV, MAMBA_D_STATE = 4, 16  # mamba: convolution width and state size per channel, Mamba's defaults
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


def write_tiny_gguf(path, *, arch: str = "llama", n_vocab: int = 400, n_embd: int = 64, n_layer: int = 2,
                    n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128, n_ctx_train: int = 512, n_swa: int = 8,
                    seed: int = 0, f16: bool = False, tie_output: bool = False, name: str = "linalign-tiny-random",
                    chat_template: str | None = None) -> Path:
    """Write a random-weight GGUF of architecture ``arch`` (one of ARCHS) to
    `path` (F32, or F16 with ``f16``; with ``tie_output`` the output layer is
    the token embedding, as in small models; ``chat_template`` a Jinja chat
    template, such as one of TEMPLATES or TOOL_TEMPLATES: by default CHAT_TEMPLATE, or
    GEMMA3_CHAT_TEMPLATE for gemma3) and return it as a Path.

    gemma3: layers 0, 2, 4, ... attend over a sliding window of the last
    ``n_swa`` positions, the others over all of them (Gemma 3 has five
    sliding layers to one global; one to one lets two layers hold both).
    mamba: n_head, n_head_kv, n_ff and n_swa are unused; the inner size is
    2 n_embd, the one expansion llama.cpp runs."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if arch != "mamba" and (n_embd % n_head or n_head % n_head_kv):
        raise ValueError("n_embd must be divisible by n_head, and n_head by n_head_kv")
    if chat_template is None:
        chat_template = GEMMA3_CHAT_TEMPLATE if arch == "gemma3" else CHAT_TEMPLATE
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head
    d_inner, dt_rank = 2 * n_embd, -(-n_embd // 16)  # mamba: Mamba's own choices

    dtype = np.float16 if f16 else np.float32

    def rand(*shape: int, std: float, dtype=dtype) -> np.ndarray:
        # numpy shape is (rows, cols) = reversed ggml ne, i.e. PyTorch Linear (out, in).
        return (rng.standard_normal(shape) * std).astype(dtype)

    ones = lambda n=n_embd: np.ones(n, dtype=np.float32)  # noqa: E731  (norms stay F32, as llama.cpp writes them)

    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    if arch == "mamba":
        writer.add_feed_forward_length(0)  # unused, but llama.cpp reads both
        writer.add_head_count(0)
        writer.add_ssm_conv_kernel(MAMBA_D_CONV)
        writer.add_ssm_inner_size(d_inner)
        writer.add_ssm_state_size(MAMBA_D_STATE)
        writer.add_ssm_time_step_rank(dt_rank)
    else:
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(10000.0)
    if arch == "gemma3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_freq_base(1_000_000.0)  # global layers; the sliding ones use rope_freq_base_swa
        writer.add_rope_freq_base_swa(10000.0)
        writer.add_sliding_window(n_swa)
        writer.add_sliding_window_pattern(2)  # of every 2 layers the last is global
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
    # tiny model; a tied embedding is scaled to give the same spread. Gemma
    # multiplies the embedding by sqrt(n_embd) before the first layer.
    embd_std = 2.4 / np.sqrt(n_embd) if tie_output else 1.0
    if arch == "gemma3" and not tie_output:
        embd_std /= np.sqrt(n_embd)
    writer.add_tensor("token_embd.weight", rand(n_vocab, n_embd, std=embd_std))
    for i in range(n_layer):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones())
        if arch == "mamba":
            writer.add_tensor(f"{blk}.ssm_in.weight", rand(2 * d_inner, n_embd, std=0.2))
            writer.add_tensor(f"{blk}.ssm_conv1d.weight", rand(d_inner, MAMBA_D_CONV, std=0.3, dtype=np.float32))
            writer.add_tensor(f"{blk}.ssm_conv1d.bias", rand(d_inner, std=0.1, dtype=np.float32))
            writer.add_tensor(f"{blk}.ssm_x.weight", rand(dt_rank + 2 * MAMBA_D_STATE, d_inner, std=0.1))
            writer.add_tensor(f"{blk}.ssm_dt.weight", rand(d_inner, dt_rank, std=0.3))
            # Mamba's initialisation: softplus(dt bias) log-uniform in
            # [0.001, 0.1], A = -(1..d_state) and D = 1, so the state decays
            # slowly and far tokens still move the logits
            dt = np.exp(rng.uniform(np.log(0.001), np.log(0.1), d_inner))
            writer.add_tensor(f"{blk}.ssm_dt.bias", np.log(np.expm1(dt)).astype(np.float32))
            writer.add_tensor(f"{blk}.ssm_a", -np.tile(np.arange(1, MAMBA_D_STATE + 1, dtype=np.float32), (d_inner, 1)))
            writer.add_tensor(f"{blk}.ssm_d", ones(d_inner))
            writer.add_tensor(f"{blk}.ssm_out.weight", rand(n_embd, d_inner, std=0.1))
            continue
        writer.add_tensor(f"{blk}.attn_q.weight", rand(n_head * head_dim, n_embd, std=0.2))
        writer.add_tensor(f"{blk}.attn_k.weight", rand(n_head_kv * head_dim, n_embd, std=0.2))
        writer.add_tensor(f"{blk}.attn_v.weight", rand(n_head_kv * head_dim, n_embd, std=0.2))
        writer.add_tensor(f"{blk}.attn_output.weight", rand(n_embd, n_head * head_dim, std=0.1))
        if arch == "gemma3":  # Gemma 3 norms each head's q and k, and each sublayer's output
            writer.add_tensor(f"{blk}.attn_q_norm.weight", ones(head_dim))
            writer.add_tensor(f"{blk}.attn_k_norm.weight", ones(head_dim))
            writer.add_tensor(f"{blk}.post_attention_norm.weight", ones())
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones())
        writer.add_tensor(f"{blk}.ffn_gate.weight", rand(n_ff, n_embd, std=0.2))
        writer.add_tensor(f"{blk}.ffn_up.weight", rand(n_ff, n_embd, std=0.2))
        writer.add_tensor(f"{blk}.ffn_down.weight", rand(n_embd, n_ff, std=0.1))
        if arch == "gemma3":
            writer.add_tensor(f"{blk}.post_ffw_norm.weight", ones())
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
    parser.add_argument("--arch", choices=ARCHS, default="llama")
    parser.add_argument("--seed", type=int, default=0)
    for name, default in [("n_vocab", 400), ("n_embd", 64), ("n_layer", 2), ("n_head", 4),
                          ("n_head_kv", 2), ("n_ff", 128), ("n_ctx_train", 512), ("n_swa", 8)]:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=default)
    args = vars(parser.parse_args(argv))
    out = write_tiny_gguf(args.pop("out"), **args)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
