"""Where activation patching can copy activations: sites, their hooks and their axes.

Each site names one hook per layer and the axes a sweep iterates over. The hook names are
TransformerLens's, and each site matches one of TransformerLens's ``get_act_patch_*``
functions (``tl_equivalent``), which the tests use as the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.patching.metrics import PatchingError


@dataclass(frozen=True)
class Site:
    """One kind of activation to patch.

    Attributes:
        name: the name passed as ``site=``.
        hook: hook-name template with ``{layer}``.
        axes: the sweep's axes after ``layer``: ``("pos",)``, ``("head",)`` or ``("pos", "head")``.
        description: what the activation is.
        tl_equivalent: the TransformerLens patching function computing the same table.
    """

    name: str
    hook: str
    axes: tuple[str, ...]
    description: str
    tl_equivalent: str

    def hook_name(self, layer: int) -> str:
        return self.hook.format(layer=layer)


SITES: dict[str, Site] = {
    site.name: site
    for site in (
        Site("resid_pre", "blocks.{layer}.hook_resid_pre", ("pos",),
             "residual stream entering the block", "get_act_patch_resid_pre"),
        Site("resid_mid", "blocks.{layer}.hook_resid_mid", ("pos",),
             "residual stream between attention and MLP", "get_act_patch_resid_mid"),
        Site("resid_post", "blocks.{layer}.hook_resid_post", ("pos",),
             "residual stream leaving the block", "generic_activation_patch(resid_post)"),
        Site("attn_out", "blocks.{layer}.hook_attn_out", ("pos",),
             "attention output (all heads)", "get_act_patch_attn_out"),
        Site("mlp_out", "blocks.{layer}.hook_mlp_out", ("pos",),
             "MLP output", "get_act_patch_mlp_out"),
        Site("head_out", "blocks.{layer}.attn.hook_z", ("head",),
             "one head's output (z) at every position", "get_act_patch_attn_head_out_all_pos"),
        Site("head_out_by_pos", "blocks.{layer}.attn.hook_z", ("pos", "head"),
             "one head's output (z) at one position", "get_act_patch_attn_head_out_by_pos"),
    )
}


def get_site(name: str) -> Site:
    """The :class:`Site` called ``name``; an error listing the known sites otherwise."""
    try:
        return SITES[name]
    except KeyError:
        raise PatchingError(f"unknown site {name!r}; known sites: {', '.join(SITES)}") from None
