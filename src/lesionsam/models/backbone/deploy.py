"""SAM-Med3D's two parts as graphs of fixed shapes, for export (``lesionsam export``) and other runtimes.

* :class:`EncoderGraph`: the image encoder on one static crop, (1, C, S, S, S) → (1, E, G, G, G).
* :class:`DecoderGraph`: prompt encoder + mask decoder + the trilinear upsampling on a fixed maximum of ``P`` clicks
  (unused ones carry label -1) and the previous low-res logits, with a flag saying whether they are given.

Padding changes nothing: padded clicks are ignored as keys by the decoder's transformer (the official decoder has
no such mask, so extra label -1 tokens there would shift every output a little), and the one padding token the
official prompt encoder appends is kept as a real token. The outputs equal :meth:`Sam3D.decode` on the real clicks
alone, to float round-off. Everything that varies is a tensor input, so the graphs hold no size-dependent Python.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lesionsam.models.backbone.sam3d import Sam3D
from lesionsam.models.interface import SegModel

#: Input and output names of the exported graphs (the runtime feeds and reads them by name).
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("embedding",)
DECODER_INPUTS = ("embedding", "points", "labels", "mask_input", "has_mask")
DECODER_OUTPUTS = ("low_res_logits", "logits", "iou")


def check_exportable(model: SegModel) -> Sam3D:
    """``model`` as a :class:`Sam3D` whose parts can be exported, else ``ValueError`` with the method's reason."""
    if model.export_blocker is not None or not isinstance(model, Sam3D):
        reason = model.export_blocker or "it is not a SAM-Med3D model"
        raise ValueError(f"{model.display_name} cannot be exported: {reason}")
    return model


class EncoderGraph(nn.Module):
    """The image encoder of one crop: image (1, C, S, S, S) float32 → embedding (1, E, G, G, G)."""

    def __init__(self, model: SegModel) -> None:
        super().__init__()
        self.model = check_exportable(model)

    def forward(self, image: Tensor) -> Tensor:
        return self.model.encode(image)


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder + upsampling, on a fixed number of clicks (single-mask output).

    Inputs (batch 1): ``embedding`` (1, E, G, G, G) float32; ``points`` (1, P, 3) float32 crop voxel indices (D, H, W);
    ``labels`` (1, P) int64, 1 positive, 0 negative, -1 unused (ignored); ``mask_input`` (1, 1, L, L, L) float32
    previous low-res logits (any values when ``has_mask`` is False); ``has_mask`` (1,) bool.

    Outputs: ``low_res_logits`` (1, 1, L, L, L), ``logits`` (1, 1, S, S, S) and ``iou`` (1, 1), float32.
    """

    def __init__(self, model: SegModel) -> None:
        super().__init__()
        self.model = check_exportable(model)

    def forward(
        self, embedding: Tensor, points: Tensor, labels: Tensor, mask_input: Tensor, has_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        model = self.model
        pe = model.prompt_encoder
        sparse = pe._embed_points(points, labels, pad=True)  # (1, P + 1, E): the official padding token last
        real = torch.cat([labels != -1, labels.new_ones(labels.shape[0], 1, dtype=torch.bool)], dim=1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(1, -1, *pe.image_embedding_size)
        dense = torch.where(has_mask.reshape(-1, 1, 1, 1, 1), pe.mask_downscaling(mask_input), no_mask)
        masks, iou = model.mask_decoder.predict_masks(embedding, pe.get_dense_pe(), sparse, dense, real)
        low = masks[:, :1]
        return low, model.upsample(low), iou[:, :1]


def decoder_example(model: SegModel, max_points: int) -> tuple[Tensor, ...]:
    """Example inputs of :class:`DecoderGraph` (for tracing): one positive click, the rest padding, a mask given."""
    sam = check_exportable(model)
    cfg = sam.config
    g, low = cfg.grid_size, cfg.low_res_size
    points = torch.zeros(1, max_points, 3)
    points[0, 0] = cfg.img_size // 2
    labels = torch.full((1, max_points), -1, dtype=torch.int64)
    labels[0, 0] = 1
    return (
        torch.zeros(1, cfg.prompt_embed_dim, g, g, g),
        points,
        labels,
        torch.zeros(1, 1, low, low, low),
        torch.ones(1, dtype=torch.bool),
    )
