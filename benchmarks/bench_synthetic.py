"""Speed of the synthetic CT liver generator, and a synthetic-to-real transfer probe.

Targets (issue 2): the default dataset (12 subjects of 64^3, 16 scans with two annotators)
in well under a minute on one core, and one 256^3 volume in about a minute or less.
Issue 11/12: one randomised 512x512x~300 volume (``--fullres``) in well under a minute of
CPU on one core, with a bounded peak memory.

Default mode renders one 64^3 and one ``--size``^3 phantom volume (default 256) and times,
best of ``--repeat`` runs:

- ``render``: :func:`reproseg.sources.synthetic.generate_volume` (anatomy, vessels,
  segments, blur, bias, noise);
- ``rater``: one annotator's label, :func:`reproseg.sources.synthetic.rater_label`
  (smooth displacement field + nearest-neighbour resampling of the liver box);
- ``dataset``: the default dataset written to a temporary folder (``--dataset``).

and prints seconds, voxels per second, and the large/small throughput ratio (close to 1
means the cost grows linearly with the number of voxels). Timings are wall-clock on a
shared, noisy machine: read the ratios, and the CPU seconds.

``--fullres`` renders randomised volumes with the ranges of
``config/examples/synthetic_fullres.yaml`` at 512x512 and 1 mm slices over ``--coverage``
mm (300 slices by default) and prints wall and CPU seconds and the peak resident memory.

``--transfer`` is the synthetic-to-real probe of docs/synthetic.md: it generates
``--n-train`` randomised scans, resamples them to 3 mm, trains a small MONAI UNet (whole
liver, one thread, ``--minutes`` of wall time) and reports the whole-liver Dice on the real
CT of ``--real`` (never used for training or any choice of the probe).

    .venv/bin/python benchmarks/bench_synthetic.py
    .venv/bin/python benchmarks/bench_synthetic.py --size 192 --repeat 2 --dataset
    .venv/bin/python benchmarks/bench_synthetic.py --fullres --repeat 2
    .venv/bin/python benchmarks/bench_synthetic.py --transfer --seed 0 --minutes 8
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _result import target, write_result

from reproseg.config import COUINAUD_LABELS, RandomisedSynthetic, SyntheticSource
from reproseg.sources.synthetic import generate_dataset, generate_volume, rater_label
from reproseg.sources.synthetic.randomised import generate_randomised, label_plan


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Smallest wall-clock time of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_volume(size: int, repeat: int) -> dict[str, float]:
    """Time rendering and one rater label of a ``size``^3 volume."""
    shape = (size, size, size)
    render_s, vol = best_of(repeat, lambda: generate_volume(shape, rng=0))
    rater_s, _ = best_of(
        repeat, lambda: rater_label(vol.label, vol.spacing, 1.5, np.random.default_rng(1))
    )
    n = float(np.prod(shape))
    print(
        f"{size}^3: render {render_s:7.2f} s ({n / render_s / 1e6:6.2f} Mvox/s), "
        f"rater {rater_s:6.2f} s ({n / rater_s / 1e6:6.2f} Mvox/s), "
        f"spacing {tuple(round(s, 3) for s in vol.spacing)} mm, "
        f"liver {vol.metadata['liver_volume_ml']} ml"
    )
    return {"render_vox_s": n / render_s, "rater_vox_s": n / rater_s, "render_s": render_s}


def bench_fullres(repeat: int, coverage: float, thickness: float) -> None:
    """Wall and CPU time and peak memory of randomised 512x512 volumes."""
    cfg = RandomisedSynthetic(
        fov_mm=[310.0, 510.0],
        slice_thickness_mm=[thickness, thickness],
        z_coverage_mm=[coverage, coverage],
    )
    plan = label_plan({0: "background", 1: "liver"})
    for seed in range(repeat):
        rngs = tuple(np.random.default_rng([seed, i]) for i in range(3))
        wall, cpu = time.perf_counter(), time.process_time()
        vol = generate_randomised(cfg, (512, 512, 1000), plan, rngs)  # type: ignore[arg-type]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(
            f"fullres seed {seed}: {vol.image.shape} at {vol.spacing} mm "
            f"({vol.metadata['phase']}): wall {wall:.1f} s, CPU {cpu:.1f} s, "
            f"{vol.image.size / cpu / 1e6:.2f} Mvox per CPU s, peak RSS so far {peak:.2f} GB"
        )


# --------------------------------------------------------------------------------------------
# Synthetic-to-real probe
# --------------------------------------------------------------------------------------------

WINDOW = (-200.0, 300.0)  # fixed CT window: no statistic of the real case is used


def _to_3mm(image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...]) -> tuple:
    """Resample to 3 mm isotropic (linear image, nearest label), windowed to [0, 1]."""
    from scipy import ndimage

    zoom = [s / 3.0 for s in spacing]
    img = ndimage.zoom(image.astype(np.float32), zoom, order=1)
    lab = ndimage.zoom(label, zoom, order=0)
    img = (np.clip(img, *WINDOW) - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
    return img.astype(np.float32), lab.astype(np.int64)


def _training_data(args: argparse.Namespace) -> tuple[list, list]:
    """The probe's randomised training scans at 3 mm (generated once, cached as .npz)."""
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    data_file = cache / f"train_{args.n_train}.npz"
    plan = label_plan({0: "background", 1: "liver"})
    if not data_file.exists():
        cfg = RandomisedSynthetic()
        images, labels = [], []
        start = time.perf_counter()
        for i in range(args.n_train):
            rngs = tuple(np.random.default_rng([1000 + i, k]) for k in range(3))
            vol = generate_randomised(cfg, (128, 128, 200), plan, rngs)  # type: ignore[arg-type]
            img, lab = _to_3mm(vol.image, vol.label, vol.spacing)
            images.append(img)
            labels.append(lab)
        np.savez(data_file, *images, *labels)
        print(f"generated {args.n_train} scans in {time.perf_counter() - start:.0f} s")
    with np.load(data_file) as z:
        arrays = [z[f"arr_{i}"] for i in range(2 * args.n_train)]
    return arrays[: args.n_train], arrays[args.n_train :]


def transfer_probe(args: argparse.Namespace) -> None:
    """Train a small whole-liver UNet on randomised scans only; Dice on the real CT."""
    import nibabel as nib
    import torch
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from scipy import ndimage

    torch.set_num_threads(1)
    images, labels = _training_data(args)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    net = UNet(3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    p = 64

    def patch(i: int) -> tuple[np.ndarray, np.ndarray]:
        img, lab = images[i], labels[i]
        pad = [(0, max(0, p - s)) for s in img.shape]
        img, lab = np.pad(img, pad), np.pad(lab, pad)
        if rng.random() < 0.67 and lab.any():
            c = np.argwhere(lab > 0)[rng.integers(int((lab > 0).sum()))]
            lo = [int(np.clip(c[a] - p // 2, 0, img.shape[a] - p)) for a in range(3)]
        else:
            lo = [int(rng.integers(0, img.shape[a] - p + 1)) for a in range(3)]
        sl = tuple(slice(v, v + p) for v in lo)
        x = img[sl] * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)  # intensity jitter
        return x, lab[sl]

    start, step, losses = time.perf_counter(), 0, []
    net.train()
    while time.perf_counter() - start < args.minutes * 60 and step < args.max_steps:
        batch = [patch(int(rng.integers(args.n_train))) for _ in range(2)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])[:, None].astype(np.float32))
        y = torch.from_numpy(np.stack([b[1] for b in batch])[:, None])
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
    train_s = time.perf_counter() - start
    real = Path(args.real)
    ct = np.asarray(nib.load(real / "ct.nii.gz").dataobj).astype(np.float32)
    truth = np.asarray(nib.load(real / "liver.nii.gz").dataobj) > 0
    spacing = tuple(float(s) for s in nib.load(real / "ct.nii.gz").header.get_zooms()[:3])
    x, _ = _to_3mm(ct, truth.astype(np.uint8), spacing)
    net.eval()
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(x)[None, None], (p, p, p), 2, net, 0.25)
    pred = (logits.argmax(1)[0].numpy() > 0)[: truth.shape[0], : truth.shape[1], : truth.shape[2]]
    lab, n = ndimage.label(pred)
    largest = lab == (1 + int(np.argmax(ndimage.sum(pred, lab, range(1, n + 1))))) if n else pred

    def dice(a: np.ndarray) -> float:
        return float(2 * (a & truth).sum() / max(a.sum() + truth.sum(), 1))

    result = {
        "seed": args.seed,
        "n_train_scans": args.n_train,
        "steps": step,
        "train_wall_s": round(train_s, 1),
        "final_loss_mean_last_50": round(float(np.mean(losses[-50:])), 4),
        "dice_whole_liver": round(dice(pred), 4),
        "dice_largest_component": round(dice(largest), 4),
        "pred_volume_ml": round(float(pred.sum()) * 27 / 1000, 1),
        "true_volume_ml": round(float(truth.sum()) * 27 / 1000, 1),
    }
    print(json.dumps(result))
    np.save(Path(args.cache) / f"pred_seed{args.seed}.npy", logits.softmax(1)[0, 1].numpy())


#: TotalSegmentator class values of the real case's map -> generator organ names.
REAL_ORGANS = {
    "liver": (5,),
    "spleen": (1,),
    "kidney_right": (2,),
    "kidney_left": (3,),
    "gallbladder": (4,),
    "stomach": (6,),
    "pancreas": (7,),
    "small_bowel": (18, 19),
    "colon": (20,),
    "aorta": (52,),
    "inferior_vena_cava": (63,),
    "portal_vein_and_splenic_vein": (64,),
}


def _compare_figures(
    ct: np.ndarray, real_lab: np.ndarray, gen: list, organs: list[str], out: Path, n_show: int
) -> None:
    """Slices at the same level (through the liver centroid) and HU histograms per organ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Slices at the same level: the axial slice through the liver centroid, coronal likewise.
    shown = [(ct, real_lab, "real CT (native, 3 mm)")] + [
        (img, lab, f"generated {m['phase']}") for img, lab, m in gen[:n_show]
    ]
    for view in ("axial", "coronal"):
        fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4))
        for ax, (img, lab, title) in zip(axes, shown, strict=True):
            c = np.argwhere(lab == 1).mean(0).astype(int)
            if view == "axial":
                sl, ls = img[:, :, c[2]].T[::-1, ::-1], (lab[:, :, c[2]] == 1).T[::-1, ::-1]
            else:
                sl, ls = img[:, c[1], :].T[::-1, ::-1], (lab[:, c[1], :] == 1).T[::-1, ::-1]
            ax.imshow(sl, cmap="gray", vmin=-200, vmax=300)
            ax.contour(ls, levels=[0.5], colors="r", linewidths=0.6)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / f"synthetic_vs_real_{view}.png", dpi=80)
        plt.close(fig)
    fig, axes = plt.subplots(3, 4, figsize=(13, 8))
    bins = np.linspace(-200, 400, 121)
    for ax, (i, name) in zip(axes.ravel(), enumerate(organs), strict=True):
        for phase, colour in (("native", "C0"), ("arterial", "C1"), ("portal_venous", "C2")):
            vals = [img[lab == i + 1] for img, lab, m in gen if m["phase"] == phase]
            vals = [v for v in vals if v.size]
            if vals:
                ax.hist(
                    np.concatenate(vals),
                    bins,
                    density=True,
                    histtype="step",
                    color=colour,
                    label=f"generated {phase}",
                )
        v = ct[real_lab == i + 1]
        ax.hist(v, bins, density=True, histtype="stepfilled", alpha=0.35, color="k", label="real")
        ax.set_title(name, fontsize=9)
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "synthetic_vs_real_hu.png", dpi=80)
    plt.close(fig)


def compare_real(args: argparse.Namespace) -> None:
    """HU per organ, liver volume and extent: generated scans (default randomised ranges,
    resampled to the real case's 3 mm) next to the real CT; figures for docs/synthetic.md."""
    import nibabel as nib
    from scipy import ndimage

    real = Path(args.real)
    ct = np.asarray(nib.load(real / "ct.nii.gz").dataobj).astype(np.float32)
    seg = np.asarray(nib.load(real / "seg_total_fast.nii.gz").dataobj)
    organs = list(REAL_ORGANS)
    plan = label_plan({0: "background", 1: "liver", **{i + 2: n for i, n in enumerate(organs[1:])}})
    real_lab = np.zeros(seg.shape, np.uint8)
    for i, name in enumerate(organs):
        real_lab[np.isin(seg, REAL_ORGANS[name])] = i + 1
    gen = []
    for i in range(args.n_compare):
        rngs = tuple(np.random.default_rng([2000 + i, k]) for k in range(3))
        vol = generate_randomised(RandomisedSynthetic(), (160, 160, 200), plan, rngs)  # type: ignore[arg-type]
        zoom = [s / 3.0 for s in vol.spacing]
        img = ndimage.zoom(vol.image.astype(np.float32), zoom, order=1)
        lab = ndimage.zoom(vol.label, zoom, order=0)
        gen.append((img, lab, vol.metadata))
    stats: dict[str, Any] = {"real": {}, "generated": {}}
    for i, name in enumerate(organs):
        v = ct[real_lab == i + 1]
        stats["real"][name] = [float(np.percentile(v, q)) for q in (5, 50, 95)] if v.size else None
        for phase in ("native", "arterial", "portal_venous", "all"):
            vals = [
                img[lab == i + 1]
                for img, lab, m in gen
                if phase in ("all", m["phase"]) and (lab == i + 1).any()
            ]
            if vals:
                g = np.concatenate(vals)
                stats["generated"].setdefault(name, {})[phase] = [
                    float(np.percentile(g, q)) for q in (5, 50, 95)
                ]

    def liver_facts(lab: np.ndarray) -> list[float]:
        idx = np.argwhere(lab == 1)
        return [float(len(idx) * 27 / 1000), *((idx.max(0) - idx.min(0) + 1) * 3.0).tolist()]

    stats["real_liver_ml_lr_ap_cc"] = liver_facts(real_lab)
    facts = np.array([liver_facts(lab) for _, lab, _ in gen])
    stats["generated_liver_ml_lr_ap_cc_p10_p50_p90"] = np.percentile(
        facts, [10, 50, 90], 0
    ).tolist()
    stats["phases"] = [m["phase"] for _, _, m in gen]
    out = Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(stats, indent=1))
    _compare_figures(ct, real_lab, gen, organs, out, args.n_show)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the large volume")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs")
    parser.add_argument("--dataset", action="store_true", help="also time the default dataset")
    parser.add_argument("--fullres", action="store_true", help="time randomised 512x512 scans")
    parser.add_argument("--coverage", type=float, default=300.0, help="fullres coverage (mm)")
    parser.add_argument("--thickness", type=float, default=1.0, help="fullres slices (mm)")
    parser.add_argument("--transfer", action="store_true", help="synthetic-to-real probe")
    parser.add_argument("--real", default="/work/shared/data/real_ct_dev")
    parser.add_argument("--cache", default="/tmp/reproseg_transfer")
    parser.add_argument("--n-train", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--max-steps", type=int, default=100000)
    parser.add_argument("--compare-real", action="store_true", help="HU/shape vs the real CT")
    parser.add_argument("--n-compare", type=int, default=18)
    parser.add_argument("--n-show", type=int, default=4)
    parser.add_argument("--figures", default="docs/img")
    parser.add_argument("--json", type=Path, help="default mode: write result + targets here")
    args = parser.parse_args()
    if args.compare_real:
        compare_real(args)
        return
    if args.transfer:
        transfer_probe(args)
        return
    if args.fullres:
        bench_fullres(args.repeat, args.coverage, args.thickness)
        return

    small = bench_volume(64, max(args.repeat, 3))
    large = bench_volume(args.size, args.repeat)
    print(
        f"throughput ratio {args.size}^3 / 64^3: render "
        f"{large['render_vox_s'] / small['render_vox_s']:.2f}, rater "
        f"{large['rater_vox_s'] / small['rater_vox_s']:.2f}"
    )
    if args.dataset:
        cfg = SyntheticSource()
        with tempfile.TemporaryDirectory() as tmp:
            seconds, records = best_of(
                1, lambda: generate_dataset(cfg, dict(COUINAUD_LABELS), Path(tmp))
            )
        print(
            f"default dataset: {len(records)} scans of {cfg.n_subjects} subjects "
            f"({cfg.shape[0]}x{cfg.shape[1]}x{cfg.shape[2]}, {cfg.n_annotators} annotators, "
            f"NIfTI written) in {seconds:.1f} s = {seconds / small['render_s']:.0f}x one 64^3 render"
        )
    if args.json:
        cond = f"best of {args.repeat}, one process, wall-clock on a shared machine"
        budget = 60.0 * (args.size / 256) ** 3
        targets = [
            target(
                f"render_{args.size}_s",
                large["render_s"],
                budget,
                "<=",
                "s",
                f"one {args.size}^3 volume (generate_volume); budget: a minute at 256^3, "
                f"scaled by voxels; " + cond,
            )
        ]
        if args.dataset:
            targets.append(
                target(
                    "default_dataset_s",
                    seconds,
                    60.0,
                    "<=",
                    "s",
                    "the default dataset (12 subjects of 64^3, 16 scans, 2 annotators, NIfTI "
                    "written): well under a minute; " + cond,
                )
            )
        write_result(args.json, "synthetic", targets, {"small": small, "large": large})


if __name__ == "__main__":
    main()
