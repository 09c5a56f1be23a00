"""Sites: the one table of named places in the model where an experiment reads or writes.

A site names one hook per layer (``resid_pre`` -> ``blocks.{layer}.hook_resid_pre``) and the
axes a patching sweep iterates over. Activation patching (:mod:`workbench.patching`) uses every
site; steering and directional ablation (:mod:`workbench.models.interventions`) use the sites
whose activation lives in the residual stream's space (``steerable``). What a site's activation
is comes from the hook catalogue's descriptions (:data:`workbench.models.hooks.DESCRIPTIONS`), so
each fact is written once. ``tl_equivalent`` names the TransformerLens patching function that
computes the same table, which the tests use as the oracle.

>>> SITES["resid_pre"].hook_name(3)
'blocks.3.hook_resid_pre'
>>> [s.name for s in SITES.values() if s.steerable]
['resid_pre', 'resid_post', 'attn_out', 'mlp_out']
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.common.errors import PatchingError
from workbench.models.hooks import DESCRIPTIONS


@dataclass(frozen=True)
class Site:
    """One kind of activation an experiment can patch or steer.

    Attributes:
        name: the name passed as ``site=``.
        hook: hook-name template with ``{layer}``.
        axes: a patching sweep's axes after ``layer``: ``("pos",)``, ``("head",)`` or
            ``("pos", "head")``.
        tl_equivalent: the TransformerLens patching function computing the same table.
        steerable: a ``[d_model]`` vector may be added here (``model.steer``, ``model.ablate``).
            Not ``resid_mid``: on the bridge that hook is the MLP norm's input, and a vector
            added there would skip the residual connection.
    """

    name: str
    hook: str
    axes: tuple[str, ...]
    tl_equivalent: str
    steerable: bool = False

    def hook_name(self, layer: int) -> str:
        return self.hook.format(layer=layer)

    @property
    def description(self) -> str:
        """What the activation is, from the hook catalogue's description of its hook."""
        text = DESCRIPTIONS[self.hook.replace("{layer}", "{i}")].replace(" {i}", "")
        return text + (" (one head at a time)" if "head" in self.axes else "")


SITES: dict[str, Site] = {
    site.name: site
    for site in (
        Site("resid_pre", "blocks.{layer}.hook_resid_pre", ("pos",), "get_act_patch_resid_pre", steerable=True),
        Site("resid_mid", "blocks.{layer}.hook_resid_mid", ("pos",), "get_act_patch_resid_mid"),
        Site("resid_post", "blocks.{layer}.hook_resid_post", ("pos",), "generic_activation_patch(resid_post)",
             steerable=True),
        Site("attn_out", "blocks.{layer}.hook_attn_out", ("pos",), "get_act_patch_attn_out", steerable=True),
        Site("mlp_out", "blocks.{layer}.hook_mlp_out", ("pos",), "get_act_patch_mlp_out", steerable=True),
        Site("head_out", "blocks.{layer}.attn.hook_z", ("head",), "get_act_patch_attn_head_out_all_pos"),
        Site("head_out_by_pos", "blocks.{layer}.attn.hook_z", ("pos", "head"), "get_act_patch_attn_head_out_by_pos"),
    )
}


def get_site(name: str, *, steerable: bool = False) -> Site:
    """The :class:`Site` called ``name``; an error listing the known sites otherwise.

    Args:
        steerable: only accept sites a direction can be added at (steering, ablation).
    """
    known = [s for s in SITES if SITES[s].steerable or not steerable]
    if name not in known:
        kind = "steering sites" if steerable else "known sites"
        raise PatchingError(f"unknown site {name!r}; {kind}: {', '.join(known)}")
    return SITES[name]


def site_of_hook(hook: str) -> Site | None:
    """The steerable site a hook name such as ``blocks.12.hook_resid_post`` belongs to, if any."""
    for site in SITES.values():
        prefix, _, suffix = site.hook.partition("{layer}")
        middle = hook.removeprefix(prefix).removesuffix(suffix)
        if site.steerable and hook.startswith(prefix) and hook.endswith(suffix) and middle.isdigit():
            return site
    return None
