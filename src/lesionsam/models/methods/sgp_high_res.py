"""SGP-SAM's high-resolution option (``model.options.high_res``): the SGPMs see the full-resolution path's stem.

SGPM's gate and fusion block work on the G³ token grid (24 mm tokens at SAM-Med3D's 1.5 mm and 128³), so a lesion
under 1 cm³ is a fraction of one token and "activate the multi-scale fusion only when needed" has little to decide
about. With ``high_res``, every SGPM adds to what its gate and its fusion block see (not to the tokens it passes on)
a linear map of a per-token summary of the stem's features of the crop (``model.full_res_channels``,
:mod:`lesionsam.models.backbone.full_res`): for each stem level, the mean and the maximum over each token's voxels,
concatenated. The fusion block's output is still zero-initialised, so a fresh model keeps its backbone's outputs (the
gate's input changes from the start: its decisions are the only thing the summary moves at init).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def high_res_width(stem_widths: Sequence[int]) -> int:
    """Channels of the per-token summary of stem features of these widths (mean and max of each)."""
    return 2 * sum(stem_widths)


def high_res_summary(features: Sequence[Tensor], grid: int) -> Tensor:
    """Per-token summary of the stem's features.

    Args:
        features: the stem's features, finest first: (B, w_k, S/2^k, S/2^k, S/2^k).
        grid: G, the token grid side.

    Returns:
        (B, G, G, G, 2·Σ w_k) float channels-last summary (per level: the mean, then the maximum over each token).
    """
    parts = []
    for f in features:
        kernel = f.shape[-1] // grid
        if kernel * grid != f.shape[-1]:
            raise ValueError(f"stem features of side {f.shape[-1]} do not tile a {grid}³ token grid")
        parts += [F.avg_pool3d(f, kernel), F.max_pool3d(f, kernel)]
    return torch.cat(parts, dim=1).permute(0, 2, 3, 4, 1)
