"""A measured latency model of one model shape on one device: generation time as a function of the
decoder depth k and the encoder's kept heads and FFN dims per layer.

NASH's finding, which the model encodes: generation time is mostly decoder depth (paid once per
generated token), and encoder width a smaller, input-length-dependent share (paid once per input).
For a model of the profiled shape with k decoder layers (at full width) and encoder layers that keep
``h_l`` heads and ``f_l`` FFN dims:

    encoder_ms     = A + sum_l ( e_attn [h_l > 0] + e_head h_l + e_ffn [f_l > 0] + e_dim f_l )
    decoder_ms(k)  = (g0 + k g1)  +  (N - 1) (t0 + k t1)
    generate_ms    = encoder_ms + decoder_ms(k)

``g0 + k g1`` is the first decoding step beyond the encoder (it also computes every layer's
cross-attention keys and values), ``t0 + k t1`` each further token with the KV cache (embedding, LM
head and the generation loop in t0, one decoder layer's self-attention, cross-attention and FFN in
t1), N the generated tokens. The coefficients are fitted (least squares, none negative) to timings
of the real modules: probe models of the profiled shape with random weights, uniform widths and
decoder depths 1 .. L, timed by ``nash_ds.latency.measure_many`` (warm-up, device sync, medians,
interleaved repeats). A profile is keyed by (shape, device, dtype, batch, lengths, threads) and can be
measured on the deployment machine and handed to a training run (``prune.latency_profile``).

During mask learning the same formula takes the gates' alive probabilities: E[h_l] is the sum of a
layer's head alive probabilities and P(h_l > 0) = 1 - prod(1 - alive), as for expected parameters,
so the expected latency is differentiable and a Lagrangian can hold it at 1/X of the dense model's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from nash_ds.errors import UserError

log = logging.getLogger(__name__)

ENCODER_TERMS = ("base", "attn", "head", "ffn", "dim")
DECODER_TERMS = ("first0", "first_layer", "token0", "token_layer")
NOISY_FIT = 0.10
"""A profile whose fit misses a probe by more than this is reported as noisy."""


def shape_fingerprint(config: Any) -> str:
    """A short hash of what decides speed in a config (sizes and kinds, not names, ids or versions)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    skip = {"_name_or_path", "transformers_version", "architectures", "auto_map", "torch_dtype", "dtype",
            "pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id", "forced_eos_token_id",
            "forced_bos_token_id", "task_specific_params", "id2label", "label2id", "output_past"}
    canon = json.dumps({k: v for k, v in sorted(d.items()) if k not in skip}, sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def device_name(device: torch.device) -> str:
    """The accelerator or CPU model a profile was measured on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{platform.processor() or platform.machine()}"


@dataclass
class LatencyModel:
    """Fitted coefficients (milliseconds) of one shape on one device; see the module docstring."""

    key: dict[str, Any]
    """shape (fingerprint), model_type, device, dtype, batch_size, source_length, new_tokens, threads."""
    num_encoder_layers: int
    num_decoder_layers: int
    num_heads: int
    d_ff: int
    encoder: dict[str, float]
    """base, attn, head, ffn, dim: ms."""
    decoder: dict[str, float]
    """first0, first_layer, token0, token_layer: ms."""
    probes: list[dict[str, Any]] = field(default_factory=list)
    """Every probe's widths, depth, measured times and the fit's prediction (for the record)."""

    # -------------------------------------------------------------------- prediction
    @property
    def new_tokens(self) -> int:
        return int(self.key["new_tokens"])

    def encoder_ms(self, heads: Any, ffn: Any, *, heads_nonempty: Any = None, ffn_nonempty: Any = None) -> Any:
        """Encoder time for per-layer kept heads and FFN dims (lists, or tensors of expected values with the
        probabilities that a layer keeps any; differentiable then)."""
        e = self.encoder
        if heads_nonempty is None:
            heads_nonempty = [float(h > 0) for h in heads]
            ffn_nonempty = [float(f > 0) for f in ffn]
        total = e["base"]
        for h, f, hn, fn in zip(heads, ffn, heads_nonempty, ffn_nonempty):
            total = total + e["attn"] * hn + e["head"] * h + e["ffn"] * fn + e["dim"] * f
        return total

    def decoder_ms(self, k: int) -> float:
        """Decoder time of a whole generation with k full-width decoder layers."""
        d = self.decoder
        return d["first0"] + k * d["first_layer"] + (self.new_tokens - 1) * (d["token0"] + k * d["token_layer"])

    def dense_ms(self) -> float:
        """Predicted generation time of the dense (profiled) model."""
        return self.generate_ms([self.num_heads] * self.num_encoder_layers, [self.d_ff] * self.num_encoder_layers,
                                self.num_decoder_layers)

    def generate_ms(self, heads: Any, ffn: Any, k: int) -> float:
        return self.encoder_ms(heads, ffn) + self.decoder_ms(k)

    def plan_ms(self, plan) -> dict[str, float]:
        """Predicted times of a pruning plan (NASH: encoder widths and the decoder cut)."""
        heads = [len(h) for h in plan.encoder_heads]
        ffn = [len(f) for f in plan.encoder_ffn]
        k = len(plan.decoder_self_heads)
        enc, dec = float(self.encoder_ms(heads, ffn)), self.decoder_ms(k)
        return {"encoder_ms": enc, "decoder_ms": dec, "generate_ms": enc + dec,
                "predicted_speedup": self.dense_ms() / (enc + dec)}

    def expected_ms(self, heads_alive: torch.Tensor, ffn_alive: torch.Tensor, k: int) -> torch.Tensor:
        """Expected generation time given encoder gates' alive probabilities ([L, H], [L, d_ff]); differentiable."""
        heads_alive, ffn_alive = heads_alive.double(), ffn_alive.double()
        enc = self.encoder_ms(heads_alive.sum(dim=1), ffn_alive.sum(dim=1),
                              heads_nonempty=1.0 - torch.prod(1.0 - heads_alive, dim=1),
                              ffn_nonempty=1.0 - torch.prod(1.0 - ffn_alive, dim=1))
        return enc + self.decoder_ms(k)

    def uniform_ms(self, k: int, encoder_sparsity: float) -> float:
        """Predicted time with k decoder layers and every encoder layer keeping (1 - s) of its heads and FFN dims."""
        h = round((1.0 - encoder_sparsity) * self.num_heads)
        f = round((1.0 - encoder_sparsity) * self.d_ff)
        return self.generate_ms([h] * self.num_encoder_layers, [f] * self.num_encoder_layers, k)

    def best_speedup(self, k: int, max_encoder_sparsity: float) -> float:
        return self.dense_ms() / self.uniform_ms(k, max_encoder_sparsity)

    def choose_k(self, target_speedup: float, *, max_encoder_sparsity: float, k: int | None = None) -> int:
        """The largest k whose target is reachable with encoder pruning up to ``max_encoder_sparsity`` (or
        check the given k); ValueError with the best reachable speedup otherwise."""
        if k is not None:
            best = self.best_speedup(k, max_encoder_sparsity)
            if best < target_speedup:
                raise UserError(
                    f"prune.target_speedup={target_speedup:g} is not reachable with prune.decoder_layers={k}: the "
                    f"latency model predicts at most {best:.2f}x (encoder sparsity {max_encoder_sparsity:g}, "
                    f"{self.describe()}); lower the target, keep fewer decoder layers, or raise "
                    "prune.max_encoder_sparsity")
            return k
        for k in range(self.num_decoder_layers, 0, -1):
            if self.best_speedup(k, max_encoder_sparsity) >= target_speedup:
                return k
        best = self.best_speedup(1, max_encoder_sparsity)
        raise UserError(f"prune.target_speedup={target_speedup:g} is not reachable: the best reachable speedup is "
                        f"{best:.2f}x (k=1 decoder layer, encoder sparsity {max_encoder_sparsity:g}; "
                        f"{self.describe()}); lower the target or raise prune.max_encoder_sparsity")

    def describe(self) -> str:
        k = self.key
        return (f"profile of {k['model_type']} on {k['device']} {k['dtype']}, batch {k['batch_size']}, "
                f"{k['source_length']} tokens in, {k['new_tokens']} out")

    # -------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyModel:
        return cls(**d)


def key_string(key: dict[str, Any]) -> str:
    """The cache key of a profile as one string."""
    return "|".join(f"{k}={key[k]}" for k in sorted(key))


def load_profile(path: str, *, config: Any) -> LatencyModel:
    """The profile in ``path`` (``run.py profile``'s latency.json) for the shape of ``config``."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise UserError(f"prune.latency_profile {path} does not exist (write one with 'run.py profile')")
    try:
        profiles = json.loads(p.read_text())["profiles"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise UserError(f"prune.latency_profile {path} is not a latency.json of 'run.py profile' ({e})") from e
    shape = shape_fingerprint(config)
    matches = [LatencyModel.from_dict(v) for v in profiles.values() if v["key"]["shape"] == shape]
    if len(matches) != 1:
        keys = [v["key"] for v in profiles.values()]
        raise UserError(f"prune.latency_profile {path} holds {len(matches)} profiles of this model's shape "
                        f"({shape}) where one is needed; its profiles: {keys}")
    return matches[0]


def save_profile(model: LatencyModel, path, *, extra: dict | None = None) -> None:
    """Add (or replace) ``model`` under its key in the latency.json at ``path`` (written atomically)."""
    import os
    from pathlib import Path

    p = Path(path)
    data = json.loads(p.read_text()) if p.is_file() else {"profiles": {}}
    data["profiles"][key_string(model.key)] = model.to_dict() | (extra or {})
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, p)


def cached_profile(path, key: dict[str, Any]) -> LatencyModel | None:
    """The profile stored under ``key`` in the latency.json at ``path``, or None."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        return None
    entry = json.loads(p.read_text())["profiles"].get(key_string(key))
    return None if entry is None else LatencyModel.from_dict({k: entry[k] for k in LatencyModel.__dataclass_fields__})


# ------------------------------------------------------------------------ measuring


def profile_key(config: Any, *, device: torch.device, dtype: torch.dtype, batch_size: int, source_length: int,
                new_tokens: int) -> dict[str, Any]:
    return {"shape": shape_fingerprint(config), "model_type": config.model_type, "device": device_name(device),
            "dtype": str(dtype).replace("torch.", ""), "batch_size": batch_size, "source_length": source_length,
            "new_tokens": new_tokens, "threads": torch.get_num_threads() if device.type == "cpu" else None}


def _uniform_plan(family, config, *, heads: int, ffn: int, k: int):
    from nash_ds.models import select_decoder_layers
    from nash_ds.plan import PruningPlan

    L = family.num_layers(config, "encoder")
    plan = PruningPlan.full(num_encoder_layers=L, num_decoder_layers=k, num_heads=family.num_heads(config, "encoder"),
                            encoder_ffn=family.d_ff(config, "encoder"), decoder_ffn=family.d_ff(config, "decoder"))
    plan.encoder_heads = [list(range(heads)) for _ in range(L)]
    plan.encoder_ffn = [list(range(ffn)) for _ in range(L)]
    plan.kept_decoder_layers = select_decoder_layers(family.num_layers(config, "decoder"), k, "uniform")
    return plan


def probe_grid(num_heads: int, d_ff: int, num_decoder_layers: int) -> list[dict[str, int]]:
    """Probe widths and depths: decoder depths 1, L/2, L at full width; encoder widths (full, half, none) of
    heads and FFN dims one at a time and together, at k = 1 (the cheapest decoder)."""
    L = num_decoder_layers
    depths = sorted({1, max(1, L // 2), L})
    probes = [{"heads": num_heads, "ffn": d_ff, "k": k} for k in depths]
    for h, f in ((num_heads // 2, d_ff), (0, d_ff), (num_heads, d_ff // 2), (num_heads, 0),
                 (num_heads // 2, d_ff // 2), (max(1, num_heads // 4), max(1, d_ff // 4))):
        probes.append({"heads": h, "ffn": f, "k": 1})
    return probes


def _nonnegative_lstsq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Least squares with every coefficient >= 0 (drop negative ones and refit: a tiny active-set loop)."""
    active = list(range(x.shape[1]))
    while True:
        coef = torch.zeros(x.shape[1], dtype=torch.float64)
        sol = torch.linalg.lstsq(x[:, active], y.unsqueeze(1)).solution.squeeze(1)
        coef[active] = sol
        negative = [i for i, c in zip(active, sol.tolist()) if c < 0]
        if not negative:
            return coef
        active = [i for i in active if i not in negative]
        if not active:
            return coef


def measure(config: Any, *, device: torch.device, dtype: torch.dtype, batch_size: int = 1, source_length: int = 64,
            new_tokens: int = 16, warmup: int = 2, repeats: int = 5, seed: int = 0) -> LatencyModel:
    """Time probe models of ``config``'s shape (random weights) and fit the latency model."""
    from nash_ds import stop
    from nash_ds.latency import measure_many, prepare_model
    from nash_ds.models import family_for, random_model, select_decoder_layers
    from nash_ds.models.pruning import prune_model

    family = family_for(config)
    family.check_prunable(config)
    L_enc, L_dec = family.num_layers(config, "encoder"), family.num_layers(config, "decoder")
    H, F = family.num_heads(config, "encoder"), family.d_ff(config, "encoder")
    dense = random_model(config, seed=seed).eval()
    grid = probe_grid(H, F, L_dec)
    timing = dict(batch_size=batch_size, source_length=source_length, new_tokens=new_tokens, warmup=warmup,
                  repeats=repeats, seed=seed)
    rows: dict[str, dict] = {}

    def name(p: dict) -> str:
        return f"k{p['k']}_h{p['heads']}_f{p['ffn']}"

    def cut(k: int):
        return dense if k == L_dec else family.make_student(dense, select_decoder_layers(L_dec, k, "uniform"))

    # two groups, each timed interleaved, so that at most one group of probes is in memory: the decoder
    # depths at full width, then the encoder widths at k = 1 (with the full-width k = 1 probe again)
    depth_probes = [p for p in grid if p["heads"] == H and p["ffn"] == F]
    models = {name(p): prepare_model(cut(p["k"]), device=device, dtype=dtype) for p in depth_probes}
    log.info("profile: timing %s %d+%d layers (%d heads, d_ff %d) on %s %s: decoder depths %s", config.model_type,
             L_enc, L_dec, H, F, device, dtype, [p["k"] for p in depth_probes])
    rows.update(measure_many(models, **timing))
    del models
    stop.at("profile:depths", "profile (between its probe groups)")
    width_probes = [p for p in grid if p["k"] == 1]

    def narrowed(one, p: dict):
        if (p["heads"], p["ffn"]) == (H, F):
            return one
        return prune_model(one, _uniform_plan(family, config, heads=p["heads"], ffn=p["ffn"], k=1))

    one = cut(1)
    models = {name(p): prepare_model(narrowed(one, p), device=device, dtype=dtype) for p in width_probes}
    log.info("profile: encoder widths (heads, FFN dims) %s", [(p["heads"], p["ffn"]) for p in width_probes])
    widths = measure_many(models, **timing)
    del models, one
    rows.update({k: v for k, v in widths.items() if k not in rows})
    probes = []
    for p in grid:
        r = rows[name(p)]
        probes.append({**p, "encoder_ms": r["encoder_ms"], "first_extra_ms": r["first_token_ms"] - r["encoder_ms"],
                       "token_ms": r["decoder_ms_per_token"], "generate_ms": r["generate_ms"]})
    f64 = dict(dtype=torch.float64)
    # encoder: every probe (its widths are uniform over the L_enc layers)
    x = torch.tensor([[1.0, L_enc * (p["heads"] > 0), L_enc * p["heads"], L_enc * (p["ffn"] > 0), L_enc * p["ffn"]]
                      for p in probes], **f64)
    enc = _nonnegative_lstsq(x, torch.tensor([p["encoder_ms"] for p in probes], **f64))
    # decoder: the full-width probes, one per depth
    full = [p for p in probes if p["heads"] == H and p["ffn"] == F]
    xk = torch.tensor([[1.0, p["k"]] for p in full], **f64)
    first = _nonnegative_lstsq(xk, torch.tensor([p["first_extra_ms"] for p in full], **f64))
    token = _nonnegative_lstsq(xk, torch.tensor([p["token_ms"] for p in full], **f64))
    model = LatencyModel(
        key=profile_key(config, device=device, dtype=dtype, batch_size=batch_size, source_length=source_length,
                        new_tokens=new_tokens),
        num_encoder_layers=L_enc, num_decoder_layers=L_dec, num_heads=H, d_ff=F,
        encoder=dict(zip(ENCODER_TERMS, enc.tolist())),
        decoder=dict(zip(DECODER_TERMS, [*first.tolist(), *token.tolist()])), probes=probes)
    for p in probes:
        p["predicted_ms"] = model.generate_ms([p["heads"]] * L_enc, [p["ffn"]] * L_enc, p["k"])
        p["error"] = p["predicted_ms"] / p["generate_ms"] - 1.0
    worst = max(abs(p["error"]) for p in probes)
    log.info("profile: fitted; dense %.1f ms predicted vs %.1f measured; worst probe error %.1f%%",
             model.dense_ms(), next(p["generate_ms"] for p in probes if p["k"] == L_dec and p["heads"] == H
                                    and p["ffn"] == F), 100 * worst)
    if not math.isfinite(model.dense_ms()) or model.dense_ms() <= 0:
        raise RuntimeError(f"latency fit failed: {model.encoder} {model.decoder}")
    if worst > NOISY_FIT:
        log.warning("profile: the fit misses a probe by %.0f%%: the timings are noisy and predicted speedups may be "
                    "off by about as much; raise evaluate.repeats or profile on a quieter machine", 100 * worst)
    return model


def profile(config: Any, timing: Any, *, seed: int, cache) -> LatencyModel:
    """The latency model of ``config``'s shape with the timing settings ``timing`` (an EvalConfig: device, dtype,
    first batch size, latency_source_length, latency_new_tokens, warmup, repeats): from the latency.json at
    ``cache`` when it holds this key, else measured here and added to it."""
    from nash_ds.latency import resolve_device, resolve_dtype

    device, dtype = resolve_device(timing.device), resolve_dtype(timing.dtype)
    key = profile_key(config, device=device, dtype=dtype, batch_size=timing.batch_sizes[0],
                      source_length=timing.latency_source_length, new_tokens=timing.latency_new_tokens)
    cached = cached_profile(cache, key)
    if cached is not None:
        log.info("profile: reusing %s (%s)", cache, key_string(key))
        return cached
    model = measure(config, device=device, dtype=dtype, batch_size=timing.batch_sizes[0],
                    source_length=timing.latency_source_length, new_tokens=timing.latency_new_tokens,
                    warmup=timing.warmup, repeats=timing.repeats, seed=seed)
    save_profile(model, cache)
    return model


def format_profile(model: LatencyModel) -> str:
    """The fitted model and its probes as a table a person can read."""
    e, d = model.encoder, model.decoder
    lines = [model.describe(),
             f"encoder ms = {e['base']:.3f} + per layer ({e['attn']:.3f} [heads>0] + {e['head']:.4f}/head + "
             f"{e['ffn']:.3f} [ffn>0] + {e['dim']:.5f}/FFN dim)",
             f"decoder ms = {d['first0']:.3f} + {d['first_layer']:.3f} k + (N-1) ({d['token0']:.3f} + "
             f"{d['token_layer']:.3f} k), N = {model.new_tokens}",
             f"dense: {model.dense_ms():.1f} ms; best speedup at encoder sparsity 0.6: "
             + ", ".join(f"k={k} {model.best_speedup(k, 0.6):.2f}x" for k in range(1, model.num_decoder_layers + 1)),
             "", "| k | heads | FFN dims | measured ms | predicted ms | error |", "|---|---|---|---|---|---|"]
    for p in model.probes:
        lines.append(f"| {p['k']} | {p['heads']} | {p['ffn']} | {p['generate_ms']:.1f} | {p['predicted_ms']:.1f} | "
                     f"{100 * p['error']:+.1f}% |")
    return "\n".join(lines)


@dataclass
class LatencyTarget:
    """What the prune stage holds the expected latency to: generation at 1/X of the dense model's time.

    With the decoder cut to k layers fixed, that is a target for the encoder's time: T_enc* = T_dense / X -
    T_dec(k). The Lagrangian sees it as an "encoder latency sparsity" 1 - E[T_enc] / T_enc(full width),
    normalised by the encoder's own time as the parameter sparsity is by the encoder's own parameters (a
    fraction of the whole generation would make its gradients several times weaker), ramped from 0.
    """

    model: LatencyModel
    k: int
    target_speedup: float | None
    """None: the profile only reports predicted speedups (prune.latency_profile without a target)."""

    @property
    def _full_encoder_ms(self) -> float:
        m = self.model
        return float(m.encoder_ms([m.num_heads] * m.num_encoder_layers, [m.d_ff] * m.num_encoder_layers))

    @property
    def cut_speedup(self) -> float:
        """The speedup of the decoder cut alone (full-width encoder)."""
        return self.model.dense_ms() / (self._full_encoder_ms + self.model.decoder_ms(self.k))

    @property
    def final_fraction(self) -> float:
        """1 - T_enc*/T_enc(full): the encoder latency sparsity that makes generation X times faster (0 when
        the decoder cut alone does)."""
        assert self.target_speedup is not None
        encoder_budget = self.model.dense_ms() / self.target_speedup - self.model.decoder_ms(self.k)
        return min(max(0.0, 1.0 - encoder_budget / self._full_encoder_ms), 1.0)

    def fraction_target(self, step: int, warmup_steps: int) -> float:
        """Linear ramp from 0 to the final fraction over ``warmup_steps`` (as the sparsity target's)."""
        ramp = 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
        return self.final_fraction * ramp

    def speedup_at(self, fraction: float) -> float:
        """The generation speedup at an encoder latency sparsity."""
        return self.model.dense_ms() / ((1.0 - fraction) * self._full_encoder_ms + self.model.decoder_ms(self.k))

    def expected_fraction(self, heads_alive: torch.Tensor, ffn_alive: torch.Tensor) -> torch.Tensor:
        """1 - E[T_enc]/T_enc(full), differentiable in the encoder gates' alive probabilities."""
        expected = self.model.expected_ms(heads_alive, ffn_alive, self.k) - self.model.decoder_ms(self.k)
        return 1.0 - expected / self._full_encoder_ms

    def predicted_speedup(self, heads: torch.Tensor, ffn: torch.Tensor) -> float:
        """Predicted speedup of 0/1 encoder masks ([L, H], [L, d_ff])."""
        ms = self.model.generate_ms(heads.sum(dim=1).tolist(), ffn.sum(dim=1).tolist(), self.k)
        return self.model.dense_ms() / ms

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.model.to_dict(), "k": self.k, "target_speedup": self.target_speedup}
