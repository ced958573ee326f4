"""Benchmark plumbing added for the kernel work: op families of the profile, network specs, merged rounds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmamba.benchmark import merge_rounds, op_family, parse_network_spec, saved_activations


def test_op_families_name_the_kernels_and_the_traffic_around_them():
    assert op_family("medmamba::scan_bwd") == "scan bwd"
    assert op_family("medmamba::causal_conv_fwd") == "causal conv1d (fused)"
    assert op_family("medmamba::route_gather") == "route gather/scatter"
    assert op_family("aten::mm") == "mm (linear/matmul)"
    assert op_family("aten::copy_") == "copy/layout"
    assert op_family("aten::fill_") == "fill/zero/empty"
    assert op_family("autograd::engine::evaluate_function: SliceBackward0") == "cat/slice/split"
    assert op_family("aten::convolution_backward") == "conv3d"
    assert op_family("something new") == "other"


def test_network_specs_carry_environment_overrides():
    assert parse_network_spec("nnunet") == ("nnunet", {})
    assert parse_network_spec("lightm_unet@MEDMAMBA_FUSED=0+OMP_PROC_BIND=close") == (
        "lightm_unet", {"MEDMAMBA_FUSED": "0", "OMP_PROC_BIND": "close"})
    with pytest.raises(ValueError):
        parse_network_spec("lightm_unet@MEDMAMBA_FUSED")


def test_rounds_keep_the_least_disturbed_times_and_the_largest_memory():
    rows = [{"network": "x", "forward_s": 2.0, "train_iter_s": 5.0, "peak_rss_MB": 100.0},
            {"network": "x", "error": "killed"},
            {"network": "x", "forward_s": 1.0, "train_iter_s": 6.0, "peak_rss_MB": 120.0}]
    row = merge_rounds(rows)
    assert (row["forward_s"], row["train_iter_s"], row["peak_rss_MB"]) == (1.0, 5.0, 120.0)
    assert row["train_iter_s_all"] == [5.0, 6.0]
    assert "error" in merge_rounds([{"network": "x", "error": "e"}])


def test_saved_activations_attribute_each_storage_once_and_leave_the_network_as_it_was():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(32, 8)
    before = net(x)
    total, rows = saved_activations(net, x, depth=2)
    by = {r["module"]: r["MiB"] * 2**20 for r in rows}
    assert by["Sequential/ReLU"] == 32 * 16 * 4  # the ReLU output, kept once although the next Linear keeps it too
    assert by["Sequential/Linear"] >= 32 * 8 * 4  # at least the first Linear's input
    assert total == sum(by.values()) < 32 * 8 * 4 + 2 * 32 * 16 * 4
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert torch.equal(net(x), before)
