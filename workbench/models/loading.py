"""``load_model``: any LLaMA-family checkpoint -> :class:`HookedLlama`.

The source is resolved through the format registry, :data:`workbench.models.formats.FORMATS`
(the embedded model, Meta's release, a Hugging Face folder, a GGUF file, a hub id; see
:mod:`workbench.models.formats` for the rules and their order). Whatever the format, its loader
hands back an HF ``LlamaForCausalLM``; this module places it on its device(s) and boots
TransformerLens's ``TransformerBridge`` over it. Code inside checkpoints is never executed:
pickles are read with ``weights_only=True`` and ``trust_remote_code`` is never set.

>>> detect_format(None)
('embedded', None)
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from workbench.models.chat import get_chat_template, resolve_chat_template
from workbench.models.formats import detect_format, get_format
from workbench.models.hooked import HookedLlama

__all__ = ["DTYPES", "detect_format", "load_model", "resolve_dtype", "tokenizer_adds_bos"]

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def load_model(
    source: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | Path | None = None,
    verify: bool = True,
    fast_attention: bool = True,
    chat_template: str | Path | None = None,
) -> HookedLlama:
    """Load a LLaMA-family checkpoint as a hooked model.

    Args:
        source: ``None`` for the embedded default model; a Meta release folder, a Hugging Face
            folder, a ``.gguf`` file, or a hub id.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (or a ``torch.dtype``).
        device: where to put the model (default: CUDA if available, else CPU).
        device_map: an accelerate device map (``"auto"`` or a dict) to split the model over
            devices (GPUs, ``"cpu"``, ``"disk"``); exclusive with ``device``. Hooks, caching,
            patching and steering work across the split.
        max_memory: with ``device_map="auto"``, the memory to use per device
            (``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}``).
        offload_folder: where layers mapped to ``"disk"`` are kept.
        verify: check ``checklist.chk`` / ``*.sha256`` when the folder has one (the default);
            a mismatch raises :class:`ChecksumError`.
        fast_attention: compute attention with fused SDPA (as HF's default ``"sdpa"``
            attention does) in every layer whose ``hook_attn_scores`` / ``hook_pattern`` nobody
            hooks; a layer with such a hook runs the original (eager) attention, the others stay
            fused. On by default (fp32/fp64; half precision stays eager). ``False`` gives eager
            attention everywhere, as does ``model.fast_attention = False`` or ``with
            model.eager_attention():`` later; see ``workbench.models.fast_attention``.
            Log-likelihood evaluations (``run_eval``) use the fused path while scoring either way.
        chat_template: how conversations are rendered: a built-in name (``"llama2-chat"``,
            ``"llama3"``, ``"chatml"``), a path to a ``.jinja`` file, or a Jinja string. None
            (the default) uses the checkpoint's own: the tokenizer's ``chat_template`` (a GGUF's
            ``tokenizer.chat_template`` metadata), ``"llama3"`` for a LLaMA 3 Meta folder,
            ``"llama2-chat"`` for a LLaMA-2 Meta folder whose name says ``chat``, else none
            (see :mod:`workbench.models.chat`). ``model.chat_template`` says which and where from.

    Returns:
        A :class:`HookedLlama`.

    Raises:
        CheckpointError: the source is missing, malformed, truncated, unsafe or matches no
            format; the message names the file.
        ChatTemplateError: ``chat_template`` is no built-in, file or valid Jinja (checked first).

    >>> import workbench as wb
    >>> model = wb.load_model()                                        # doctest: +SKIP
    >>> model = wb.load_model("llama-7b/", dtype="bfloat16")           # doctest: +SKIP
    """
    torch_dtype = resolve_dtype(dtype)
    user_template = None if chat_template is None else get_chat_template(chat_template)
    if device is not None and device_map is not None:
        raise ValueError("pass either device= or device_map=, not both")
    if device_map is None and (max_memory is not None or offload_folder is not None):
        raise ValueError("max_memory= and offload_folder= only apply with device_map=")
    placement = None
    if device_map is not None:
        placement = {"device_map": device_map}
        if max_memory is not None:
            placement["max_memory"] = max_memory
        if offload_folder is not None:
            placement["offload_folder"] = str(offload_folder)
    name, location = detect_format(source)
    hf_model, tokenizer, source_info = get_format(name).load(
        location, dtype=torch_dtype, placement=placement, verify=verify
    )
    if device_map is None:
        hf_model = hf_model.to(device or _default_device())
    elif not getattr(hf_model, "hf_device_map", None):
        hf_model = _dispatch(hf_model, placement)  # loaders that cannot place layers themselves
    hf_model.eval()
    # Read before the bridge boots: TransformerLens switches the tokenizer to always prepend BOS,
    # while evaluation conventions (lm-evaluation-harness) follow the checkpoint's own default.
    adds_bos = tokenizer_adds_bos(tokenizer)
    template = resolve_chat_template(tokenizer, source_info, user_template)
    bridge = _boot_bridge(hf_model, tokenizer, torch_dtype)
    if fast_attention:
        from workbench.models.fast_attention import enable_sdpa_when_unhooked

        enable_sdpa_when_unhooked(bridge)
    model = HookedLlama(bridge, hf_model, source_info)
    model.tokenizer_adds_bos = adds_bos
    model.set_chat_template(template)
    return model


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` prepends its BOS token by default.

    Args:
        tokenizer: a Hugging Face tokenizer.

    Returns:
        True when the ids of ``tokenizer("a")`` start with ``bos_token_id``.

    >>> tokenizer_adds_bos(model.tokenizer)  # doctest: +SKIP
    True
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The ``torch.dtype`` a ``dtype=`` argument names (``"bf16"``, ``torch.float16`` ...).

    Raises:
        ValueError: not float32, bfloat16 or float16.

    >>> resolve_dtype("bf16")
    torch.bfloat16
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype={dtype} is not supported; use float32, bfloat16 or float16")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(set(DTYPES))}")
    return DTYPES[dtype]


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dispatch(model, placement: dict):
    """Place a loaded model's layers with accelerate (``"auto"``, ``"balanced"`` or a dict)."""
    from accelerate import dispatch_model, infer_auto_device_map

    device_map = placement["device_map"]
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(
            model, max_memory=placement.get("max_memory"), no_split_module_classes=model._no_split_modules,
            dtype=model.dtype,
        )
    return dispatch_model(model, device_map=device_map, offload_dir=placement.get("offload_folder"))


def _boot_bridge(hf_model, tokenizer, dtype: torch.dtype):
    from transformer_lens.model_bridge import TransformerBridge

    # The bridge prints and logs chatter about its setup that is noise to our users.
    with contextlib.redirect_stdout(io.StringIO()):
        bridge = TransformerBridge.boot_transformers(
            hf_model.config._name_or_path or "llama",
            hf_model=hf_model,
            tokenizer=tokenizer,
            dtype=dtype,
            device=None if getattr(hf_model, "hf_device_map", None) else next(hf_model.parameters()).device,
        )
    from workbench.models.kv_cache import route_kv_cache

    route_kv_cache(bridge)  # without it, generate() decodes with an empty KV cache
    return bridge
