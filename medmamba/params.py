"""Parameter counts of the Mamba networks: released configurations next to the plan-adapted presets.

    python -m medmamba.params [--patch 40 56 40] [--strides '[[1,1,1],[2,2,2],[2,2,2],[2,2,2]]']

Why a script: the faithfulness check (LightM-UNet 3D = 5.0M) and the 2D originals' counts (VM-UNet 27.4M,
MHS-VM 17.3M) are quoted in docs/benchmarks.md; this reproduces them in seconds without nnU-Net. Without
--strides the stages follow nnU-Net's rule for isotropic spacing (halve every axis that is still >= 8
voxels, widths 32 * 2^i capped at 320); pass the real plan's strides for anisotropic data.
"""

from __future__ import annotations

import argparse
import json

from torch import nn

# (network, reference count quoted from the original work, where it comes from)
REFERENCES = {
    "lightm_unet": (5.0e6, "released 3D code, users measured 5.01M"),
    "lightm_unet_nossm": (None, "our ablation"),
    "vm_unet": (27.4e6, "2D original, released config"),
    "mhs_vm": (17.3e6, "2D original, paper"),
}


def count(net: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def nnunet_like_stages(patch: list[int], base: int = 32, cap: int = 320) -> tuple[list[list[int]], list[int]]:
    """Strides and widths as nnU-Net plans them for isotropic spacing (min feature map 4 per axis)."""
    size, strides = list(patch), [[1] * len(patch)]
    while True:
        s = [2 if v >= 8 else 1 for v in size]
        if not any(v == 2 for v in s):
            break
        strides.append(s)
        size = [v // k for v, k in zip(size, s, strict=True)]
    return strides, [min(base * 2**i, cap) for i in range(len(strides))]


def released(name: str) -> nn.Module | None:
    """The original configuration of a network, built with our 3D modules (None for the ablation)."""
    if name == "lightm_unet":
        from medmamba.nets.lightm_unet import released_configuration

        return released_configuration()
    if name in ("vm_unet", "mhs_vm"):
        from medmamba.nets.mhs_vm import MHSVM
        from medmamba.nets.vm_unet import VMUNet

        cls = VMUNet if name == "vm_unet" else MHSVM
        # 2D widths 96..768 behind a x4 patch embedding, encoder [2,2,2,2], decoder [2,2,2,1], 9 classes
        return cls(3, 9, False, strides=[[1, 1, 1], [4, 4, 4], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                   features_per_stage=[48, 96, 192, 384, 768], depths=[2, 2, 2, 2], depths_decoder=[2, 2, 2, 1])
    return None


def plan_adapted(name: str, strides: list[list[int]], features: list[int], profile: str,
                 input_channels: int = 1, num_classes: int = 3) -> nn.Module:
    """The network as `medmamba train` builds it on a plan with these stages (the same `build_network`)."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from medmamba.trainers.build import build_network

    plan = ConfigurationManager({"architecture": {"arch_kwargs": {
        "strides": strides, "features_per_stage": features, "kernel_sizes": [[3] * len(strides[0])] * len(strides)}}})
    return build_network(name, plan, input_channels, num_classes, True, profile=profile)


def rows(patch: list[int], strides: list[list[int]] | None = None) -> list[dict]:
    """One row per Mamba network: released count, reference, plan-adapted default and cpu-profile counts."""
    if strides is None:
        strides, features = nnunet_like_stages(patch)
    else:
        features = [min(32 * 2**i, 320) for i in range(len(strides))]
    out = []
    for name, (ref, source) in REFERENCES.items():
        rel = released(name)
        out.append({
            "network": name,
            "released_3d": count(rel) if rel is not None else None,
            "reference": ref,
            "source": source,
            "plan_default": count(plan_adapted(name, strides, features, "default")),
            "plan_cpu": count(plan_adapted(name, strides, features, "cpu")),
        })
    return out


def _m(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}M"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, nargs=3, default=[40, 56, 40], help="patch size (Hippocampus: 40 56 40)")
    ap.add_argument("--strides", type=json.loads, default=None, help="the plan's strides as JSON (optional)")
    args = ap.parse_args(argv)
    strides = args.strides or nnunet_like_stages(args.patch)[0]
    print(f"plan: patch {args.patch}, strides {strides}, widths {nnunet_like_stages(args.patch)[1][:len(strides)]}")
    print("| network | released config (ours, 3D) | original reference | plan-adapted (default) | "
          "plan-adapted (cpu) |")
    print("|---|---:|---|---:|---:|")
    for r in rows(args.patch, args.strides):
        ref = "-" if r["reference"] is None else f"{_m(r['reference'])} ({r['source']})"
        print(f"| {r['network']} | {_m(r['released_3d'])} | {ref} | {r['plan_default']:,} | {r['plan_cpu']:,} |")


if __name__ == "__main__":
    main()
