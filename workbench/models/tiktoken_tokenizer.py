"""LLaMA 3's tokenizer: Meta's tiktoken BPE rank file behind the Hugging Face tokenizer API.

From LLaMA 3 on, the ``tokenizer.model`` in Meta's release folders is no longer SentencePiece
but a tiktoken rank file: one ``<base64 token bytes> <rank>`` line per byte-level BPE token
(128,000 of them). Meta's reference tokenizer splits text with a cl100k-style regular
expression, merges bytes by rank with tiktoken, and appends 256 special tokens after the base
vocabulary (``<|begin_of_text|>`` = 128000, ``<|eot_id|>`` = 128009, ...).

:class:`TiktokenLlamaTokenizer` hands every string to a ``tiktoken.Encoding`` built the same
way, so its ids are tiktoken's ids by construction, while offering the Hugging Face API
(``__call__``, padding, ``decode``, ``apply_chat_template``) that TransformerLens and
``generate`` use. Token strings use the GPT-2 byte-to-unicode alphabet, as Hugging Face's own
LLaMA-3 tokenizer does, so ``convert_ids_to_tokens`` shows the same pieces (``'Ġthe'``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
from pathlib import Path

import tiktoken
from transformers import AddedToken, PreTrainedTokenizer

from workbench.common.errors import CheckpointError

# LLaMA 3's pre-tokenizer: contractions, letter runs with one optional leading non-letter,
# digit groups of at most three, punctuation runs, newlines, other whitespace.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
N_SPECIAL = 256

# Meta's chat format: a header per message, the content stripped, <|eot_id|> after each turn,
# and an open assistant header when a reply is wanted.
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

_RANK_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} \d+$")


def llama3_special_tokens(version: str = "3.1") -> list[str]:
    """The 256 special tokens after the base vocabulary, in id order, as Meta names them.

    LLaMA 3.0 named ten of them (the others are ``<|reserved_special_token_N|>``); LLaMA 3.1
    renamed a few reserved slots (``<|finetune_right_pad_id|>``, ``<|eom_id|>``,
    ``<|python_tag|>`` ...). The ids of the tokens both share are the same.

    Args:
        version: ``"3.0"`` or ``"3.1"`` (3.1, 3.2 and 3.3 share the list).

    Returns:
        256 token strings; index ``i`` has id ``n_base_tokens + i``.

    >>> tokens = llama3_special_tokens("3.1")
    >>> tokens[0], tokens[9], tokens[-1], len(tokens)
    ('<|begin_of_text|>', '<|eot_id|>', '<|reserved_special_token_246|>', 256)
    >>> llama3_special_tokens("3.0")[8]
    '<|reserved_special_token_4|>'
    """
    if version == "3.0":
        named = ["<|begin_of_text|>", "<|end_of_text|>"]
        named += [f"<|reserved_special_token_{i}|>" for i in range(4)]
        named += ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>"]
        named += ["<|eot_id|>"]
        first_reserved = 5
    elif version == "3.1":
        named = [
            "<|begin_of_text|>", "<|end_of_text|>",
            "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
            "<|finetune_right_pad_id|>", "<|step_id|>",
            "<|start_header_id|>", "<|end_header_id|>",
            "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
        ]  # fmt: skip
        first_reserved = 2
    else:
        raise ValueError(f"unknown LLaMA 3 tokenizer version {version!r}; expected '3.0' or '3.1'")
    reserved = [
        f"<|reserved_special_token_{first_reserved + i}|>" for i in range(N_SPECIAL - len(named))
    ]
    return named + reserved


def is_tiktoken_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a tiktoken rank file (its first line is ``<base64> <rank>``).

    A SentencePiece model is a binary protobuf, so the first line tells the two apart.

    >>> is_tiktoken_file("/nonexistent")
    False
    """
    try:
        with open(path, "rb") as f:
            first = f.readline(4096).rstrip(b"\r\n")
    except OSError:
        return False
    return bool(_RANK_LINE.match(first))


def read_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a tiktoken rank file, checking every line (clear errors instead of tiktoken's).

    Args:
        path: the ``tokenizer.model`` file.

    Returns:
        token bytes -> rank; ranks are exactly ``0..N-1``.

    Raises:
        CheckpointError: a line is malformed, a token or rank repeats, or ranks have gaps.
    """
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            if not _RANK_LINE.match(line):
                raise CheckpointError(
                    f"{path}: line {lineno} is not '<base64 token> <rank>': {line[:60]!r}"
                )
            token_b64, rank = line.split()
            try:
                token = base64.b64decode(token_b64, validate=True)
            except binascii.Error as err:
                raise CheckpointError(f"{path}: line {lineno}: bad base64: {err}") from None
            if token in ranks:
                raise CheckpointError(f"{path}: line {lineno}: token {token!r} appears twice")
            ranks[token] = int(rank)
    if not ranks:
        raise CheckpointError(f"{path}: empty tiktoken rank file")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(f"{path}: ranks are not exactly 0..{len(ranks) - 1}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} single bytes have no token (e.g. {bytes([missing[0]])!r}); "
            "byte-level BPE needs all 256"
        )
    return ranks


def _byte_alphabet() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map: printable Latin-1 bytes stand for
    # themselves, the rest are shifted to code points from 256 on (space becomes 'Ġ').
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_TO_CHAR = _byte_alphabet()
_TO_BYTE = {c: b for b, c in _TO_CHAR.items()}


class TiktokenLlamaTokenizer(PreTrainedTokenizer):
    """LLaMA 3 tokenizer over a tiktoken rank file: ``[<|begin_of_text|>] + encode(text)``.

    - Encoding: ``tok(text)["input_ids"] == [bos] + enc.encode_ordinary(text)`` with exactly
      one ``<|begin_of_text|>``; ``add_special_tokens=False`` gives no BOS. Special-token
      strings written in the text (``"<|eot_id|>"``) become the special token, as in Hugging
      Face's LLaMA-3 tokenizer, so a rendered chat template encodes correctly; pass
      ``split_special_tokens=True`` to encode them as plain text, as Meta's ``encode`` does.
    - Decoding: ids go back to bytes through tiktoken and are decoded as UTF-8 (invalid bytes
      become U+FFFD); special ids render as their names unless ``skip_special_tokens=True``.
    - Padding uses ``<|finetune_right_pad_id|>`` (LLaMA 3.1) or ``<|end_of_text|>`` (3.0).

    Args:
        vocab_file: the tiktoken ``tokenizer.model``.
        version: ``"3.0"`` or ``"3.1"``: which special-token names (see
            :func:`llama3_special_tokens`).
        add_bos_token: prepend ``<|begin_of_text|>`` when ``add_special_tokens=True``.
        **kwargs: passed to :class:`~transformers.PreTrainedTokenizer`.

    >>> tok = TiktokenLlamaTokenizer("Llama3.1-8B/tokenizer.model")  # doctest: +SKIP
    >>> tok("Hello")["input_ids"]  # doctest: +SKIP
    [128000, 9906]
    """

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        *,
        version: str = "3.1",
        add_bos_token: bool = True,
        **kwargs,
    ):
        vocab_file = str(vocab_file)
        if not os.path.isfile(vocab_file):
            raise CheckpointError(f"{vocab_file}: tokenizer file not found")
        ranks = read_ranks(vocab_file)
        specials = llama3_special_tokens(version)
        n_base = len(ranks)
        self.vocab_file = vocab_file
        self.version = version
        self.encoding = tiktoken.Encoding(
            name=f"llama{version}:{Path(vocab_file).name}",
            pat_str=LLAMA3_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={token: n_base + i for i, token in enumerate(specials)},
        )
        self._n_base = n_base
        self._base_encoder = {
            "".join(_TO_CHAR[b] for b in token): rank for token, rank in ranks.items()
        }
        self._base_decoder = {rank: text for text, rank in self._base_encoder.items()}
        self.add_bos_token = add_bos_token
        pad = "<|finetune_right_pad_id|>" if "<|finetune_right_pad_id|>" in specials else None
        kwargs.setdefault("bos_token", "<|begin_of_text|>")
        kwargs.setdefault("eos_token", "<|end_of_text|>")
        kwargs.setdefault("pad_token", pad or "<|end_of_text|>")
        kwargs.setdefault("special_tokens_pattern", "bos" if add_bos_token else "none")
        kwargs.setdefault("split_special_tokens", False)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        kwargs.setdefault("chat_template", LLAMA3_CHAT_TEMPLATE)
        # TransformerLens reads name_or_path and add_bos_token from init_kwargs; without them it
        # tries to re-download the tokenizer by name.
        kwargs.setdefault("name_or_path", str(Path(vocab_file).parent))
        kwargs["added_tokens_decoder"] = {
            n_base + i: AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
            for i, t in enumerate(specials)
        }
        super().__init__(vocab_file=vocab_file, version=version, add_bos_token=add_bos_token, **kwargs)

    # ---- vocabulary -----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Base tokens plus the 256 special tokens (Meta's ``n_words``)."""
        return self.encoding.n_vocab

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id for every base and special token."""
        vocab = dict(self._base_encoder)
        vocab.update(self.encoding._special_tokens)
        return vocab

    def _convert_token_to_id(self, token: str) -> int:
        idx = self._base_encoder.get(token)
        if idx is None:
            raise KeyError(f"{token!r} is not a token of {self.vocab_file}")
        return idx

    def _convert_id_to_token(self, index: int) -> str:
        if index in self._base_decoder:
            return self._base_decoder[index]
        return self.encoding.decode_single_token_bytes(index).decode("utf-8", "replace")

    # ---- encoding -------------------------------------------------------------------------

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """Byte-level token strings of ``text`` (no BOS), e.g. ``['Hello', 'Ġworld']``."""
        split_special_tokens = kwargs.pop("split_special_tokens", self.split_special_tokens)
        if split_special_tokens:
            ids = self.encoding.encode_ordinary(text)
        else:
            ids = self.encoding.encode(text, allowed_special="all")
        return [self._convert_id_to_token(i) for i in ids]

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [self._base_decoder[i] for i in self.encoding.encode_ordinary(text)]

    # ---- decoding -------------------------------------------------------------------------

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs,
    ) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        if skip_special_tokens:
            ids = [i for i in ids if i < self._n_base]
        ids = [i for i in ids if 0 <= i < self.encoding.n_vocab]
        return self.encoding.decode(ids, errors="replace")

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join token strings back into text (byte alphabet undone, UTF-8 reassembled)."""
        out = bytearray()
        for token in tokens:
            if token in self.encoding._special_tokens:
                out += token.encode("utf-8")
            else:
                out += bytes(_TO_BYTE[c] for c in token)
        return out.decode("utf-8", "replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        """Copy the rank file into ``save_directory``."""
        name = (filename_prefix + "-" if filename_prefix else "") + "tokenizer.model"
        target = Path(save_directory) / name
        if Path(self.vocab_file).resolve() != target.resolve():
            shutil.copyfile(self.vocab_file, target)
        return (str(target),)


def load_tiktoken_tokenizer(path: str | os.PathLike, **kwargs) -> TiktokenLlamaTokenizer:
    """Build a :class:`TiktokenLlamaTokenizer` for a LLaMA-3 ``tokenizer.model``.

    Args:
        path: the rank file.
        **kwargs: passed to :class:`TiktokenLlamaTokenizer` (``version``, ``model_max_length``).

    Returns:
        The tokenizer.

    Raises:
        CheckpointError: the file is missing or not a valid rank file.

    >>> tok = load_tiktoken_tokenizer("Llama3.1-8B/tokenizer.model")  # doctest: +SKIP
    >>> tok.decode(tok("Café\\n🦙", add_special_tokens=False)["input_ids"])  # doctest: +SKIP
    'Café\\n🦙'
    """
    return TiktokenLlamaTokenizer(str(path), **kwargs)
