"""Physical pruning: a stock T5 / T5 v1.1 / BART model and a PruningPlan -> a smaller model.

The pruned model computes exactly what the masked model computes (dropped units zeroed, norms
over the kept hidden dims). It is a stock class with an adjusted config where the pruned shapes
fit one, else our own classes from ``nash_ds.models.remote`` (per-layer widths), which
``nash_ds.export.save_hf_dir`` ships beside the weights.

An empty list in the plan removes the whole sublayer: it then contributes exactly zero (its
output-projection bias goes too) and holds no parameter (its projections become parameter-free
``EmptyLinear`` modules; zero-element parameters break ZeRO-3).

Family-specific code sits in the ``_t5_*`` / ``_bart_*`` functions, reached only through
``_FAMILIES`` (to move into ``nash_ds/models/{t5,bart}.py``).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights

from nash_ds.models.remote import (
    NashBartConfig,
    NashBartForConditionalGeneration,
    NashT5Config,
    NashT5ForConditionalGeneration,
)
from nash_ds.plan import PruningPlan

Index = torch.Tensor | None  # kept indices along one dim; None keeps the whole dim
Selector = Callable[[str], "tuple[Index, Index] | None"]  # key -> (rows, cols); None drops the key


@dataclass(frozen=True)
class _Shape:
    """What a plan is checked against."""

    num_encoder_layers: int
    num_decoder_layers: int
    num_heads: int
    head_dim: int
    d_model: int
    encoder_ffn: int
    decoder_ffn: int


# --------------------------------------------------------------------------------------------
# T5 (relu and gated v1.1)
# --------------------------------------------------------------------------------------------

def _t5_shape(config) -> _Shape:
    return _Shape(config.num_layers, config.num_decoder_layers, config.num_heads, config.d_kv,
                  config.d_model, config.d_ff, config.d_ff)


def _t5_stock_widths(config, plan: PruningPlan) -> tuple[int, int] | None:
    """(num_heads, d_ff) when a stock T5Config fits the plan, else None.

    Every attention must keep the same number of heads, every FFN the same width, and within a
    stack all self-attentions the same head set (they share one relative position bias).
    """
    head_sets = plan.encoder_heads + plan.decoder_self_heads + plan.decoder_cross_heads
    counts = {len(h) for h in head_sets}
    widths = {len(f) for f in plan.encoder_ffn + plan.decoder_ffn}
    same_sets = all(h == plan.encoder_heads[0] for h in plan.encoder_heads) and all(
        h == plan.decoder_self_heads[0] for h in plan.decoder_self_heads)
    if len(counts) != 1 or len(widths) != 1 or 0 in counts or 0 in widths or not same_sets:
        return None
    return counts.pop(), widths.pop()


def _t5_config(config, plan: PruningPlan) -> PretrainedConfig:
    """Stock T5Config with new num_heads / d_ff / d_model when they fit, else a NashT5Config."""
    d_model = len(plan.hidden) if plan.hidden is not None else config.d_model
    stock = _t5_stock_widths(config, plan)
    if stock is not None:
        new = copy.deepcopy(config)
        new.num_heads, new.d_ff = stock
        new.d_model = d_model
        return new
    fields = {  # num_heads stays the original count: the position bias covers all heads
        "d_model": d_model,
        "nash_encoder_heads": [list(h) for h in plan.encoder_heads],
        "nash_decoder_self_heads": [list(h) for h in plan.decoder_self_heads],
        "nash_decoder_cross_heads": [list(h) for h in plan.decoder_cross_heads],
        "nash_encoder_ffn": [len(f) for f in plan.encoder_ffn],
        "nash_decoder_ffn": [len(f) for f in plan.decoder_ffn],
    }
    return NashT5Config(**{**_config_kwargs(config), **fields})


_BLOCK = r"^(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\."
_T5_ATTN = re.compile(_BLOCK + r"(SelfAttention|EncDecAttention)\.(\w+)\.weight$")
_T5_FFN = re.compile(_BLOCK + r"DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight$")
_T5_EMBED = re.compile(r"^(shared|encoder\.embed_tokens|decoder\.embed_tokens|lm_head)\.weight$")
_T5_NORM = re.compile(r"^(encoder|decoder)\.(block\.\d+\.layer\.\d+\.layer_norm|final_layer_norm)\.weight$")


def _t5_selector(config, plan: PruningPlan, *, stock: bool) -> Selector:
    hidden = _index(plan.hidden)
    d_kv = config.d_kv

    def select(key: str):
        if _T5_EMBED.match(key):  # [vocab, d_model]
            return None, hidden
        if _T5_NORM.match(key):
            return hidden, None
        if m := _T5_ATTN.match(key):
            stack, i, _, kind, name = m.groups()
            i = int(i)
            heads = _heads_of(plan, stack, "cross" if kind == "EncDecAttention" else "self")[i]
            if name == "relative_attention_bias":  # [num_buckets, H]: all heads unless stock
                return None, (_index(heads) if stock else None)
            if not heads:
                return None  # a removed attention holds no projection weights
            rows = _head_rows(heads, d_kv)
            return (hidden, rows) if name == "o" else (rows, hidden)
        if m := _T5_FFN.match(key):
            stack, i, _, name = m.groups()
            dims = (plan.encoder_ffn if stack == "encoder" else plan.decoder_ffn)[int(i)]
            if not dims:
                return None  # a removed FFN holds no weights
            return (hidden, _index(dims)) if name == "wo" else (_index(dims), hidden)
        raise ValueError(f"cannot prune T5 state-dict key {key!r}")

    return select


def _t5_fold(config, plan: PruningPlan, state: dict[str, torch.Tensor]) -> None:
    """T5 v1.0 scales decoder outputs by d_model**-0.5 before the LM head; keep the ORIGINAL scale."""
    if plan.hidden is not None and getattr(config, "scale_decoder_outputs", False):
        key = "decoder.final_layer_norm.weight"
        state[key] = state[key] * math.sqrt(len(plan.hidden) / config.d_model)


def _t5_num_params(config, plan: PruningPlan, *, tied_lm_head: bool) -> int:
    d = len(plan.hidden) if plan.hidden is not None else config.d_model
    n_mlp = 3 if config.is_gated_act else 2
    stock = _t5_stock_widths(config, plan)
    bias_heads = stock[0] if stock is not None else config.num_heads
    total = config.vocab_size * d * (1 if tied_lm_head else 2)
    total += 2 * config.relative_attention_num_buckets * bias_heads  # one table per stack
    total += 2 * d  # final layer norms
    for heads in plan.encoder_heads + plan.decoder_self_heads + plan.decoder_cross_heads:
        total += 4 * d * len(heads) * config.d_kv + d  # q, k, v, o + the sublayer's norm
    for dims in plan.encoder_ffn + plan.decoder_ffn:
        total += n_mlp * d * len(dims) + d
    return total


# --------------------------------------------------------------------------------------------
# BART
# --------------------------------------------------------------------------------------------

def _bart_shape(config) -> _Shape:
    if config.encoder_attention_heads != config.decoder_attention_heads:
        raise ValueError("pruning BART needs encoder_attention_heads == decoder_attention_heads, got "
                         f"{config.encoder_attention_heads} and {config.decoder_attention_heads}")
    heads = config.encoder_attention_heads
    return _Shape(config.encoder_layers, config.decoder_layers, heads, config.d_model // heads,
                  config.d_model, config.encoder_ffn_dim, config.decoder_ffn_dim)


def _bart_config(config, plan: PruningPlan) -> PretrainedConfig:
    """Stock BartConfig only without hidden pruning, with every head kept (stock BART derives
    head_dim = d_model // heads) and one FFN width per stack; else a NashBartConfig."""
    heads = config.encoder_attention_heads
    full = list(range(heads))
    enc_w, dec_w = {len(f) for f in plan.encoder_ffn}, {len(f) for f in plan.decoder_ffn}
    all_heads = all(h == full for h in
                    plan.encoder_heads + plan.decoder_self_heads + plan.decoder_cross_heads)
    if plan.hidden is None and all_heads and len(enc_w) == len(dec_w) == 1 and 0 not in enc_w | dec_w:
        new = copy.deepcopy(config)
        new.encoder_ffn_dim, new.decoder_ffn_dim = enc_w.pop(), dec_w.pop()
        return new
    fields = {
        "d_model": len(plan.hidden) if plan.hidden is not None else config.d_model,
        "nash_head_dim": config.d_model // heads,
        "nash_embed_scale": math.sqrt(config.d_model) if config.scale_embedding else 1.0,
        "nash_encoder_num_heads": [len(h) for h in plan.encoder_heads],
        "nash_decoder_self_num_heads": [len(h) for h in plan.decoder_self_heads],
        "nash_decoder_cross_num_heads": [len(h) for h in plan.decoder_cross_heads],
        "nash_encoder_ffn": [len(f) for f in plan.encoder_ffn],
        "nash_decoder_ffn": [len(f) for f in plan.decoder_ffn],
    }
    return NashBartConfig(**{**_config_kwargs(config), **fields})


_LAYER = r"^model\.(encoder|decoder)\.layers\.(\d+)\."
_BART_ATTN = re.compile(_LAYER + r"(self_attn|encoder_attn)\.(\w+)_proj\.(weight|bias)$")
_BART_FFN = re.compile(_LAYER + r"(fc1|fc2)\.(weight|bias)$")
_BART_EMBED = re.compile(r"^(model\.shared|model\.(en|de)coder\.(embed_tokens|embed_positions)|lm_head)"
                         r"\.weight$")
_BART_NORM = re.compile(r"^model\.(encoder|decoder)\.(layers\.\d+\.\w+_layer_norm|layernorm_embedding)\."
                        r"(weight|bias)$")


def _bart_selector(config, plan: PruningPlan, *, stock: bool) -> Selector:
    hidden = _index(plan.hidden)
    head_dim = config.d_model // config.encoder_attention_heads

    def select(key: str):
        if key == "final_logits_bias":
            return None, None
        if _BART_EMBED.match(key):
            return None, hidden
        if _BART_NORM.match(key):
            return hidden, None
        if m := _BART_ATTN.match(key):
            stack, i, kind, name, what = m.groups()
            heads = _heads_of(plan, stack, "cross" if kind == "encoder_attn" else "self")[int(i)]
            if not heads:
                return None  # a removed attention holds no weights, output bias included
            rows = _head_rows(heads, head_dim)
            if name != "out":
                return (rows, hidden) if what == "weight" else (rows, None)
            return (hidden, rows) if what == "weight" else (hidden, None)
        if m := _BART_FFN.match(key):
            stack, i, name, what = m.groups()
            dims = (plan.encoder_ffn if stack == "encoder" else plan.decoder_ffn)[int(i)]
            if not dims:
                return None  # a removed FFN holds no weights, output bias included
            if name == "fc1":
                return (_index(dims), hidden) if what == "weight" else (_index(dims), None)
            return (hidden, _index(dims)) if what == "weight" else (hidden, None)
        raise ValueError(f"cannot prune BART state-dict key {key!r}")

    return select


def _bart_fold(config, plan: PruningPlan, state: dict[str, torch.Tensor]) -> None:
    """Nothing to fold: the embedding scale of the original d_model is kept in NashBartConfig."""


def _bart_num_params(config, plan: PruningPlan, *, tied_lm_head: bool) -> int:
    d = len(plan.hidden) if plan.hidden is not None else config.d_model
    head_dim = config.d_model // config.encoder_attention_heads
    total = config.vocab_size * d * (1 if tied_lm_head else 2)
    total += 2 * (config.max_position_embeddings + 2) * d + 2 * 2 * d  # positions, layernorm_embedding
    for heads in plan.encoder_heads + plan.decoder_self_heads + plan.decoder_cross_heads:
        inner = len(heads) * head_dim
        total += 4 * d * inner + 3 * inner + (d if heads else 0) + 2 * d  # + the sublayer's norm
    for dims in plan.encoder_ffn + plan.decoder_ffn:
        total += 2 * d * len(dims) + len(dims) + (d if dims else 0) + 2 * d
    return total


# --------------------------------------------------------------------------------------------
# dispatch: the one place that knows the families (moves into the family registry later)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Family:
    shape: Callable
    config: Callable
    selector: Callable
    fold: Callable
    num_params: Callable
    remote_class: type


_FAMILIES = {
    "t5": _Family(_t5_shape, _t5_config, _t5_selector, _t5_fold, _t5_num_params,
                  NashT5ForConditionalGeneration),
    "bart": _Family(_bart_shape, _bart_config, _bart_selector, _bart_fold, _bart_num_params,
                    NashBartForConditionalGeneration),
}


def _family(config) -> _Family:
    if config.model_type not in _FAMILIES:
        raise ValueError(f"cannot prune model_type {config.model_type!r}; supported: {sorted(_FAMILIES)} "
                         "(an already pruned nash_* model cannot be pruned again)")
    return _FAMILIES[config.model_type]


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def validate_plan(config, plan: PruningPlan) -> None:
    """Raise ValueError unless every list in ``plan`` fits the model described by ``config``."""
    s = _family(config).shape(config)
    groups = {
        "encoder_heads": (plan.encoder_heads, s.num_encoder_layers, s.num_heads),
        "decoder_self_heads": (plan.decoder_self_heads, s.num_decoder_layers, s.num_heads),
        "decoder_cross_heads": (plan.decoder_cross_heads, s.num_decoder_layers, s.num_heads),
        "encoder_ffn": (plan.encoder_ffn, s.num_encoder_layers, s.encoder_ffn),
        "decoder_ffn": (plan.decoder_ffn, s.num_decoder_layers, s.decoder_ffn),
    }
    for name, (per_layer, num_layers, size) in groups.items():
        if len(per_layer) != num_layers:
            raise ValueError(f"plan.{name} has {len(per_layer)} layers, the model has {num_layers}")
        for i, kept in enumerate(per_layer):
            _check_indices(f"plan.{name}[{i}]", kept, size)
    if plan.hidden is not None:
        _check_indices("plan.hidden", plan.hidden, s.d_model)
        if not plan.hidden:
            raise ValueError("plan.hidden is empty; use None to keep every hidden dim")


def pruned_config(config, plan: PruningPlan) -> PretrainedConfig:
    """Config of the pruned model: the stock class's with new sizes when they fit, else a Nash*Config."""
    validate_plan(config, plan)
    return _family(config).config(config, plan)


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
    family = _family(config)
    stock = not isinstance(pruned_config(config, plan), (NashT5Config, NashBartConfig))
    select = family.selector(config, plan, stock=stock)
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
    family.fold(config, plan, out)
    return out


def prune_model(model: PreTrainedModel, plan: PruningPlan, *, consume: bool = False) -> PreTrainedModel:
    """A new, physically smaller model computing what ``model`` masked by ``plan`` computes.

    ``model`` is left untouched, unless ``consume``: then its tensors are cut one at a time and
    ``model`` is left empty (on the meta device), so the peak is one model plus one tensor rather
    than a model plus its pruned copy. The result keeps its dtypes, device, train/eval mode,
    generation config and whether the LM head is tied to the input embeddings.
    """
    family = _family(model.config)
    from nash_ds.dist import is_partitioned

    if is_partitioned(model):
        raise ValueError("prune_model needs whole parameters; this model is ZeRO-3 partitioned "
                         "(consolidate it first, e.g. with get_fp32_state_dict_from_zero_checkpoint)")
    new_config = pruned_config(model.config, plan)
    cls = family.remote_class if is_remote(new_config) else type(model)
    tied = _lm_head_tied(model)
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
    if not tied:  # e.g. T5 v1.1: transformers 5 ties unless the checkpoint differs
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
    new.train(model.training)
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    return new


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


def num_params_from_plan(config, plan: PruningPlan, *, tied_lm_head: bool = True) -> int:
    """Parameters of the pruned model (each tied tensor once), computed from the plan alone."""
    validate_plan(config, plan)
    return _family(config).num_params(config, plan, tied_lm_head=tied_lm_head)


def is_remote(model_or_config) -> bool:
    """Whether a (pruned) model or config needs our own modeling code to be loaded."""
    config = getattr(model_or_config, "config", model_or_config)
    return isinstance(config, (NashT5Config, NashBartConfig))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _heads_of(plan: PruningPlan, stack: str, kind: str) -> list[list[int]]:
    if stack == "encoder":
        return plan.encoder_heads
    return plan.decoder_cross_heads if kind == "cross" else plan.decoder_self_heads


def _index(kept: list[int] | None) -> Index:
    return None if kept is None else torch.tensor(list(kept), dtype=torch.long)


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    """Row indices of the kept heads in a [num_heads * head_dim, ...] projection."""
    rows = [h * head_dim + j for h in heads for j in range(head_dim)]
    return torch.tensor(rows, dtype=torch.long)


def _check_indices(name: str, kept: list[int], size: int) -> None:
    if any(not isinstance(k, int) or isinstance(k, bool) for k in kept):
        raise ValueError(f"{name} must hold ints, got {kept}")
    if list(kept) != sorted(set(kept)):
        raise ValueError(f"{name} must be strictly increasing, got {kept}")
    if kept and (kept[0] < 0 or kept[-1] >= size):
        raise ValueError(f"{name} holds indices outside [0, {size}): {kept}")


def _whole(index: Index, tensor: torch.Tensor, dim: int) -> bool:
    """Whether ``index`` keeps every entry of ``tensor`` along ``dim`` in order."""
    if index is None or tensor.dim() <= dim or index.numel() != tensor.shape[dim]:
        return index is None
    return bool(torch.equal(index, torch.arange(tensor.shape[dim], dtype=index.dtype)))


def _same(a: Index, b: Index) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def _lm_head_tied(model: PreTrainedModel) -> bool:
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is None or head.weight is embed.weight


def _config_kwargs(config) -> dict:
    """Keyword arguments that rebuild ``config`` as another (sub)class."""
    d = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path"):
        d.pop(key, None)
    if config._attn_implementation is not None:
        d["attn_implementation"] = config._attn_implementation
    return d
