"""Write a random-weight GGUF model: llama, gemma3 or mamba architecture.

The weights are random (deterministic for a given seed), so the text is
gibberish, but logits are finite and clearly spread out, so distinct tokens
get distinct scores: fast tests of the sampler math and the engine on a real
llama.cpp model, without the 98 MB default model. Given real shapes, it
writes stand-ins of larger models for speed measurements (a forward costs
what the shapes make it cost, whatever the weights): the synthetic 0.5B-class
model (benchmarks/make_synthetic_model.py) and the tiny wide-vocabulary
models of ``linalign bench overhead``.

The other architectures give llama.cpp's other kinds of memory to test the
engine's prompt cache on (tests/test_memory_kinds.py): gemma3 a sliding-window
KV cache (every other layer attends over the last n_swa positions only, whose
cells llama.cpp may drop), mamba a recurrent state (one per sequence, which
holds only its last position and cannot be cut back).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import gguf

from .chat_templates import CHAT_TEMPLATE, GEMMA3_CHAT_TEMPLATE
from .vocab import BOS_ID, EOS_ID, UNK_ID, build_vocab

__all__ = ["ARCHS", "write_tiny_gguf"]

ARCHS = ("llama", "gemma3", "mamba")
MAMBA_D_CONV, MAMBA_D_STATE = 4, 16  # mamba: convolution width and state size per channel, Mamba's defaults


def write_tiny_gguf(path, *, arch: str = "llama", n_vocab: int = 400, n_embd: int = 64, n_layer: int = 2,
                    n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128, n_ctx_train: int = 512, n_swa: int = 8,
                    seed: int = 0, f16: bool = False, tie_output: bool = False, name: str = "linalign-tiny-random",
                    chat_template: str | None = None, eos_never_chosen: bool = False,
                    favoured_token: str | None = None) -> Path:
    """Write a random-weight GGUF of architecture ``arch`` (one of ARCHS) to
    `path` (F32, or F16 with ``f16``; with ``tie_output`` the output layer is
    the token embedding, as in small models; ``chat_template`` a Jinja chat
    template, such as one of TEMPLATES or TOOL_TEMPLATES: by default CHAT_TEMPLATE, or
    GEMMA3_CHAT_TEMPLATE for gemma3) and return it as a Path.

    ``eos_never_chosen``: the end-of-sequence token's output row is zero, so
    its logit is 0 while the largest of the others is several standard
    deviations (2.4) above it: greedy decoding, plain or aligned, never
    picks it, and a benchmark generates every token it asks for.

    ``favoured_token``: a token added to the vocabulary (the last id, matched
    whole by the tokenizer) that greedy decoding picks wherever it may: every
    token's embedding carries a steady value in hidden dimension 0, which
    only this token's output row reads, lifting its logit far above the
    others' (about 40 against a largest other of about 10). A grammar that
    excludes it picks among the rest as ever. For a model that opens a tool
    call by itself (``"<tool_call>"`` with a hermes template).

    gemma3: layers 0, 2, 4, ... attend over a sliding window of the last
    ``n_swa`` positions, the others over all of them (Gemma 3 has five
    sliding layers to one global; one to one lets two layers hold both).
    mamba: n_head, n_head_kv, n_ff and n_swa are unused; the inner size is
    2 n_embd, the one expansion llama.cpp runs."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if favoured_token is not None and (tie_output or arch != "llama"):
        raise ValueError("favoured_token needs arch llama with its own output layer (tie_output False)")
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

    added = (favoured_token,) if favoured_token is not None else ()
    tokens, scores, token_types = build_vocab(n_vocab, fill=True, added=added)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
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
    token_embd = rand(n_vocab, n_embd, std=embd_std)
    if eos_never_chosen and tie_output:
        token_embd[EOS_ID] = 0
    if favoured_token is not None:
        # the layers add noise of std ~1.3 to it: it stays ~8, ~4 after the norm
        token_embd[:, 0] = 8.0
    writer.add_tensor("token_embd.weight", token_embd)
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
        output = rand(n_vocab, n_embd, std=0.3)  # drawn last, as ever: a seed gives the weights it always gave
        if eos_never_chosen:
            output[EOS_ID] = 0
        if favoured_token is not None:
            output[:, 0] = 0  # only the favoured row reads the steady dimension
            output[n_vocab - 1, 0] = 10.0
        writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
