"""Chat templates: how a conversation becomes the text and the token ids a chat model was trained on.

A conversation is a list of ``{"role": "system" | "user" | "assistant", "content": str}`` dicts.
A :class:`ChatTemplate` is a Jinja template, rendered the way Hugging Face's
``apply_chat_template`` renders one: in ``jinja2.sandbox.ImmutableSandboxedEnvironment`` (the
template can call nothing outside it) with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension, ``raise_exception``, ``strftime_now``, a ``tojson`` that does not
escape HTML, and the tokenizer's special tokens (``bos_token``, ``eos_token`` ...) as variables.

Where a loaded model's template comes from (:func:`resolve_chat_template`), first match wins:

1. the ``chat_template=`` argument of ``load_model`` (a built-in name, a ``.jinja`` file or a
   Jinja string);
2. for a Meta folder: ``"llama3"`` when its tokenizer is LLaMA 3's tiktoken file; for a
   SentencePiece (LLaMA 1/2) folder, ``"llama2-chat"`` when the folder's name says ``chat``,
   else none (a base model has no chat format);
3. the tokenizer's own ``chat_template``: for a GGUF file (and the embedded model, which is
   one) that is the file's ``tokenizer.chat_template`` metadata, which transformers copies into
   the tokenizer it builds; for a Hugging Face folder, ``tokenizer_config.json`` or
   ``chat_template.jinja``.

Built-ins (:data:`BUILTIN_TEMPLATES`): ``"llama2-chat"`` (Meta's ``[INST] <<SYS>>`` format,
as Meta's reference ``chat_completion`` and Hugging Face's Llama-2-chat template produce it),
``"llama3"`` (LLaMA 3's header format) and ``"chatml"``.

>>> template = get_chat_template("chatml")
>>> template.render([{"role": "user", "content": "Hi"}])
'<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from workbench.common.errors import WorkbenchError
from workbench.models.tiktoken_tokenizer import LLAMA3_CHAT_TEMPLATE

if TYPE_CHECKING:
    import torch

ROLES = ("system", "user", "assistant")

# Hugging Face's template for meta-llama/Llama-2-*-chat-hf: the system prompt wrapped in
# <<SYS>> inside the first user turn, each exchange "<s>[INST] user [/INST] answer </s>".
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

BUILTIN_TEMPLATES = {"llama2-chat": LLAMA2_CHAT_TEMPLATE, "llama3": LLAMA3_CHAT_TEMPLATE, "chatml": CHATML_TEMPLATE}

HOW_TO_PASS = (
    "pass one: load_model(..., chat_template=...) or model.set_chat_template(...), with a "
    f"built-in name ({', '.join(BUILTIN_TEMPLATES)}), a path to a .jinja file, or a Jinja string"
)


class ChatTemplateError(WorkbenchError, ValueError):
    """A chat template cannot be read or fails to render; the message names the template and
    the message at fault."""


class ChatMessageError(ChatTemplateError):
    """A conversation is malformed (not a list of ``{"role", "content"}`` dicts with known roles);
    the message names the message's index."""


class NoChatTemplateError(WorkbenchError):
    """Chat formatting was asked of a model that has no chat template; the message says how to
    pass one."""


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and where it came from.

    Attributes:
        name: a built-in's name (``"llama2-chat"``), the model's name for its own template, a
            file's stem, or ``"custom"`` for a string.
        source: where it was found (``"built-in"``, ``"GGUF metadata tokenizer.chat_template
            (file)"``, ``"tokenizer chat_template (folder)"``, a file path, ``"string"`` ...).
        template: the Jinja text.

    >>> ChatTemplate("mine", "string", "{{ messages[0]['content'] }}").render([{"role": "user", "content": "x"}])
    'x'
    """

    name: str
    source: str
    template: str

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               special_tokens: Mapping[str, str] | None = None, **kwargs: Any) -> str:
        """The conversation as text (no tokenization): ``messages`` are validated first.

        Args:
            messages: a conversation.
            add_generation_prompt: end with the opening of an assistant turn (when the
                template has one), for the model to answer.
            special_tokens: template variables for the tokenizer's special tokens
                (``{"bos_token": "<s>", "eos_token": "</s>"}``).
            **kwargs: further template variables (as ``apply_chat_template``'s kwargs).

        Raises:
            ChatMessageError: a message lacks ``role`` / ``content`` or has an unknown role.
            ChatTemplateError: the template does not compile or fails to render (the message
                names the template and the first message at which rendering fails).
        """
        messages = validate_messages(messages)
        compiled = _compile(self.template, self.name, self.source)
        variables = {**(special_tokens or {}), **kwargs}
        try:
            return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
        except Exception as err:  # a template can fail with anything Jinja or Python raises
            index = _failing_message(compiled, messages, add_generation_prompt, variables)
            where = f" at message {index} (role {messages[index]['role']!r})" if index is not None else ""
            raise ChatTemplateError(
                f"chat template {self.name!r} ({self.source}) failed to render{where}: "
                f"{type(err).__name__}: {err}"
            ) from err


def get_chat_template(spec: str | os.PathLike | ChatTemplate) -> ChatTemplate:
    """A :class:`ChatTemplate` from a built-in name, a path to a Jinja file, or a Jinja string.

    Raises:
        ChatTemplateError: a ``.jinja`` path that does not exist, or a string that is none of
            the three (the message lists the built-ins).

    >>> get_chat_template("llama3").name, get_chat_template("llama3").source
    ('llama3', 'built-in')
    >>> get_chat_template("{{ messages[-1]['content'] }}").name
    'custom'
    """
    if isinstance(spec, ChatTemplate):
        return spec
    if isinstance(spec, str) and spec in BUILTIN_TEMPLATES:
        return ChatTemplate(spec, "built-in", BUILTIN_TEMPLATES[spec])
    text = str(spec)
    if isinstance(spec, os.PathLike) or ("{{" not in text and "{%" not in text):
        path = Path(text).expanduser()
        if path.is_file():
            return from_file(path)
        if isinstance(spec, os.PathLike) or path.suffix in (".jinja", ".j2", ".txt", ".json"):
            raise ChatTemplateError(f"{path}: chat template file not found")
        raise ChatTemplateError(
            f"chat template {text[:60]!r} is not a built-in ({', '.join(BUILTIN_TEMPLATES)}), "
            "an existing file, or a Jinja template (no {{ }} or {% %} in it)"
        )
    _compile(text, "custom", "string")  # a syntax error shows now, not at the first conversation
    return ChatTemplate("custom", "string", text)


def from_file(path: str | os.PathLike) -> ChatTemplate:
    """Read a chat template file: Jinja text, or a ``tokenizer_config.json``-style JSON file
    holding a ``chat_template`` key.

    Raises:
        ChatTemplateError: the file cannot be read, or a JSON file has no ``chat_template``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ChatTemplateError(f"{path}: cannot read chat template: {err}") from None
    if path.suffix == ".json":
        try:
            text = _default_template(json.loads(text).get("chat_template"))
        except (json.JSONDecodeError, AttributeError) as err:
            raise ChatTemplateError(f"{path}: not a JSON object with a chat_template: {err}") from None
        if not text:
            raise ChatTemplateError(f"{path}: has no chat_template key")
    _compile(text, path.stem, str(path))
    return ChatTemplate(path.stem, str(path), text)


def format_chat(template: ChatTemplate | None, tokenizer: Any, messages: Any, *, model_name: str = "the model",
                add_generation_prompt: bool = True, system: str | None = None) -> str:
    """``messages`` (a conversation, or a ``str`` as one user message) rendered with ``template``
    and the tokenizer's special tokens; ``system`` puts a system message first.

    Raises:
        NoChatTemplateError: ``template`` is None; the message says how to pass one.
        ChatMessageError, ChatTemplateError: as :meth:`ChatTemplate.render`.

    >>> format_chat(get_chat_template("chatml"), None, "Hi", system="Be brief.")
    '<|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if template is None:
        raise NoChatTemplateError(f"{model_name} has no chat template; {HOW_TO_PASS}")
    messages = validate_messages(messages, system)
    return template.render(messages, add_generation_prompt=add_generation_prompt,
                           special_tokens=special_tokens(tokenizer))


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> torch.Tensor:
    """Token id lists -> ``[batch, pos]`` LongTensor padded with ``pad_id`` on ``side``.

    >>> pad_rows([[1, 2, 3], [1]], 0, "left").tolist()
    [[1, 2, 3], [0, 0, 1]]
    """
    import torch

    width = max(len(r) for r in rows)
    padded = [[pad_id] * (width - len(r)) + list(r) if side == "left" else list(r) + [pad_id] * (width - len(r))
              for r in rows]
    return torch.tensor(padded, dtype=torch.long)


def validate_messages(messages: Any, system: str | None = None) -> list[dict[str, Any]]:
    """A conversation as a list of plain dicts, checked; a ``str`` is one user message.

    Args:
        messages: a list of ``{"role", "content"}`` dicts, or a string.
        system: a system prompt to put first (the conversation must not already have one).

    Raises:
        ChatMessageError: naming the index of the first bad message.

    >>> validate_messages("Hi", system="Be brief.")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatMessageError(
            f"a conversation is a non-empty list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
            + (" (empty)" if isinstance(messages, (list, tuple)) else "")
        )
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatMessageError(f"message {i} is a {type(message).__name__}, not a {{'role', 'content'}} dict")
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            raise ChatMessageError(f"message {i} has no {' or '.join(repr(k) for k in missing)}: {dict(message)!r}"[:300])
        if message["role"] not in ROLES:
            raise ChatMessageError(f"message {i} has role {message['role']!r}; roles are {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise ChatMessageError(f"message {i} content is a {type(message['content']).__name__}, not a str")
        out.append(dict(message))
    if system is not None:
        if out[0]["role"] == "system":
            raise ChatMessageError("system= was given but message 0 is already a system message")
        out.insert(0, {"role": "system", "content": str(system)})
    return out


def is_conversation(value: Any) -> bool:
    """Whether ``value`` is one conversation (a non-empty list of dicts with a ``role``).

    >>> is_conversation([{"role": "user", "content": "Hi"}]), is_conversation(["Hi"])
    (True, False)
    """
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(m, Mapping) and "role" in m for m in value
    )


def is_conversation_list(value: Any) -> bool:
    """Whether ``value`` is a list of conversations."""
    return isinstance(value, (list, tuple)) and bool(value) and all(is_conversation(c) for c in value)


def special_tokens(tokenizer: Any) -> dict[str, str]:
    """The special-token variables a template sees (``bos_token``, ``eos_token`` ...), as
    ``apply_chat_template`` passes them (the tokenizer's ``special_tokens_map``)."""
    tokens = getattr(tokenizer, "special_tokens_map", None) or {}
    return {key: str(value) for key, value in tokens.items() if value is not None}


def encode_chat_text(tokenizer: Any, text: str, add_bos: bool | None) -> list[int]:
    """Token ids of a rendered conversation, with exactly one BOS at most.

    Special-token strings in the text (``<s>``, ``<|im_start|>``, ``<|eot_id|>``) become their
    ids, as in ``apply_chat_template(..., tokenize=True)``; with a SentencePiece tokenizer each
    piece of text between them is encoded on its own, which gives Meta's ``chat_completion``
    ids. A text that begins with the BOS string gets no BOS added; otherwise BOS is prepended
    when the checkpoint's own tokenizer prepends it (``add_bos``; the bridge's copy of the
    tokenizer always would), as lm-evaluation-harness encodes a chat-rendered context.

    >>> encode_chat_text(model.tokenizer, "<s>[INST] Hi [/INST]", add_bos=True)[:2]  # doctest: +SKIP
    [1, 518]
    """
    ids = [int(i) for i in tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]]
    bos_id, bos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "bos_token", None)
    if add_bos and bos_id is not None and not (bos and text.startswith(str(bos))):
        ids = [int(bos_id)] + ids
    return ids


def token_ids_hash(ids: Sequence[int]) -> str:
    """A short fingerprint of exactly which token ids a model saw: the first 16 hex digits of
    the sha256 of the ids written as decimal numbers separated by single spaces.

    >>> token_ids_hash([1, 2, 3]) == hashlib.sha256(b"1 2 3").hexdigest()[:16]
    True
    """
    return hashlib.sha256(" ".join(str(int(i)) for i in ids).encode("ascii")).hexdigest()[:16]


def resolve_chat_template(tokenizer: Any, source: Any, chat_template: Any = None) -> ChatTemplate | None:
    """The chat template of a model loaded from ``source`` (see the module's resolution order).

    Args:
        tokenizer: the tokenizer the format's loader returned (before TransformerLens copies it).
        source: the model's :class:`~workbench.models.hooked.ModelSource`.
        chat_template: ``load_model``'s ``chat_template=`` argument, or None.

    Returns:
        The template, or None when the model has none.
    """
    if chat_template is not None:
        return get_chat_template(chat_template)
    fmt, path, name = source.format, str(source.path), source.name
    if fmt == "meta":
        kind = source.details.get("tokenizer")
        if kind == "tiktoken":
            return ChatTemplate("llama3", f"built-in, for LLaMA 3 Meta folder {path}", LLAMA3_CHAT_TEMPLATE)
        if kind == "sentencepiece" and "chat" in Path(path).name.lower():
            return ChatTemplate("llama2-chat", f"built-in, for LLaMA-2-chat Meta folder {path}", LLAMA2_CHAT_TEMPLATE)
        return None
    text = _default_template(getattr(tokenizer, "chat_template", None))
    if text and fmt in ("gguf", "embedded"):
        # transformers builds a GGUF's tokenizer with the file's tokenizer.chat_template
        # (gguf_format.read_gguf_chat_template reads the header itself).
        return ChatTemplate(name, f"GGUF metadata tokenizer.chat_template ({path})", text)
    if text:
        return ChatTemplate(name, f"tokenizer chat_template ({path})", text)
    return None


def _default_template(value: Any) -> str | None:
    """A tokenizer's ``chat_template``: a string, or a dict of named templates (``"default"``)."""
    if isinstance(value, Mapping):
        value = value.get("default")
    elif isinstance(value, list):  # [{"name": ..., "template": ...}] as tokenizer_config.json stores them
        value = next((t.get("template") for t in value if isinstance(t, Mapping) and t.get("name") == "default"), None)
    return value if isinstance(value, str) and value else None


def _failing_message(compiled, messages, add_generation_prompt, variables) -> int | None:
    """The index of the first message at which rendering the conversation's prefix fails."""
    for k in range(1, len(messages) + 1):
        try:
            compiled.render(messages=messages[:k], add_generation_prompt=add_generation_prompt, **variables)
        except Exception:
            return k - 1
    return None


@lru_cache(maxsize=64)
def _compile(template: str, name: str, source: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as err:
        raise ChatTemplateError(
            f"chat template {name!r} ({source}) is not valid Jinja: line {err.lineno}: {err.message}"
        ) from None


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    """The sandbox Hugging Face renders chat templates in (``_compile_jinja_template``)."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env
