"""Physical pruning: a stock model and a PruningPlan -> a smaller model (family-agnostic).

The pruned model computes exactly what the masked model computes (dropped units zeroed, norms
over the kept hidden dims). It is a stock class with an adjusted config where the pruned shapes
fit one, else the family's remote class (per-layer widths), which ``nash_ds.export.save_hf_dir``
ships beside the weights. What to keep of each tensor comes from the family
(``Family.pruned_key_selector``); this module slices, frees and reassembles.

An empty list in the plan removes the whole sublayer: it then contributes exactly zero (its
output-projection bias goes too) and holds no parameter (its projections become parameter-free
``EmptyLinear`` modules; zero-element parameters break ZeRO-3).
"""

from __future__ import annotations

import copy

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights

from nash_ds.errors import UserError
from nash_ds.models import family_for
from nash_ds.models.base import Index, count_params
from nash_ds.plan import PruningPlan


def validate_plan(config, plan: PruningPlan) -> None:
    """Raise ValueError unless the model of ``config`` can be pruned and every list in ``plan`` fits it."""
    family = family_for(config)
    family.check_prunable(config)
    layers = {s: family.num_layers(config, s) for s in ("encoder", "decoder")}
    heads = {s: family.num_heads(config, s) for s in ("encoder", "decoder")}
    groups = {
        "encoder_heads": (plan.encoder_heads, layers["encoder"], heads["encoder"]),
        "decoder_self_heads": (plan.decoder_self_heads, layers["decoder"], heads["decoder"]),
        "decoder_cross_heads": (plan.decoder_cross_heads, layers["decoder"], heads["decoder"]),
        "encoder_ffn": (plan.encoder_ffn, layers["encoder"], family.d_ff(config, "encoder")),
        "decoder_ffn": (plan.decoder_ffn, layers["decoder"], family.d_ff(config, "decoder")),
    }
    for name, (per_layer, num_layers, size) in groups.items():
        if len(per_layer) != num_layers:
            raise UserError(f"plan.{name} has {len(per_layer)} layers, the model has {num_layers}")
        for i, kept in enumerate(per_layer):
            _check_indices(f"plan.{name}[{i}]", kept, size)
    if plan.hidden is not None:
        _check_indices("plan.hidden", plan.hidden, family.d_model(config))
        if not plan.hidden:
            raise UserError("plan.hidden is empty; use None to keep every hidden dim")


def pruned_config(config, plan: PruningPlan) -> PretrainedConfig:
    """Config of the pruned model: the stock class's with new sizes when they fit, else a Nash*Config."""
    validate_plan(config, plan)
    return family_for(config).pruned_config(config, shape_plan(config, plan))


def shape_plan(config, plan: PruningPlan) -> PruningPlan:
    """The plan whose shape the export's tensors have: ``plan`` itself, or for ``plan.stock_shape`` the family's
    zero-padded plan (``Family.padded_plan``: ``plan``'s units plus units kept at zero, so that a stock config
    fits), when the family can give one."""
    if not plan.stock_shape:
        return plan
    return family_for(config).padded_plan(config, plan) or plan


def export_shape(config, plan: PruningPlan) -> dict:
    """What the export is (for pruning_report.json): ``shape`` "stock" or "per_layer" (the remote class), the
    class name, whether uniform widths were asked for, and the units kept as zeros (the stock config cannot
    express them: compute is not saved there, a serving engine may strip them)."""
    new_config = pruned_config(config, plan)
    padded = shape_plan(config, plan)
    zeros = {site: sum(len(a) - len(b) for a, b in zip(getattr(padded, site), getattr(plan, site), strict=True))
             for site in ("encoder_heads", "decoder_self_heads", "decoder_cross_heads", "encoder_ffn", "decoder_ffn")}
    return {"shape": "per_layer" if is_remote(new_config) else "stock", "uniform_widths": plan.stock_shape,
            "architectures": [family_for(config).remote_model_class.__name__ if is_remote(new_config)
                              else type(config).__name__.replace("Config", "ForConditionalGeneration")],
            "zero_padded_units": zeros}


def pruned_state_dict(model: PreTrainedModel, plan: PruningPlan) -> dict[str, torch.Tensor]:
    """The kept slices of every tensor in ``model.state_dict()``, named for the pruned model."""
    return prune_state(model.state_dict(), model.config, plan)


def prune_state(state: dict[str, torch.Tensor], config, plan: PruningPlan, *,
                consume: bool = False) -> dict[str, torch.Tensor]:
    """The kept slices of every tensor of a model's ``state`` (``config`` is that model's).

    Without ``consume`` the result never shares storage with ``state``. With ``consume`` the
    entries are popped from ``state`` one by one and a full tensor is freed as soon as nothing else
    holds it (the finalizer's low-memory path): a tensor kept whole is passed on as it is, and
    names sharing one tensor (tied weights) get one slice.
    """
    family = family_for(config)
    stock = not is_remote(pruned_config(config, plan))
    plan = shape_plan(config, plan)  # with zero-padded units the caller (prune_model) zeroes them afterwards
    select = family.pruned_key_selector(config, plan, stock=stock)
    out: dict[str, torch.Tensor] = {}
    sliced: dict[tuple, tuple[Index, Index, torch.Tensor]] = {}  # consume: source region -> its slice
    for key in list(state):
        tensor = state.pop(key) if consume else state[key]
        choice = select(key)
        if choice is None:
            continue
        rows, cols = choice
        tensor = tensor.detach()
        if consume:
            rows = None if _whole(rows, tensor, 0) else rows
            cols = None if _whole(cols, tensor, 1) else cols
            # every source tensor is alive when this starts, so its data pointer names it
            where = (tensor.data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
            if where in sliced and _same(sliced[where][0], rows) and _same(sliced[where][1], cols):
                out[key] = sliced[where][2]
                continue
        elif rows is None and cols is None:
            tensor = tensor.clone()  # never share storage with the input model
        if rows is not None:  # rebinding ``tensor`` drops the last reference to a consumed source
            tensor = tensor.index_select(0, rows.to(tensor.device))
        if cols is not None:
            tensor = tensor.index_select(1, cols.to(tensor.device))
        if consume:
            sliced[where] = (rows, cols, tensor)
        out[key] = tensor
    family.fold_pruned_state(config, plan, out)
    return out


def prune_model(model: PreTrainedModel, plan: PruningPlan, *, consume: bool = False) -> PreTrainedModel:
    """A new, physically smaller model computing what ``model`` masked by ``plan`` computes.

    ``model`` is left untouched, unless ``consume``: then its tensors are cut one at a time and
    ``model`` is left empty (on the meta device), so the peak is one model plus one tensor rather
    than a model plus its pruned copy. The result keeps its dtypes, device, train/eval mode,
    generation config and whether the LM head is tied to the input embeddings.
    """
    from nash_ds.compat import lm_head_is_tied
    from nash_ds.dist import is_partitioned

    family = family_for(model.config)
    if is_partitioned(model):
        raise ValueError("prune_model needs whole parameters; this model is ZeRO-3 partitioned "
                         "(consolidate it first, e.g. with get_fp32_state_dict_from_zero_checkpoint)")
    new_config = pruned_config(model.config, plan)
    cls = family.remote_model_class if is_remote(new_config) else type(model)
    tied = lm_head_is_tied(model)
    device = next(model.parameters()).device
    if consume:
        source = model.state_dict()
        model.to("meta")  # the model lets go of its tensors; ``source`` holds the only references
        state = prune_state(source, model.config, plan, consume=True)
        with torch.device("meta"):
            new = cls(new_config)
    else:
        state = pruned_state_dict(model, plan)
        with no_init_weights():  # every tensor is loaded below; this also skips tying
            new = cls(new_config)
    if not tied:  # e.g. T5 v1.1: transformers 5 ties unless the checkpoint differs (compat.untie_lm_head)
        new.all_tied_weights_keys.pop("lm_head.weight", None)
    if consume:
        _assign_state(new, state)
    else:
        new.tie_weights(recompute_mapping=False)
        for name, tensor in new.state_dict(keep_vars=True).items():
            if name in state and tensor.dtype != state[name].dtype:
                tensor.data = tensor.data.to(state[name].dtype)
        new.load_state_dict(state, strict=True)
        new.to(device)
    _zero_padded_units(new, family, model.config, plan)
    new.train(model.training)
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    return new


@torch.no_grad()
def _zero_padded_units(model: PreTrainedModel, family, config, plan: PruningPlan) -> None:
    """Zero the units of the shape plan that ``plan`` drops (q/k/v rows and out-projection columns of a head,
    FFN input rows and output columns of a dim): the stock-shaped model then computes the masked model's output."""
    padded = shape_plan(config, plan)
    if padded is plan:
        return

    def dropped(shape_units, kept_units) -> list[int]:
        kept = set(kept_units)
        return [p for p, u in enumerate(shape_units) if u not in kept]

    def zero(linear, positions: list[int], *, width: int, out: bool) -> None:
        idx = torch.tensor([p * width + j for p in positions for j in range(width)], dtype=torch.long)
        if out:
            linear.weight[idx] = 0.0
            if getattr(linear, "bias", None) is not None:
                linear.bias[idx] = 0.0
        else:
            linear.weight[:, idx] = 0.0

    for stack in ("encoder", "decoder"):
        head_dim = family.head_dim(config, stack)
        for i, block in enumerate(family.layers(model, stack)):
            for kind in family.attention_kinds(stack):
                site = "encoder_heads" if stack == "encoder" else f"decoder_{kind}_heads"
                gone = dropped(getattr(padded, site)[i], getattr(plan, site)[i])
                if gone:
                    attn = family.attention(block, kind)
                    for proj in family.attn_in_projs(attn):
                        zero(proj, gone, width=head_dim, out=True)
                    zero(family.attn_out_proj(attn), gone, width=head_dim, out=False)
            gone = dropped(getattr(padded, f"{stack}_ffn")[i], getattr(plan, f"{stack}_ffn")[i])
            if gone:
                for proj in family.ffn_in_projs(block):
                    zero(proj, gone, width=1, out=True)
                zero(family.ffn_out_proj(block), gone, width=1, out=False)


def _assign_state(model: PreTrainedModel, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` (every name, tied ones included) into ``model`` on meta by assignment, then tie."""
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = dict(model.all_tied_weights_keys or {})
    missing = [k for k in missing if k not in tied]
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    params = dict(model.named_parameters(remove_duplicate=False))
    for target, source in tied.items():
        module_name, _, attr = target.rpartition(".")
        setattr(model.get_submodule(module_name), attr, params[source])
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not left, f"not loaded: {left[:5]}"


def num_params_from_plan(config, plan: PruningPlan) -> int:
    """Parameters of the pruned model (each tied tensor once, an untied head apart), counted on a
    meta-device build of it."""
    new_config = pruned_config(config, plan)
    family = family_for(config)
    with torch.device("meta"):
        model = family.from_config(new_config)
    return count_params(model, family)["total"]


def is_remote(model_or_config) -> bool:
    """Whether a (pruned) model or config needs our own modeling code to be loaded."""
    config = getattr(model_or_config, "config", model_or_config)
    return family_for(config).is_export(config)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _check_indices(name: str, kept: list[int], size: int) -> None:
    if any(not isinstance(k, int) or isinstance(k, bool) for k in kept):
        raise UserError(f"{name} must hold ints, got {kept}")
    if list(kept) != sorted(set(kept)):
        raise UserError(f"{name} must be strictly increasing, got {kept}")
    if kept and (kept[0] < 0 or kept[-1] >= size):
        raise UserError(f"{name} holds indices outside [0, {size}): {kept}")


def _whole(index: Index, tensor: torch.Tensor, dim: int) -> bool:
    """Whether ``index`` keeps every entry of ``tensor`` along ``dim`` in order."""
    if index is None or tensor.dim() <= dim or index.numel() != tensor.shape[dim]:
        return index is None
    return bool(torch.equal(index, torch.arange(tensor.shape[dim], dtype=index.dtype)))


def _same(a: Index, b: Index) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


