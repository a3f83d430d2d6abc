"""The network of a BioImage.IO package: the pipeline's sliding-window inference as a module.

ReproSeg never runs its network on a whole volume: ``reproseg predict`` (and validation,
and evaluation) cut the volume into windows of the training patch size, 25 % overlap,
and blend the windows' logits with a Gaussian weight (``monai.inferers
.sliding_window_inference``, settings in :mod:`reproseg.predict`). With instance
normalisation inside the network, a full-volume forward pass gives a different
segmentation (4 % of voxels on a synthetic case, 16 % on a real CT). So the package's
model *is* the sliding-window inference: whatever runs the package (bioimageio.core,
deepImageJ, ilastik) gets the pipeline's logits without having to know about tiling.

This file is copied verbatim into the package (``architecture.source`` of the
``pytorch_state_dict`` weights), so it imports only torch and MONAI, never ``reproseg``,
and avoids ``from __future__ import annotations`` (TorchScript reads the annotations).

* Eager (``pytorch_state_dict``): :meth:`forward` calls MONAI's own
  ``sliding_window_inference`` with the pipeline's settings.
* TorchScript: MONAI's function cannot be scripted, so :meth:`_tiled` re-implements the
  same algorithm (padding, window starts, batching, Gaussian importance map from MONAI's
  ``compute_importance_map``, accumulation order, normalisation, crop) in scriptable code.
  The export checks it against the eager path before anything is written, and
  ``bioimageio test`` compares both weight formats with the pipeline's test output.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F


class SlidingWindowSegmenter(torch.nn.Module):
    """Logits of a whole volume, computed window by window like ``reproseg predict``.

    Args:
        net_callable: class name in ``monai.networks.nets`` (``UNet``, ``SegResNet``).
        net_kwargs: its constructor arguments (the pipeline's architecture).
        roi_size: window size per spatial axis, in the input's axis order (the training patch).
        overlap: fraction of a window shared with its neighbour (pipeline: 0.25).
        mode: window blending, ``gaussian`` or ``constant`` (pipeline: gaussian).
        sigma_scale: Gaussian sigma as a fraction of the window side (MONAI default 0.125).
        sw_batch_size: windows per network call (the pipeline's ``sw_batch_size``).
        blend_dtype: ``float16``, ``float32`` or ``auto``: the dtype in which the volume is
            handed to the sliding window and the windows' logits are blended (each window
            runs through the network in float32). ``reproseg predict`` blends a large
            volume in float16 to halve its largest buffer and a small one in float32
            (``auto``: float32 when ``n_classes`` float32 values per voxel fit
            ``float32_max_bytes``); the package makes the same choice so that it
            reproduces those numbers, not merely close ones.
        n_classes: output channels, for ``auto``.
        float32_max_bytes: the pipeline's ``FLOAT32_BLEND_MAX_BYTES``, for ``auto``.
        transpose_spatial: the input's spatial axes are the reverse of the network's
            (BioImage.IO ``z, y, x`` data, a network trained on NIfTI ``x, y, z``): the
            volume is transposed before the windows and the logits transposed back, so the
            pipeline's own network, window grid and blending order run unchanged.
            ``roi_size`` is then in the network's axis order.
    """

    roi_size: list[int]
    overlap: float
    mode: str
    sigma_scale: float
    sw_batch_size: int
    blend: str
    n_classes: int
    float32_max_bytes: int
    transpose_spatial: bool

    def __init__(
        self,
        net_callable: str,
        net_kwargs: dict[str, Any],
        roi_size: list[int],
        overlap: float = 0.25,
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
        sw_batch_size: int = 2,
        blend_dtype: str = "float32",
        transpose_spatial: bool = False,
        n_classes: int = 0,
        float32_max_bytes: int = 0,
    ) -> None:
        super().__init__()
        from monai.data.utils import compute_importance_map
        from monai.networks import nets

        if len(roi_size) != 3 or min(int(r) for r in roi_size) < 1:
            raise ValueError(f"roi_size must be 3 positive sizes, got {roi_size}")
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.net = getattr(nets, net_callable)(**net_kwargs)
        self.roi_size = [int(r) for r in roi_size]
        self.overlap = float(overlap)
        self.mode = str(mode)
        self.sigma_scale = float(sigma_scale)
        self.sw_batch_size = max(1, int(sw_batch_size))
        if blend_dtype not in ("float16", "float32", "auto"):
            raise ValueError(f"blend_dtype must be float16, float32 or auto, got {blend_dtype!r}")
        if blend_dtype == "auto" and (int(n_classes) < 1 or int(float32_max_bytes) < 1):
            raise ValueError("blend_dtype auto needs n_classes and float32_max_bytes")
        self.blend = str(blend_dtype)
        self.n_classes = int(n_classes)
        self.float32_max_bytes = int(float32_max_bytes)
        self.transpose_spatial = bool(transpose_spatial)
        # After padding every window has the full roi size, so one map serves all windows;
        # not persistent: the state dict holds the network's weights only.
        importance = compute_importance_map(
            tuple(self.roi_size), mode=self.mode, sigma_scale=self.sigma_scale, dtype=torch.float32
        )
        self.register_buffer("importance", importance[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, *spatial)`` (float32) of a preprocessed ``(B, 1, *spatial)`` tensor."""
        x = x.to(self._blend_dtype(x))
        if self.transpose_spatial:
            # contiguous: the windows must have the memory layout of the pipeline's, or the
            # convolutions take another code path and round differently
            x = x.permute(0, 1, 4, 3, 2).contiguous()
        if torch.jit.is_scripting():
            out = self._tiled(x)
        else:
            out = self._monai(x)
        if self.transpose_spatial:
            out = out.permute(0, 1, 4, 3, 2)
        return out.to(torch.float32).contiguous()

    def _blend_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The pipeline's choice (``reproseg.predict.member_probabilities``) for this volume."""
        if self.blend == "float16":
            return torch.float16
        if self.blend == "float32":
            return torch.float32
        voxels = x.shape[2] * x.shape[3] * x.shape[4]
        small = self.n_classes * voxels * 4 <= self.float32_max_bytes
        return torch.float32 if small else torch.float16

    def _window(self, window: torch.Tensor) -> torch.Tensor:
        """One batch of windows through the network in float32, back in the blend dtype."""
        return self.net(window.to(torch.float32)).to(window.dtype)

    @torch.jit.unused
    def _monai(self, x: torch.Tensor) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        out = sliding_window_inference(
            x,
            roi_size=list(self.roi_size),
            sw_batch_size=self.sw_batch_size,
            predictor=self._window,
            overlap=self.overlap,
            mode=self.mode,
            sigma_scale=self.sigma_scale,
        )
        return torch.as_tensor(out)

    def _starts(self, size: int, roi: int) -> list[int]:
        """Window starts along one axis: MONAI's ``_get_scan_interval`` + ``dense_patch_slices``."""
        if roi == size:
            interval = roi
        else:
            interval = int(roi * (1.0 - self.overlap))
            if interval <= 0:
                interval = 1
        num = math.ceil(float(size) / float(interval))
        scan = 1
        for d in range(num):
            if d * interval + roi >= size:
                scan = d + 1
                break
        starts: list[int] = []
        for idx in range(scan):
            s = idx * interval
            s -= max(s + roi - size, 0)
            starts.append(s)
        return starts

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Scriptable copy of ``monai.inferers.sliding_window_inference`` for these settings."""
        batch = x.shape[0]
        orig: list[int] = [x.shape[2], x.shape[3], x.shape[4]]
        pad: list[int] = []
        for k in range(4, 1, -1):  # last spatial axis first, as F.pad wants
            diff = max(self.roi_size[k - 2] - x.shape[k], 0)
            half = diff // 2
            pad.append(half)
            pad.append(diff - half)
        padded = sum(pad) > 0
        if padded:
            x = F.pad(x, pad, mode="constant", value=0.0)
        size: list[int] = [x.shape[2], x.shape[3], x.shape[4]]
        r0, r1, r2 = self.roi_size[0], self.roi_size[1], self.roi_size[2]
        windows: list[list[int]] = []
        for a in self._starts(size[0], r0):
            for b in self._starts(size[1], r1):
                for c in self._starts(size[2], r2):
                    windows.append([a, b, c])
        n_win = len(windows)
        total = n_win * batch
        w = self.importance.to(dtype=x.dtype, device=x.device)
        out = torch.zeros(0)
        count = torch.zeros(0)
        started = False
        for g in range(0, total, self.sw_batch_size):
            idxs = list(range(g, min(g + self.sw_batch_size, total)))
            parts: list[torch.Tensor] = []
            for idx in idxs:
                s = windows[idx % n_win]
                b = idx // n_win
                parts.append(x[b : b + 1, :, s[0] : s[0] + r0, s[1] : s[1] + r1, s[2] : s[2] + r2])
            pred = self._window(torch.cat(parts) if len(parts) > 1 else parts[0]) * w
            if not started:
                out = torch.zeros(
                    [batch, pred.shape[1], size[0], size[1], size[2]],
                    dtype=x.dtype,
                    device=x.device,
                )
                count = torch.zeros(
                    [1, 1, size[0], size[1], size[2]], dtype=x.dtype, device=x.device
                )
                for s in windows:
                    count[:, :, s[0] : s[0] + r0, s[1] : s[1] + r1, s[2] : s[2] + r2] += w
                started = True
            for j in range(len(idxs)):
                s = windows[idxs[j] % n_win]
                b = idxs[j] // n_win
                out[b : b + 1, :, s[0] : s[0] + r0, s[1] : s[1] + r1, s[2] : s[2] + r2] += pred[
                    j : j + 1
                ]
        out = out / count
        if padded:
            # pad[0:2] belongs to the last axis (F.pad order)
            out = out[
                :,
                :,
                pad[4] : pad[4] + orig[0],
                pad[2] : pad[2] + orig[1],
                pad[0] : pad[0] + orig[2],
            ]
        return out
