"""MedmambaTrainer: the one nnUNetTrainer subclass every medmamba network trains through.

The network comes from `build_network` (registry + plan + preset); optimiser, schedule, AMP policy,
clipping and budget come from the preset. Concrete classes are made per (network, profile, seed) by
`make_trainer`, so nnU-Net's results folder name tells the
profile apart and no trainer lookup by name (which imports timm) is ever needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import save_json
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import medmamba
from medmamba.atomic import atomic_write, remove_stale_partials
from medmamba.checkpoint import load_checkpoint
from medmamba.presets import load_preset
from medmamba.registry import get_network
from medmamba.trainers.build import build_network
from medmamba.workspace import SIDECAR


class MedmambaTrainer(nnUNetTrainer):
    """nnU-Net trainer driven by a medmamba preset; with no network class it trains nnU-Net's own U-Net."""

    network_name: ClassVar[str] = "nnunet"
    preset: ClassVar[dict[str, Any]] = load_preset("nnunet")
    seed: ClassVar[int | None] = None  # recorded in the sidecar; the caller seeds the RNGs (train_model)

    # set by the caller (CLI progress bars); not part of nnU-Net's state
    on_iteration: Callable[[int, float], None] | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    verbose: bool = False
    # verification mode for DDP: every rank loads the same global batch and trains on rows rank::world_size
    same_batches: bool = False
    # nnU-Net's own attributes that this class reassigns (declared for the type checker; nnU-Net sets them)
    is_ddp: bool
    network: Any

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        apply_limits(plans, configuration, self.preset.get("limits", {}))
        with warnings.catch_warnings():  # under DDP nnU-Net makes a cuda GradScaler even on a CPU; dropped below
            warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA is not available")
            super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            # nnU-Net assumes cuda:RANK under DDP; keep a CPU (gloo) run on the CPU, and use the rank on this
            # node for the GPU index (the global rank is wrong on every node but the first)
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", str(self.local_rank)))) \
                if device.type == "cuda" else torch.device("cpu")
        t = self.preset["training"]
        self.initial_lr = float(t["initial_lr"])
        self.weight_decay = float(t["weight_decay"])
        self.num_epochs = int(t["num_epochs"])
        self.num_iterations_per_epoch = int(t["num_iterations_per_epoch"])
        self.num_val_iterations_per_epoch = int(t["num_val_iterations_per_epoch"])
        self.save_every = int(t["save_every"])
        self.enable_deep_supervision = bool(t["deep_supervision"])
        self.use_amp = bool(t["amp"]) and self.device.type == "cuda"
        if not self.use_amp:
            self.grad_scaler = None

    # ---- network -------------------------------------------------------------------------------
    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Build from the plan; nnU-Net calls this in training and we call it again for inference."""
        return build_network(cls.network_name, configuration_manager, num_input_channels, num_output_channels,
                             enable_deep_supervision, preset=cls.preset, plans_manager=plans_manager)

    # ---- DDP ---------------------------------------------------------------------------------------
    def initialize(self) -> None:
        """nnU-Net's initialize, but the DDP wrapper works on CPUs too (gloo: no device_ids, no SyncBatchNorm)."""
        if not self.is_ddp:
            super().initialize()
            return
        self.is_ddp = False  # build network, optimizer and logger config without nnU-Net's cuda-only wrapping
        try:
            super().initialize()
        finally:
            self.is_ddp = True
        self._global_oversample = self.oversample_foreground_percent
        with contextlib.redirect_stdout(io.StringIO()) if not self.verbose else dummy_context():  # "worker R ..."
            self._set_batch_size_and_oversample()  # per-rank share of batch and oversampling
        self.loss = self._build_loss()  # Dice terms all-gathered over ranks (ddp=True), as nnU-Net does
        # depthwise conv weights (C, 1, k, k, k) have an ambiguous stride for the size-1 axis: harmless
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        network = self.network
        if self.device.type == "cuda":
            network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
        self.network = DDP(network, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           find_unused_parameters=self.find_unused_parameters)

    #: DDP must search for parameters without gradient (slower) only for networks that have some
    find_unused_parameters: ClassVar[bool] = False

    def get_dataloaders(self):
        """With `same_batches`, load the whole global batch on every rank (see train_step)."""
        if not (self.same_batches and self.is_ddp):
            return super().get_dataloaders()
        per_rank = self.batch_size, self.oversample_foreground_percent
        self.batch_size, self.oversample_foreground_percent = self.configuration_manager.batch_size, \
            self._global_oversample
        try:
            return super().get_dataloaders()
        finally:
            self.batch_size, self.oversample_foreground_percent = per_rank

    def _rank_rows(self, batch: dict) -> dict:
        """Rows rank::world_size of a global batch (the `same_batches` verification mode)."""
        if not (self.same_batches and self.is_ddp):
            return batch
        rank, world = dist.get_rank(), dist.get_world_size()
        target = batch["target"]
        target = [t[rank::world] for t in target] if isinstance(target, list) else target[rank::world]
        return {**batch, "data": batch["data"][rank::world], "target": target}

    def validate_on_main_process(self) -> None:
        """nnU-Net's final validation, run by rank 0 alone so that only rank 0 writes validation files."""
        if not self.is_ddp:
            self.perform_actual_validation(False)
            return
        ddp_network = self.network
        self.network, self.is_ddp = ddp_network.module, False
        try:
            self.perform_actual_validation(False)
        finally:
            self.network, self.is_ddp = ddp_network, True

    # ---- augmentation --------------------------------------------------------------------------
    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's choice, except the mirror axes when the preset names them. Test-time mirroring follows
        (nnU-Net saves the axes in the checkpoint): a model never trained on flipped patches is not asked to
        average predictions on flipped volumes."""
        configured = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        rotation, dummy_2d, initial_patch, mirror_axes = configured
        axes = self.preset["training"].get("mirror_axes")
        if axes is not None:
            mirror_axes = tuple(axes) or None
            self.inference_allowed_mirroring_axes = mirror_axes
        return rotation, dummy_2d, initial_patch, mirror_axes

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.preset["training"]
        params = self.network.parameters()
        if t["optimizer"] == "sgd":
            opt = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay,
                                  momentum=0.99, nesterov=True)
        elif t["optimizer"] == "adam":
            opt = torch.optim.Adam(params, self.initial_lr, weight_decay=self.weight_decay)
        elif t["optimizer"] == "adamw":
            opt = torch.optim.AdamW(params, self.initial_lr, weight_decay=self.weight_decay)
        else:
            raise ValueError(f"unknown optimizer '{t['optimizer']}' in preset {self.preset['name']}")
        if t["schedule"] == "poly":
            sched = PolyLRScheduler(opt, self.initial_lr, self.num_epochs)
        elif t["schedule"] == "constant":
            sched = _ConstantLR(opt, self.initial_lr)
        else:
            raise ValueError(f"unknown schedule '{t['schedule']}' in preset {self.preset['name']}")
        return opt, _Warmup(sched, opt, self.initial_lr, int(t.get("warmup_epochs", 0)))

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step with the preset's AMP policy and clipping; reports each iteration."""
        batch = self._rank_rows(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast(self.device.type, enabled=True) if self.use_amp else dummy_context()
        with ctx:
            loss = self.loss(self.network(data), target)
        clip = float(self.preset["training"]["grad_clip"])
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.optimizer.step()
        value = float(loss.detach().cpu())
        if self.on_iteration is not None:
            self.on_iteration(self.current_epoch, value)
        return {"loss": np.array(value)}

    # ---- bookkeeping ---------------------------------------------------------------------------
    def on_train_start(self):
        """nnU-Net's on_train_start with every file write on rank 0 only (nnU-Net copies plans on all ranks)."""
        if not self.was_initialized:
            self.initialize()
        if self.is_ddp:  # nnU-Net's do_split writes splits_final.json when missing: let rank 0 alone do that
            if self.local_rank == 0:
                self.do_split()
            dist.barrier()
        self.dataloader_train, self.dataloader_val = self.get_dataloaders()
        self.set_deep_supervision_enabled(self.enable_deep_supervision)
        if self.local_rank == 0:
            base = Path(self.output_folder_base)
            Path(self.output_folder).mkdir(parents=True, exist_ok=True)
            self.print_plans()
            self.dataset_class.unpack_dataset(self.preprocessed_dataset_folder, overwrite_existing=False,
                                              num_processes=max(1, round(get_allowed_n_proc_DA() // 2)), verify=True)
            save_json(self.plans_manager.plans, str(base / "plans.json"), sort_keys=False)
            save_json(self.dataset_json, str(base / "dataset.json"), sort_keys=False)
            shutil.copyfile(Path(self.preprocessed_dataset_folder_base) / "dataset_fingerprint.json",
                            base / "dataset_fingerprint.json")
            self._save_debug_information()
            write_sidecar(base, self)
        if self.is_ddp:
            dist.barrier()  # the other ranks read the unpacked data only after rank 0 finished unpacking

    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()
        if self.on_epoch is not None:
            log = self.logger.get_checkpoint()
            self.on_epoch({
                "epoch": epoch,
                "train_loss": float(log["train_losses"][-1]),
                "val_loss": float(log["val_losses"][-1]),
                "pseudo_dice": [float(x) for x in log["dice_per_class_or_region"][-1]],
                "ema_fg_dice": float(log["ema_fg_dice"][-1]),
                "epoch_time": float(log["epoch_end_timestamps"][-1] - log["epoch_start_timestamps"][-1]),
            })

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """Resume safely: weights_only=True loading (nnU-Net 2.8.1 unpickles, and its dict path is broken)."""
        if not self.was_initialized:
            self.initialize()
        ckpt = filename_or_checkpoint
        if isinstance(ckpt, str | Path):
            ckpt = load_checkpoint(ckpt, map_location=self.device)
        weights = {k[7:] if k.startswith("module.") else k: v for k, v in ckpt["network_weights"].items()}
        (self.network.module if self.is_ddp else self.network).load_state_dict(weights)
        self.my_init_kwargs = ckpt["init_args"]
        self.current_epoch = ckpt["current_epoch"]
        self.logger.load_checkpoint(ckpt["logging"])
        self._best_ema = ckpt["_best_ema"]
        self.inference_allowed_mirroring_axes = ckpt.get("inference_allowed_mirroring_axes",
                                                         self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        if self.grad_scaler is not None and ckpt.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(ckpt["grad_scaler_state"])

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint written atomically: a run killed mid-save (a comparison queue at the end of a
        session) leaves the previous checkpoint intact to resume from, and its temporary is removed here."""
        buffer = io.BytesIO()
        super().save_checkpoint(buffer)  # torch.save into memory, on rank 0 only and only when checkpointing is on
        if buffer.tell():  # only rank 0 writes this name, so no other process owns its temporaries
            remove_stale_partials(Path(filename).parent, [Path(filename).name])
            atomic_write(Path(filename), buffer.getvalue())

    def print_to_log_file(self, *args, also_print_to_console: bool = True, add_timestamp: bool = True):
        super().print_to_log_file(*args, also_print_to_console=also_print_to_console and self.verbose,
                                  add_timestamp=add_timestamp)

    def plot_network_architecture(self):
        """Skipped: needs hiddenlayer/graphviz and costs a forward pass; nothing depends on the PDF."""


class _ConstantLR:
    def __init__(self, optimizer: torch.optim.Optimizer, lr: float):
        self.optimizer, self.lr = optimizer, lr

    def step(self, epoch: int | None = None) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr


class _Warmup:
    """Linear warm-up over the first epochs, then the wrapped schedule (xLSTM nets need it)."""

    def __init__(self, inner: Any, optimizer: torch.optim.Optimizer, lr: float, epochs: int):
        self.inner, self.optimizer, self.lr, self.epochs = inner, optimizer, lr, epochs

    def step(self, current_step: int | None = None) -> None:
        self.inner.step(current_step)
        if current_step is not None and current_step < self.epochs:
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr * (current_step + 1) / (self.epochs + 1)


def apply_limits(plans: dict, configuration: str, limits: dict[str, Any]) -> None:
    """Cap patch and batch size in-place (the `cpu` profile), keeping the patch divisible by the strides."""
    if not limits:
        return
    cfg = plans["configurations"][configuration]
    if "max_batch_size" in limits:
        cfg["batch_size"] = int(min(cfg["batch_size"], limits["max_batch_size"]))
    if "max_patch_size" in limits:
        strides = cfg["architecture"]["arch_kwargs"]["strides"]
        total = [math.prod(s[a] for s in strides) for a in range(len(cfg["patch_size"]))]
        cap = limits["max_patch_size"]
        cap = [cap] * len(total) if isinstance(cap, int) else cap
        cfg["patch_size"] = [
            max(t, min(p, (c // t) * t)) for p, c, t in zip(cfg["patch_size"], cap, total, strict=True)
        ]


def trainer_name(network: str, profile: str = "default", seed: int | None = None) -> str:
    """The trainer class name, and so nnU-Net's results folder `<name>__<plans>__<configuration>`.

    The registry's trainer name, then the profile and an explicit seed, so runs that differ in either never
    share a folder (a seed-1 run must not resume from seed 0's checkpoint). The one place this name is made.
    """
    name = get_network(network).trainer
    if profile != "default":
        name += f"_{profile}"
    if seed is not None:
        name += f"_seed{seed}"
    return name


def make_trainer(network: str, profile: str = "default", preset: dict[str, Any] | None = None,
                 seed: int | None = None) -> type[MedmambaTrainer]:
    """The trainer class of (network, profile, seed); pass `preset` to rebuild a trained model exactly.

    Every trainer class is made here from the registry: there are no per-network trainer modules, so no
    class can be used directly and silently train another network.
    """
    preset = preset if preset is not None else load_preset(network, profile)
    return type(trainer_name(network, profile, seed), (MedmambaTrainer,), {
        "network_name": network,
        "preset": preset,
        "seed": seed,
        "__module__": __name__,
    })


def write_sidecar(model_dir: Path, trainer: MedmambaTrainer) -> None:
    """medmamba.json next to nnU-Net's plans.json: everything needed to rebuild the network."""
    info = {
        "network": trainer.network_name,
        "profile": trainer.preset["profile"],
        "preset": trainer.preset,
        "trainer_name": type(trainer).__name__,
        "seed": trainer.seed,
        "configuration": trainer.configuration_name,
        "medmamba_version": medmamba.__version__,
    }
    atomic_write(model_dir / SIDECAR, json.dumps(info, indent=2))

