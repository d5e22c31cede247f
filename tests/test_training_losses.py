"""training.losses: each loss on hand-made tensors, and the total against a per-class loop written
from the HAM paper's formulas (the shape of the reference code's train())."""

from __future__ import annotations

import math

import pytest
import torch

from hamedge.errors import HamedgeError
from hamedge.model.network import HAMOutput
from hamedge.training.losses import LossWeights, ham_losses


def make_out(ano_logit, cls_logits, class_maps, ano_cam, cls_cams):
    return HAMOutput(ano_logit, cls_logits, None, class_maps, ano_cam, cls_cams)


def test_each_loss_hand_made():
    b, k, h = 1, 2, 2
    labels = torch.tensor([[1.0, 0.0]])
    ano_logit = torch.zeros(b, 1)
    cls_logits = torch.zeros(b, k)
    class_maps = torch.full((b, k, 4, 4), 0.5)
    masks = torch.zeros(b, k, 4, 4)
    masks[0, 0, :2, :2] = 1  # 4 px box
    ano_cam = torch.full((b, 1, h, h), 10.0)
    cls_cams = torch.full((b, k, h, h), 5.0)  # inside the anomaly map, well above 0.75
    out = make_out(ano_logit, cls_logits, class_maps, ano_cam, cls_cams)
    res = ham_losses(out, labels, masks, torch.ones(b, 1), torch.tensor([[1.0, 0.0]]))
    assert res["ano"].item() == pytest.approx(math.log(2))
    assert res["cls"].item() == pytest.approx(math.log(2))
    # sq err: 4 px at 0.25 + 12 px at 0.25 = 4; norm: 16*0.5 + 4 = 12 -> 1/3, one class with boxes
    assert res["ex_cls"].item() == pytest.approx(4 / 12)
    assert res["bound"].item() == pytest.approx(0.0, abs=1e-6)
    # union: the positive class map (5) covers min(5, 10) = 5 of 10 per pixel -> 1 - 0.5
    assert res["union"].item() == pytest.approx(0.5, abs=1e-6)
    w = LossWeights()
    expected = w.ano * math.log(2) + w.cls * math.log(2) + w.ex_cls / 3 + w.union * 0.5
    assert res["total"].item() == pytest.approx(expected, rel=1e-5)


def test_bound_and_union_extremes():
    labels = torch.tensor([[1.0, 1.0]])
    cls_cams = torch.zeros(1, 2, 2, 2)
    cls_cams[0, 0] = 3.0
    ano_cam = torch.zeros(1, 1, 2, 2)  # no abnormality attention at all
    out = make_out(torch.zeros(1, 1), torch.zeros(1, 2), torch.zeros(1, 2, 4, 4), ano_cam, cls_cams)
    res = ham_losses(out, labels, torch.zeros(1, 2, 4, 4), torch.zeros(1, 1), torch.zeros(1, 2))
    # class 0 entirely outside the anomaly map -> 1; class 1 has an all-zero map -> 0/1e-5 = 0;
    # averaged over the 2 positive classes
    assert res["bound"].item() == pytest.approx(0.5)
    assert res["union"].item() == pytest.approx(0.0)  # empty anomaly map: 0/1e-5
    assert res["ex_cls"].item() == 0.0  # no box supervision in the batch
    # normal image: negatives are zeroed, so bound and union vanish
    res = ham_losses(out, torch.zeros(1, 2), None, torch.zeros(1, 1), torch.zeros(1, 2))
    assert res["bound"].item() == 0.0 and res["union"].item() == 0.0


def test_box_supervision_needs_maps():
    out = make_out(torch.zeros(1, 1), torch.zeros(1, 2), None, torch.zeros(1, 1, 2, 2),
                   torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError):
        ham_losses(out, torch.ones(1, 2), torch.zeros(1, 2, 4, 4), torch.ones(1, 1),
                   torch.ones(1, 2))


def loop_transcription(out, labels, masks, flags, tags, w):
    """Per-class loop, BCE on probabilities, as the reference's train() is structured."""
    bce = torch.nn.BCELoss()
    ano_labels = labels.max(dim=1)[0].unsqueeze(1)
    ano = bce(torch.sigmoid(out.anomaly_logit), ano_labels)
    cls = bce(torch.sigmoid(out.class_logits), labels)
    ano_hidden = out.anomaly_cam.squeeze(1) * ano_labels.unsqueeze(2)
    ano_mask = torch.sigmoid(100 * (ano_hidden - 0.75))
    ex_terms, bound_terms, hidden_all = [], [], []
    count1 = count2 = 0
    for i in range(labels.shape[1]):
        cm = out.class_maps[:, i]
        mk = masks[:, i]
        sel = tags[:, i] * flags.squeeze(1)
        err = ((cm - mk) ** 2).sum((1, 2))
        norm = ((cm.sum((1, 2)) + mk.sum((1, 2))) * sel).sum()
        ex_terms.append((err * sel).sum() / max(norm, 1e-5))
        hid = out.class_cams[:, i] * labels[:, i].unsqueeze(1).unsqueeze(2)
        hidden_all.append(hid)
        soft = torch.sigmoid(100 * (hid - 0.75))
        frac = (hid.sum((1, 2)) - (torch.min(hid, ano_hidden) * soft).sum((1, 2))) \
            / torch.clamp(hid.sum((1, 2)), min=1e-5) * labels[:, i]
        bound_terms.append(frac.sum() / max(labels[:, i].sum(), 1e-5))
        count1 += int(sel.sum() > 0)
        count2 += int(labels[:, i].sum() > 0)
    ex = sum(ex_terms) / max(count1, 1)
    bound = sum(bound_terms) / max(count2, 1)
    u = torch.stack(hidden_all, 1).max(1)[0]
    un = (ano_hidden.sum((1, 2)) - (torch.min(u, ano_hidden) * ano_mask).sum((1, 2))) \
        / torch.clamp(ano_hidden.sum((1, 2)), min=1e-5) * ano_labels.squeeze(1)
    union = un.sum() / max(ano_labels.sum(), 1e-5)
    total = w.ano * ano + w.cls * cls + w.ex_cls * ex + w.bound * bound + w.union * union
    return {"ano": ano, "cls": cls, "ex_cls": ex, "bound": bound, "union": union, "total": total}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_total_matches_loop_transcription_on_random_batch(seed):
    g = torch.Generator().manual_seed(seed)
    b, k, h, s = 6, 5, 4, 16
    labels = (torch.rand(b, k, generator=g) < 0.4).float()
    labels[0] = 0  # one normal image
    flags = (torch.rand(b, 1, generator=g) < 0.6).float()
    tags = labels * (torch.rand(b, k, generator=g) < 0.8).float()
    masks = (torch.rand(b, k, s, s, generator=g) < 0.2).float() * tags[:, :, None, None]
    out = make_out(torch.randn(b, 1, generator=g) * 3, torch.randn(b, k, generator=g) * 3,
                   torch.rand(b, k, s, s, generator=g), torch.rand(b, 1, h, h, generator=g) * 2,
                   torch.rand(b, k, h, h, generator=g) * 2)
    w = LossWeights(ano=0.3, cls=1.0, ex_cls=0.5, bound=0.2, union=0.1)
    ours = ham_losses(out, labels, masks, flags, tags, w)
    ref = loop_transcription(out, labels, masks, flags, tags, w)
    for key in ref:
        assert ours[key].item() == pytest.approx(float(ref[key]), rel=1e-5, abs=1e-7), key


def test_gradients_flow_to_maps_and_logits():
    b, k = 2, 3
    cls_logits = torch.randn(b, k, requires_grad=True)
    maps = torch.rand(b, k, 8, 8, requires_grad=True)
    cams = (torch.rand(b, k, 2, 2) + 0.5).requires_grad_(True)
    out = make_out(torch.zeros(b, 1, requires_grad=True), cls_logits, maps,
                   torch.rand(b, 1, 2, 2) + 0.5, cams)
    labels = torch.ones(b, k)
    res = ham_losses(out, labels, torch.zeros(b, k, 8, 8), torch.ones(b, 1), labels)
    res["total"].backward()
    assert cls_logits.grad.abs().sum() > 0 and maps.grad.abs().sum() > 0
    assert cams.grad.abs().sum() > 0


def test_loss_weights_parse():
    w = LossWeights.parse("ano=0.1, ex_cls=2")
    assert w.ano == 0.1 and w.ex_cls == 2.0 and w.cls == 1.0
    with pytest.raises(HamedgeError):
        LossWeights.parse("foo=1")
    with pytest.raises(HamedgeError):
        LossWeights.parse("ano=x")
