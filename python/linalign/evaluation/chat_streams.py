"""Token lists of the two streams for one chat turn, exactly as
``Aligner.create_chat_completion`` builds them (chat template, principle
appended to the system message of stream P), with optional text after the
generation prompt (an assistant prefix such as "The best answer is").
"""
from __future__ import annotations

from typing import Any

__all__ = ["chat_messages", "stream_tokens"]


def chat_messages(user: str, system: str) -> list[dict[str, str]]:
    """One user turn, after a system message when ``system`` is not empty."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    return messages


def stream_tokens(aligner: Any, messages: list[dict[str, str]], principle: str,
                  assistant_prefix: str = "") -> tuple[list[int], list[int]]:
    """(P tokens, B tokens). BOS is added only where the template did not
    write one, as the Aligner's chat call decides."""
    # the Aligner's renderer also says whether the template wrote BOS, which
    # the public render_chat() does not return
    prompts = aligner._renderer.prompts(messages, principle)
    prompt_p = aligner.tokenize(prompts.prompt + assistant_prefix, add_bos=prompts.add_bos, special=True)
    prompt_b = aligner.tokenize(prompts.base_prompt + assistant_prefix, add_bos=prompts.add_bos, special=True)
    for name, tokens in (("prompt with the principle", prompt_p), ("prompt", prompt_b)):
        if len(tokens) >= aligner.n_ctx:
            raise ValueError(f"the {name} has {len(tokens)} tokens, more than the context window "
                             f"({aligner.n_ctx}); raise --n-ctx or shorten the item")
    return prompt_p, prompt_b
