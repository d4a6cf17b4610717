"""Augmentation of preprocessed batches, on the training device (torch).

Runs after :func:`kidedge.preprocess.preprocess_slices` (so the model's preprocessing stays
the one shared implementation). Geometric: random rotation about the slice axis,
scaling and flips, one affine grid per sample (bilinear for the image, nearest for the
labels, so labels stay labels). Intensity: contrast and brightness jitter, gamma (range
normalisation only), Gaussian blur and Gaussian noise. The intensity jitter is what lets
a model trained on synthetic phantoms tolerate the scanner-to-scanner differences of real
CT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class BatchAugmenter:
    """Random augmentation of ``(x, y)`` batches.

    Args:
        cfg: the recipe's ``augment`` section (rotate_deg, flip_lr, flip_ud, flip_z, scale,
            noise_std, intensity_scale, intensity_shift, gamma, blur_sigma, probability).
        pad_value: network-input value outside the image (bottom of the HU window).
        range_normalised: the input is in [0, 1] (gamma is applied only then).
        generator: a seeded ``torch.Generator`` on the CPU (determinism).
    """

    def __init__(self, cfg: dict, pad_value: float, range_normalised: bool, generator: torch.Generator):
        self.cfg, self.pad, self.range_normalised, self.g = cfg, float(pad_value), range_normalised, generator

    def _u(self, n, lo, hi):
        return torch.rand(n, generator=self.g) * (hi - lo) + lo

    def _coin(self, n, p):
        return torch.rand(n, generator=self.g) < p

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        cfg = self.cfg
        spatial = x.dim() - 2
        p = float(cfg.get("probability", 1.0))
        rot = float(cfg.get("rotate_deg") or 0.0)
        scale = cfg.get("scale")
        flips = [cfg.get("flip_lr"), cfg.get("flip_ud")] + ([cfg.get("flip_z")] if spatial == 3 else [])
        if rot > 0 or scale or any(flips):
            x, y = self._geometric(x, y, rot, scale, flips, p)
        return self._intensity(x, p), y

    def _geometric(self, x, y, rot, scale, flips, p):
        n = x.shape[0]
        spatial = x.dim() - 2
        on = self._coin(n, p).float()
        angle = self._u(n, -rot, rot) * math.pi / 180.0 * on
        s = self._u(n, *scale) if scale else torch.ones(n)
        s = torch.where(on > 0, s, torch.ones(n))
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        # flip signs per axis (x = cols, y = rows, z = slices in grid_sample's order)
        f = [torch.where(self._coin(n, 0.5) & bool(fl), -1.0, 1.0) if fl else torch.ones(n) for fl in flips]
        if spatial == 2:
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0], theta[:, 0, 1] = cos * f[0], -sin * f[0]
            theta[:, 1, 0], theta[:, 1, 1] = sin * f[1], cos * f[1]
        else:  # rotate in-plane only: slices are thick and anisotropic
            theta = torch.zeros(n, 3, 4)
            theta[:, 0, 0], theta[:, 0, 1] = cos * f[0], -sin * f[0]
            theta[:, 1, 0], theta[:, 1, 1] = sin * f[1], cos * f[1]
            theta[:, 2, 2] = f[2]
        theta = theta.to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # pad with the window's bottom value: shift so that zero padding means pad_value
        xa = F.grid_sample(x - self.pad, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + self.pad
        ya = F.grid_sample(y[:, None].to(x.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return xa, ya[:, 0].round().long()

    def _intensity(self, x, p):
        cfg = self.cfg
        n = x.shape[0]
        shape = (n,) + (1,) * (x.dim() - 1)
        gamma = cfg.get("gamma")
        if gamma and self.range_normalised:
            g = torch.where(self._coin(n, p), self._u(n, *gamma), torch.ones(n)).to(x).view(shape)
            x = x.clamp(0, 1) ** g
        blur = cfg.get("blur_sigma")
        if blur and blur[1] > 0:
            x = self._blur(x, self._u(n, *blur) * self._coin(n, p * 0.5).float())
        a = float(cfg.get("intensity_scale") or 0.0)
        b = float(cfg.get("intensity_shift") or 0.0)
        if a or b:
            on = self._coin(n, p).float()
            scale = (1 + self._u(n, -a, a) * on).to(x).view(shape)
            shift = (self._u(n, -b, b) * on).to(x).view(shape)
            x = x * scale + shift
        sd = float(cfg.get("noise_std") or 0.0)
        if sd > 0:
            amp = (self._u(n, 0, sd) * self._coin(n, p).float()).to(x).view(shape)
            noise = torch.randn(x.shape, generator=self.g).to(x)
            x = x + noise * amp
        return x

    def _blur(self, x, sigma):
        """In-plane Gaussian blur with a per-sample sigma (pixels); sigma 0 = identity."""
        out = x.clone()
        for i in torch.nonzero(sigma > 0.05).flatten().tolist():
            s = float(sigma[i])
            r = max(1, int(math.ceil(2.5 * s)))
            t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
            k = torch.exp(-0.5 * (t / s) ** 2)
            k = k / k.sum()
            xi = x[i : i + 1]
            c = xi.shape[1]
            if x.dim() == 4:
                xi = F.conv2d(F.pad(xi, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
                xi = F.conv2d(F.pad(xi, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
            else:
                xi = F.conv3d(F.pad(xi, (r, r, 0, 0, 0, 0), mode="replicate"), k.view(1, 1, 1, 1, -1).repeat(c, 1, 1, 1, 1), groups=c)
                xi = F.conv3d(F.pad(xi, (0, 0, r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1, 1).repeat(c, 1, 1, 1, 1), groups=c)
            out[i : i + 1] = xi
        return out
