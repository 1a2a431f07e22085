"""ProPainter's mask-guided sparse video transformer and its soft split / soft composition.

Feature maps are cut into overlapping 7x7 patches (stride 3) that become tokens ("soft split"),
processed by windowed attention, and folded back by summing the overlapping patches ("soft
composition"). The attention is sparse in two ways:

* query sparsity: a spatial window whose area is masked in none of the local frames only attends
  inside itself, frame by frame; only windows touching the mask attend across frames;
* key/value sparsity: across frames, each block sees every ``t_dilation``-th frame (the blocks
  alternate the phase).

Keys and values of a window are its own tokens, tokens from the four diagonally shifted
neighbouring windows (minus those already inside the window) and a 4x4-pooled global summary of
the frame. Module names follow the released checkpoint.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SoftSplit", "SoftComp", "SparseWindowAttention", "TemporalSparseTransformer",
           "TemporalSparseTransformerBlock"]


def _patch_grid(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class SoftSplit(nn.Module):
    """(B*T, C, H, W) -> overlapping patches -> tokens (B, T, h', w', hidden)."""

    def __init__(self, channel: int, hidden: int, kernel_size: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int]) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.t2t = nn.Unfold(kernel_size=kernel_size, stride=stride, padding=padding)
        self.embedding = nn.Linear(kernel_size[0] * kernel_size[1] * channel, hidden)

    def forward(self, x: torch.Tensor, b: int, output_size: tuple[int, int]) -> torch.Tensor:
        f_h = _patch_grid(output_size[0], self.kernel_size[0], self.stride[0], self.padding[0])
        f_w = _patch_grid(output_size[1], self.kernel_size[1], self.stride[1], self.padding[1])
        feat = self.embedding(self.t2t(x).permute(0, 2, 1))
        return feat.view(b, -1, f_h, f_w, feat.shape[-1])


class SoftComp(nn.Module):
    """Tokens (B, T, h', w', hidden) -> patches -> summed back into (B*T, C, H, W), then a 3x3 conv."""

    def __init__(self, channel: int, hidden: int, kernel_size: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int]) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.embedding = nn.Linear(hidden, kernel_size[0] * kernel_size[1] * channel)
        self.bias_conv = nn.Conv2d(channel, channel, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor, t: int, output_size: tuple[int, int]) -> torch.Tensor:
        b = x.shape[0]
        feat = self.embedding(x.reshape(b, -1, x.shape[-1]))
        feat = feat.view(b * t, -1, feat.shape[-1]).permute(0, 2, 1)
        feat = F.fold(feat, output_size=output_size, kernel_size=self.kernel_size, stride=self.stride,
                      padding=self.padding)
        return self.bias_conv(feat)


class FusionFeedForward(nn.Module):
    """MLP whose hidden activations are folded to the feature map, overlap-averaged and re-split.

    The fold/unfold round trip lets neighbouring (overlapping) tokens exchange information.
    """

    def __init__(self, dim: int, hidden_dim: int, t2t_params: dict) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(dim, hidden_dim))
        self.fc2 = nn.Sequential(nn.GELU(), nn.Linear(hidden_dim, dim))
        self.t2t_params = t2t_params
        self.kernel_area = t2t_params["kernel_size"][0] * t2t_params["kernel_size"][1]
        if hidden_dim % self.kernel_area:
            # The hidden activations are folded as (hidden / kernel area) channels per patch.
            raise ValueError(f"ffn hidden size {hidden_dim} must be a multiple of the patch area {self.kernel_area}")

    def forward(self, x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        p = self.t2t_params
        n_vecs = 1
        for i in range(2):
            n_vecs *= _patch_grid(output_size[i], p["kernel_size"][i], p["stride"][i], p["padding"][i])
        x = self.fc1(x)
        b, n, c = x.shape
        ones = x.new_ones(b * n // n_vecs, self.kernel_area, n_vecs)
        normalizer = F.fold(ones, output_size=output_size, **p)
        folded = F.fold(x.view(-1, n_vecs, c).permute(0, 2, 1), output_size=output_size, **p)
        x = F.unfold(folded / normalizer, **p).permute(0, 2, 1).reshape(b, n, c)
        return self.fc2(x)


def _windows(x: torch.Tensor, window: tuple[int, int], n_head: int) -> torch.Tensor:
    """(B, T, H, W, C) -> (B, nW, heads, T, wh*ww, C/heads) with windows in row-major order."""
    b, t, h, w, c = x.shape
    wh, ww = window
    x = x.view(b, t, h // wh, wh, w // ww, ww, n_head, c // n_head)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, (h // wh) * (w // ww), n_head, t, wh * ww, c // n_head)


def _rolled_key_indices(window: tuple[int, int], expand: tuple[int, int]) -> torch.Tensor:
    """Which tokens of the four diagonally rolled windows are outside the window itself.

    Rolled by (-e_h, -e_w) (top-left), (-e_h, +e_w), (+e_h, -e_w), (+e_h, +e_w); for each roll the
    part that overlaps the unrolled window is dropped. Returns flat indices into the 4*wh*ww tokens.
    """
    wh, ww = window
    eh, ew = expand
    # Rows / columns of each rolled window that overlap the window itself (dropped).
    overlap = (
        (range(wh - eh), range(ww - ew)),
        (range(wh - eh), range(ew, ww)),
        (range(eh, wh), range(ww - ew)),
        (range(eh, wh), range(ew, ww)),
    )
    keep = [r * wh * ww + y * ww + x
            for r, (rows, cols) in enumerate(overlap)
            for y in range(wh) for x in range(ww)
            if not (y in rows and x in cols)]
    return torch.tensor(keep, dtype=torch.long)


class SparseWindowAttention(nn.Module):
    def __init__(self, dim: int, n_head: int, window_size: tuple[int, int],
                 pool_size: tuple[int, int] = (4, 4)) -> None:
        super().__init__()
        if dim % n_head:
            raise ValueError(f"dim {dim} is not divisible by n_head {n_head}")
        self.key = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.n_head = n_head
        self.window_size = tuple(window_size)
        self.pool_layer = nn.Conv2d(dim, dim, kernel_size=pool_size, stride=pool_size, padding=(0, 0), groups=dim)
        nn.init.constant_(self.pool_layer.weight, 1.0 / (pool_size[0] * pool_size[1]))  # starts as average pooling
        nn.init.zeros_(self.pool_layer.bias)
        self.expand_size = tuple((s + 1) // 2 for s in window_size)
        # Part of the checkpoint (a persistent buffer in the original), so it stays persistent here.
        self.register_buffer("valid_ind_rolled", _rolled_key_indices(self.window_size, self.expand_size))
        self.max_pool = nn.MaxPool2d(window_size, window_size, (0, 0))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, t_index: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, H, W, C) tokens; mask (B, L, H, W, 1) pooled hole mask of the L local frames."""
        b, t, h, w, c = x.shape
        wh, ww = self.window_size
        c_head = c // self.n_head
        n_wh, n_ww = math.ceil(h / wh), math.ceil(w / ww)
        new_h, new_w = n_wh * wh, n_ww * ww
        n_win = n_wh * n_ww
        pad_b, pad_r = new_h - h, new_w - w
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            mask = F.pad(mask, (0, 0, 0, pad_r, 0, pad_b))

        q, k, v = self.query(x), self.key(x), self.value(x)
        win_q = _windows(q, self.window_size, self.n_head)
        win_k = _windows(k, self.window_size, self.n_head)
        win_v = _windows(v, self.window_size, self.n_head)

        eh, ew = self.expand_size
        shifts = ((-eh, -ew), (-eh, ew), (eh, -ew), (eh, ew))
        rolled_k = torch.cat([_windows(torch.roll(k, s, (2, 3)), self.window_size, self.n_head) for s in shifts], 4)
        rolled_v = torch.cat([_windows(torch.roll(v, s, (2, 3)), self.window_size, self.n_head) for s in shifts], 4)
        win_k = torch.cat((win_k, rolled_k[:, :, :, :, self.valid_ind_rolled]), dim=4)
        win_v = torch.cat((win_v, rolled_v[:, :, :, :, self.valid_ind_rolled]), dim=4)

        pooled = self.pool_layer(x.reshape(b * t, new_h, new_w, c).permute(0, 3, 1, 2))
        p_h, p_w = pooled.shape[-2:]
        pooled = pooled.permute(0, 2, 3, 1).reshape(b, t, p_h, p_w, c)

        def global_tokens(proj: nn.Linear) -> torch.Tensor:
            g = proj(pooled).view(b, t, p_h * p_w, self.n_head, c_head).permute(0, 3, 1, 2, 4)
            return g.unsqueeze(1).expand(b, n_win, self.n_head, t, p_h * p_w, c_head)

        win_k = torch.cat((win_k, global_tokens(self.key)), dim=4)
        win_v = torch.cat((win_v, global_tokens(self.value)), dim=4)

        # A window is "masked" if any local frame has a hole pixel in it.
        local = mask.shape[1]
        masked = self.max_pool(mask.reshape(b * local, new_h, new_w)).view(b, local, n_win).sum(1)

        out = torch.zeros_like(win_q)
        own = wh * ww
        for i in range(b):
            hit = masked[i].nonzero(as_tuple=False).view(-1)
            if hit.numel():
                qm = win_q[i, hit].reshape(hit.numel(), self.n_head, t * own, c_head)
                km, vm = win_k[i, hit], win_v[i, hit]
                if t_index is not None:
                    km, vm = km[:, :, t_index], vm[:, :, t_index]
                km = km.reshape(hit.numel(), self.n_head, -1, c_head)
                vm = vm.reshape(hit.numel(), self.n_head, -1, c_head)
                out[i, hit] = F.scaled_dot_product_attention(qm, km, vm).view(-1, self.n_head, t, own, c_head)
            miss = (masked[i] == 0).nonzero(as_tuple=False).view(-1)
            if miss.numel():
                # Unmasked windows: self-attention inside the window, frame by frame.
                out[i, miss] = F.scaled_dot_product_attention(
                    win_q[i, miss], win_k[i, miss, :, :, :own], win_v[i, miss, :, :, :own])

        out = out.view(b, n_wh, n_ww, self.n_head, t, wh, ww, c_head)
        out = out.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, t, new_h, new_w, c)
        if pad_b or pad_r:
            out = out[:, :, :h, :w]
        return self.proj(out)


class TemporalSparseTransformer(nn.Module):
    def __init__(self, dim: int, n_head: int, window_size: tuple[int, int], pool_size: tuple[int, int],
                 t2t_params: dict, ffn_hidden: int = 1960) -> None:
        super().__init__()
        self.attention = SparseWindowAttention(dim, n_head, window_size, pool_size)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FusionFeedForward(dim, ffn_hidden, t2t_params)

    def forward(self, x: torch.Tensor, fold_size: tuple[int, int], mask: torch.Tensor,
                t_index: torch.Tensor | None = None) -> torch.Tensor:
        b, t, h, w, c = x.shape
        x = x + self.attention(self.norm1(x), mask, t_index)
        return x + self.mlp(self.norm2(x).view(b, t * h * w, c), fold_size).view(b, t, h, w, c)


class TemporalSparseTransformerBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, window_size: tuple[int, int], pool_size: tuple[int, int],
                 depths: int, t2t_params: dict, ffn_hidden: int = 1960) -> None:
        super().__init__()
        self.transformer = nn.Sequential(*[
            TemporalSparseTransformer(dim, n_head, window_size, pool_size, t2t_params, ffn_hidden)
            for _ in range(depths)])
        self.depths = depths

    def forward(self, x: torch.Tensor, fold_size: tuple[int, int], local_mask: torch.Tensor,
                t_dilation: int = 2) -> torch.Tensor:
        if self.depths % t_dilation:
            raise ValueError(f"t_dilation {t_dilation} must divide the depth {self.depths}")
        t = x.shape[1]
        for i, block in enumerate(self.transformer):
            # Block i sees frames i mod d, i mod d + d, ... (d = t_dilation) across the clip.
            t_index = torch.arange(i % t_dilation, t, t_dilation, device=x.device)
            x = block(x, fold_size, local_mask, t_index)
        return x
