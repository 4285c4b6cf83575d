"""The benchmark table of docs/benchmarks.md, generated from ``benchmark.json``."""

from __future__ import annotations

from typing import Any


def _rate(entry: dict[str, Any]) -> str:
    gflops = entry.get("gflop_per_s")
    return f"{entry['slices_per_s']:.2f} ({gflops:.0f})" if gflops else f"{entry['slices_per_s']:.2f}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_table(result: dict[str, Any]) -> str:
    """Markdown: the machine, the training steps, the explainers, the data path and the dice check."""
    settings, machine = result["settings"], result["machine"]
    noise, utility, explain, data = result["train_noise_step"], result["train_utility_step"], result["explain"], result["data"]
    size = settings["spatial_size"]
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU"
    lines = [
        f"Measured by `unoise benchmark` on {machine['cpu']} ({machine['cpu_count']} cores, "
        f"{machine['torch_threads']} torch threads{gpu}), torch {machine['torch']}, MONAI {machine['monai']}; "
        f"{size} x {size} slices, batch {settings['batch_size']}, `{settings['utility_preset']}` utility, "
        f"`{settings['noise_preset']}` noise model; medians of {settings['repeats']} runs after {settings['warmup']} "
        f"warm-up. Fast path: {settings['fast_path']}.",
        "",
        "| training step: slices/s (GFLOP/s) | fp32 | fast path | speedup | memory MB (fast) |",
        "|---|---|---|---|---|",
        f"| U-Noise step, bundle trainer | {_rate(noise['pipeline']['fp32'])} | {_rate(noise['pipeline']['fast'])} | "
        f"**{noise['speedup']:.2f}x** | {_mb(noise['pipeline']['fast']['memory_increase_mb'])} |",
        f"| U-Noise step, plain PyTorch loop | {_rate(noise['plain_loop']['fp32'])} | {_rate(noise['plain_loop']['fast'])} | "
        f"{noise['plain_speedup']:.2f}x | {_mb(noise['plain_loop']['fast']['memory_increase_mb'])} |",
        f"| utility step, plain PyTorch loop | {_rate(utility['fp32'])} | {_rate(utility['fast'])} | "
        f"{utility['speedup']:.2f}x | {_mb(utility['fast']['memory_increase_mb'])} |",
        "",
        f"Per iteration, the bundle trainer reaches **{noise['pipeline_over_plain']:.0%}** of the plain loop's slices/s "
        f"on the fast path ({noise['fp32_pipeline_over_plain']:.0%} in fp32); it waits for data **{data['wait_fraction']:.2%}** "
        f"of its step time; the loader alone delivers {data['loader_slices_per_s']:,.0f} slices/s against the "
        f"{data['trainer_slices_per_s']:.2f} the trainer consumes. One step is {noise['gflop_per_step']:,.1f} GFLOP "
        f"(utility step: {utility['gflop_per_step']:,.1f}).",
        "",
    ]
    dice = result.get("dice_check", {})
    if "dice_delta" in dice:
        lines += [
            f"Dice check ({dice['epochs']} noise-training epochs against a trained utility, fp32 vs fast path): "
            f"perturbed validation dice {dice['fp32']['val_dice_perturbed']:.4f} vs {dice['fast']['val_dice_perturbed']:.4f} "
            f"(**delta {dice['dice_delta']:+.4f}**), clean dice {dice['fp32']['val_dice_clean']:.4f} vs "
            f"{dice['fast']['val_dice_clean']:.4f}, mean tolerance {dice['fp32'].get('val_mean_tolerance', float('nan')):.3f} "
            f"vs {dice['fast'].get('val_mean_tolerance', float('nan')):.3f}: "
            f"{'within' if dice['within_tolerance'] else '**outside**'} the {dice['tolerance']} tolerance.",
            "",
        ]
    occlusion = explain["occlusion"]
    large = settings["noise_preset"]
    lines += [
        f"| explainer ({size} x {size} slice, {explain['precision']}, {explain['memory_format'].replace('_', '-')}) "
        f"| ms per map | vs U-Noise {large} | memory MB |",
        "|---|---|---|---|",
    ]
    for preset in ("small", "medium", "large"):
        key = f"unoise_{preset}_ms"
        if key in explain:
            lines.append(f"| U-Noise {preset} | {explain[key]:,.1f} | {explain[key] / explain[f'unoise_{large}_ms']:.2f}x | "
                         f"{_mb(explain['memory_increase_mb'].get(f'unoise_{preset}'))} |")
    lines += [
        f"| Grad-CAM (`{explain['gradcam_layer']}`) | {explain['gradcam_ms']:,.0f} | "
        f"**{explain[f'gradcam_over_unoise_{large}']:,.0f}x** | {_mb(explain['memory_increase_mb'].get('gradcam'))} |",
        f"| occlusion ({occlusion['window']} px window, stride {occlusion['stride']}: {occlusion['windows']:,} windows"
        + (f"; extrapolated from {occlusion['timed_windows']}" if occlusion["extrapolated"] else "")
        + f") | {explain['occlusion_ms']:,.0f} | **{explain[f'occlusion_over_unoise_{large}']:,.0f}x** | "
        f"{_mb(explain['memory_increase_mb'].get('occlusion'))} |",
        f"| (one utility forward) | {explain['utility_forward_ms']:,.0f} | | |",
    ]
    lines += ["", "Memory: what each measurement added at its peak (the process's peak resident memory minus its "
              "resident memory on entry on the CPU; `torch.cuda.max_memory_allocated` minus the memory allocated "
              "on entry on a GPU); the JSON also has the absolute peaks."]
    return "\n".join(lines)
