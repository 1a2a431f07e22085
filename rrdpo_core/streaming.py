"""Weights read from their safetensors file for each block's forward (the ``"stream"`` offload level).

BrushNet (3.54 GB in fp32) and the motion UNet (5.25 GB) are almost all in their ``down_blocks``,
``mid_block`` and ``up_blocks``. A :class:`WeightStream` keeps everything else of a network
resident (stem, time embedding, zero convs, output head, buffers, LoRA adapters) and holds the
weights of each layer of those blocks (a ResNet, an attention, a motion module, a resampler) only
while that layer runs: a forward pre-hook reads its tensors from the network's ``.safetensors``
file, a forward hook drops them again. The result is bit for bit the
resident one (the same values, the same kernels); the cost is reading the file once per network
call, which the OS page cache usually serves from memory.

The file is read with plain ``readinto``, never memory-mapped: pages of a live mapping count in
the process's resident set for as long as the mapping exists. Without autograd the reads go into
one scratch buffer the stream keeps (``reuse_buffer``, default on; the same values), not into
fresh memory for every layer of every step.

``fuse_adapters`` (off by default; ``rrdpo_core.offload.low_memory(..., fast=True)`` turns it on)
folds the LoRA adapters of each layer into the weights just read, where that costs fewer
operations than running them beside the layer, and runs the layer as merged for that forward.
The network is the same up to float rounding (not bit for bit: the release runs PCM unfused);
only the buffers this stream read are changed, never the file or a resident weight.

Between calls a streamed parameter holds a *placeholder*: one NaN expanded to the parameter's
shape (no memory). Shapes stay right for whatever inspects them (PEFT wrapping the layer in a
LoRA adapter, memory estimates), and a use outside the block's forward shows up as NaNs instead
of a silently wrong number.

Only weights that still equal the file can be streamed: :func:`record_source` (called by the
loader) notes each parameter's storage and version counter, and :meth:`WeightStream.attach`
refuses a network whose weights were replaced or changed in place since (a fused LoRA, training).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .tensorfile import FILE_DTYPES, read_layout, read_tensor

__all__ = ["STREAMED_CHILDREN", "WeightSource", "WeightStream", "record_source", "weight_source", "streamed_keys",
           "is_streaming", "stream_of", "can_stream", "placeholder", "is_placeholder"]

# Top-level children of BrushNet / the motion UNet whose weights are streamed, one group per block.
STREAMED_CHILDREN = ("down_blocks", "mid_block", "up_blocks")
_SOURCE_ATTR = "_rrdpo_weight_source"
# How many holders a tensor storage has (torch's own count; private, so looked up with a fallback).
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)
_STREAM_ATTR = "_rrdpo_weight_stream"


@dataclass
class WeightSource:
    """Where a loaded network's weights came from, and how they looked right after loading."""

    file: Path
    dtype: torch.dtype
    # parameter name (as loaded) -> (data_ptr, version counter) right after loading
    stamps: dict[str, tuple[int, int]] = field(default_factory=dict)


def placeholder(shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of ``shape`` that costs one element: NaN everywhere (see the module docstring)."""
    return torch.full((), float("nan"), dtype=dtype, device=device).expand(shape)


def is_placeholder(t: torch.Tensor) -> bool:
    """Whether ``t`` is a :func:`placeholder` (a dropped streamed weight), not real weights."""
    return t.numel() > 1 and all(s == 0 for s in t.stride())


def streamed_groups(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(prefix, module)`` for every group whose weights are streamed, in definition order.

    A group is one layer of a block (``down_blocks.1.resnets.0``, ``...attentions.0``,
    ``...motion_modules.0``, ``...downsamplers.0``): the pipeline's block runners call those
    layers one by one rather than the block's own ``forward``, so hooks on the layers fire either way.
    """
    blocks = []
    for name in STREAMED_CHILDREN:
        child = getattr(net, name, None)
        if child is None:
            continue
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            blocks.extend((f"{name}.{i}", block) for i, block in enumerate(child))
        else:
            blocks.append((name, child))
    groups = []
    for prefix, block in blocks:
        if any(True for _ in block.parameters(recurse=False)):
            raise ValueError(f"{prefix} holds weights of its own; it cannot be streamed layer by layer")
        for name, layer in block.named_children():
            if isinstance(layer, (nn.ModuleList, nn.Sequential)):
                groups.extend((f"{prefix}.{name}.{i}", sub) for i, sub in enumerate(layer))
            else:
                groups.append((f"{prefix}.{name}", layer))
    return groups


def streamed_keys(net: nn.Module) -> set[str]:
    """The state-dict keys of ``net`` (as freshly built, no adapters) whose weights are streamed."""
    return {f"{prefix}.{name}" for prefix, block in streamed_groups(net) for name, _ in block.named_parameters()}


def record_source(net: nn.Module, file: Path, dtype: torch.dtype) -> None:
    """Note that ``net``'s weights are those of ``file`` converted to ``dtype`` (called by the loader)."""
    stamps = {name: (p.data_ptr(), p._version) for name, p in net.named_parameters()}
    setattr(net, _SOURCE_ATTR, WeightSource(Path(file), dtype, stamps))


def weight_source(net: nn.Module) -> WeightSource | None:
    return getattr(net, _SOURCE_ATTR, None)


def is_streaming(net: nn.Module) -> bool:
    """Whether ``net``'s block weights are currently read from its file for each forward."""
    return getattr(net, _STREAM_ATTR, None) is not None


def stream_of(net: nn.Module) -> "WeightStream | None":
    """The :class:`WeightStream` that streams ``net``'s block weights, or None."""
    return getattr(net, _STREAM_ATTR, None)


def can_stream(net: nn.Module) -> bool:
    """Whether ``net`` streams already, or could: loaded from a file, weights unchanged since."""
    if is_streaming(net):
        return True
    return weight_source(net) is not None and not changed_since_loading(net)


def _file_key(param_name: str) -> str:
    # PEFT moves a wrapped layer's own weight to "<layer>.base_layer.weight"; the file has "<layer>.weight".
    return param_name.replace(".base_layer.", ".")


def changed_since_loading(net: nn.Module) -> list[str]:
    """The file keys of ``net``'s streamable parameters that no longer hold the weights the loader
    put there (replaced or changed in place); empty when all are unchanged. Needs no file access."""
    stamps = weight_source(net).stamps
    changed = []
    for prefix, block in streamed_groups(net):
        for name, p in block.named_parameters(prefix=prefix):
            key = _file_key(name)
            if key not in stamps or is_placeholder(p):
                continue
            if (p.data_ptr(), p._version) != stamps[key]:
                changed.append(key)
    return changed


def _fold_pays(base: nn.Module, x: torch.Tensor) -> bool:
    """Whether folding a rank-r LoRA into ``base``'s weight for one call costs fewer operations than
    running it beside the layer on ``x``: folding costs ``r * fan_in * out``, the adapter
    ``r * positions * (fan_in + out)`` (plus a scale and an add over the output), with
    ``fan_in`` the inputs per output (``in * kh * kw`` for a convolution) and ``positions`` the
    output rows or pixels. On DiffuEraser's small latents the wide deep layers see few positions
    and stay unfolded; the shallow ones, with many positions, fold."""
    if isinstance(base, nn.Linear):
        fan_in, out, positions = base.in_features, base.out_features, x.numel() // max(x.shape[-1], 1)
    elif isinstance(base, nn.Conv2d) and x.ndim == 4:
        kh, kw = base.kernel_size
        fan_in, out = base.in_channels // base.groups * kh * kw, base.out_channels
        sh, sw = base.stride
        positions = x.shape[0] * -(-x.shape[2] // sh) * -(-x.shape[3] // sw)
    else:
        return False
    return positions * (fan_in + out) > fan_in * out


@dataclass
class _Entry:
    module: nn.Module
    attr: str
    begin: int
    end: int
    file_dtype: torch.dtype
    shape: torch.Size


class WeightStream:
    """Streams the block weights of one loaded network from its safetensors file (module docstring).

    ``attach()`` installs the hooks and drops the resident block weights; ``detach()`` reads them
    back and removes the hooks. A network loaded with ``load_diffueraser(..., stream=True)`` is
    attached from the start and never holds its block weights.
    """

    def __init__(self, net: nn.Module, device: torch.device | str | None = None, *, reuse_buffer: bool = True,
                 fuse_adapters: bool = False):
        source = weight_source(net)
        if source is None:
            raise ValueError("this network was not loaded from a DiffuEraser safetensors file (load_diffueraser), so "
                             "its weights cannot be streamed from one; use offload 'blocks' instead")
        self.net = net
        self.file = source.file
        self.dtype = source.dtype
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        layout, self._data_start = read_layout(self.file)
        self.groups: list[tuple[nn.Module, list[_Entry]]] = []
        for prefix, block in streamed_groups(net):
            entries = []
            for name, module in block.named_modules(prefix=prefix):
                for attr, p in module.named_parameters(recurse=False):
                    key = _file_key(f"{name}.{attr}")
                    if key not in layout:
                        continue  # an adapter's own weights (lora_A/B...): resident
                    info = layout[key]
                    begin, end = info["data_offsets"]
                    entries.append(_Entry(module, attr, begin, end, FILE_DTYPES[info["dtype"]],
                                          torch.Size(info["shape"])))
            entries.sort(key=lambda e: e.begin)  # file order: sequential reads
            self.groups.append((block, entries))
        self._handles: list[Any] = []
        self.reuse_buffer = reuse_buffer
        self.fuse_adapters = fuse_adapters
        self._scratch: torch.Tensor | None = None  # bytes the pre-hook reads a layer into (reuse_buffer)
        self._folded: dict[int, list[Any]] = {}  # group -> its LoRA layers' folding pre-hooks (fuse_adapters)
        self._merged: list[nn.Module] = []  # LoRA layers running with their adapters folded in
        # layers whose weight this stream reads: the only weights folding may change
        self._streamed_weights = {id(e.module) for _, entries in self.groups for e in entries if e.attr == "weight"}

    # -- checks ---------------------------------------------------------------------------
    def check_unchanged(self) -> None:
        """Raise if a streamed parameter no longer holds the weights loaded from the file."""
        changed = changed_since_loading(self.net)
        if changed:
            raise ValueError(f"{len(changed)} weights of this network changed since it was loaded (e.g. {changed[0]}; "
                             "a fused LoRA or training does that), so they cannot be re-read from "
                             f"{self.file.name}; use offload 'blocks' or 'windows' instead of 'stream'")

    # -- moving weights -------------------------------------------------------------------
    def load(self, index: int, *, scratch: bool = False) -> None:
        """Read group ``index``'s weights from the file. With ``scratch`` they are read into one
        buffer kept for the next group (see :meth:`_scratch_slots`), not into fresh memory."""
        _, entries = self.groups[index]
        slots = self._scratch_slots(entries) if scratch else [None] * len(entries)
        with open(self.file, "rb", buffering=0) as fh:
            for e, slot in zip(entries, slots):
                buffer = read_tensor(fh, self._data_start, e.begin, e.end, e.shape, e.file_dtype,
                                     name=f"{self.file}: {e.attr}", out=slot)
                e.module._parameters[e.attr].data = buffer.to(device=self.device, dtype=self.dtype)

    def _scratch_slots(self, entries: list[_Entry]) -> list[torch.Tensor]:
        """Views of the scratch buffer, one per entry, for reading a group without fresh memory.

        Fresh buffers for every layer of every step add page faults and zeroing in the kernel to
        the copy out of the page cache (the full-size networks read 8.8 GB per step). The values
        are the same either way. The buffer is reused only
        while nothing but this stream holds it: a view kept past the layer's forward (a saved
        tensor, a caller's reference) makes the next group take a new buffer instead, so a kept
        weight is never overwritten.
        """
        sizes = [-(-(e.end - e.begin) // 64) * 64 for e in entries]  # 64-byte aligned slots
        need = sum(sizes)
        buf = self._scratch
        if buf is None or buf.numel() < need or _USE_COUNT is None or _USE_COUNT(buf.untyped_storage()._cdata) > 2:
            # (2 = the buffer tensor itself and the storage object asked about; a torch without the
            # count gets a new buffer every time.) A normal tensor even under inference mode
            # (ComfyUI): the buffer outlives the call that made it.
            with torch.inference_mode(False):
                buf = self._scratch = torch.empty(max(need, 0 if buf is None else buf.numel()), dtype=torch.uint8)
        slots, offset = [], 0
        for e, size in zip(entries, sizes):
            slots.append(buf[offset:offset + e.end - e.begin].view(e.file_dtype).view(e.shape))
            offset += size
        return slots

    def drop(self, index: int) -> None:
        for e in self.groups[index][1]:
            e.module._parameters[e.attr].data = placeholder(e.shape, self.dtype, self.device)

    def _fold(self, index: int) -> None:
        """Arrange for group ``index``'s LoRA layers to fold their adapters into the weights just read.

        Each adapted layer gets a pre-hook for this forward that decides from its input whether
        folding pays (:func:`_fold_pays`); if so it adds the update to the weight this stream read
        and lets the layer run as merged (the base layer alone) until :meth:`_unfold`. The file
        and resident weights are never touched: only the buffers this stream read are changed.
        """
        from peft.tuners.tuners_utils import BaseTunerLayer

        block, _ = self.groups[index]
        hooks = [layer.register_forward_pre_hook(self._fold_layer) for layer in block.modules()
                 if isinstance(layer, BaseTunerLayer)]
        self._folded[index] = hooks

    def _fold_layer(self, layer: nn.Module, args: tuple) -> None:
        from .lora import foldable_delta

        x = args[0] if args else None
        base = layer.get_base_layer()
        if id(base) not in self._streamed_weights or not torch.is_tensor(x) or not _fold_pays(base, x):
            return
        found = foldable_delta(layer)
        if found is None:
            return
        delta, names = found
        with torch.no_grad():
            base.weight.data.add_(delta.to(device=base.weight.device, dtype=base.weight.dtype))
        layer.merged_adapters = list(names)
        self._merged.append(layer)

    def _unfold(self, index: int) -> None:
        for hook in self._folded.pop(index, []):
            hook.remove()
        for layer in self._merged:
            layer.merged_adapters = []
        self._merged.clear()

    def _before(self, index: int) -> None:
        # Scratch reads and folding only without autograd: with gradients on, the weights may be
        # saved for the backward pass and the adapters must see their own inputs.
        no_grad = not torch.is_grad_enabled()
        self._unfold(index)  # left over if the layer's last forward raised
        self.load(index, scratch=self.reuse_buffer and no_grad)
        if self.fuse_adapters and no_grad:
            self._fold(index)

    def _after(self, index: int) -> None:
        self._unfold(index)
        self.drop(index)

    # -- hooks ----------------------------------------------------------------------------
    def attach(self) -> "WeightStream":
        if is_streaming(self.net):
            raise ValueError("this network already streams its weights")
        self.check_unchanged()
        for i, (block, _) in enumerate(self.groups):
            self._handles.append(block.register_forward_pre_hook(lambda m, a, i=i: self._before(i)))
            self._handles.append(block.register_forward_hook(lambda m, a, o, i=i: self._after(i)))
            self.drop(i)
        setattr(self.net, _STREAM_ATTR, self)
        return self

    def detach(self, device: torch.device | str | None = None) -> None:
        """Read every block back (resident again, on ``device`` if given) and remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if device is not None:
            self.device = torch.device(device)
        self._scratch = None
        for i in range(len(self.groups)):
            self._unfold(i)
            self.load(i)
        source = weight_source(self.net)
        source.stamps.update({_file_key(name): (p.data_ptr(), p._version) for name, p in self.net.named_parameters()
                              if _file_key(name) in source.stamps})
        if getattr(self.net, _STREAM_ATTR, None) is self:
            delattr(self.net, _STREAM_ATTR)
