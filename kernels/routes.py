"""3D scan routes: orders in which a (D, H, W) grid is read into a sequence, and the cross-scan/merge ops.

A route is a permutation of the C-order voxel indices (row k of `build_routes` lists, in visiting order,
the flat index of each voxel). Multi-route scans (VM-UNet's SS2D made 3D, MHS-VM's route families) read
one feature map along K routes at once, scan all K*C channels in one selective-scan call, and merge the
K results back onto the grid.
"""

from __future__ import annotations

import numpy as np
import torch

_AXES = "dhw"
ROUTE_KINDS = tuple(f"raster_{o}" for o in ("dhw", "dwh", "hdw", "hwd", "wdh", "whd")) + ("snake", "diagonal", "shell")


def _route(shape: tuple[int, int, int], kind: str) -> np.ndarray:
    D, H, W = shape
    flat = np.arange(D * H * W).reshape(D, H, W)
    if kind.endswith("_rev"):
        return _route(shape, kind[:-4])[::-1].copy()
    if kind.startswith("raster_"):
        order = kind[len("raster_"):]
        if sorted(order) != sorted(_AXES):
            raise ValueError(f"route '{kind}': axis order must be a permutation of 'dhw'")
        return flat.transpose([_AXES.index(a) for a in order]).reshape(-1)
    if kind == "snake":  # boustrophedon in every slice, slices alternately walked backwards: a continuous path
        grid = flat.copy()
        grid[:, 1::2, :] = grid[:, 1::2, ::-1]
        slices = [grid[i].reshape(-1) if i % 2 == 0 else grid[i].reshape(-1)[::-1] for i in range(D)]
        return np.concatenate(slices)
    i, j, k = np.meshgrid(np.arange(D), np.arange(H), np.arange(W), indexing="ij")
    if kind == "diagonal":  # planes i+j+k = s, direction alternating between consecutive planes
        s = (i + j + k).reshape(-1)
        within = np.where(s % 2 == 0, flat.reshape(-1), -flat.reshape(-1))
        return np.lexsort((within, s))
    if kind == "shell":  # concentric shells by distance to the border, outside in
        m = np.minimum.reduce([i, D - 1 - i, j, H - 1 - j, k, W - 1 - k]).reshape(-1)
        return np.lexsort((flat.reshape(-1), m))
    raise ValueError(f"unknown route '{kind}' (kinds: {', '.join(ROUTE_KINDS)}, each optionally with '_rev')")


def build_routes(shape: tuple[int, ...], kinds: list[str] | tuple[str, ...]) -> torch.Tensor:
    """(K, D*H*W) LongTensor; row k visits the grid in the order of kinds[k] (any anisotropic shape)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"routes need a 3D shape with positive sizes, got {shape}")
    return torch.from_numpy(np.stack([_route(shape, k) for k in kinds])).long()


def cross_scan(x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
    """(b, c, D, H, W) -> (b, K*c, l): route k occupies channels k*c .. (k+1)*c - 1."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    seq = flat[:, :, routes.to(x.device)]  # (b, c, K, l)
    return seq.transpose(1, 2).reshape(b, routes.shape[0] * c, -1)


def cross_unscan(y: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
    """(b, K*c, l) -> (b, K, c, l): every route's sequence put back in raster order, kept apart (MHS-VM's SRA)."""
    K = routes.shape[0]
    b, kc, length = y.shape
    inverse = torch.argsort(routes.to(y.device), dim=1)  # position of voxel v in route k
    seq = y.reshape(b, K, kc // K, length)
    return torch.stack([seq[:, k][..., inverse[k]] for k in range(K)], dim=1)


def cross_merge(y: torch.Tensor, routes: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """(b, K*c, l) -> (b, c, D, H, W): undo each route's permutation and sum the K results."""
    merged = cross_unscan(y, routes).sum(1)
    return merged.reshape(merged.shape[0], merged.shape[1], *shape)
