"""Hugging Face checkpoints: a local folder (``config.json`` + weights) or a hub id.

A folder is read with ``config.json`` checked to be a LLaMA-architecture model, its
tokenizer, and its weights: ``*.safetensors`` (checked for truncation, then loaded by
transformers, which can place layers over devices itself) or PyTorch ``*.bin`` files (read with
``weights_only=True`` through :func:`~workbench.models.safe_load.load_torch_file`, never
unpickling code). ``trust_remote_code`` is never set; an ``auto_map`` asking for remote code is
ignored with a warning.

A hub id (``org/name``) that is no local path is handed to ``from_pretrained`` for users who are
online; these machines are not, and get a :class:`~workbench.common.errors.CheckpointError`
saying so.

The two rows of :data:`workbench.models.formats.FORMATS` this module provides are
:func:`detect_hf` / :func:`load_hf_format` and :func:`detect_hub` / :func:`load_hub_format`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from workbench.common.errors import CheckpointError
from workbench.models.hooked import ModelSource
from workbench.models.safe_load import load_torch_file
from workbench.models.verify import checked_source, structure_problem

CONFIG_FILE = "config.json"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


# --------------------------------------------------------------------------------------------
# Local folders
# --------------------------------------------------------------------------------------------


def detect_hf(source: str | Path | None) -> bool:
    """Whether ``source`` is a Hugging Face folder: one holding ``config.json``.

    Args:
        source: what was passed to ``load_model``.

    Returns:
        True for a folder with a ``config.json``.

    >>> detect_hf(None), detect_hf("/nonexistent")
    (False, False)
    """
    if source is None:
        return False
    folder = Path(source).expanduser()
    return folder.is_dir() and (folder / CONFIG_FILE).is_file()


def load_hf_format(
    path: str | Path, *, dtype: torch.dtype, placement: dict | None = None, verify: bool = True
) -> tuple[LlamaForCausalLM, Any, ModelSource]:
    """The format registry's loader for Hugging Face folders: checklist first, then the weights.

    Args:
        path: the folder.
        dtype: dtype of the returned model's weights.
        placement: accelerate placement (``device_map``, ``max_memory``, ``offload_folder``) for
            safetensors weights, or None for the CPU.
        verify: check ``checklist.chk`` / ``*.sha256`` when present.

    Returns:
        ``(model, tokenizer, source)``.

    >>> model, tokenizer, source = load_hf_format("llama-7b-hf", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> source.format  # doctest: +SKIP
    'hf'
    """
    path = Path(path)
    source = checked_source("hf", path, verify=verify)
    model, tokenizer = load_hf_folder(path, dtype, placement)
    return model, tokenizer, source


def load_hf_folder(
    folder: Path, dtype: torch.dtype, placement: dict | None = None
) -> tuple[LlamaForCausalLM, Any]:
    """Load a Hugging Face LLaMA folder as a model and its tokenizer.

    Args:
        folder: holds ``config.json``, a tokenizer and ``*.safetensors`` or ``*.bin`` weights.
        dtype: dtype of the returned model's weights.
        placement: accelerate placement for safetensors weights (``.bin`` weights always load
            on the CPU; ``load_model`` dispatches them afterwards).

    Returns:
        ``(model, tokenizer)``.

    Raises:
        CheckpointError: the config is not a LLaMA, the tokenizer or weights cannot be read, a
            weight file is truncated or unsafe, or the weights do not fit the config.

    >>> model, tokenizer = load_hf_folder(Path("llama-7b-hf"), torch.float32)  # doctest: +SKIP
    """
    config = read_llama_config(folder)
    tokenizer = load_hf_tokenizer(folder)
    safetensors = sorted(folder.glob("*.safetensors"))
    bins = sorted(folder.glob("*.bin"))
    if not safetensors and not bins:
        raise CheckpointError(f"{folder}: config.json but no *.safetensors or *.bin weights")
    if not safetensors:
        return _model_from_torch_bins(folder, bins, config, dtype), tokenizer
    for file in safetensors:
        if problem := structure_problem(file):
            raise CheckpointError(f"{file}: {problem}")
    try:
        model = LlamaForCausalLM.from_pretrained(
            folder, config=config, dtype=dtype, use_safetensors=True, **(placement or {})
        )
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{folder}: cannot load weights: {str(err).splitlines()[0]}") from err
    return model, tokenizer


def read_llama_config(folder: Path) -> LlamaConfig:
    """``config.json`` as a ``LlamaConfig``, refusing other architectures and remote code.

    Args:
        folder: the folder holding ``config.json``.

    Returns:
        The config, without any ``auto_map`` (remote code is never run).

    Raises:
        CheckpointError: the file is not JSON, not a LLaMA-architecture config, or invalid.

    >>> read_llama_config(Path("llama-7b-hf")).num_hidden_layers  # doctest: +SKIP
    32
    """
    file = folder / CONFIG_FILE
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None
    model_type = raw.get("model_type")
    if model_type not in ("llama", None) and "LlamaForCausalLM" not in raw.get("architectures", []):
        raise CheckpointError(
            f"{file}: model_type {model_type!r} is not a LLaMA-architecture model "
            f"(workbench supports the LLaMA family: model_type 'llama')"
        )
    if raw.get("auto_map"):
        logging.getLogger(__name__).warning(
            "%s: auto_map asks for remote code; it is ignored (trust_remote_code is never set)", file
        )
    try:
        return LlamaConfig.from_dict({k: v for k, v in raw.items() if k != "auto_map"})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: invalid LLaMA config: {err}") from None


def load_hf_tokenizer(folder: Path):
    """The folder's tokenizer (never remote code); a failure is a ``CheckpointError`` naming the folder."""
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as err:  # tokenizer loaders raise many types; all mean the same to a user
        raise CheckpointError(f"{folder}: cannot load a tokenizer: {str(err).splitlines()[0]}") from err


def _model_from_torch_bins(folder: Path, bins: list[Path], config: LlamaConfig, dtype: torch.dtype):
    state: dict[str, torch.Tensor] = {}
    for file in bins:
        state.update(load_torch_file(file))
    # Built on the meta device: no random initialisation, and assign=True adopts the loaded
    # tensors instead of copying them.
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"{folder}: weights do not fit config.json: {str(err).splitlines()[0]}") from None
    if config.tie_word_embeddings and "lm_head.weight" in missing:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match config.json: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # buffers were on meta
    return model.to(dtype)


# --------------------------------------------------------------------------------------------
# Hub ids
# --------------------------------------------------------------------------------------------


def detect_hub(source: str | Path | None) -> bool:
    """Whether ``source`` is a hub id: an ``org/name`` string that names no local file or folder.

    Args:
        source: what was passed to ``load_model``.

    Returns:
        True for a string such as ``"meta-llama/Llama-2-7b-hf"`` with no such local path.

    >>> detect_hub("meta-llama/Llama-2-7b-hf"), detect_hub("./llama"), detect_hub(Path("a/b"))
    (True, False, False)
    """
    if not isinstance(source, str) or source.startswith((".", "/")) or not _HUB_ID.match(source):
        return False
    path = Path(source).expanduser()
    return not (path.is_file() or path.is_dir())


def load_hub_format(
    name: str, *, dtype: torch.dtype, placement: dict | None = None, verify: bool = True
) -> tuple[LlamaForCausalLM, Any, ModelSource]:
    """The format registry's loader for hub ids: ``from_pretrained``, for users who are online.

    Args:
        name: the hub id.
        dtype: dtype of the returned model's weights.
        placement: accelerate placement, or None for the CPU.
        verify: unused; the hub serves no checklist, so the status is ``"no checklist"``.

    Returns:
        ``(model, tokenizer, source)``; the source has no fingerprint.

    Raises:
        CheckpointError: loading failed (offline, or no such model).

    >>> load_hub_format("meta-llama/Llama-2-7b-hf", dtype=torch.float16)  # doctest: +SKIP
    """
    try:
        model = LlamaForCausalLM.from_pretrained(name, dtype=dtype, **(placement or {}))
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise CheckpointError(
            f"{name}: not a local path, and loading it as a hub id failed (offline?): "
            f"{str(err).splitlines()[0]}"
        ) from None
    return model, tokenizer, ModelSource("hub", name, name, None, "no checklist")
