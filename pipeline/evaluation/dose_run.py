"""``unoise audit-dose`` (``configs/audit_dose.json``): the dose audit over a split, its JSON and its figure.

Writes ``dose_audit.json`` (every figure, per case too), ``denoise.json`` (with denoisers: per dose level of the
denoiser's noise model, PSNR / SSIM per variant and dice without / with the denoiser) and ``report/dose.png`` (dice
against the label vs dose per noise model, without and with the denoiser, and PSNR vs dose per variant) with
``report/report.html`` around it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.data import load_datalist, split_datalist, validate_datalist
from pipeline.errors import ConfigError
from pipeline.evaluation.dose import denoise_summary, run_dose_audit
from pipeline.fileio import write_json_atomic

logger = logging.getLogger("pipeline")

SPLITS = ("test", "validation", "training", "all")


def audit_dose(dataset_dir: str, datalist_key: str, split: str, val_fraction: float, test_fraction: float, seed: int,
               allow_outside_paths: bool, pancreas_labels: list[int], label_values: Any, strict: bool, max_cases: int | None,
               utility_loaded: tuple[torch.nn.Module, dict[str, Any]], utility_bundle: str | None,
               noise_loaded: tuple[torch.nn.Module, dict[str, Any]] | None, doses: list[float], noise_models: list[str],
               noise_settings: dict[str, dict[str, Any]], denoisers: dict[str, str], denoise_with: str | None,
               ring_mm: float, psnr_peak_hu: float, metric_window: Any, bootstrap: int, output_dir: str, window: Any,
               spatial_size: int | None) -> dict[str, Any]:
    """Run the audit on ``split`` of the dataset (the same split by seed as the utility's training run) and write it.

    ``window`` and ``spatial_size``: the utility's input where its checkpoint does not record them (a TorchScript
    file); a checkpoint's own record wins, and a model-zoo bundle runs its own preprocessing."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    for name, path in denoisers.items():
        if not Path(str(path)).is_file():
            raise ConfigError(f"{path}: denoiser {name!r} not found; pass a train-denoiser RUN/checkpoints/last.pt.")
    datalist = load_datalist(dataset_dir, datalist_key, allow_outside_paths)
    entries = datalist if split == "all" else split_datalist(datalist, val_fraction, test_fraction, seed)[split]
    entries = entries[:max_cases] if max_cases else entries
    if not entries:
        raise ConfigError(f"{dataset_dir}: the {split} split is empty; set --split all or other fractions.")
    validate_datalist(entries, pancreas_labels, label_values, require_labels=True, strict=strict, progress=False)
    utility, meta = utility_loaded
    meta = {**meta, "window": meta.get("window") or window or "pancreas", "spatial_size": meta.get("spatial_size") or spatial_size}
    noise_net = noise_loaded[0].eval() if noise_loaded else None
    dims = int(meta.get("spatial_dims", 2))
    result = run_dose_audit(entries, utility.eval(), meta, pancreas_labels, doses, noise_models, noise_settings, denoisers,
                            denoise_with, noise_net, dims, ring_mm, psnr_peak_hu, metric_window, seed, bootstrap,
                            utility_bundle, progress=logger.info)
    result["split"] = {"name": split, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    out = Path(output_dir)
    write_json_atomic(result, out / "dose_audit.json")
    if denoise_with:
        model = _denoiser_model(denoisers[denoise_with], noise_models)
        write_json_atomic(denoise_summary(result, model), out / "denoise.json")
    plot_dose(result, out / "report" / "dose.png")
    write_dose_report(result, out / "report" / "report.html")
    return result


def write_dose_report(result: dict[str, Any], path: Path) -> Path:
    """``report/report.html``: the figure, the noise check and the console summary's table, one page."""
    import html

    from pipeline.fileio import atomic_path

    rows = "".join(f"<tr><td>{html.escape(line.strip())}</td></tr>" for line in summarise_dose(result).splitlines()[1:])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Dose audit</title></head><body>"
            f"<h1>Dose audit: {result['cases']} case(s), doses {', '.join(f'{d:g}' for d in result['doses'])}</h1>"
            f"<p>Dice against the label vs dose (95 % bootstrap intervals), without and with the denoiser "
            f"{html.escape(str(result.get('denoise_with')))}; PSNR of the noisy and denoised scans against the full-dose scan. "
            f"Every figure, per case too: dose_audit.json.</p><img src='dose.png' alt='dice and PSNR vs dose'>"
            f"<table>{rows}</table></body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


def _denoiser_model(checkpoint: str, noise_models: list[str]) -> str:
    """The noise model a denoiser was trained on (its checkpoint's ``dose_noise_model``), if audited; else the first."""
    from pipeline.networks.checkpoints import load_checkpoint

    trained = dict(load_checkpoint(checkpoint).get("meta", {})).get("dose_noise_model")
    return trained if trained in noise_models else noise_models[0]


def plot_dose(result: dict[str, Any], path: Path) -> Path:
    """Dice against the label vs dose (per noise model, without / with the denoiser) and PSNR vs dose per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for m, model in enumerate(result["noise_models"]):  # a colour per noise model (dice), per variant (PSNR)
        rows = [r for r in result["levels"] if r["model"] == model]
        doses = [r["dose"] for r in rows]
        for variant, style in (("without", "-o"), ("with", "--s")):
            if variant not in rows[0]["dice"]:
                continue
            means = [r["dice"][variant]["label"]["mean"] for r in rows]
            low = [r["dice"][variant]["label"]["ci95"][0] for r in rows]
            high = [r["dice"][variant]["label"]["ci95"][1] for r in rows]
            label = f"{model} noise, {'with ' + str(result['denoise_with']) if variant == 'with' else 'no denoiser'}"
            axes[0].plot(doses, means, style, color=colours[m % len(colours)], label=label)
            axes[0].fill_between(doses, low, high, color=colours[m % len(colours)], alpha=0.12)
        for v, name in enumerate(rows[0]["psnr"]):
            axes[1].plot(doses, [r["psnr"][name]["mean"] for r in rows], ["-o", "--s", ":^", "-."][m % 4],
                         color=colours[v % len(colours)], label=f"{model}: {name}")
    for ax, title, ylabel in ((axes[0], f"utility dice vs dose (n = {result['cases']})", "dice (label)"),
                              (axes[1], "PSNR vs dose (full-dose scan as reference)", f"PSNR, HU peak {result['psnr_peak_hu']:g}")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("dose fraction")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarise_dose(result: dict[str, Any]) -> str:
    """The audit's lines for the console."""
    lines = [f"dose audit: {result['cases']} case(s), doses {', '.join(f'{d:g}' for d in result['doses'])}"]
    for model, check in result["noise_check"].items():
        parts = [f"{r['dose']:g}: {r['measured_std_hu']:.1f} HU (predicted {r['predicted_std_hu']:.1f})" for r in check["levels"]]
        lines.append(f"  {model} noise, std in a water cylinder: " + "; ".join(parts))
    for row in result["levels"]:
        dice = "; ".join(f"{v} {row['dice'][v]['label']['mean']:.3f} [{row['dice'][v]['label']['ci95'][0]:.3f}, "
                         f"{row['dice'][v]['label']['ci95'][1]:.3f}]" for v in row["dice"])
        psnr = ", ".join(f"{k} {v['mean']:.1f}" if v["mean"] is not None else f"{k} -" for k, v in row["psnr"].items())
        maps = "; maps rho " + "/".join(f"{row['maps'][v]['rank_correlation']['mean']:.3f}" for v in row["maps"]) if row.get("maps") else ""
        lines.append(f"  {row['model']:10s} dose {row['dose']:<6g} dice {dice}; PSNR dB {psnr}{maps}")
    for model, block in (result.get("recovery") or {}).items():
        lost, won = block["dice_lost"], block["dice_won_back"]
        lines.append(f"  {model}: at dose {block['dose']:g} dice lost {lost['mean']:+.3f} [{lost['ci95'][0]:+.3f}, "
                     f"{lost['ci95'][1]:+.3f}], won back {won['mean']:+.3f} [{won['ci95'][0]:+.3f}, {won['ci95'][1]:+.3f}] "
                     f"(n = {won['n']})")
    return "\n".join(lines)


__all__ = ["SPLITS", "audit_dose", "plot_dose", "summarise_dose", "write_dose_report"]
