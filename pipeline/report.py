"""Figures and one HTML page from ``evaluation.json`` (and the maps saved beside it).

``write_report(run_dir)`` writes ``run_dir/report/``: ``grid.png`` (image with label contour | U-Noise |
occlusion | Grad-CAM, the paper's comparison), ``curves.png`` (visibility and deletion curves of every
method), ``pretraining.png`` (dice at 50% visible per U-Noise size, pretrained or not) and ``report.html``,
which shows them with the metric, cost and sanity tables and the settings. A browser is all it needs.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.fileio import atomic_path
from pipeline.handlers import radiological_view


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90, format="png", bbox_inches="tight")
    _pyplot().close(figure)
    return path


def plot_grid(saved: dict, methods: list[str], path: Path, rows: int = 4) -> Path:
    """Image with label contour, then one column per method, for the first slice of up to ``rows`` cases."""
    plt = _pyplot()
    first = {}
    for index, case in enumerate(saved["cases"]):
        first.setdefault(case, index)
    picks = list(first.values())[:rows]
    figure, axes = plt.subplots(len(picks), 1 + len(methods), figsize=(2.6 * (1 + len(methods)), 2.7 * len(picks)),
                                squeeze=False)
    for r, index in enumerate(picks):
        image = saved["image"][index, 0].numpy()
        label = saved["label"][index, 0].numpy()
        axes[r, 0].imshow(radiological_view(image), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].contour(radiological_view(label), levels=[0.5], colors="lime", linewidths=1)
        axes[r, 0].set_title(saved["cases"][index], fontsize=9)
        for c, name in enumerate(methods, start=1):
            axes[r, c].imshow(radiological_view(image), cmap="gray", vmin=0, vmax=1)
            axes[r, c].imshow(radiological_view(saved["maps"][name][index, 0].numpy()), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            axes[r, c].contour(radiological_view(label), levels=[0.5], colors="lime", linewidths=0.6)
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
        for axis in axes[r]:
            axis.axis("off")
    figure.suptitle("CT with pancreas (green) | importance maps (bright = important); patient right on the left", fontsize=10)
    return _save(figure, path)


def plot_curves(result: dict, path: Path) -> Path:
    """Visibility (left) and deletion (right) curves: dice against the label vs share of pixels."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    fractions = result["fractions"]
    for name, method in result["methods"].items():
        style = "--" if name in ("random", "oracle") else "-"
        left.plot(fractions, method["curve"]["dice_label"], style, label=f"{name} (AUC {method['visibility_auc']:.2f})")
        right.plot(fractions, method["deletion_curve"]["dice_label"], style, label=f"{name} (AUC {method['deletion_auc']:.2f})")
    for axis, title in ((left, "visibility: most important pixels kept (higher is better)"),
                        (right, "deletion: most important pixels hidden (lower is better)")):
        axis.axhline(result["clean_dice"], color="grey", linewidth=0.8, label="clean dice")
        axis.set_xlabel("share of pixels kept" if axis is left else "share of pixels hidden")
        axis.set_ylabel("utility dice vs label")
        axis.set_title(title, fontsize=10)
        axis.set_ylim(0, 1)
        axis.legend(fontsize=7)
    return _save(figure, path)


def plot_pretraining(result: dict, path: Path) -> Path:
    """Dice at 50% visible per U-Noise size, pretrained or not (the paper's pretraining figure)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.8))
    sizes = ["small", "medium", "large"]
    for offset, pretrained in ((-0.2, False), (0.2, True)):
        values = []
        for size in sizes:
            picks = [m["dice_at_50"] for n, m in result["methods"].items()
                     if n.startswith(f"unoise_{size}_") and n.endswith("_pretrained") == pretrained]
            values.append(max(picks) if picks else np.nan)
        axis.bar(np.arange(3) + offset, values, width=0.4, label="pretrained" if pretrained else "from scratch")
    axis.axhline(result["clean_dice"], color="grey", linewidth=0.8, label="clean dice")
    axis.set_xticks(range(3), sizes)
    axis.set_ylabel("dice at 50% visible")
    axis.set_title("U-Noise size and pretraining (missing bars: not evaluated)", fontsize=10)
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8)
    return _save(figure, path)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ci(method: dict, key: str) -> str:
    low, high = method[f"{key}_ci95"]
    return f"{method[key]:.3f} [{low:.3f}, {high:.3f}]"


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report/`` from ``run_dir/evaluation.json`` and ``run_dir/maps.pt``; returns report.html."""
    run_dir = Path(run_dir)
    result = json.loads((run_dir / "evaluation.json").read_text())
    saved = torch.load(run_dir / "maps.pt", weights_only=True)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    unoise = [n for n in result["methods"] if n.startswith("unoise")]
    plot_grid(saved, unoise[:2] + ["occlusion", "gradcam"], out / "grid.png")
    plot_curves(result, out / "curves.png")
    plot_pretraining(result, out / "pretraining.png")
    methods = result["methods"]
    metric_rows = [[name, _ci(m, "visibility_auc"), _ci(m, "dice_at_50"), f"{m['dice_at_50_clean']:.3f}",
                    _ci(m, "deletion_auc"), f"{m['ring_share']:.3f} ({m['ring_chance']:.3f})",
                    f"{m['pancreas_share']:.3f} ({m['pancreas_chance']:.3f})"] for name, m in methods.items()]
    cost_rows = [[name, f"{m['ms_per_map']:.2f}", f"{m['forward_equivalents']:.2f}"] for name, m in methods.items()]
    sections = [
        "<h1>U-Noise evaluation</h1>",
        f"<p>Utility clean dice {result['clean_dice']:.3f} on {result['slices']} slices of {len(result['cases'])} "
        f"cases ({html.escape(', '.join(result['cases']))}). Hidden pixels: {html.escape(result['baseline'])}; "
        f"ring {result['ring_mm']:g} mm. Values: mean over cases [bootstrap 95% interval].</p>",
        "<h2>Maps</h2><img src='grid.png'>",
        "<h2>Faithfulness</h2><img src='curves.png'>",
        _table(["method", "visibility AUC", "dice at 50% visible", "same, vs clean prediction", "deletion AUC",
                "importance in pancreas + ring (chance)", "in pancreas (chance)"], metric_rows),
        "<h2>Pretraining and size</h2><img src='pretraining.png'>",
        "<h2>Cost</h2>", _table(["method", "ms per map", "utility forward equivalents"], cost_rows),
    ]
    if "sanity" in result:
        rows = [[name, f"{v.get('decoder', float('nan')):.3f}", f"{v.get('all', float('nan')):.3f}"]
                for name, v in result["sanity_cascade"].items()]
        sections += ["<h2>Sanity check (Adebayo et al. 2018)</h2><p>Spearman rank correlation between each method's "
                     "maps for the trained utility and for a utility with re-initialised weights (decoder only, then "
                     "all). Near 0 means the maps depend on what the model learned.</p>",
                     _table(["method", "decoder randomised", "all randomised"], rows)]
    sections.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(result["settings"], indent=2)) + "</pre>")
    style = ("<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}img{max-width:100%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}</style>")
    page = out / "report.html"
    with atomic_path(page) as tmp:
        tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>U-Noise evaluation</title>{style}"
                       f"</head><body>{''.join(sections)}</body></html>")
    return page
