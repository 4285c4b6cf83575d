"""Figures and one HTML page from ``evaluation.json`` (and the maps saved beside it).

``write_report(run_dir)`` writes ``run_dir/report/``: ``grid.png`` (CT with the pancreas contour, then
the explainers, then the null maps, one row per case), ``curves.png`` (visibility and deletion curves
against the clean prediction), ``shortcut.png`` for a shortcut run, and ``report.html`` with the
criteria in plain words (pass / fail), the metric, paired-difference, cost and sanity tables, and the
protocol. A browser is all it needs.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import torch

from pipeline.evaluation.criteria import SATURATED, compute_criteria, matched_method
from pipeline.fileio import atomic_path
from pipeline.display import radiological_view

NULL_NAMES = ("segmentation", "prediction_logits", "random", "oracle")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80, format="png", bbox_inches="tight")
    _pyplot().close(figure)
    return path


def grid_columns(methods: list[str]) -> list[str]:
    """Explainers first (U-Noise, then the baselines), null maps last, in evaluation order."""
    return [m for m in methods if m not in NULL_NAMES] + [m for m in methods if m in NULL_NAMES]


def plot_grid(saved: dict, methods: list[str], path: Path, rows: int = 4, contour_key: str = "label") -> Path:
    """CT with the pancreas contour, then one column per method, for the slice with most pancreas of up to ``rows`` cases."""
    plt = _pyplot()
    best: dict[str, tuple[float, int]] = {}
    for index, case in enumerate(saved["cases"]):
        area = float(saved["label"][index].sum())
        if case not in best or area > best[case][0]:
            best[case] = (area, index)
    picks = [best[case][1] for case in sorted(best)][:rows]
    figure, axes = plt.subplots(len(picks), 1 + len(methods), figsize=(2.3 * (1 + len(methods)), 2.4 * len(picks)),
                                squeeze=False)
    for r, index in enumerate(picks):
        image = radiological_view(saved["image"][index, 0].numpy())
        label = radiological_view(saved["label"][index, 0].numpy())
        axes[r, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].contour(label, levels=[0.5], colors="lime", linewidths=1)
        if "shortcut" in saved:
            axes[r, 0].contour(radiological_view(saved["shortcut"][index, 0].numpy()), levels=[0.5], colors="cyan", linewidths=1)
        axes[r, 0].set_title(saved["cases"][index], fontsize=8)
        for c, name in enumerate(methods, start=1):
            axes[r, c].imshow(image, cmap="gray", vmin=0, vmax=1)
            axes[r, c].imshow(radiological_view(saved["maps"][name][index, 0].numpy()), cmap="inferno", alpha=0.6,
                              vmin=0, vmax=1)
            axes[r, c].contour(label, levels=[0.5], colors="lime", linewidths=0.5)
            if r == 0:
                tag = " (label)" if name == "oracle" else " (null)" if name in NULL_NAMES else ""
                axes[r, c].set_title(name + tag, fontsize=8)
        for axis in axes[r]:
            axis.axis("off")
    extra = "; cyan: the planted cue" if "shortcut" in saved else ""
    figure.suptitle(f"CT with pancreas (green{extra}) | importance maps (bright = important) | null maps last; "
                    "patient right on the left", fontsize=9)
    return _save(figure, path)


def plot_planes(saved: dict, methods: list[str], path: Path) -> Path:
    """3D evaluations: axial, coronal and sagittal planes through each shown volume's pancreas (its centroid in a whole
    volume, the centre of a volume of interest), the CT with the pancreas contour, then one column per method; voxels
    drawn at their spacing."""
    plt = _pyplot()
    planes = saved["orthogonal"]
    names = planes["planes"]
    rows = [(case, p) for case in range(len(planes["cases"])) for p in range(len(names))]
    figure, axes = plt.subplots(len(rows), 1 + len(methods), figsize=(2.3 * (1 + len(methods)), 2.4 * len(rows)), squeeze=False)
    axis_pairs = ((0, 1), (0, 2), (1, 2))  # (columns, rows) of each plane in voxel axes x, y, z
    for r, (case, p) in enumerate(rows):
        spacing = [float(v) for v in planes["spacing"][case]]
        across, up = axis_pairs[p]
        aspect = spacing[up] / spacing[across]
        image = radiological_view(planes["image"][case][p].numpy())
        label = radiological_view(planes["label"][case][p].numpy())
        for c, name in enumerate(["CT", *methods]):
            axis = axes[r, c]
            axis.imshow(image, cmap="gray", vmin=0, vmax=1, aspect=aspect)
            if name != "CT":
                axis.imshow(radiological_view(planes["maps"][name][case][p].numpy()), cmap="inferno", alpha=0.6, vmin=0,
                            vmax=1, aspect=aspect)
            if label.max() > 0:
                axis.contour(label, levels=[0.5], colors="lime", linewidths=1 if name == "CT" else 0.5)
            if r == 0 and name != "CT":
                axis.set_title(name + (" (null)" if name in NULL_NAMES else ""), fontsize=8)
            axis.axis("off")
        axes[r, 0].set_title(f"{planes['cases'][case]} {names[p]}", fontsize=8)
    figure.suptitle("3D: planes through the pancreas (green) | importance maps (bright = important) | null maps last; "
                    "patient right / anterior on the left, superior up", fontsize=9)
    return _save(figure, path)


def _volume_sections(result: dict) -> list[str]:
    """3D evaluations: the utility's dice on each whole test volume and each method's cost per whole volume."""
    volumes = result.get("volumes")
    if not volumes:
        return []
    dice_rows = [[c["case"], " x ".join(map(str, c["shape"])), str(c["windows"]), f"{c['dice']:.3f}"] for c in volumes["cases"]]
    reference = result.get("reference")
    ref_ms = volumes["methods"].get(reference, {}).get("ms_per_volume")
    cost_rows = []
    for name, m in volumes["methods"].items():
        how = f"extrapolated from {m['positions_per_window']} cube positions per window" if m.get("extrapolated") else "timed"
        ratio = "" if not ref_ms else f"{m['ms_per_volume'] / ref_ms:,.1f}x"
        peak = "" if m.get("peak_mb") is None else f"{m['peak_mb']:,.0f} (+{m['increase_mb']:,.0f})"
        cost_rows.append([name, f"{m['ms_per_volume']:,.0f}", ratio, how, peak])
    return [
        "<h2>Whole test volumes</h2><p>The utility by sliding windows of its roi_size "
        f"{html.escape(str(volumes['roi_size']))} (overlap {volumes['overlap']}, Gaussian blending) over each whole "
        f"volume: dice against the label, mean {volumes['dice_mean']:.3f}.</p>",
        _table(["case", "voxels", "windows", "utility dice"], dice_rows),
        f"<h3>Cost per whole volume ({html.escape(volumes['device'])})</h3><p>{html.escape(volumes['how'])}. Memory: "
        f"{html.escape(volumes['memory_kind'])}, MiB, at the peak (and above the start) on the first case.</p>",
        _table(["method", "ms per volume", f"over {reference}", "how", "peak memory MiB"], cost_rows),
    ]


def plot_curves(result: dict, path: Path) -> Path:
    """Visibility (left) and deletion (right) curves: dice against the clean prediction vs share of body pixels."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    fractions = result["fractions"]
    for name, method in result["methods"].items():
        style = "--" if name in NULL_NAMES else "-"
        left.plot(fractions, method["curves"]["visibility_clean"], style, label=f"{name} (AUC {method['visibility_auc']:.2f})")
        right.plot(fractions, method["curves"]["deletion_clean"], style, label=f"{name} (AUC {method['deletion_auc']:.2f})")
    infill = result["protocol"]["infills"][0]
    for axis, title in ((left, "visibility: most important body pixels kept (higher is better)"),
                        (right, "deletion: most important body pixels hidden (lower is better)")):
        axis.set_xlabel(("share of body pixels kept" if axis is left else "share of body pixels hidden") + f" ({infill} infill)")
        axis.set_ylabel("dice vs the utility's clean prediction")
        axis.set_title(title, fontsize=10)
        axis.set_ylim(0, 1.02)
        axis.legend(fontsize=7)
    return _save(figure, path)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ci(method: dict, key: str) -> str:
    low, high = method[f"{key}_ci95"]
    return f"{method[key]:.3f} [{low:.3f}, {high:.3f}]"


def _infill_sections(result: dict) -> list[str]:
    """Every infill side by side: each method's AUCs, then the reference minus occlusion (same fill) and the null maps."""
    protocol, methods, paired = result["protocol"], result["methods"], result.get("paired", {})
    judged, held_out = list(protocol["infills"]), list(protocol["held_out_infills"])
    specs = judged + held_out
    header = ["method"] + [f"{spec}{' (held out)' if spec in held_out else ''}" for spec in specs]
    rows = [[name] + [f"{m['infills'][spec]['visibility_auc']:.3f} / {m['infills'][spec]['deletion_auc']:.3f}" for spec in specs]
            for name, m in methods.items()]
    reference = result.get("reference")
    for other in ("occlusion", "segmentation", "random"):
        names = [matched_method(methods, other, spec, judged[0]) for spec in specs]
        if not all(name in paired for name in names):
            continue
        rows.append([f"{reference} - {other}"] + [" / ".join(
            f"{paired[name][f'{spec}_{k}']['mean']:+.3f} [{paired[name][f'{spec}_{k}']['ci95'][0]:+.3f}, "
            f"{paired[name][f'{spec}_{k}']['ci95'][1]:+.3f}]" for k in ("visibility_auc", "deletion_auc"))
            for name, spec in zip(names, specs)])
    saturated = [spec for spec in specs if spec.partition(":")[0] in SATURATED]
    note = (f" Under {', '.join(saturated)} the visibility curve saturates (linear imputation from scattered kept pixels "
            "rebuilds the slice, so a random map keeps the segmentation too): it is judged by deletion only."
            if saturated else "")
    return ["<h2>Every infill</h2><p>Visibility AUC (higher is better) / deletion AUC (lower is better) against the "
            "clean prediction, then the paired differences of the reference, mean [95% interval] over cases; occlusion "
            "under each infill is the occlusion map computed with that fill." + html.escape(note) + "</p>",
            _table(header, rows)]


def _criteria_section(result: dict) -> list[str]:
    rows = [["PASS" if c["passed"] else "FAIL", c["words"], c["measured"], c["target"]] for c in compute_criteria(result)]
    if not rows:
        return []
    return ["<h2>Verdict</h2><p>Each line is one criterion, measured on this run. "
            "A difference counts as a win only where its 95% interval over cases excludes zero.</p>",
            _table(["", "in words", "measured", "target"], rows)]


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report/`` from ``run_dir/evaluation.json`` and ``run_dir/maps.pt``; returns report.html."""
    run_dir = Path(run_dir)
    result = json.loads((run_dir / "evaluation.json").read_text())
    saved = torch.load(run_dir / "maps.pt", weights_only=True)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    methods = result["methods"]
    plot_grid(saved, grid_columns(list(methods)), out / "grid.png")
    plot_curves(result, out / "curves.png")
    if "orthogonal" in saved:
        plot_planes(saved, grid_columns(list(methods)), out / "planes.png")
    protocol = result["protocol"]
    metric_rows = [[name, _ci(m, "visibility_auc"), _ci(m, "deletion_auc"), f"{m['dice_at_5']:.3f}", f"{m['dice_at_10']:.3f}",
                    f"{m['dice_at_20']:.3f}", f"{m['dice_at_50']:.3f}", f"{m['visibility_auc_label']:.3f}",
                    f"{m['deletion_auc_label']:.3f}", f"{m['ring_over_chance']:.2f}x"] for name, m in methods.items()]
    paired_rows = [[f"{result['reference']} - {name}"] + [
        f"{p[k]['mean']:+.3f} [{p[k]['ci95'][0]:+.3f}, {p[k]['ci95'][1]:+.3f}]"
        for k in ("visibility_auc", "deletion_auc", "ring_over_chance")]
        + [str(p["visibility_auc"]["n"])] for name, p in result.get("paired", {}).items()]
    cost_rows = [[name, f"{m['ms_per_map']:,.2f}", f"{m['forward_equivalents']:,.1f}"] for name, m in methods.items()]
    sections = [
        "<h1>U-Noise evaluation</h1>",
        f"<p>Utility clean dice {result['clean_dice']:.3f} on {result['slices']} "
        f"{ {'whole': 'whole volumes', 'roi': 'volumes of interest'}.get(protocol.get('volume_protocol') or '', 'slices')}"
        f" of {len(result['cases'])} "
        f"{html.escape(protocol['split'])} cases ({html.escape(', '.join(result['cases']))}). Unit: {html.escape(protocol['unit'])}. "
        "Pixels are ranked and hidden "
        f"inside the body only; hidden pixels take each judged infill in turn ({html.escape(', '.join(protocol['infills']))}; "
        f"held out of training and reported apart: {html.escape(', '.join(protocol['held_out_infills']) or 'none')}); "
        "curves are the dice of the utility against its own clean prediction (what an explanation of the model must keep). "
        "Occlusion is computed once per infill, its windows filled the way that infill hides pixels. "
        "Values: mean over cases [bootstrap 95% interval].</p>",
        *([f"<p><b>{len(result['failed_cases'])} case(s) of the split failed their checks and are not in these "
           "figures:</b> " + "; ".join(html.escape(f"{item['case']}: {item['error']}") for item in result["failed_cases"])
           + "</p>"] if result.get("failed_cases") else []),
        *_criteria_section(result),
        "<h2>Maps</h2><img src='grid.png'>",
        *(["<h3>Orthogonal planes</h3><img src='planes.png'>"] if "orthogonal" in saved else []),
        *_infill_sections(result),
        f"<h2>Faithfulness under the {html.escape(protocol['infills'][0])} infill</h2><img src='curves.png'>",
        _table(["method", "visibility AUC", "deletion AUC", "dice at 5%", "10%", "20%", "50% visible",
                "visibility AUC vs label", "deletion AUC vs label", "pancreas + ring over its body share"], metric_rows),
        "<h3>Paired differences (per case, bootstrap over cases)</h3>",
        _table(["difference", "visibility AUC", "deletion AUC", "localisation", "n cases"], paired_rows),
    ]
    sections += ["<h2>Cost</h2>", _table(["method", "ms per map", "utility forward equivalents"], cost_rows)]
    sections += _volume_sections(result)
    if "shortcut" in result:
        cut = result["shortcut"]
        rows = [[name, f"{m['cue_share_over_chance']:.2f}x", f"{m['cue_ring_share_over_chance']:.2f}x", f"{m['pointing_rate']:.0%}"]
                for name, m in cut["methods"].items()]
        sections += [f"<h2>Shortcut benchmark</h2><p>The utility's dice on the {cut['slices']} slices with the planted cue: "
                     f"{cut['dice_with_cue']:.3f} with it, {cut['dice_without_cue']:.3f} on the same slices without it. "
                     f"Importance on the cue (and on the cue + {cut['cue_ring_mm']:g} mm) over its share of the body, and how "
                     f"often the top {cut['pointing_share']:.0%} of body pixels comes within {cut['cue_ring_mm']:g} mm of it:</p>",
                     _table(["method", "cue share over chance", f"cue + {cut['cue_ring_mm']:g} mm", "pointing rate"], rows)]
    if "sanity" in result:
        rows = []
        for name, entry in result["sanity_detail"].items():
            signed = entry["all"].get("rho_signed")
            rows.append([name, f"{entry['decoder']['rho']:+.3f}", f"{entry['all']['rho']:+.3f}",
                         "" if signed is None else f"{signed:+.3f}", "pass" if entry["passed"] else "FAIL"])
        sections += ["<h2>Sanity check (Adebayo et al. 2018)</h2><p>Spearman rank correlation over body pixels between each "
                     "method's maps for the trained utility and for a utility with re-initialised weights (decoder, then all). "
                     "Near 0 means the map depends on what the model learned; |rho| <= 0.3 passes. "
                     + html.escape(result["sanity_protocol"]["unoise"]) + ".</p>",
                     _table(["method", "decoder randomised", "all randomised", "signed maps (all)", "|rho| <= 0.3"], rows)]
    sections.append("<h2>Protocol and settings</h2><pre>" + html.escape(json.dumps(
        {"protocol": protocol, "settings": result["settings"]}, indent=2)) + "</pre>")
    style = ("<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto}img{max-width:100%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}</style>")
    page = out / "report.html"
    with atomic_path(page) as tmp:
        tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>U-Noise evaluation</title>{style}"
                       f"</head><body>{''.join(sections)}</body></html>")
    return page


__all__ = ["grid_columns", "plot_curves", "plot_grid", "plot_planes", "write_report"]
