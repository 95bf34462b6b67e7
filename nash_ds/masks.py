"""Hard-concrete (L0) masks for NASH and CoFi, applied to STOCK transformers models through hooks.

``MaskSet`` owns every ``log_alpha``; its ``forward()`` samples the gates (train mode) or builds
the deterministic 0/1 masks (eval mode), stores them where the hooks read them and returns them
with the expected sparsity. Running it as a module forward is what makes ZeRO-3 gather the
``log_alpha`` parameters. Typical step::

    handle = attach(model, family, maskset)      # once
    out = maskset()                              # each step, before the model
    loss = model(**batch).loss + lagrangian(out["expected_sparsity"]["encoder"], target)

Mask keys (per-layer rows first): ``{site}_heads`` [L, H], ``{site}_mha`` [L] (whole attention),
``{stack}_ffn`` [L, d_ff], ``{stack}_mlp`` [L] (whole FFN), ``hidden`` [d_model]; sites are
"encoder", "decoder_self", "decoder_cross". NASH has only ``encoder_heads`` and ``encoder_ffn``.

Where masks act (one hook each, no model code copied):
- heads: pre-hook on the attention out projection, scales each head's slice of its input;
- FFN dims: pre-hook on the FFN out projection, scales its input (the activations);
- whole sublayer: forward hook on the out projection, output times ``mha``/``mlp`` and times
  "any unit alive" (an attention whose heads are all 0 is a removed sublayer: its output bias goes
  too, as in the pruning plan, where an empty list removes the sublayer);
- hidden (CoFi): forward hooks multiply every write into the residual stream (embeddings,
  attention and FFN outputs) and recompute every norm over the kept dims only
  (``Family.masked_norm``), so a 0/1 hidden mask computes exactly what the model with those dims
  physically removed computes.

Deterministic masks (the ones the finalizer prunes with): per mask type (all layers together), the
round(expected number of zeros) units with the smallest log_alpha get 0, the others a binary 1. We chose 1 over the
reference code's soft survivor value sigmoid(0.8 log_alpha / beta): the pruned model then keeps
the trained weights unchanged, and the expected size at these masks is exactly the pruned size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nash_ds.errors import UserError
from nash_ds.models.base import MASKS_ATTACHED, STACKS, Family, validate_kept_layers
from nash_ds.plan import PruningPlan

LIMIT_L = -0.1
"""Left end of the stretched interval."""
LIMIT_R = 1.1
"""Right end of the stretched interval."""
BETA = 2.0 / 3.0
"""Temperature."""
EPS = 1e-6
"""Keeps the uniform noise away from 0 and 1."""
LOG_ALPHA_MIN = math.log(1e-2)
"""CoFi's clamp range for log_alpha after each step."""
LOG_ALPHA_MAX = math.log(1e2)

METHODS = ("nash", "cofi")
DETERMINISTIC_RULES = ("global", "per_layer")
"""How deterministic masks round the expected zeros: once per mask type over all layers (default), or
per layer (CoFi's rule)."""
UNIFORM_RULES = ("uniform", "uniform_shared")
"""The rules of ``prune.uniform_widths``: every row keeps the same count (round(sum P(z=0)) / rows zeros), each
row its own best units (``uniform``) or one unit set for all rows by summed alive probability
(``uniform_shared``: T5's self-attention heads, whose position bias later layers reuse by head position)."""
SITES = {"encoder": ("encoder", "self"), "decoder_self": ("decoder", "self"),
         "decoder_cross": ("decoder", "cross")}
"""Attention sites: name -> (stack, kind)."""


def site_name(stack: str, kind: str) -> str:
    """"encoder", "decoder_self" or "decoder_cross"."""
    return "encoder" if stack == "encoder" else f"decoder_{kind}"


def log_alpha_mean(droprate: float) -> float:
    """Init mean of log_alpha for drop rate p: log(1 - p) - log(p)."""
    if not 0.0 < droprate < 1.0:
        raise UserError(f"droprate_init must be in (0, 1), got {droprate}")
    return math.log(1.0 - droprate) - math.log(droprate)


def prob_zero(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z = 0) = sigmoid(beta * log(-l / r) - log_alpha), in fp32."""
    return torch.sigmoid(BETA * math.log(-LIMIT_L / LIMIT_R) - log_alpha.float())


@torch.no_grad()
def deterministic_gates(log_alpha: torch.Tensor, *, rule: str = "global") -> torch.Tensor:
    """0 for the round(sum P(z=0)) units with the smallest log_alpha, 1 for the rest ([rows, units]).

    ``rule="global"`` rounds once over the whole block (all layers of one mask type): with few units
    per layer (4-16 heads) rounding every row biases the total (4 heads at P(z=0) = 0.3 each round to
    1 of 4 = 25%, every layer). ``rule="per_layer"`` rounds each row apart (CoFi's rule).
    """
    la = log_alpha.float()
    if rule in UNIFORM_RULES:
        return _uniform_gates(la, shared=rule == "uniform_shared")
    rows = [la] if rule == "global" else list(la)
    out = []
    for row in rows:
        num_zeros = int(torch.round(prob_zero(row).sum()))
        z = torch.ones(row.numel(), dtype=torch.float32, device=la.device)
        z[torch.argsort(row.flatten(), stable=True)[:num_zeros]] = 0.0
        out.append(z.view_as(row))
    return out[0] if rule == "global" else torch.stack(out)


def _uniform_gates(la: torch.Tensor, *, shared: bool) -> torch.Tensor:
    """[rows, units] 0/1 gates keeping the same count in every row (at least one unit): each row its own
    largest log_alpha, or (``shared``) the units of the largest summed alive probability in every row."""
    rows, units = la.shape
    num_zeros = min(units - 1, int(torch.round(prob_zero(la).sum() / rows)))
    z = torch.ones(rows, units, dtype=torch.float32, device=la.device)
    if shared:
        score = (1.0 - prob_zero(la)).sum(dim=0)
        z[:, torch.argsort(score, stable=True)[:num_zeros]] = 0.0
    else:
        z.scatter_(1, torch.argsort(la, dim=1, stable=True)[:, :num_zeros], 0.0)
    return z


class HardConcrete(nn.Module):
    """A [rows, units] block of hard-concrete gates; rows are layers.

    Call it (``gate(mode)``) rather than its helpers from outside ``MaskSet.forward`` so that ZeRO-3
    gathers ``log_alpha``. ``mode``: "auto" (sample in train mode, deterministic in eval mode),
    "sample", "deterministic", "alive" (1 - P(z = 0), differentiable).
    """

    def __init__(self, rows: int, units: int, *, init_mean: float, init_std: float = 0.01,
                 generator: torch.Generator | None = None, rule: str = "global"):
        super().__init__()
        if rule not in DETERMINISTIC_RULES + UNIFORM_RULES:
            raise UserError(f"deterministic rule must be one of {DETERMINISTIC_RULES + UNIFORM_RULES}, got {rule!r}")
        self.rule = rule
        self.log_alpha = nn.Parameter(torch.empty(rows, units))
        with torch.no_grad():
            self.log_alpha.normal_(init_mean, init_std, generator=generator)

    def forward(self, mode: str = "auto", *, with_alive: bool = False) -> Any:
        """The gates in ``mode``; with ``with_alive`` also the alive probabilities (one call, so
        ZeRO-3 fetches log_alpha once)."""
        if mode == "auto":
            mode = "sample" if self.training else "deterministic"
        if mode == "sample":
            z = self.sample()
        elif mode == "deterministic":
            z = self.deterministic()
        elif mode == "alive":
            z = 1.0 - self.prob_zero()
        else:
            raise ValueError(f"HardConcrete mode must be auto, sample, deterministic or alive, got {mode!r}")
        return (z, 1.0 - self.prob_zero()) if with_alive else z

    def sample(self) -> torch.Tensor:
        """One sample z in [0, 1] per gate (shared across the batch), differentiable in log_alpha."""
        la = self.log_alpha.float()
        u = torch.empty_like(la).uniform_(EPS, 1.0 - EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + la) / BETA)
        return (s * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)

    def prob_zero(self) -> torch.Tensor:
        """P(z = 0) = sigmoid(beta * log(-l / r) - log_alpha)."""
        return prob_zero(self.log_alpha)

    @torch.no_grad()
    def deterministic(self, log_alpha: torch.Tensor | None = None) -> torch.Tensor:
        """The 0/1 gates of ``deterministic_gates`` (from ``log_alpha``, default this block's own)."""
        return deterministic_gates(self.log_alpha if log_alpha is None else log_alpha, rule=self.rule)

    @torch.no_grad()
    def clamp_(self, lo: float = LOG_ALPHA_MIN, hi: float = LOG_ALPHA_MAX) -> None:
        """Clamp log_alpha in place (CoFi does this after every optimizer step)."""
        self.log_alpha.clamp_(lo, hi)


class MaskSet(nn.Module):
    """All gates of one pruning run (NASH: encoder heads + FFN dims; CoFi: everything)."""

    def __init__(self, family: Family, config: Any, *, method: str = "nash", droprate_init: float = 0.5,
                 coarse_log_alpha_init: float = 10.0, teacher_config: Any = None,
                 teacher_prunable_params: int | None = None, seed: int | None = None, deterministic: str = "global",
                 uniform: bool = False):
        """``config``: the student's (decoder already cut). The whole-model sparsity is measured against
        the teacher's prunable params (``teacher_prunable_params`` or counted from ``teacher_config``;
        default: the student's dense count), so the decoder cut shows in it. ``uniform``
        (``prune.uniform_widths``): deterministic masks keep one count per mask type in every layer (no
        whole-sublayer gates), and the expected size is the one of that shape."""
        super().__init__()
        if method not in METHODS:
            raise UserError(f"mask method must be one of {METHODS}, got {method!r}")
        self.family = family
        self.config = config
        self.method = method
        self.dense = family.dense_prunable_params(config)
        if teacher_prunable_params is None and teacher_config is not None:
            teacher_prunable_params = family.dense_prunable_params(teacher_config)["model"]
        self.teacher_prunable_params = int(teacher_prunable_params or self.dense["model"])
        self.num_layers = {s: family.num_layers(config, s) for s in STACKS}
        self.num_heads = {s: family.num_heads(config, s) for s in STACKS}
        self.d_ff = {s: family.d_ff(config, s) for s in STACKS}
        self.d_model = family.d_model(config)

        fine = log_alpha_mean(droprate_init)
        shapes: dict[str, tuple[int, int, float]] = {}  # name -> (rows, units, init mean)
        sites = ["encoder"] if method == "nash" else list(SITES)
        for site in sites:
            stack = SITES[site][0]
            shapes[f"{site}_heads"] = (self.num_layers[stack], self.num_heads[stack], fine)
            if method == "cofi" and not uniform:
                shapes[f"{site}_mha"] = (self.num_layers[stack], 1, coarse_log_alpha_init)
        for stack in (["encoder"] if method == "nash" else STACKS):
            shapes[f"{stack}_ffn"] = (self.num_layers[stack], self.d_ff[stack], fine)
            if method == "cofi" and not uniform:
                shapes[f"{stack}_mlp"] = (self.num_layers[stack], 1, coarse_log_alpha_init)
        if method == "cofi":
            shapes["hidden"] = (1, self.d_model, fine)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.deterministic_rule = deterministic
        self.uniform = uniform
        self.gates = nn.ModuleDict({name: HardConcrete(rows, units, init_mean=mean, generator=gen,
                                                       rule=self._rule(name, deterministic))
                                    for name, (rows, units, mean) in shapes.items()})
        self._current: dict[str, torch.Tensor] | None = None

    def _rule(self, name: str, deterministic: str) -> str:
        """The rounding rule of gate ``name``: ``deterministic``, or with uniform widths one of
        ``UNIFORM_RULES`` (the hidden mask is one row: its rule does not matter)."""
        if not self.uniform or name == "hidden":
            return deterministic
        shared = {f"{site_name(stack, 'self')}_heads" for stack in STACKS} if self.family.shared_head_positions else ()
        return "uniform_shared" if name in shared else "uniform"

    # ------------------------------------------------------------------ masks
    @property
    def names(self) -> list[str]:
        """Mask keys of this set."""
        return list(self.gates)

    @staticmethod
    def _natural(name: str, z: torch.Tensor) -> torch.Tensor:
        """[rows, units] -> the key's shape ([L] for whole-sublayer masks, [d] for hidden)."""
        if name == "hidden":
            return z[0]
        if name.endswith("_mha") or name.endswith("_mlp"):
            return z[:, 0]
        return z

    def _gate_values(self, mode: str) -> dict[str, torch.Tensor]:
        return {name: self._natural(name, gate(mode)) for name, gate in self.gates.items()}

    def forward(self) -> dict[str, Any]:
        """Current masks (sampled in train mode, deterministic in eval mode), stored for the hooks.

        Returns the mask tensors under their keys plus "expected_sparsity" and "expected_params"
        (differentiable, from the alive probabilities) and "alive" (the probabilities, per mask), computed
        here so ZeRO-3 has log_alpha whole.
        """
        masks, alive = {}, {}
        for name, gate in self.gates.items():
            z, a = gate("auto", with_alive=True)
            masks[name], alive[name] = self._natural(name, z), self._natural(name, a)
        self._current = masks
        expected = self._expected(alive)
        return {**masks, "expected_params": expected, "expected_sparsity": self._sparsity(expected), "alive": alive}

    @property
    def current(self) -> dict[str, torch.Tensor]:
        """The masks the hooks apply (set by the last ``forward()``)."""
        if self._current is None:
            raise RuntimeError("MaskSet.forward() must run before the masked model's forward "
                               "(call `maskset()` first)")
        return self._current

    def deterministic_masks(self, log_alphas: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """0/1 masks the finalizer prunes with (see module docstring); from ``log_alphas`` (gate name ->
        values, e.g. the optimizer's fp32 masters) when given, else from the parameters."""
        if log_alphas is None:
            return self._gate_values("deterministic")
        return {name: self._natural(name, gate.deterministic(log_alphas[name])) for name, gate in self.gates.items()}

    def set_current(self, masks: dict[str, torch.Tensor]) -> None:
        """Make the hooks apply ``masks`` (e.g. deterministic masks from the fp32 masters)."""
        if set(masks) != set(self.gates):
            raise ValueError(f"masks must have exactly the keys {self.names}, got {sorted(masks)}")
        self._current = masks

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp every log_alpha to CoFi's [log 1e-2, log 1e2]."""
        for gate in self.gates.values():
            gate.clamp_()

    # ------------------------------------------------------------------ size
    def dense_prunable_params(self) -> dict[str, int]:
        """Prunable params of the unmasked student: {"encoder", "decoder", "model"}."""
        return dict(self.dense)

    def _expected(self, vals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Prunable params given per-unit keep values (alive probabilities or 0/1 masks), float64."""
        ref = next(iter(vals.values()))
        f64 = dict(dtype=torch.float64, device=ref.device)
        vals = {k: v.to(torch.float64) for k, v in vals.items()}
        hidden = vals["hidden"].sum() if "hidden" in vals else torch.tensor(float(self.d_model), **f64)
        out: dict[str, torch.Tensor] = {}
        for stack in STACKS:
            num_layers = self.num_layers[stack]
            total = torch.zeros((), **f64)
            units = [(f"{site_name(stack, k)}_heads", f"{site_name(stack, k)}_mha", self.num_heads[stack])
                     for k in self.family.attention_kinds(stack)]
            units.append((f"{stack}_ffn", f"{stack}_mlp", self.d_ff[stack]))
            for fine_key, coarse_key, width in units:
                if fine_key in vals:
                    n = vals[fine_key].sum(dim=1)
                    nonempty = 1.0 - torch.prod(1.0 - vals[fine_key], dim=1)
                else:
                    n = torch.full((num_layers,), float(width), **f64)
                    nonempty = torch.ones(num_layers, **f64)
                if coarse_key in vals:
                    n, nonempty = n * vals[coarse_key], nonempty * vals[coarse_key]
                if self.uniform:  # the shape is one count for every layer: the mean
                    n, nonempty = n.mean().expand_as(n), nonempty.mean().expand_as(nonempty)
                if fine_key.endswith("_heads"):
                    p = self.family.attn_params(self.config, stack, num_heads=n, nonempty=nonempty, hidden=hidden)
                else:
                    p = self.family.ffn_params(self.config, stack, num_dims=n, nonempty=nonempty, hidden=hidden)
                total = total + p.sum()
            out[stack] = total
        out["model"] = out["encoder"] + out["decoder"]
        return out

    def _sparsity(self, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"encoder": (1.0 - expected["encoder"] / self.dense["encoder"]).float(),
                "decoder": (1.0 - expected["decoder"] / self.dense["decoder"]).float(),
                "model": (1.0 - expected["model"] / self.teacher_prunable_params).float()}

    def expected_params(self, masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Expected prunable params {"encoder", "decoder", "model"} (float64, differentiable).

        From the alive probabilities 1 - P(z=0), or from ``masks`` (every key of this set, e.g. the
        deterministic 0/1 masks: then it is exactly the physically pruned size).
        """
        if masks is None:
            return self._expected(self._gate_values("alive"))
        if set(masks) != set(self.gates):
            raise ValueError(f"masks must have exactly the keys {self.names}, got {sorted(masks)}")
        return self._expected(masks)

    def expected_sparsity(self, masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """1 - expected / dense: "encoder" (NASH's target), "decoder" (masks only, against the cut
        decoder) and "model" (against the dense TEACHER, so the decoder cut counts)."""
        return self._sparsity(self.expected_params(masks))

    def deterministic_params(self) -> dict[str, float]:
        """Prunable params at the deterministic masks (= the physically pruned model's)."""
        return {k: float(v) for k, v in self.expected_params(self.deterministic_masks()).items()}

    def deterministic_sparsity(self) -> dict[str, float]:
        """Sparsity at the deterministic masks (what finalize will produce)."""
        return {k: float(v) for k, v in self.expected_sparsity(self.deterministic_masks()).items()}

    @torch.no_grad()
    def alive_probabilities(self) -> dict[str, torch.Tensor]:
        """1 - P(z = 0) per mask, detached (for logs and heatmaps)."""
        return {k: v.detach() for k, v in self._gate_values("alive").items()}

    @torch.no_grad()
    def summary(self) -> dict[str, float]:
        """Scalars for logging: expected and deterministic sparsity, mean alive probability per mask."""
        alive = self._gate_values("alive")
        out = {f"expected_sparsity/{k}": float(v) for k, v in self._sparsity(self._expected(alive)).items()}
        out.update({f"deterministic_sparsity/{k}": v for k, v in self.deterministic_sparsity().items()})
        out.update({f"alive/{k}": float(v.mean()) for k, v in alive.items()})
        return out

    # ------------------------------------------------------------------ plan
    @torch.no_grad()
    def plan(self, kept_decoder_layers: Sequence[int]) -> PruningPlan:
        """The pruning plan of the deterministic masks; a whole sublayer at 0 (or with every unit
        at 0) gives an empty list; ``hidden`` is the kept dims, or None without a hidden mask."""
        kept = list(kept_decoder_layers)
        if len(kept) != self.num_layers["decoder"]:
            raise ValueError(f"kept_decoder_layers has {len(kept)} entries but the student has "
                             f"{self.num_layers['decoder']} decoder layers")
        validate_kept_layers(kept, num_layers=max(kept) + 1)
        z = self.deterministic_masks()

        def kept_units(fine_key: str, coarse_key: str, stack: str, width: int) -> list[list[int]]:
            rows = []
            for layer in range(self.num_layers[stack]):
                if coarse_key in z and z[coarse_key][layer] == 0:
                    rows.append([])
                elif fine_key in z:
                    rows.append(torch.nonzero(z[fine_key][layer]).flatten().tolist())
                else:
                    rows.append(list(range(width)))
            return rows

        heads = {site: kept_units(f"{site}_heads", f"{site}_mha", stack, self.num_heads[stack])
                 for site, (stack, _) in SITES.items()}
        ffn = {stack: kept_units(f"{stack}_ffn", f"{stack}_mlp", stack, self.d_ff[stack]) for stack in STACKS}
        hidden = torch.nonzero(z["hidden"]).flatten().tolist() if "hidden" in z else None
        return PruningPlan(encoder_heads=heads["encoder"], decoder_self_heads=heads["decoder_self"],
                           decoder_cross_heads=heads["decoder_cross"], encoder_ffn=ffn["encoder"],
                           decoder_ffn=ffn["decoder"], hidden=hidden, kept_decoder_layers=kept,
                           stock_shape=self.uniform)


# ---------------------------------------------------------------------- hooks
class MaskHandle:
    """Removes every hook ``attach`` installed."""

    def __init__(self, model: nn.Module, handles: list[Any]):
        self._model = model
        self._handles = handles
        setattr(model, MASKS_ATTACHED, True)

    def remove(self) -> None:
        """Detach the masks; the model is stock again."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if getattr(self._model, MASKS_ATTACHED, False):
            delattr(self._model, MASKS_ATTACHED)


def _scale_units(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """x [..., U * w] times z [U] per block of w (heads) or per unit (w = 1)."""
    z = z.to(x.dtype)
    if x.shape[-1] == z.shape[0]:
        return x * z
    return (x.unflatten(-1, (z.shape[0], -1)) * z[:, None]).flatten(-2)


def attach(model: nn.Module, family: Family, maskset: MaskSet) -> MaskHandle:
    """Install the hooks that apply ``maskset.current`` to a stock ``model``; returns a handle."""
    if getattr(model, MASKS_ATTACHED, False):
        raise ValueError("this model already has masks attached; remove that handle first")
    for stack in STACKS:
        n = len(family.layers(model, stack))
        if n != maskset.num_layers[stack]:
            raise ValueError(f"model has {n} {stack} layers but the MaskSet was built for "
                             f"{maskset.num_layers[stack]}; build it from the student's config")
    names = set(maskset.names)
    handles: list[Any] = []

    def gate_of(fine: str, coarse: str, layer: int, with_hidden: bool):
        """Output multiplier of a sublayer: whole mask * any-unit-alive (* hidden)."""
        def gate() -> torch.Tensor | None:
            z = maskset.current
            g = None
            if fine in names:
                g = (z[fine][layer] != 0).any().to(z[fine].dtype)
            if coarse in names:
                g = z[coarse][layer] if g is None else g * z[coarse][layer]
            if with_hidden:
                g = z["hidden"] if g is None else g * z["hidden"]
            return g
        return gate

    def add_site(proj: nn.Module, fine: str, coarse: str, layer: int) -> None:
        if fine in names:
            def pre(mod, args, _key=fine, _l=layer):
                return (_scale_units(args[0], maskset.current[_key][_l]), *args[1:])
            handles.append(proj.register_forward_pre_hook(pre))
        with_hidden = "hidden" in names
        if fine in names or coarse in names or with_hidden:
            gate = gate_of(fine, coarse, layer, with_hidden)

            def post(mod, args, out, _gate=gate):
                return out * _gate().to(out.dtype)
            handles.append(proj.register_forward_hook(post))

    for stack in STACKS:
        for layer, block in enumerate(family.layers(model, stack)):
            for kind in family.attention_kinds(stack):
                site = site_name(stack, kind)
                proj = family.attn_out_proj(family.attention(block, kind))
                add_site(proj, f"{site}_heads", f"{site}_mha", layer)
            add_site(family.ffn_out_proj(block), f"{stack}_ffn", f"{stack}_mlp", layer)

    if "hidden" in names:
        for writer in family.hidden_mask_outputs(model):
            def emb(mod, args, out):
                return out * maskset.current["hidden"].to(out.dtype)
            handles.append(writer.register_forward_hook(emb))
        for norm in family.norms(model):
            def norm_hook(mod, args, out):
                return family.masked_norm(mod, args[0], hidden=maskset.current["hidden"])
            handles.append(norm.register_forward_hook(norm_hook))
    return MaskHandle(model, handles)


# ---------------------------------------------------------------------- the lifecycle
STUDENT_PREFIX = "student."
"""Where the prune stage's wrapper module keeps the student (its state-dict prefix)."""
MASKS_PREFIX = "masks."
"""Where it keeps the MaskSet."""
MASKS_FILE = "masks.safetensors"
"""The mask tensors in the prune stage's export (``prune/model/``), as ``split_state`` returns them."""


@dataclasses.dataclass
class MaskLogs:
    """What a logging step records of the masks (``Masking.step_logs``)."""

    scalars: dict[str, float]
    """``MaskSet.summary`` with the deterministic sparsity of the fp32 masters."""
    deterministic: dict[str, torch.Tensor]
    """The deterministic masks of the fp32 masters (what finalize would build now)."""
    alive: dict[str, torch.Tensor]
    """The alive probabilities 1 - P(z = 0), detached."""

    def kept_units(self) -> dict[str, float]:
        """``kept/<mask>/layer_<i>``: the units each layer keeps, for the per-layer masks."""
        out = {}
        for name, z in self.deterministic.items():
            if z.ndim == 2:  # [layers, units]
                for i, kept in enumerate(z.sum(dim=1).tolist()):
                    out[f"kept/{name}/layer_{i}"] = kept
        return out


class Masking:
    """The mask lifecycle of one pruning run: one method per step, each called from one place.

    1. ``attach(model)``: hooks that apply the masks to a stock model (the prune stage, once; the
       finalizer, on the rebuilt student); ``register(module, student)``: the prune stage's wrapper holds
       the student and the MaskSet under the names whose state-dict prefixes step 3 reads;
    2. ``after_optimizer_step()``: log_alpha clamped to CoFi's [log 1e-2, log 1e2] on the optimizer's
       fp32 masters and the model's copy (the trainer, after every optimizer step; collective);
    3. ``split_state(state)``: a consolidated checkpoint of the prune module -> (student tensors, mask
       tensors); what the student's export and the finalizer read (Lagrangian and projections dropped);
    4. ``finalize(student, kept)``: the deterministic masks -> the pruning plan, the student left as the
       masked model (hooks on, gates deterministic) that the physically pruned one must match.

    Besides the steps, what the stages record of the masks comes from here, so that no stage reads the
    MaskSet itself: ``sample()`` and ``sample_logs`` (each training forward), ``step_logs()`` (logging
    steps), ``eval_logs()`` (evaluations), ``report()`` and ``figures()`` (the finalizer's report and
    pictures). Without a MaskSet (``sft``: the decoder cut alone) every step is a no-op, there is nothing
    to log and the plan keeps every unit. torchtitan's ``ModelConverter`` (convert / post-optimizer hook /
    state-dict filter) has the same shape.
    """

    def __init__(self, family: Family, config: Any, maskset: MaskSet | None):
        self.family = family
        self.config = config
        self.maskset = maskset

    @classmethod
    def build(cls, family: Family, config: Any, *, method: str, droprate_init: float, teacher_config: Any,
              deterministic: str = "global", mask_state: dict[str, torch.Tensor] | None = None,
              uniform: bool = False) -> Masking:
        """The lifecycle of ``method`` (nash / cofi learn masks, sft none) for a student of ``config``;
        ``deterministic``: the rounding rule of deterministic masks; ``mask_state``: tensors of
        ``split_state`` to load (the finalizer); ``uniform``: ``prune.uniform_widths``."""
        maskset = None
        if method in METHODS:
            maskset = MaskSet(family, config, method=method, droprate_init=droprate_init,
                              teacher_config=teacher_config, deterministic=deterministic, uniform=uniform)
            if mask_state is not None:
                maskset.load_state_dict(mask_state)
        return cls(family, config, maskset)

    @property
    def enabled(self) -> bool:
        """Whether this run learns masks (nash, cofi; sft has none)."""
        return self.maskset is not None

    def parameters(self) -> list[nn.Parameter]:
        """Every log_alpha (the optimizer's "masks" group); [] without masks."""
        return [] if self.maskset is None else list(self.maskset.parameters())

    # 1
    def attach(self, model: nn.Module) -> MaskHandle | None:
        """Install the hooks (None without masks)."""
        return None if self.maskset is None else attach(model, self.family, self.maskset)

    def register(self, module: nn.Module, student: nn.Module) -> None:
        """Make ``student`` and the MaskSet submodules of the prune stage's wrapper ``module`` under the names of
        ``STUDENT_PREFIX`` and ``MASKS_PREFIX`` (the checkpoint keys ``split_state`` and ``wanted`` read), in
        that order; without masks only the student."""
        module.add_module(STUDENT_PREFIX.removesuffix("."), student)
        if self.maskset is not None:
            module.add_module(MASKS_PREFIX.removesuffix("."), self.maskset)

    def sample(self) -> dict[str, Any] | None:
        """This training step's masks for the hooks, with the expected sparsity and the alive probabilities
        (``MaskSet.forward``: called as a module, so that ZeRO-3 gathers log_alpha); None without masks."""
        return None if self.maskset is None else self.maskset()

    @staticmethod
    def sample_logs(sampled: dict[str, Any]) -> dict[str, float]:
        """The training-step logs of ``sample()``'s result: ``expected_sparsity/<part>``."""
        return {f"expected_sparsity/{k}": float(v.detach()) if torch.is_tensor(v) else float(v)
                for k, v in sampled["expected_sparsity"].items()}

    def step_logs(self) -> MaskLogs | None:
        """What a logging step records of the masks (collective under ZeRO; None without masks): the MaskSet's
        summary, its deterministic sparsity recomputed from the fp32 masters (what finalize would build now)."""
        if self.maskset is None:
            return None
        from nash_ds import dist

        det = self.maskset.deterministic_masks(self.master_log_alphas())
        with dist.gathered(list(self.maskset.parameters())):
            scalars = self.maskset.summary()
            alive = self.maskset.alive_probabilities()
        det_sparsity = self.maskset.expected_sparsity(det)
        scalars.update({f"deterministic_sparsity/{k}": float(v) for k, v in det_sparsity.items()})
        return MaskLogs(scalars=scalars, deterministic=det, alive=alive)

    def eval_logs(self) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """(``sparsity/<part>`` at the deterministic masks of the fp32 masters, those masks): what an evaluation
        records (collective); ({}, {}) without masks."""
        if self.maskset is None:
            return {}, {}
        with self.evaluation() as masks:
            det = self.maskset.expected_sparsity(masks)
        return {f"sparsity/{k}": float(v) for k, v in det.items()}, masks

    def report(self) -> dict[str, Any]:
        """The finalizer's report entries of the masks: ``mask_expected_prunable_params`` (the prunable params
        at the deterministic masks, which the pruned model must hold); {} without masks."""
        if self.maskset is None:
            return {}
        return {"mask_expected_prunable_params": {k: int(round(float(v)))
                                                  for k, v in self.maskset.deterministic_params().items()}}

    def figures(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """(alive probabilities, deterministic masks): what the mask figures draw (``plot.save_mask_figures``);
        None without masks."""
        if self.maskset is None:
            return None
        return self.maskset.alive_probabilities(), self.maskset.deterministic_masks()

    # 2
    def after_optimizer_step(self) -> None:
        """Clamp every log_alpha into CoFi's range, masters included (collective under ZeRO)."""
        if self.maskset is not None:
            from nash_ds.compat import clamp_trained_

            clamp_trained_(list(self.maskset.parameters()), LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def master_log_alphas(self) -> dict[str, torch.Tensor]:
        """Every log_alpha as the optimizer's fp32 master holds it (collective under ZeRO): the values the
        checkpoint stores and the finalizer reads, also when the model's copy is bf16."""
        from nash_ds.compat import full_fp32_values

        names = list(self.maskset.gates)
        return dict(zip(names, full_fp32_values([self.maskset.gates[n].log_alpha for n in names])))

    @contextlib.contextmanager
    def evaluation(self):
        """Evaluate the masked model as the finalizer will build it: the hooks apply the deterministic
        masks of the fp32 masters (collective). Yields those masks ({} without masks)."""
        if self.maskset is None:
            yield {}
            return
        masks = self.maskset.deterministic_masks(self.master_log_alphas())
        was_training = self.maskset.training
        self.maskset.eval()
        self.maskset.set_current(masks)
        try:
            yield masks
        finally:
            self.maskset.train(was_training)

    # 3
    @staticmethod
    def split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(student tensors, mask tensors) of a consolidated prune-module state, prefixes stripped; the
        entries are moved out of ``state`` (no copies). Everything else stays in ``state``."""
        def pop(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}

        return pop(STUDENT_PREFIX), pop(MASKS_PREFIX)

    @staticmethod
    def save_masks(mask_state: dict[str, torch.Tensor], directory: Path) -> None:
        """Write ``split_state``'s mask tensors to ``directory / MASKS_FILE`` (nothing when there are none)."""
        if mask_state:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in mask_state.items()}, str(Path(directory) / MASKS_FILE))

    @staticmethod
    def wanted(name: str) -> bool:
        """Whether a tensor of the prune module's checkpoint is needed by ``split_state``."""
        return name.startswith((STUDENT_PREFIX, MASKS_PREFIX))

    # 4
    def finalize(self, student: nn.Module, kept_decoder_layers: Sequence[int]) -> PruningPlan:
        """The plan of the deterministic masks; ``student`` becomes the masked model (eval mode, hooks on,
        gates deterministic). Without masks: keep everything but the decoder cut."""
        student.eval()
        if self.maskset is None:
            c, fam = self.config, self.family
            plan = PruningPlan.full(num_encoder_layers=fam.num_layers(c, "encoder"),
                                    num_decoder_layers=fam.num_layers(c, "decoder"),
                                    num_heads=fam.num_heads(c, "encoder"), encoder_ffn=fam.d_ff(c, "encoder"),
                                    decoder_ffn=fam.d_ff(c, "decoder"))
            plan.kept_decoder_layers = list(kept_decoder_layers)
            return plan
        self.maskset.eval()
        plan = self.maskset.plan(kept_decoder_layers)
        self.attach(student)
        self.maskset()  # deterministic gates for the hooks
        return plan
