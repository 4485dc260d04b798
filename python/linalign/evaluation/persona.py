"""The personal-preference protocol of Gao et al. (ALGORITHM.md, "The
authors' evaluation"): a question with four answers A-D, each written for a
different persona; the principle says who is asking; a method is right when
it picks that persona's answer.

Scoring reads the next-token logits at the first answer position: the chat
prompt is followed by a fixed assistant prefix (``ANSWER_PREFIX``, "The best
answer is") so that the next token is the letter. Each method's choice is
the argmax over the four letter tokens, with no nucleus mask (the candidates
are fixed):

* ``none``: stream B alone (the question, no principle);
* ``prompt``: stream P alone (the principle appended to the system message);
* ``la@r``: ``l_p + r * (l_p - l_0)``; ``la@0.0`` is ``prompt`` exactly.

With ``generate``, also the first letter A-D in a greedy aligned generation
of a few tokens after the same prefix (``gen:none``, ``gen:la@r``), as the
authors scored generations; the generated texts' fluency (rep-4 and
distinct-2, :mod:`.fluency`) is reported per generating method.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

from ..options import AUTO_RATIO
from ..principles import DEFAULT_POSITION
from .chat_streams import chat_messages, stream_tokens
from .data import LETTERS
from .fluency import fluency
from .scoring import auto_ratio, combine
from .stats import accuracy_summary

__all__ = ["DEFAULT_PRINCIPLE_TEMPLATE", "DEFAULT_SYSTEM", "ANSWER_PREFIX", "method_name", "persona_question",
           "letter_token_ids", "evaluate_persona"]

DEFAULT_PRINCIPLE_TEMPLATE = (
    "The person who asked the question is {persona}, your answer needs to take his(her) needs into account."
)
# Both streams get the same system message, so that P and B differ by the
# principle only (without one, some templates, SmolLM2's among them, put a
# default system message in B that P's principle would replace).
DEFAULT_SYSTEM = "You are a helpful assistant."
ANSWER_PREFIX = "The best answer is"
GENERATE_TOKENS = 4
_FIRST_LETTER = re.compile(r"\b([ABCD])\b")


def method_name(ratio: float | str) -> str:
    """``la@2.0``, ``la@0.5``, ``la@auto``: the key of a ratio in tables and JSON."""
    return f"la@{ratio}" if isinstance(ratio, str) else f"la@{float(ratio)!r}"


def persona_question(item: dict[str, Any]) -> str:
    """The user turn: the question, the four answers labelled A-D, and the ask."""
    options = "\n".join(f"{letter.upper()}. {item['answers'][letter]}" for letter in LETTERS)
    return (f"{item['question']}\n\nPossible answers:\n{options}\n\n"
            "Which answer fits the person asking best? Reply with the letter A, B, C or D.")


def principle_for(template: str, persona: str) -> str:
    return template.replace("{persona}", persona)


def letter_token_ids(aligner: Any, prefix: str = ANSWER_PREFIX) -> list[int]:
    """The token of each letter A-D as it follows ``prefix`` (" A" for most
    BPE vocabularies). Raises ValueError when a letter is not one token there."""
    base = aligner.tokenize(prefix, add_bos=False, special=False)
    ids = []
    for letter in "ABCD":
        for text in (f"{prefix} {letter}", f"{prefix}{letter}"):
            tokens = aligner.tokenize(text, add_bos=False, special=False)
            if len(tokens) == len(base) + 1 and tokens[:len(base)] == base:
                ids.append(tokens[-1])
                break
        else:
            raise ValueError(f"this model's tokenizer has no single token for the letter {letter!r} after "
                             f"{prefix!r}; the persona protocol scores one letter token per answer")
    if len(set(ids)) != 4:
        raise ValueError(f"the letters A-D map to non-distinct tokens {ids}")
    return ids


def _first_letter(text: str) -> str | None:
    match = _FIRST_LETTER.search(text)
    return match.group(1) if match else None


def evaluate_persona(
    aligner: Any,
    items: Sequence[dict[str, Any]],
    *,
    ratios: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0),
    principle_template: str = DEFAULT_PRINCIPLE_TEMPLATE,
    system: str = DEFAULT_SYSTEM,
    generate: bool = False,
    top_p: float = 0.8,
    progress: Callable[[int], None] | None = None,
    principle_position: str = DEFAULT_POSITION,
) -> dict[str, Any]:
    """Runs the protocol; returns the JSON-shaped result.

    ``n`` counts questions (items x 4 personas); ``accuracy``,
    ``interval`` (Wilson 95%) and ``choices`` (how often each letter was
    picked, to show position bias) are keyed by method; ``records`` holds
    every question's choices.
    """
    if "{persona}" not in principle_template:
        raise ValueError("the principle template must contain {persona}")
    if not items:
        raise ValueError("no items to evaluate")
    ratios = [r if r == AUTO_RATIO else float(r) for r in ratios]
    letter_ids = letter_token_ids(aligner)
    methods = ["none", "prompt"] + [method_name(r) for r in ratios]
    if generate:
        methods += ["gen:none"] + ["gen:" + method_name(r) for r in ratios]
    records = []
    for index, item in enumerate(items):
        messages = chat_messages(persona_question(item), system)
        none_text = ""
        for target in LETTERS:
            principle = principle_for(principle_template, item["personas"][target])
            prompt_p, prompt_b = stream_tokens(aligner, messages, principle, ANSWER_PREFIX, principle_position)
            # B is the same for the four personas of an item: the engine keeps
            # it in the KV cache and re-decodes only its last position
            logits_p, logits_b = aligner.eval_logits(prompt_p, prompt_b, 1, 1)
            l_p = logits_p[0, letter_ids].astype(np.float64)
            l_0 = logits_b[0, letter_ids].astype(np.float64)
            scores = {"none": l_0, "prompt": l_p}
            for r in ratios:
                # "auto": the step from the whole rows' divergence, not the four letters'
                step = auto_ratio(logits_p[0], logits_b[0]) if r == AUTO_RATIO else r
                scores[method_name(r)] = combine(l_p, l_0, step)
            choice = {m: "ABCD"[int(np.argmax(s))] for m, s in scores.items()}
            record: dict[str, Any] = {"item": index, "persona": target, "target": target.upper(), "choice": choice}
            if generate:
                texts = _generated_texts(aligner, prompt_p, prompt_b, ratios, top_p)
                if target == LETTERS[0]:  # no principle: the same for the four personas
                    none_text = _generate_text(aligner, prompt_b, prompt_b, 0.0, top_p)
                texts["gen:none"] = none_text
                choice.update({m: _first_letter(t) for m, t in texts.items()})
                record["generated"] = texts
            records.append(record)
            if progress is not None:
                progress(1)
    return {**_summary(records, methods, ratios, principle_template, system, generate, len(items)),
            "principle_position": principle_position}


def _generate_text(aligner: Any, prompt_p: list[int], prompt_b: list[int], ratio: float, top_p: float) -> str:
    out = aligner.create_completion(prompt_p, prompt_b, ratio=ratio, temperature=0.0, top_p=top_p,
                                    max_tokens=GENERATE_TOKENS, seed=0)
    return out["choices"][0]["text"]


def _generated_texts(aligner: Any, prompt_p: list[int], prompt_b: list[int], ratios: list[float],
                     top_p: float) -> dict[str, str]:
    # right after eval_logits on the same streams: both prompts are cached
    return {"gen:" + method_name(r): _generate_text(aligner, prompt_p, prompt_b, r, top_p) for r in ratios}


def _summary(records: list[dict[str, Any]], methods: list[str], ratios: list[float], template: str, system: str,
             generate: bool, n_items: int) -> dict[str, Any]:
    n = len(records)
    correct = {m: sum(rec["choice"][m] == rec["target"] for rec in records) for m in methods}
    choices = {m: {letter: sum(rec["choice"][m] == letter for rec in records) for letter in "ABCD"}
               for m in methods}
    for m in methods:
        missing = sum(rec["choice"][m] is None for rec in records)
        if missing:
            choices[m]["no letter"] = missing  # a generation with no A-D in it
    return {
        "protocol": "persona",
        "n": n,
        "n_items": n_items,
        "ratios": ratios,
        "methods": methods,
        "principle_template": template,
        "system": system,
        "answer_prefix": ANSWER_PREFIX,
        "generate": generate,
        **accuracy_summary({m: correct[m] for m in methods}, n),
        "choices": choices,
        "fluency": {m: fluency([rec["generated"][m] for rec in records]) for m in methods if m.startswith("gen:")},
        "records": records,
    }
