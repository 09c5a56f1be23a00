"""A Hugging Face tokenizer that encodes and decodes exactly as Meta's SentencePiece model does.

Meta's LLaMA release ships a bare SentencePiece ``tokenizer.model`` and tokenizes with
``[bos] + sp.encode(text)``. transformers 5's ``LlamaTokenizer(vocab_file=...)`` rebuilds a
``tokenizers`` BPE from the model file, and for BPE models with byte fallback it silently returns
no tokens at all, so it cannot be trusted here. :class:`SentencePieceLlamaTokenizer` is a slow
(pure Python) tokenizer that hands every string straight to the SentencePiece processor, so its
ids are Meta's ids by construction, while still offering the Hugging Face API (padding, batching,
``decode``, special tokens) that ``generate`` and TransformerLens rely on.
"""

from __future__ import annotations

import os
from pathlib import Path

import sentencepiece as spm
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

from workbench.common.errors import CheckpointError


class SentencePieceLlamaTokenizer(SentencePieceBackend):
    """LLaMA tokenizer over a SentencePiece model: ``[bos] + sp.encode(text)``, nothing else.

    - Encoding: ``tok(text)["input_ids"] == [bos_id] + sp.encode(text)``; with
      ``add_special_tokens=False`` there is no BOS. Strings such as ``"<s>"`` inside the text are
      encoded literally, as Meta's own tokenizer does (pass ``split_special_tokens=False`` to a
      call to have them recognised as special tokens instead, the Hugging Face way).
    - Decoding: runs of ordinary ids go through ``sp.decode``, so byte-fallback pieces come back
      as the original UTF-8 (newlines, emoji, accents); special ids render as their token text
      unless ``skip_special_tokens=True``.
    - Special tokens: BOS/EOS/UNK come from the SentencePiece model's own ids. LLaMA has no pad
      piece, so padding uses UNK (or EOS when there is no UNK): always a valid id that the
      attention mask hides.

    Args:
        vocab_file: path of the SentencePiece ``tokenizer.model``.
        add_bos_token: prepend BOS when ``add_special_tokens=True`` (LLaMA was trained so).
        add_eos_token: append EOS as well (off for LLaMA).
        **kwargs: passed to :class:`~transformers.PreTrainedTokenizer` (``padding_side``,
            ``model_max_length``, ...).

    >>> tok = SentencePieceLlamaTokenizer("tokenizer.model")  # doctest: +SKIP
    >>> ids = tok("Hello")["input_ids"]  # doctest: +SKIP
    >>> ids == [tok.bos_token_id] + tok.sp_model.encode("Hello")  # doctest: +SKIP
    True
    """

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        *,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        **kwargs,
    ):
        vocab_file = str(vocab_file)
        sp = _load_processor(vocab_file)

        # Special tokens are the pieces at the model's own ids; an id of -1 means "none".
        def piece(idx: int) -> str | None:
            return sp.id_to_piece(idx) if 0 <= idx < sp.get_piece_size() else None

        bos, eos, unk = piece(sp.bos_id()), piece(sp.eos_id()), piece(sp.unk_id())
        pad = piece(sp.pad_id()) or unk or eos
        kwargs.setdefault("bos_token", bos)
        kwargs.setdefault("eos_token", eos)
        kwargs.setdefault("unk_token", unk)
        kwargs.setdefault("pad_token", pad)
        if add_bos_token and kwargs["bos_token"] is None:
            raise CheckpointError(f"{vocab_file}: SentencePiece model has no BOS piece (bos_id=-1)")
        if add_eos_token and kwargs["eos_token"] is None:
            raise CheckpointError(f"{vocab_file}: SentencePiece model has no EOS piece (eos_id=-1)")
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        pattern = {(True, False): "bos", (False, True): "eos", (True, True): "bos_eos"}
        kwargs.setdefault(
            "special_tokens_pattern", pattern.get((add_bos_token, add_eos_token), "none")
        )
        # Meta's tokenizer treats "<s>" in text as plain characters.
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        # TransformerLens reads name_or_path (and add_bos_token) from init_kwargs; without them
        # it tries to re-download the tokenizer by name.
        kwargs.setdefault("name_or_path", str(Path(vocab_file).parent))
        # legacy=True keeps the model's dummy-prefix behaviour untouched (legacy=False would
        # rewrite the proto and change the ids); a saved tokenizer_config.json carries it too.
        kwargs.pop("legacy", None)
        super().__init__(
            vocab_file=vocab_file,
            legacy=True,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            **kwargs,
        )

    # ---- encoding -------------------------------------------------------------------------

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """SentencePiece pieces of ``text`` (no BOS), e.g. ``['▁Hello', '<0x0A>']``."""
        split_special_tokens = kwargs.pop("split_special_tokens", self.split_special_tokens)
        if not split_special_tokens:
            return super().tokenize(text, split_special_tokens=False, **kwargs)
        text, _ = self.prepare_for_tokenization(text, **kwargs)
        # One call on the whole string: splitting it first (as the base class does around
        # special tokens) would add a dummy-prefix "▁" to every fragment and change the ids.
        return self.sp_model.encode(text, out_type=str)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    # ---- decoding -------------------------------------------------------------------------

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs,
    ) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        text = self._render(ids, skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join pieces into text the way ``sp.decode`` would (bytes reassembled, ``▁`` -> space)."""
        return self._render([self._convert_token_to_id_with_added_voc(t) for t in tokens], False)

    def _render(self, ids: list[int], skip_special_tokens: bool) -> str:
        # Ordinary ids are decoded in runs so multi-byte characters split over byte pieces are
        # reassembled; special and added tokens are spliced in between (sp.decode would drop
        # control pieces such as <s> silently).
        special = set(self.all_special_ids)
        n_pieces = self.sp_model.get_piece_size()
        out: list[str] = []
        run: list[int] = []
        for idx in ids:
            if idx in special or idx >= n_pieces or idx < 0:
                if run:
                    out.append(self.sp_model.decode(run))
                    run = []
                if not (skip_special_tokens and idx in special):
                    out.append(self.convert_ids_to_tokens(idx) if 0 <= idx < len(self) else "")
            else:
                run.append(idx)
        if run:
            out.append(self.sp_model.decode(run))
        return "".join(out)


def _load_processor(vocab_file: str) -> spm.SentencePieceProcessor:
    """Load a SentencePiece model, turning its C++ errors into a :class:`CheckpointError`."""
    if not os.path.isfile(vocab_file):
        raise CheckpointError(f"{vocab_file}: tokenizer file not found")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(vocab_file)
    except (RuntimeError, OSError) as err:
        raise CheckpointError(
            f"{vocab_file}: not a valid SentencePiece model: {str(err).splitlines()[0]}"
        ) from None
    return sp


def load_sentencepiece_tokenizer(path: str | os.PathLike, **kwargs) -> SentencePieceLlamaTokenizer:
    """Build a :class:`SentencePieceLlamaTokenizer` for a ``tokenizer.model`` file.

    Args:
        path: the SentencePiece model file.
        **kwargs: passed to :class:`SentencePieceLlamaTokenizer`.

    Returns:
        The tokenizer.

    Raises:
        CheckpointError: the file is missing or not a SentencePiece model.

    >>> tok = load_sentencepiece_tokenizer("tokenizer.model")  # doctest: +SKIP
    >>> tok.decode(tok("Café\\n🦙", add_special_tokens=False)["input_ids"])  # doctest: +SKIP
    'Café\\n🦙'
    """
    return SentencePieceLlamaTokenizer(str(path), **kwargs)
