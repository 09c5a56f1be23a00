"""The object a researcher holds: a hooked LLaMA model with its provenance.

The transformer itself is TransformerLens's ``TransformerBridge`` over a Hugging Face
``LlamaForCausalLM`` (DESIGN.md: we do not re-implement the transformer). ``HookedLlama`` adds
what the bridge does not know: where the weights came from, whether their checksums were
verified, a hook catalogue, and hooks that are temporary by default.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from transformer_lens.model_bridge import TransformerBridge

from workbench.models import chat, interventions
from workbench.models.hooks import build_catalogue, select_hooks


@dataclass
class ModelSource:
    """Where a model came from and what we know about its integrity.

    Attributes:
        format: "embedded", "meta", "hf", "gguf" or "hub".
        path: the file, folder or hub id that was loaded.
        name: a short human name (folder or file name, or the embedded model's name).
        fingerprint: sha256 identifying the checkpoint files (see ``checkpoint_fingerprint``).
        checksum_status: "verified", "skipped" (a checklist exists but verification was turned
            off) or "no checklist".
        details: format-specific facts (GGUF quantization type, number of Meta shards ...).
    """

    format: str
    path: str
    name: str
    fingerprint: str | None = None
    checksum_status: str = "no checklist"
    details: dict[str, Any] = field(default_factory=dict)


class HookedLlama:
    """A LLaMA-family model with TransformerLens hooks on every layer.

    Hook names are TransformerLens's canonical ones (``blocks.{i}.hook_resid_post``,
    ``blocks.{i}.attn.hook_pattern``, ``blocks.{i}.mlp.hook_post`` ...). Hooks added through
    :meth:`hooks`, :meth:`run_with_hooks` and :meth:`run_with_cache` are removed when the call
    ends, even on error. The underlying bridge is ``model.bridge``; the HF model is
    ``model.hf_model``.

    >>> import workbench as wb
    >>> model = wb.load_model()                                   # doctest: +SKIP
    >>> logits, cache = model.run_with_cache("The capital of France is")  # doctest: +SKIP
    >>> cache["blocks.0.hook_resid_post"].shape                   # doctest: +SKIP
    torch.Size([1, 6, 576])
    """

    def __init__(self, bridge: TransformerBridge, hf_model: torch.nn.Module, source: ModelSource):
        self.bridge = bridge
        self.hf_model = hf_model
        self.source = source
        self._catalogue: pd.DataFrame | None = None
        # Descriptions of the steering / ablation contexts now open (innermost last); eval
        # manifests record them so a result says which interventions produced it.
        self._interventions: list[dict[str, Any]] = []
        # Whether the checkpoint's own tokenizer prepends BOS by default (TransformerLens makes the
        # bridge's tokenizer always do so); eval conventions follow the checkpoint's default.
        self.tokenizer_adds_bos: bool | None = None
        # How conversations are rendered (workbench.models.chat); set by load_model.
        self._chat_template: chat.ChatTemplate | None = None

    # --- running --------------------------------------------------------------------------

    def __call__(self, input: Any, **kwargs: Any) -> Any:
        """Forward pass: text, list of texts or token tensor -> logits ``[batch, pos, d_vocab]``."""
        return self.bridge(input, **kwargs)

    def run_with_cache(self, input: Any, names_filter: Any = None, **kwargs: Any):
        """Run the model and return ``(logits, cache)`` for the hooks ``names_filter`` selects.

        Args:
            input: a string, a list of strings or a ``[batch, pos]`` token tensor.
            names_filter: hook names, glob patterns (``"blocks.*.hook_resid_post"``), or a
                predicate on names; ``None`` caches every hook.
            **kwargs: passed to ``TransformerBridge.run_with_cache``.
        """
        if names_filter is not None and not callable(names_filter):
            # A predicate, not a list: given a list the bridge also caches each hook's aliases.
            chosen = set(select_hooks(self, names_filter, strict=False))
            names_filter = chosen.__contains__
        return self.bridge.run_with_cache(input, names_filter=names_filter, **kwargs)

    def run_with_hooks(self, input: Any, fwd_hooks=(), bwd_hooks=(), **kwargs: Any):
        """Run with temporary hooks: ``fwd_hooks`` is a list of ``(name or predicate, fn)``."""
        return self.bridge.run_with_hooks(
            input, fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks), **kwargs
        )

    def hooks(self, fwd_hooks=(), bwd_hooks=()) -> contextlib.AbstractContextManager:
        """Context manager adding hooks for the duration of a ``with`` block.

        >>> def zero(act, hook):                                      # doctest: +SKIP
        ...     return act * 0
        >>> with model.hooks([("blocks.3.hook_mlp_out", zero)]):       # doctest: +SKIP
        ...     logits = model("Hello")
        """
        return self.bridge.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks))

    def reset_hooks(self) -> None:
        """Remove every hook, including permanent ones added through ``model.bridge``."""
        self.bridge.reset_hooks(including_permanent=True)

    def active_hook_count(self) -> int:
        """Number of hook functions currently attached (0 outside hook contexts)."""
        return sum(
            len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in set(self.bridge.hook_dict.values())
        )

    # --- attention implementation (workbench.models.fast_attention) ---------------------------

    @property
    def fast_attention(self) -> bool:
        """Whether layers with no ``hook_pattern`` / ``hook_attn_scores`` hook use fused SDPA.

        True by default (``load_model(..., fast_attention=False)`` turns it off); assign
        ``False`` for the original (eager) attention everywhere, ``True`` to switch it back.
        """
        from workbench.models.fast_attention import sdpa_enabled

        attns = (block._modules.get("attn") for block in getattr(self.bridge, "blocks", ()))
        return any(attn is not None and sdpa_enabled(attn) for attn in attns)

    @fast_attention.setter
    def fast_attention(self, on: bool) -> None:
        from workbench.models import fast_attention

        if on:
            fast_attention.enable_sdpa_when_unhooked(self.bridge)
        else:
            fast_attention.disable_sdpa_when_unhooked(self.bridge)

    def eager_attention(self) -> contextlib.AbstractContextManager:
        """Context: the original (eager) attention in every layer; the fused path comes back after.

        >>> with model.eager_attention():                             # doctest: +SKIP
        ...     logits = model("Hello")  # as HF's attn_implementation="eager" computes it
        """
        from workbench.models.fast_attention import eager_while

        return eager_while(self.bridge)

    # --- interventions (workbench.models.interventions) ----------------------------------------

    def steer(self, direction: Any, layer: int | None = None, alpha: float = 1.0, site: str | None = None):
        """Context: add ``alpha`` x the unit ``direction`` to the residual stream at ``layer``.

        >>> with model.steer(direction, layer=12, alpha=4.0):      # doctest: +SKIP
        ...     model.generate("The nurse said that")
        """
        return interventions.steer(self, direction, layer=layer, alpha=alpha, site=site)

    def ablate(self, direction: Any, layers=None, site: str | None = None):
        """Context: project ``direction`` out of the residual stream at ``layers`` (default all)."""
        return interventions.ablate(self, direction, layers=layers, site=site)

    def ablate_heads(self, heads, mode: str = "zero", reference=None):
        """Context: zero- or mean-ablate attention heads ``[(layer, head), ...]``."""
        return interventions.ablate_heads(self, heads, mode=mode, reference=reference)

    def ablate_neurons(self, neurons, mode: str = "zero", reference=None):
        """Context: zero- or mean-ablate MLP neurons ``[(layer, neuron), ...]``."""
        return interventions.ablate_neurons(self, neurons, mode=mode, reference=reference)

    def sae(self, sae: Any, hook: str | None = None, *, keep_error: bool = True):
        """Context: splice ``sae`` in at its hook (error term kept: the output is unchanged until
        a latent is edited); its latents are the hook point ``f"{hook}.sae.hook_acts"``.

        >>> with model.sae(sae) as name:                              # doctest: +SKIP
        ...     logits, cache = model.run_with_cache("The cat", names_filter=[name])
        """
        from workbench.models.splice import splice_sae

        return splice_sae(self, sae, hook, keep_error=keep_error)

    def active_interventions(self) -> list[dict[str, Any]]:
        """The steering / ablation contexts now open, outermost first (empty outside them)."""
        return [dict(item) for item in self._interventions]

    def generate(
        self,
        prompt: str | list[dict],
        max_new_tokens: int = 20,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
        include_prompt: bool = True,
    ) -> str:
        """Continue ``prompt``: greedy by default, sampled with ``do_sample=True``.

        Sampling with the same ``seed`` gives the same text; the global torch RNG is left as
        it was. A conversation (a list of ``{"role", "content"}`` dicts) is rendered with the
        model's chat template and an open assistant turn (:meth:`chat_tokens`); its reply is
        decoded without special tokens, after the rendered prompt when ``include_prompt``.

        >>> model.generate("Q: What is the capital of France?\\nA:", max_new_tokens=5)  # doctest: +SKIP
        'Q: What is the capital of France?\\nA: Paris'
        >>> model.generate([{"role": "user", "content": "Hi!"}], include_prompt=False)  # doctest: +SKIP
        'Hello! How can I help you today?'
        """
        conversation = chat.is_conversation(prompt)
        if conversation:
            text = self.format_chat(prompt)
            prompt_ids = self.chat_tokens(prompt)
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng, torch.no_grad(), warnings.catch_warnings():
            # The bridge's KV-cache path trips a transformers deprecation notice on every call.
            warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
            if seed is not None:
                torch.manual_seed(seed)
            out = self.bridge.generate(
                prompt_ids if conversation else prompt,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                stop_at_eos=stop_at_eos,
                return_type="tokens" if conversation else "str",
                verbose=False,
            )
        if conversation:
            reply = self.tokenizer.decode(out[0, prompt_ids.shape[1]:].tolist(), skip_special_tokens=True)
            return text + reply if include_prompt else reply
        text = out
        if not include_prompt and text.startswith(prompt):
            return text[len(prompt) :]
        return text

    # --- tokens ---------------------------------------------------------------------------

    def to_tokens(self, input: str | list[str] | list[dict] | list[list[dict]],
                  prepend_bos: bool | None = None, **kwargs):
        """Text -> token ids ``[batch, pos]`` (BOS prepended by default).

        A conversation, or a list of them, is rendered with the chat template and an open
        assistant turn and tokenized with exactly one BOS (:meth:`chat_tokens`; ``prepend_bos``
        and ``truncate`` do not apply); several are padded on ``padding_side`` (default: the
        tokenizer's); ``move_to_device=False`` leaves them on the CPU.
        """
        if chat.is_conversation(input) or chat.is_conversation_list(input):
            conversations = [input] if chat.is_conversation(input) else list(input)
            rows = [chat.encode_chat_text(self.tokenizer, self.format_chat(c), self.tokenizer_adds_bos)
                    for c in conversations]
            side = kwargs.get("padding_side") or getattr(self.tokenizer, "padding_side", "right")
            tokens = chat.pad_rows(rows, self.pad_token_id, side)  # never truncated
            return tokens.to(self._token_device()) if kwargs.get("move_to_device", True) else tokens
        return self.bridge.to_tokens(input, prepend_bos=prepend_bos, **kwargs)

    def to_str_tokens(self, input: Any, prepend_bos: bool | None = None, **kwargs) -> list:
        """Text, a conversation or token ids -> list of token strings."""
        if chat.is_conversation(input):
            input = self.chat_tokens(input)
        return self.bridge.to_str_tokens(input, prepend_bos=prepend_bos, **kwargs)

    # --- chat templates (workbench.models.chat) -----------------------------------------------

    @property
    def chat_template(self) -> chat.ChatTemplate | None:
        """The chat template (``.name``, ``.source``, ``.template``), or None if the model has none."""
        return self._chat_template

    def set_chat_template(self, template: Any) -> None:
        """Use ``template``: a built-in name (``"llama2-chat"``, ``"llama3"``, ``"chatml"``), a path to
        a ``.jinja`` file, a Jinja string, a ``ChatTemplate``, or None for no template."""
        self._chat_template = None if template is None else chat.get_chat_template(template)

    def format_chat(self, messages: str | list[dict], add_generation_prompt: bool = True,
                    system: str | None = None) -> str:
        """A conversation (or one user message as a ``str``) rendered with the chat template.

        Raises:
            NoChatTemplateError: the model has no chat template (the message says how to pass one).
            ChatMessageError, ChatTemplateError: a malformed message, or the template fails on one.

        >>> model.format_chat("Hi", system="Be brief.")                 # doctest: +SKIP
        '<|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        return chat.format_chat(self._chat_template, self.tokenizer, messages, model_name=self.source.name,
                                add_generation_prompt=add_generation_prompt, system=system)

    def chat_tokens(self, messages: str | list[dict], add_generation_prompt: bool = True,
                    system: str | None = None) -> torch.Tensor:
        """Token ids ``[1, pos]`` of :meth:`format_chat`'s text, with exactly one BOS (never two).

        Special-token strings in the rendered text become their ids, as in
        ``apply_chat_template(..., tokenize=True)``; BOS is added only when the text does not
        already begin with it and the checkpoint's tokenizer prepends one.
        """
        text = self.format_chat(messages, add_generation_prompt=add_generation_prompt, system=system)
        ids = chat.encode_chat_text(self.tokenizer, text, self.tokenizer_adds_bos)
        return torch.tensor([ids], dtype=torch.long, device=self._token_device())

    def _token_device(self) -> torch.device | str:
        return getattr(self.cfg, "device", None) or self.device

    @property
    def pad_token_id(self) -> int:
        """The id padded rows are filled with: the tokenizer's pad token, else EOS, else 0."""
        tok = self.tokenizer
        return next((int(i) for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)

    def to_string(self, tokens: Any) -> str | list[str]:
        """Token ids -> text."""
        return self.bridge.to_string(tokens)

    @property
    def tokenizer(self):
        return self.bridge.tokenizer

    @property
    def cfg(self):
        """TransformerLens config: ``n_layers``, ``d_model``, ``n_heads``, ``d_head`` ..."""
        return self.bridge.cfg

    # --- description ----------------------------------------------------------------------

    def hook_catalogue(self) -> pd.DataFrame:
        """Every hook that fires in a forward pass: name, layer, shape, what it is.

        Built once per model by running one short prompt
        (:func:`workbench.models.hooks.build_catalogue`), then kept.
        """
        if self._catalogue is None:
            self._catalogue = build_catalogue(self)
        return self._catalogue.copy()

    def hook_names(self) -> list[str]:
        return self.hook_catalogue()["name"].tolist()

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.hf_model.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def info(self) -> dict[str, Any]:
        """Architecture, size, placement, provenance and integrity as a flat dict."""
        c = self.hf_model.config
        rope = getattr(c, "rope_parameters", None) or {}
        return {
            "name": self.source.name,
            "format": self.source.format,
            "source": self.source.path,
            "architecture": type(self.hf_model).__name__,
            "n_layers": c.num_hidden_layers,
            "d_model": c.hidden_size,
            "n_heads": c.num_attention_heads,
            "n_kv_heads": c.num_key_value_heads,
            "d_head": self.cfg.d_head,
            "d_mlp": c.intermediate_size,
            "d_vocab": c.vocab_size,
            "n_ctx": c.max_position_embeddings,
            "rope_theta": rope.get("rope_theta"),
            "n_params": self.n_params,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "n_hooks": len(self.hook_catalogue()),
            "checksum_status": self.source.checksum_status,
            "fingerprint": self.source.fingerprint,
            "chat_template": None if self._chat_template is None else self._chat_template.name,
            "chat_template_source": None if self._chat_template is None else self._chat_template.source,
            **{f"detail.{k}": v for k, v in self.source.details.items()},
        }

    def __repr__(self) -> str:
        c = self.hf_model.config
        return (
            f"HookedLlama({self.source.name!r}, format={self.source.format}, "
            f"layers={c.num_hidden_layers}, d_model={c.hidden_size}, dtype={self.dtype}, "
            f"device={self.device})"
        )

    def __getattr__(self, name: str) -> Any:
        # Everything else TransformerLens offers (W_U, blocks, ...) stays reachable, except
        # permanent hook registration, which must be asked for explicitly on model.bridge.
        if name in {"bridge", "hf_model", "source", "_catalogue", "_chat_template"}:
            raise AttributeError(name)
        if name == "add_hook":
            raise AttributeError(
                "HookedLlama has no add_hook: hooks are temporary by default. Use "
                "model.hooks([...]) or model.run_with_hooks(...); for a hook that must outlive "
                "the call, use model.bridge.add_hook and remove it with model.reset_hooks()."
            )
        return getattr(self.bridge, name)

