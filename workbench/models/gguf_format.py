"""Loading LLaMA-architecture GGUF files (llama.cpp's format) as a plain Hugging Face model.

transformers can read GGUF and dequantize it, but it reports problems with the file as numpy or
KeyError tracebacks, accepts any architecture it knows, and hands back a model flagged as
"quantized with gguf" that refuses ``save_pretrained``. Here we check the file first (magic,
truncation, architecture, tensor set), let transformers dequantize, and copy the weights into a
fresh, unflagged ``LlamaForCausalLM`` that can be saved as safetensors.

The format's row in :data:`workbench.models.formats.FORMATS` is :func:`detect_gguf` (a ``.gguf``
file, or a folder holding exactly one), :func:`locate_gguf` and :func:`load_gguf_format`.

transformers ignores a llama GGUF's rotary scaling; :func:`gguf_rope_parameters` reads it (the
``llama.rope.scaling.*`` keys, and the ``rope_freqs.weight`` factors llama.cpp's converter writes
for LLaMA 3.1) so that the loaded model rotates as llama.cpp does.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
import torch

from workbench.common.errors import CheckpointError
from workbench.common.files import atomic_path

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

    from workbench.models.hooked import ModelSource

SUPPORTED_ARCHITECTURE = "llama"
_BLOCK_TENSORS = (
    "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
    "ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
)  # fmt: skip


def detect_gguf(source: str | Path | None) -> bool:
    """Whether ``source`` is a ``.gguf`` file or a folder holding exactly one.

    Args:
        source: what was passed to ``load_model``.

    Returns:
        True for a GGUF file or such a folder.

    >>> detect_gguf(None), detect_gguf("/nonexistent.gguf")
    (False, False)
    """
    if source is None:
        return False
    path = Path(source).expanduser()
    if path.is_file():
        return path.suffix == ".gguf"
    return path.is_dir() and len(list(path.glob("*.gguf"))) == 1


def locate_gguf(source: str | Path) -> Path:
    """The GGUF file ``source`` names: the file itself, or the one ``.gguf`` in a folder.

    >>> locate_gguf("model.Q4_1.gguf")
    PosixPath('model.Q4_1.gguf')
    """
    path = Path(source).expanduser()
    return sorted(path.glob("*.gguf"))[0] if path.is_dir() else path


def gguf_near_miss(path: Path) -> str | None:
    """Why a file that matched no format is not loaded: only GGUF checkpoints are single files.

    >>> gguf_near_miss(Path(__file__))
    'a single file must be a .gguf; for other formats pass the folder'
    """
    if path.is_file() and path.suffix != ".gguf":
        return "a single file must be a .gguf; for other formats pass the folder"
    return None


def load_gguf_format(
    path: str | Path, *, dtype: torch.dtype, placement: dict | None = None, verify: bool = True
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase, ModelSource]:
    """The format registry's loader for GGUF files: the folder's checklist first, then the file.

    Args:
        path: the ``.gguf`` file.
        dtype: dtype of the dequantized weights.
        placement: unused; the model is built on the CPU and ``load_model`` places it.
        verify: check the checklists in the file's folder when present.

    Returns:
        ``(model, tokenizer, source)``.

    >>> model, tokenizer, source = load_gguf_format("model.Q4_1.gguf", dtype=torch.float32)  # doctest: +SKIP
    >>> source.format, source.name  # doctest: +SKIP
    ('gguf', 'model.Q4_1.gguf')
    """
    from workbench.models.verify import checked_source  # pandas; read_gguf_metadata needs none of it

    path = Path(path)
    source = checked_source("gguf", path, verify=verify)
    model, tokenizer = load_gguf(path, dtype=dtype)
    return model, _reopenable(tokenizer, path, source.fingerprint), source


def _reopenable(tokenizer: PreTrainedTokenizerBase, path: Path, fingerprint: str) -> PreTrainedTokenizerBase:
    """The tokenizer, saved once as Hugging Face files and read back from them.

    TransformerLens re-opens the tokenizer from its ``name_or_path`` to get a copy that always
    prepends BOS; one read from a GGUF names the private folder it was read through, which is
    gone by then. Tokenizer files are small, so they are cached beside the embedded model's.
    """
    from transformers import AutoTokenizer

    from workbench.models.embedded import cache_root

    folder = cache_root() / f"gguf-tokenizer-{fingerprint[:16]}"
    if not (folder / "tokenizer_config.json").is_file():
        with atomic_path(folder, directory=True) as tmp:
            tokenizer.save_pretrained(tmp)
    reopened = AutoTokenizer.from_pretrained(folder)
    reopened.name_or_path = str(path)
    return reopened


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """Read a GGUF file's header: what model it holds and how it is quantized.

    Reads no tensor data, but checks that every tensor's data lies within the file, so a
    truncated download is caught here.

    Args:
        path: the ``.gguf`` file.

    Returns:
        ``path``, ``architecture``, ``name``, ``block_count``, ``embedding_length``,
        ``feed_forward_length``, ``head_count``, ``head_count_kv``, ``context_length``,
        ``vocab_size``, ``file_type`` (llama.cpp's label, e.g. ``"MOSTLY_Q4_1"``),
        ``tensor_count``, ``tensor_types`` (ggml type name -> number of tensors) and
        ``file_size`` (bytes). Keys the file lacks are ``None``.

    Raises:
        CheckpointError: the file is missing, not a GGUF, truncated or has a corrupt header.

    >>> from workbench.models.embedded import embedded_gguf_path
    >>> meta = read_gguf_metadata(embedded_gguf_path())
    >>> meta["architecture"], meta["block_count"], meta["head_count_kv"], meta["file_type"]
    ('llama', 30, 3, 'MOSTLY_Q4_1')
    """
    path = Path(path)
    return _metadata(path, _open_reader(path))


def read_gguf(path: str | Path) -> tuple[gguf.GGUFReader, dict[str, Any]]:
    """The file's reader (header parsed, tensor data memory-mapped, not read) and metadata.

    Raises:
        CheckpointError: as :func:`read_gguf_metadata`.
    """
    path = Path(path)
    reader = _open_reader(path)
    return reader, _metadata(path, reader)


def read_gguf_chat_template(path: str | Path) -> str | None:
    """The chat template a GGUF file carries (its ``tokenizer.chat_template`` metadata), if any.

    transformers copies it into the tokenizer it builds from the file (``tokenizer_config``'s
    ``chat_template``), which is what ``load_model`` uses; this reads the header itself (seconds
    for a large vocabulary), to check that copy.

    Raises:
        CheckpointError: the file is missing, not a GGUF, or truncated.

    >>> from workbench.models.embedded import embedded_gguf_path
    >>> read_gguf_chat_template(embedded_gguf_path()).startswith("{% for message in messages %}")  # doctest: +SKIP
    True
    """
    found = _open_reader(Path(path)).get_field("tokenizer.chat_template")
    text = None if found is None else found.contents()
    return text if isinstance(text, str) and text else None


def load_gguf(
    path: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Load a LLaMA-family GGUF file as a dequantized ``LlamaForCausalLM`` and its tokenizer.

    Args:
        path: the ``.gguf`` file.
        dtype: dtype of the returned weights; quantized tensors are dequantized into it.

    Returns:
        ``(model, tokenizer)``: the model in eval mode with no quantization attached, so
        ``save_pretrained`` works; the tokenizer built from the vocabulary stored in the file.

    Raises:
        CheckpointError: the file is missing, not a GGUF, truncated, not of the ``llama``
            architecture, lacks tensors a LLaMA needs, or transformers fails to load it.
        ValueError: ``dtype`` is not a floating-point dtype.

    >>> model, tokenizer = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    >>> model.config.num_hidden_layers  # doctest: +SKIP
    30
    """
    # transformers takes seconds to import; read_gguf_metadata (``workbench info``) needs none of it.
    from transformers import AutoTokenizer, GgufConfig, LlamaForCausalLM

    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype}")
    path = Path(path)
    reader = _open_reader(path)
    meta = _metadata(path, reader)
    names = {tensor.name for tensor in reader.tensors}
    _check_llama(path, meta, names)
    rope = gguf_rope_parameters(path, reader)
    del reader  # releases the memory map before transformers opens its own
    try:
        with _alone_in_a_folder(path) as (folder, name):
            # dequantize=True: never keep packed GGUF layers, which the plain copy below
            # could not take (transformers may pack them for some architectures).
            loaded = LlamaForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=dtype, quantization_config=GgufConfig(dequantize=True)
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = _unflagged_copy(loaded, rope)
    except Exception as err:
        detail = next(iter(str(err).strip().splitlines()), "")
        raise CheckpointError(
            f"{path}: transformers could not load this GGUF file: {type(err).__name__}: {detail}"
        ) from err
    model.config.name_or_path = str(path)
    tokenizer.name_or_path = str(path)
    return model, tokenizer


class _BoundsCheckingReader(gguf.GGUFReader):
    """A ``GGUFReader`` that checks each tensor lies within the file before mapping it.

    ``GGUFReader`` slices its memory map without bounds checks, so a short file otherwise
    fails with an obscure numpy reshape error rather than saying it is truncated.
    """

    def _build_tensors(self, start_offs: int, fields: list) -> None:
        for field in fields:
            # The tensor-info layout, as GGUFReader._build_tensors itself unpacks it.
            _, name, _, dims, raw_type, offset = field.parts
            block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(raw_type[0]))]
            end = int(start_offs) + int(offset[0]) + int(np.prod(dims)) * type_size // block_size
            if end > len(self.data):
                raise _Truncated(bytes(name).decode("utf-8", "replace"), end)
        super()._build_tensors(start_offs, fields)


class _Truncated(Exception):
    def __init__(self, tensor: str, end: int):
        super().__init__(tensor, end)
        self.tensor, self.end = tensor, end


def checked_gguf_size(path: Path) -> int:
    """The size of ``path`` after checking it is a file that starts with GGUF's magic.

    Raises:
        CheckpointError: no such file, or not a GGUF file (says what it starts with).
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(
            f"{path}: not a GGUF file (starts with {magic!r}, GGUF files start with b'GGUF')"
        )
    return path.stat().st_size


def truncated_gguf(path: Path, tensor: str, end: int, size: int) -> CheckpointError:
    """The error for a GGUF whose tensor ``tensor`` ends past the end of the file."""
    return CheckpointError(
        f"{path}: truncated GGUF file: tensor {tensor!r} ends at byte {end:,} but the file "
        f"has only {size:,} bytes (incomplete download or copy?)"
    )


def _open_reader(path: Path) -> gguf.GGUFReader:
    size = checked_gguf_size(path)
    try:
        reader = _BoundsCheckingReader(path)
    except _Truncated as err:
        raise truncated_gguf(path, err.tensor, err.end, size) from None
    except Exception as err:  # GGUFReader signals a bad header with whatever numpy raises
        raise CheckpointError(
            f"{path}: GGUF header is truncated or corrupt ({size:,} bytes): "
            f"{type(err).__name__}: {err}"
        ) from None
    # Also checked here on the public fields, in case a gguf release stops calling the hook above.
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise truncated_gguf(path, tensor.name, tensor.data_offset + tensor.n_bytes, size)
    return reader




def _metadata(path: Path, reader: gguf.GGUFReader) -> dict[str, Any]:
    def field(key: str) -> Any:
        found = reader.get_field(key)
        return None if found is None else found.contents()

    arch = field("general.architecture")
    if arch is None:
        raise CheckpointError(f"{path}: GGUF metadata has no general.architecture")
    file_type = field("general.file_type")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    return {
        "path": str(path),
        "architecture": arch,
        "name": field("general.name"),
        "block_count": field(f"{arch}.block_count"),
        "embedding_length": field(f"{arch}.embedding_length"),
        "feed_forward_length": field(f"{arch}.feed_forward_length"),
        "head_count": field(f"{arch}.attention.head_count"),
        "head_count_kv": field(f"{arch}.attention.head_count_kv"),
        "context_length": field(f"{arch}.context_length"),
        "vocab_size": field(f"{arch}.vocab_size") or (len(tokens.data) if tokens else None),
        "file_type": (
            gguf.LlamaFileType(file_type).name
            if file_type in gguf.LlamaFileType._value2member_map_
            else file_type
        ),
        "tensor_count": len(reader.tensors),
        "tensor_types": dict(Counter(tensor.tensor_type.name for tensor in reader.tensors)),
        "file_size": path.stat().st_size,
    }


def _check_llama(path: Path, meta: dict[str, Any], names: set[str]) -> None:
    if meta["architecture"] != SUPPORTED_ARCHITECTURE:
        raise CheckpointError(
            f"{path}: GGUF architecture is {meta['architecture']!r}; only LLaMA-family models "
            f"(general.architecture {SUPPORTED_ARCHITECTURE!r}) are supported"
        )
    if not isinstance(meta["block_count"], int):
        raise CheckpointError(f"{path}: GGUF metadata has no usable llama.block_count")
    # transformers would silently leave a missing weight randomly initialised.
    required = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{kind}.weight" for i in range(meta["block_count"]) for kind in _BLOCK_TENSORS
    }
    missing = sorted(required - names)
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise CheckpointError(
            f"{path}: incomplete LLaMA GGUF: {len(missing)} required tensor(s) missing: {shown}"
        )


@contextmanager
def _alone_in_a_folder(path: Path) -> Iterator[tuple[str, str]]:
    # from_pretrained also reads config/tokenizer JSON files lying beside the GGUF (a GGUF is
    # often shipped next to a full checkpoint); a private folder makes the GGUF the only source.
    with tempfile.TemporaryDirectory(prefix="workbench-gguf-") as folder:
        os.symlink(path.resolve(), Path(folder) / path.name)
        yield folder, path.name


def _unflagged_copy(loaded: LlamaForCausalLM, rope: dict | None = None) -> LlamaForCausalLM:
    # The same weights in a model built without the GGUF quantizer, which would block saving,
    # and with the file's rotary scaling (`rope`, from gguf_rope_parameters) in its config.
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    if rope is not None:
        theta = loaded.config.rope_parameters["rope_theta"]
        config_dict.pop("rope_scaling", None)
        config_dict["rope_parameters"] = {**rope, "rope_theta": theta}
    config = LlamaConfig.from_dict(config_dict)
    # Parameters start on the meta device and the loaded tensors are assigned, not copied, so
    # a large model is never held twice; buffers (RoPE frequencies) are computed as usual.
    with init_empty_weights(include_buffers=False):
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()  # assign=True gave lm_head its own Parameter even when tied
    return model.eval()



# LLaMA-3.1's scaling constants, used by llama.cpp's converter when it writes rope_freqs.weight.
_LLAMA3_ORIGINAL_CONTEXT = 8192
_LLAMA3_LOW_FREQ_FACTOR = 1.0
_LLAMA3_HIGH_FREQ_FACTOR = 4.0


def gguf_rope_parameters(path: str | Path, reader: gguf.GGUFReader) -> dict | None:
    """The rotary scaling a llama GGUF asks for, as HF ``rope_parameters`` (without the base).

    - ``llama.rope.scaling.type`` ``"linear"`` or ``"yarn"`` (with ``.factor`` and, for YaRN,
      ``.original_context_length``) map to HF's rope types of the same names.
    - A ``rope_freqs.weight`` tensor holds llama.cpp's per-frequency divisors; the ones
      llama.cpp's converter writes for LLaMA 3.1 are HF's ``"llama3"`` type, recognised by
      recomputing them (factor: the largest divisor or ``.factor``; original context
      ``.original_context_length`` or 8192). All ones means no scaling.

    Args:
        path: the file, for messages.
        reader: its open reader.

    Returns:
        ``{"rope_type": ..., ...}``, or None for plain RoPE.

    Raises:
        CheckpointError: an unsupported scaling type, or a malformed factor or ``rope_freqs``.
    """
    arch = SUPPORTED_ARCHITECTURE

    def field(key: str) -> Any:
        found = reader.get_field(f"{arch}.{key}")
        return None if found is None else found.contents()

    kind, factor = field("rope.scaling.type"), field("rope.scaling.factor")
    original = field("rope.scaling.original_context_length")
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if factor is not None and not (isinstance(factor, (int, float)) and factor > 0):
        raise CheckpointError(f"{path}: {arch}.rope.scaling.factor must be positive, got {factor!r}")
    if freqs is not None:
        return _llama3_from_freqs(path, np.asarray(freqs.data, dtype=np.float64).ravel(),
                                  field, factor, original)  # fmt: skip
    if kind in (None, "none"):
        return None
    if kind not in ("linear", "yarn"):
        raise CheckpointError(
            f"{path}: {arch}.rope.scaling.type {kind!r} is not supported (linear, yarn, or "
            "LLaMA-3.1 rope_freqs.weight)"
        )
    if factor is None:
        raise CheckpointError(f"{path}: {arch}.rope.scaling.type is {kind!r} but has no .factor")
    rope: dict[str, Any] = {"rope_type": kind, "factor": float(factor)}
    if kind == "yarn" and original is not None:
        rope["original_max_position_embeddings"] = int(original)
    return rope


def _llama3_from_freqs(path, divisors: np.ndarray, field, factor, original) -> dict | None:
    head_dim = field("rope.dimension_count") or (
        field("embedding_length") // field("attention.head_count")
    )
    if divisors.shape != (head_dim // 2,) or not np.all(np.isfinite(divisors) & (divisors > 0)):
        raise CheckpointError(
            f"{path}: rope_freqs.weight must hold {head_dim // 2} positive factors (one per "
            f"rotary pair), got shape {divisors.shape}"
        )
    if np.allclose(divisors, 1.0):
        return None
    theta = float(field("rope.freq_base") or 10000.0)
    rope = {
        "rope_type": "llama3",
        "factor": float(factor if factor is not None else divisors.max()),
        "low_freq_factor": _LLAMA3_LOW_FREQ_FACTOR,
        "high_freq_factor": _LLAMA3_HIGH_FREQ_FACTOR,
        "original_max_position_embeddings": int(original or _LLAMA3_ORIGINAL_CONTEXT),
    }
    if not np.allclose(divisors, llama3_rope_divisors(theta, head_dim, rope), rtol=1e-4):
        warnings.warn(
            f"{path}: rope_freqs.weight does not match LLaMA-3.1 rotary scaling (factor "
            f"{rope['factor']:g}, original context {rope['original_max_position_embeddings']}); "
            "it is ignored, so logits will differ somewhat from llama.cpp's",
            stacklevel=3,
        )
        return None
    return rope


def llama3_rope_divisors(theta: float, head_dim: int, rope: dict) -> np.ndarray:
    """What LLaMA-3.1 scaling divides each rotary frequency by (llama.cpp's ``rope_freqs``).

    >>> rope = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    ...         "original_max_position_embeddings": 8192}
    >>> llama3_rope_divisors(500000.0, 128, rope)[[0, -1]].tolist()
    [1.0, 8.0]
    """
    freqs = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    original, factor = rope["original_max_position_embeddings"], rope["factor"]
    low, high = rope["low_freq_factor"], rope["high_freq_factor"]
    smooth = np.clip((original / wavelen - low) / (high - low), 0.0, 1.0)
    scaled = (1 - smooth) * freqs / factor + smooth * freqs
    return freqs / scaled
