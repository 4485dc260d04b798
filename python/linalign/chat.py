"""Chat prompts for the two streams: P gets the principle appended to the
system message (one is added when there is none), B gets the messages as
given. Both are rendered with the GGUF's own chat template, the way
llama-cpp-python renders them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

__all__ = ["ROLES", "ChatPrompts", "ChatStreams", "with_principle", "validate_messages", "ChatRenderer"]

ROLES = ("system", "user", "assistant", "tool")

# Used only for a GGUF that carries no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class ChatPrompts:
    prompt: str        # stream P, with the principle
    base_prompt: str   # stream B, without it
    stop: list[str]    # the template's own stop strings
    add_bos: bool      # whether tokenization should add BOS (the template did not)


@dataclass(frozen=True)
class ChatStreams:
    """The prompts of a composed request (linalign.principles)."""

    prompts: list[str]  # one per principled stream, P first
    base_prompt: str    # the base stream: the negative principle, or none
    stop: list[str]
    add_bos: bool


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Checks an OpenAI-style message list; raises ValueError or TypeError."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or len(messages) == 0:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{i}] must be an object with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {role!r}")
        content = message.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):  # OpenAI content parts: this is a text-only model
            texts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind != "text":
                    raise ValueError(f"messages[{i}].content[{j}]: this model takes text only; a {kind!r} "
                                     "content part cannot be given to it")
                text = part.get("text", "")
                if not isinstance(text, str):
                    raise TypeError(f"messages[{i}].content[{j}].text must be a string")
                texts.append(text)
            content = "".join(texts)
        if not isinstance(content, str):
            raise TypeError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        checked.append({**message, "content": content})
    return checked


def with_principle(messages: Sequence[Mapping[str, Any]], principle: str,
                   position: str = "system") -> list[dict[str, Any]]:
    """The messages of a principled stream: the principle appended to the
    system message ("system"; one is added when there is none), or to the
    last message before the assistant's turn, whatever its role ("end",
    after the history: after a tool's result too, not before it)."""
    out = [dict(m) for m in messages]
    if not principle:
        return out
    if position == "end":
        # the assistant's own message at the end is a reply being continued:
        # the principle goes in the message it answers
        last = next((i for i in range(len(out) - 1, -1, -1) if out[i]["role"] != "assistant"), None)
        if last is None:
            raise ValueError("principle_position 'end' appends the principle to the last message before the "
                             "assistant's turn, and messages has only assistant messages")
        content = out[last].get("content") or ""
        out[last]["content"] = f"{content}\n\n{principle}" if content else principle
        return out
    if out and out[0]["role"] == "system":
        system = out[0]["content"]
        out[0]["content"] = f"{system}\n{principle}" if system else principle
    else:
        out.insert(0, {"role": "system", "content": principle})
    return out


class ChatRenderer:
    """Renders messages with a model's chat template."""

    def __init__(self, template: str | None, *, bos_token: str, eos_token: str, name: str = "") -> None:
        self.name = name or "the model's"
        self._formatter = Jinja2ChatFormatter(
            template=template or CHATML_TEMPLATE, eos_token=eos_token, bos_token=bos_token, add_generation_prompt=True
        )

    @classmethod
    def of_model(cls, model: Any, template: str | None, *, name: str = "") -> "ChatRenderer":
        """The renderer of a ``linalign._core.Model``'s ``template``, with its BOS and EOS spelled out."""
        def spelled(token: int) -> str:
            return model.token_to_piece(token, True).decode("utf-8", "ignore")
        return cls(template, bos_token=spelled(model.bos), eos_token=spelled(model.eos), name=name)

    def render(self, messages: Sequence[Mapping[str, Any]],
               tools: Sequence[Mapping[str, Any]] | None = None) -> tuple[str, list[str], bool]:
        """``tools`` (OpenAI's shape) go to the template as transformers
        passes them, for templates that render them (linalign.tool_calls)."""
        result = self._formatter(messages=list(messages), tools=list(tools) if tools else None)
        stop = result.stop or []
        if isinstance(stop, str):
            stop = [stop]
        return result.prompt, [s for s in stop if s], not result.added_special

    def prompts(self, messages: Any, principle: str) -> ChatPrompts:
        checked = validate_messages(messages)
        prompt, stop, add_bos = self.render(with_principle(checked, principle))
        base_prompt, _, _ = self.render(checked)
        return ChatPrompts(prompt=prompt, base_prompt=base_prompt, stop=stop, add_bos=add_bos)

    def stream_prompts(self, messages: Any, texts: Sequence[str], base_text: str = "",
                       position: str = "system", tools: Sequence[Mapping[str, Any]] | None = None) -> ChatStreams:
        """One prompt per principle in ``texts`` ("" : the messages as
        given) and the base stream's, with ``base_text`` as its principle,
        each placed at ``position`` (linalign.principles.POSITIONS)."""
        checked = validate_messages(messages)
        prompts, stop, add_bos = [], [], True
        for i, text in enumerate(texts):
            prompt, s, b = self._render_with(checked, text, position, tools)
            prompts.append(prompt)
            if i == 0:
                stop, add_bos = s, b
        base_prompt, _, _ = self._render_with(checked, base_text, position, tools)
        return ChatStreams(prompts=prompts, base_prompt=base_prompt, stop=stop, add_bos=add_bos)

    def _render_with(self, messages: list[dict[str, Any]], principle: str, position: str, tools=None):
        try:
            return self.render(with_principle(messages, principle, position), tools)
        except ValueError as e:
            if not principle or position != "system":
                raise
            self.render(messages, tools)  # raises if the messages themselves do not fit the template
            # they do: it is the system message the template refuses
            raise ValueError(f"principle_position 'system': {self.name} chat template refuses the principle "
                             f"as a system message ({e}); use principle_position='end', which appends it to "
                             "the last message before the assistant's turn") from None
