"""The five HAM training losses, as the HAM reference code's train() computes them.

Inputs are one batch's network outputs (hamedge.model.network.HAMOutput, refined class maps
included) and the batch from hamedge.training.data.HAMDataset: labels (B, K), masks (B, K, S, S) box masks,
box_flag (B, 1) = the image's boxes may supervise, box_tags (B, K) = classes with a box on it.

Every "mean" below is a ratio of sums over the batch, so a batch split over processes gives the
same loss when those sums are taken over all of them (see training.distributed).

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


def ham_losses(out, labels: torch.Tensor, masks: torch.Tensor | None, box_flag: torch.Tensor,
               box_tags: torch.Tensor, weights: LossWeights = LossWeights(),
               soft_gain: float = SOFT_MASK_GAIN, soft_center: float = SOFT_MASK_CENTER,
               label_weights: torch.Tensor | None = None, batch_sums=None
               ) -> dict[str, torch.Tensor]:
    """The five unweighted losses and the weighted total: keys ano, cls, ex_cls, bound, union,
    total (0-dim tensors; only total is meant for backward).

    Every batch-level sum goes through ``batch_sums(list of (B, ...) tensors) -> list of sums``
    (default: sums over this batch; training.distributed.global_sums in a multi-process run, so
    each rank computes the loss of the whole batch across ranks). ``label_weights`` (B, K): 0
    where a label is unknown (CheXpert's uncertain="ignore"); those entries do not count in the
    BCE, and an image with no known positive and an unknown label does not count in ano."""
    if batch_sums is None:
        def batch_sums(tensors):
            return [t.sum(0) for t in tensors]
    labels = labels.float()
    lw = torch.ones_like(labels) if label_weights is None else label_weights.float()
    ano_labels = labels.max(dim=1, keepdim=True)[0]  # (B, 1)
    ano_w = torch.where((ano_labels > 0) | (lw.min(dim=1, keepdim=True)[0] > 0),
                        torch.ones_like(ano_labels), torch.zeros_like(ano_labels))
    ano_el = F.binary_cross_entropy_with_logits(out.anomaly_logit, ano_labels, reduction="none")
    cls_el = F.binary_cross_entropy_with_logits(out.class_logits, labels, reduction="none")

    # exClsLoss: box supervision of the refined class maps.
    supervised = box_tags.float() * box_flag.float().reshape(-1, 1)  # (B, K)
    if out.class_maps is None or masks is None:
        if bool(supervised.any()):
            raise ValueError("box supervision needs the refined class maps and the box masks")
        sq_err = norm = torch.zeros_like(supervised)
    else:
        maps, masks = out.class_maps, masks.float()
        sq_err = ((maps - masks) ** 2).sum((2, 3)) * supervised  # (B, K)
        norm = (maps.sum((2, 3)) + masks.sum((2, 3))) * supervised

    # boundLoss and unionLoss on the raw CAMs, negatives zeroed.
    ano_cam = out.anomaly_cam[:, 0] * ano_labels[:, :, None]  # (B, h, w)
    cls_cams = out.class_cams * labels[:, :, None, None]  # (B, K, h, w)
    cls_soft = torch.sigmoid(soft_gain * (cls_cams - soft_center))
    ano_soft = torch.sigmoid(soft_gain * (ano_cam - soft_center))
    cls_sum = cls_cams.sum((2, 3))  # (B, K)
    covered = (torch.minimum(cls_cams, ano_cam[:, None]) * cls_soft).sum((2, 3))
    bound_per = _ratio_clamped(cls_sum - covered, cls_sum) * labels  # (B, K)
    union_map = cls_cams.max(dim=1)[0]  # (B, h, w)
    ano_sum = ano_cam.sum((1, 2))
    union_cov = (torch.minimum(union_map, ano_cam) * ano_soft).sum((1, 2))
    union_per = _ratio_clamped(ano_sum - union_cov, ano_sum) * ano_labels[:, 0]

    (ano_num, ano_den, cls_num, cls_den, ex_num, ex_den, ex_count, bound_num, bound_den,
     union_num, union_den) = batch_sums([
        ano_el * ano_w, ano_w.detach(), cls_el * lw, lw.detach(), sq_err, norm,
        supervised.detach(), bound_per * labels, labels.detach(),
        union_per * ano_labels[:, 0], ano_labels[:, 0].detach()])
    ano = ano_num.sum() / torch.clamp(ano_den.sum(), min=1.0)
    cls = cls_num.sum() / torch.clamp(cls_den.sum(), min=1.0)
    classes_with_boxes = int((ex_count > 0).sum())
    ex_cls = (ex_num / torch.clamp(ex_den, min=1e-5)).sum() / max(classes_with_boxes, 1)
    positive_classes = int((bound_den > 0).sum())
    bound = _ratio_clamped(bound_num, bound_den).sum() / max(positive_classes, 1)
    union = _ratio_clamped(union_num, union_den)

    total = (weights.ano * ano + weights.cls * cls + weights.ex_cls * ex_cls
             + weights.bound * bound + weights.union * union)
    return {"ano": ano, "cls": cls, "ex_cls": ex_cls, "bound": bound, "union": union,
            "total": total}


def batch_losses(out, batch: dict, weights: LossWeights = LossWeights(), batch_sums=None
                 ) -> dict[str, torch.Tensor]:
    """ham_losses on a HAMDataset batch dict (labels, masks, box_flag, box_tags, label_weights)."""
    return ham_losses(out, batch["labels"], batch.get("masks"), batch["box_flag"],
                      batch["box_tags"], weights, label_weights=batch.get("label_weights"),
                      batch_sums=batch_sums)
