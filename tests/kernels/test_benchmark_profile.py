"""Benchmark plumbing added for the kernel work: op families of the profile, network specs, merged rounds."""

from __future__ import annotations

import pytest

from medmamba.benchmark import merge_rounds, op_family, parse_network_spec


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
