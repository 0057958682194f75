"""The registry of statistics: each one declared once - its key, its one-line meaning (what
docs/SCIENCE.md's table and `dnfa stats` show), its kind, who computes it and the displays
it belongs to. No jax here, so that `dnfa --help` and `dnfa stats` stay fast; stats.py
attaches the function that computes each per-layer key (and checks it is registered),
counterfactual.py computes the others. Row order, integer keys, bootstrap keys and the
report's columns are all drawn from here."""
from __future__ import annotations

from typing import NamedTuple

from .errors import DnfaInputError, closest

DISPLAYS = ("headline", "ci", "terminal", "sweep", "compare")
FAMILIES = {"layer": "per layer, at every checkpoint",
            "published": "per layer, the published scripts' numbers (metrics.published)",
            "swap": "per layer, W swapped for a random matrix and the net re-run (metrics.swap)",
            "swap_uv": "per layer, W's singular vectors swapped (metrics.swap_uv)"}
N_ALIGN = 8  # align_1 .. align_8


class Stat(NamedTuple):
    """One statistic, declared once. `kind`: float, int or edge (alpha_star_edge: low / high
    / null). `family`: who computes it - "layer" (a function of the layer context, in
    stats.py), "published", "swap" or "swap_uv" (counterfactual.py). `shows`: (display,
    position) pairs: headline (`dnfa report`'s per-run table), ci (bootstrapped with
    metrics.bootstrap: its *_lo / *_hi keys and the 95% interval row), terminal and sweep
    (the sweep tables), compare (`dnfa compare`)."""

    name: str
    meaning: str
    kind: str = "float"
    family: str = "layer"
    shows: tuple = ()


REGISTRY: dict[str, Stat] = {}


def stat(name: str, meaning: str, *, kind: str = "float", family: str = "layer", **shows: int) -> Stat:
    """A registry entry; `shows`: display=position (1 first), e.g. headline=2."""
    bad = set(shows) - set(DISPLAYS)
    if bad:
        raise ValueError(f"{name}: unknown display {sorted(bad)} (allowed: {', '.join(DISPLAYS)})")
    return Stat(name, meaning, kind, family, tuple(shows.items()))


def register(*entries: Stat) -> tuple[str, ...]:
    """Enter statistics in the registry (each name once); returns their names."""
    for e in entries:
        if e.name in REGISTRY:
            raise ValueError(f"statistic {e.name!r} is registered twice")
        REGISTRY[e.name] = e
    return tuple(e.name for e in entries)


def names(family: str = "layer") -> tuple[str, ...]:
    """The keys of one family, in registry order (the order of result.json's layer rows)."""
    return tuple(n for n, e in REGISTRY.items() if e.family == family)


def shown(display: str) -> list[str]:
    """The statistics a display shows, in its order."""
    at = {n: dict(e.shows)[display] for n, e in REGISTRY.items() if display in dict(e.shows)}
    return sorted(at, key=at.get)


def markdown_table() -> str:
    """The registry as docs/SCIENCE.md shows it."""
    rows = ["| key | meaning | kind | shown in |", "|---|---|---|---|"]
    for e in REGISTRY.values():
        rows.append(f"| `{e.name}` | {e.meaning} | {e.kind} | {', '.join(d for d, _ in e.shows) or '-'} |")
    return "\n".join(rows)


def matching(prefix: str = "") -> list[Stat]:
    """The entries whose key starts with `prefix`, in registry order."""
    return [e for n, e in REGISTRY.items() if n.startswith(prefix)]


# ============================================================================ the statistics
# In the order of result.json's layer rows (stats.py computes them in this order).
register(
    stat("w_rank", "numerical rank of W: singular values above max(shape) eps s_max", kind="int"),
    stat("pearson_a1", "the ansatz at alpha = 1 (arXiv era): pearson(nfm, agop)",
         headline=2, ci=2, terminal=2, sweep=2, compare=2),
    stat("pearson_a05", "the ansatz at alpha = 1/2 (Science era): pearson(nfm, agop^(1/2))",
         headline=1, ci=1, terminal=1, sweep=1, compare=1),
    stat("cosine_a1", "cosine(nfm, agop), no centring (the arXiv scripts' measure)", headline=3),
    stat("cosine_a05", "cosine(nfm, agop^(1/2))"),
    stat("alpha_star", "the alpha in [0.05, 2] maximising pearson(nfm, agop^alpha); null at an end or on a "
         "flat curve", headline=5, terminal=4, sweep=3, compare=3),
    stat("alpha_star_edge", "low / high when that maximum sits at an end of [0.05, 2], else null", kind="edge"),
    stat("pearson_alpha_star", "pearson(nfm, agop^alpha) at its maximum"),
)

ISO = {"tightness": "(tr G)^2 / (k tr G^2) of G = pgop: 1 exactly when G = cI",
       "iso_dev": "|G / (tr G / k) - I|_F / sqrt(k): RMS relative deviation of G from isotropy",
       "eff_rank": "(tr G)^2 / tr G^2 of G: its participation ratio",
       "cond": "l_max / l_min of G; null when G is numerically singular"}
ISO_KEYS = register(*(stat(k, m, **({"headline": 6, "compare": 4} if k == "tightness" else {}))
                      for k, m in ISO.items()))
_RANGE_SHOWS = {"tightness": dict(headline=7, ci=3, terminal=3, sweep=4, compare=5), "iso_dev": dict(headline=10),
                "eff_rank": dict(headline=11), "cond": {}}
ISO_RANGE_KEYS = register(*(stat(f"{k}_range", f"{k} of U_r^T G U_r: G on range(W), r = w_rank", **_RANGE_SHOWS[k])
                            for k in ISO))

register(
    stat("w_rank90", "fewest top singular directions of W carrying 90% of sum s_j^2", kind="int", headline=9),
    stat("tightness_top", "tightness of G on the w_rank90 top singular directions of W", headline=8),
    stat("left_pearson", "pearson(W W^T, pgop): the left Gram against the gradients", headline=18),
)
RANDOM_KEYS = register(
    stat("rand_pearson_a1", "pearson(R^T R, R^T G R) for Gaussian R of W's shape, mean of 4 draws",
         headline=12, terminal=5, sweep=5, compare=6),
    stat("rand_pearson_a1_sd", "the standard deviation of those 4 draws", headline=13),
    stat("rand_spec_pearson_a1", "the same for R with W's singular values, Haar singular vectors", headline=14),
    stat("rand_spec_pearson_a1_sd", "the standard deviation of those 4 draws"),
)
register(
    stat("rand_gap_a1", "pearson_a1 - rand_pearson_a1: what W adds beyond any matrix of its shape",
         headline=15, compare=7),
    stat("delta_rel", "|W - W0|_F / |W0|_F: how far training moved W (small: lazy regime)", compare=8),
    stat("centered_pearson", "centred NFA (Beaglehole et al.): pearson(dW^T G dW, dW^T dW), dW = W - W0",
         headline=16),
    stat("delta_cosine_a1", "cosine(dW^T dW, agop): what the arXiv scripts intend", headline=4),
    stat("delta_pearson_a1", "pearson(dW^T dW, agop)"),
    stat("delta_pearson_a05", "pearson(dW^T dW, agop^(1/2)): what the Science scripts intend"),
)
GRADIENT_CENTRED_KEYS = register(
    stat("gc_pearson_a1", "pearson(nfm, gradient-centred agop); null where that is rounding noise", headline=17),
    stat("gc_pearson_a05", "pearson(nfm, gradient-centred agop^(1/2))"),
    stat("delta_gc_pearson_a05", "pearson(dW^T dW, gradient-centred agop^(1/2))"),
    stat("delta_gc_cosine_a1", "cosine(dW^T dW, gradient-centred agop)"),
)
register(
    stat("left_act_pearson", "pearson(W W^T, E[p p^T]): the left Gram against the pre-activations", headline=19),
    stat("half_range_pearson", "pearson(P G P, W W^T), P the projector on range(W): alpha = 1/2 on range(W)",
         headline=20, sweep=6, compare=9),
)
ALIGN_KEYS = register(*(stat(f"align_{rr}", f"cosine of the largest principal angle between the top {rr} right "
                             f"singular vectors of W and the top {rr} eigenvectors of agop; null beyond their ranks",
                             **({"headline": {1: 21, 4: 22}[rr]} if rr in (1, 4) else {}))
                        for rr in range(1, N_ALIGN + 1)))

# the ansatz without the identity bulk: for nfm and dW^T dW, each measure, alpha = 1 and 1/2
NO_BULK = {"traceless": "pearson(A - (tr A / k) I, B - (tr B / k) I)",
           "offdiag": "pearson over the strict upper-triangle entries (i < j) of A, B"}
NO_BULK_KEYS = register(*(stat(f"{pre}{name}_pearson_{a}", f"{meaning}, A = {nfm}, B = {agop}: the ansatz without "
                               "the identity bulk")
                          for pre, nfm in (("", "nfm"), ("delta_", "dW^T dW")) for name, meaning in NO_BULK.items()
                          for a, agop in (("a1", "agop"), ("a05", "agop^(1/2)"))))
register(
    stat("alpha_curve_range", "max - min of pearson(nfm, agop^alpha) over alpha in [0.05, 2] (the grid of "
         "alpha_star): small, and alpha_star says little"),
    stat("iso_dim90", "largest k such that U_j^T G U_j has tightness >= 0.9 for every j <= k (U_j: the top j "
         "left singular vectors of W; j at the ends of groups of tied singular values)", kind="int"),
    stat("iso_frac90", "iso_dim90 / w_rank: the fraction of range(W), from its top, on which G is isotropic"),
    stat("rand_iso_dim90", "iso_dim90 of the same-spectrum random R (Q_out's columns for U), mean of 4 draws"),
    stat("cka_init", "linear CKA between the layer's output (h_{l+1}; f for the read-out) now and at "
         "initialisation, on the metrics subset"),
    stat("kta", "linear CKA between the layer's output and the targets T: centred kernel-target alignment"),
)

# the counterfactual nets' keys, computed by counterfactual.py
register(
    stat("published_pearson_a05", "Science era, \"uncentered\": pearson(dNFM, AGOP'^(1/2)) as the published "
         "script prints it", family="published"),
    stat("published_gc_pearson_a05", "Science era, \"centered\": the same with the gradient-centred AGOP'",
         family="published"),
    stat("published_cosine_a1", "arXiv era, \"uncentered\": cosine(dNFM, AGOP')", family="published"),
    stat("published_gc_cosine_a1", "arXiv era, \"centered\"", family="published"),
    stat("swap_pearson_a1", "W replaced by a Gaussian R (|W|_F), net re-run: pearson(R^T R, agop')", family="swap"),
    stat("swap_tightness_range", "that swapped net's tightness of pgop' on range(R)", family="swap"),
    stat("swap_spec_pearson_a1", "the same with R of W's singular values, Haar singular vectors", family="swap"),
    stat("swap_spec_tightness_range", "its tightness of pgop' on range(R)", family="swap"),
    stat("swap_keepu_pearson_a1", "W replaced by W O, O Haar orthogonal (W's U and S kept, V drawn), net re-run: "
         "pearson(R^T R, agop')", family="swap_uv"),
    stat("swap_keepu_tightness_range", "its tightness of pgop' on range(W O) = range(W)", family="swap_uv"),
    stat("swap_keepv_pearson_a1", "W replaced by O' W, O' Haar orthogonal (W's V and S kept, U drawn)",
         family="swap_uv"),
    stat("swap_keepv_tightness_range", "its tightness of pgop' on range(O' W)", family="swap_uv"),
)


# ============================================================================ for reading
def lines(keys, indent: str = "  ", width: int = 0) -> list[str]:
    """One line a statistic: its key (padded to `width` or the longest of `keys`), its kind
    where any of them is not a float (int, edge) and its meaning."""
    w = max([width, *(len(k) for k in keys)])
    kw = max((len(REGISTRY[k].kind) for k in keys if REGISTRY[k].kind != "float"), default=0)
    kind = lambda e: f"{'' if e.kind == 'float' else e.kind:<{kw}}  " if kw else ""
    return [f"{indent}{k:<{w}}  {kind(REGISTRY[k])}{REGISTRY[k].meaning}" for k in keys]


def listing(prefix: str = "") -> list[str]:
    """`dnfa stats [PREFIX]`: the statistics whose key starts with `prefix`, by family, each
    with its meaning; DnfaInputError when none does."""
    prefix = prefix.partition("@")[0]  # STAT@LAYER, as --where and --columns write it
    found = matching(prefix)
    if not found:
        near = closest(prefix, REGISTRY) or next((n for n in REGISTRY if prefix.startswith(n)), None)
        raise DnfaInputError(f"no statistic starts with {prefix!r}" + (f"; did you mean {near!r}?" if near else "")
                             + " (dnfa stats lists them all)")
    out = []
    for fam, what in FAMILIES.items():
        keys = [e.name for e in found if e.family == fam]
        if keys:
            out += [""] * bool(out) + [f"{what}:", *lines(keys, width=max(len(e.name) for e in found))]
    ci = [n for n in shown("ci") if n.startswith(prefix)]
    if ci:
        out += ["", f"with metrics.bootstrap, also {', '.join(f'{n}_lo and _hi' for n in ci)}: the 95% interval"]
    return out
