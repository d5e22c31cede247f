"""The five HAM training losses, as the HAM reference code's train() computes them.

Inputs are one batch's network outputs (hamedge.model.network.HAMOutput, refined class maps
included) and the batch from training.data.HAMDataset: labels (B, K), masks (B, K, S, S) box masks,
box_flag (B, 1) = the image's boxes may supervise, box_tags (B, K) = classes with a box on it.

- ano:   BCE(sigmoid(anomaly logit), any finding), any finding = max over the class labels.
- cls:   BCE over the K class outputs (mean over B*K).
- ex_cls: for each class, over the images whose box supervises it (box_tags * box_flag):
         sum of squared error between refined map and box mask / (sum of map + sum of mask),
         summed over those images before dividing; then averaged over the classes that had any.
- bound: class attention inside abnormality attention, on the RAW CAMs of positive classes:
         (sum c - sum(min(c, a) * sigmoid(gain * (c - 0.75)))) / sum c, averaged over the positive
         images of each class, then over the classes with a positive image.
- union: abnormality attention covered by the union of the positive class maps u = max_k c_k:
         (sum a - sum(min(u, a) * sigmoid(gain * (a - 0.75)))) / sum a over abnormal images.
Raw CAMs of negative classes (and the anomaly CAM of normal images) are zeroed first, as in the
reference. The reference's val() uses a different union formula; this is train()'s, the one that
trains the model. BCE uses the logits form (same value, no log(0) clamping needed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

# The reference's constants (utils/config.py): cam_w and cam_loss_sigma.
SOFT_MASK_GAIN = 100.0
SOFT_MASK_CENTER = 0.75


@dataclass(frozen=True)
class LossWeights:
    """Weights of the five losses; defaults are the reference's (loss_ano, loss_cls, ...)."""

    ano: float = 0.01
    cls: float = 1.0
    ex_cls: float = 0.5
    bound: float = 0.001
    union: float = 0.001

    @classmethod
    def parse(cls, text: str) -> "LossWeights":
        """'ano=0.01,cls=1,ex_cls=0.5' -> LossWeights (unnamed terms keep their defaults)."""
        from hamedge.errors import HamedgeError

        values = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in cls.__dataclass_fields__:
                raise HamedgeError(f"bad loss weight {part!r}: use name=value with names "
                                   f"{', '.join(cls.__dataclass_fields__)}")
            try:
                values[key] = float(value)
            except ValueError:
                raise HamedgeError(f"loss weight {key} is not a number: {value!r}") from None
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _ratio_clamped(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / torch.clamp(den, min=1e-5)


def _batch_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(values * weights) / max(sum(weights), 1e-5) over the batch axis (the reference's norm)."""
    return (values * weights).sum(0) / torch.clamp(weights.sum(0), min=1e-5)


def ham_losses(out, labels: torch.Tensor, masks: torch.Tensor | None, box_flag: torch.Tensor,
               box_tags: torch.Tensor, weights: LossWeights = LossWeights(),
               soft_gain: float = SOFT_MASK_GAIN, soft_center: float = SOFT_MASK_CENTER
               ) -> dict[str, torch.Tensor]:
    """The five unweighted losses and the weighted total: keys ano, cls, ex_cls, bound, union,
    total (0-dim tensors; only total is meant for backward)."""
    labels = labels.float()
    ano_labels = labels.max(dim=1, keepdim=True)[0]  # (B, 1)
    ano = F.binary_cross_entropy_with_logits(out.anomaly_logit, ano_labels)
    cls = F.binary_cross_entropy_with_logits(out.class_logits, labels)

    # exClsLoss: box supervision of the refined class maps.
    supervised = box_tags.float() * box_flag.float().reshape(-1, 1)  # (B, K)
    if bool(supervised.any()):
        if out.class_maps is None or masks is None:
            raise ValueError("box supervision needs the refined class maps and the box masks")
        maps, masks = out.class_maps, masks.float()
        sq_err = ((maps - masks) ** 2).sum((2, 3))  # (B, K)
        norm = ((maps.sum((2, 3)) + masks.sum((2, 3))) * supervised).sum(0)  # (K,)
        per_class = (sq_err * supervised).sum(0) / torch.clamp(norm, min=1e-5)
        classes_with_boxes = int((supervised.sum(0) > 0).sum())
        ex_cls = per_class.sum() / max(classes_with_boxes, 1)
    else:
        ex_cls = out.class_logits.new_zeros(())

    # boundLoss and unionLoss on the raw CAMs, negatives zeroed.
    ano_cam = out.anomaly_cam[:, 0] * ano_labels[:, :, None]  # (B, h, w)
    cls_cams = out.class_cams * labels[:, :, None, None]  # (B, K, h, w)
    cls_soft = torch.sigmoid(soft_gain * (cls_cams - soft_center))
    ano_soft = torch.sigmoid(soft_gain * (ano_cam - soft_center))
    cls_sum = cls_cams.sum((2, 3))  # (B, K)
    covered = (torch.minimum(cls_cams, ano_cam[:, None]) * cls_soft).sum((2, 3))
    bound_per = _ratio_clamped(cls_sum - covered, cls_sum) * labels  # (B, K)
    bound_k = _batch_mean(bound_per, labels)  # (K,)
    positive_classes = int((labels.sum(0) > 0).sum())
    bound = bound_k.sum() / max(positive_classes, 1)

    union_map = cls_cams.max(dim=1)[0]  # (B, h, w)
    ano_sum = ano_cam.sum((1, 2))
    union_cov = (torch.minimum(union_map, ano_cam) * ano_soft).sum((1, 2))
    union_per = _ratio_clamped(ano_sum - union_cov, ano_sum) * ano_labels[:, 0]
    union = _batch_mean(union_per, ano_labels[:, 0])

    total = (weights.ano * ano + weights.cls * cls + weights.ex_cls * ex_cls
             + weights.bound * bound + weights.union * union)
    return {"ano": ano, "cls": cls, "ex_cls": ex_cls, "bound": bound, "union": union,
            "total": total}


def batch_losses(out, batch: dict, weights: LossWeights = LossWeights()) -> dict[str, torch.Tensor]:
    """ham_losses on a HAMDataset batch dict (labels, masks, box_flag, box_tags)."""
    return ham_losses(out, batch["labels"], batch.get("masks"), batch["box_flag"],
                      batch["box_tags"], weights)
