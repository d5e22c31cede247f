"""hamedge.metrics: AUCs and T(IoU)/T(IoR) on hand-made inputs with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hamedge import metrics as M

NAMES = ("A", "B", "C")


def test_auc_known_values_and_undefined_class():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=np.float32)
    probs = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.2], [0.8, 0.3, 0.1], [0.1, 0.4, 0.9]])
    out = M.classification_metrics(probs, labels, NAMES, anomaly_probs=[0.9, 0.7, 0.95, 0.1])
    assert out["auc"]["A"] == pytest.approx(1.0)
    # B: positives 0.8, 0.3; negatives 0.1, 0.4 -> pairs won: (0.8>0.1, 0.8>0.4, 0.3>0.1) = 3/4
    assert out["auc"]["B"] == pytest.approx(0.75)
    assert out["auc"]["C"] is None  # one label value only: undefined, not 0
    assert out["undefined_auc_classes"] == ["C"]
    assert out["mean_auc"] == pytest.approx((1.0 + 0.75) / 2)
    assert out["mean_auc_reference_style"] == pytest.approx((1.0 + 0.75 + 0.0) / 3)
    assert out["anomaly_auc"] == pytest.approx(1.0)  # any-finding = max over labels
    assert out["num_abnormal"] == 3
    json.dumps(out)  # JSON-able


def test_auc_matches_sklearn_roc_auc_score_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(200, 3)).astype(np.float32)
    probs = np.round(rng.random((200, 3)) * 0.5 + labels * 0.3, 1)  # many ties
    out = M.classification_metrics(probs, labels, NAMES)
    for k, name in enumerate(NAMES):
        assert out["auc"][name] == pytest.approx(roc_auc_score(labels[:, k], probs[:, k]))
    assert out["anomaly_auc"] is None


def test_auc_shape_errors():
    with pytest.raises(ValueError):
        M.classification_metrics(np.zeros((4, 2)), np.zeros((4, 3)), NAMES)


def test_iou_ior_hand_made():
    pred = np.zeros((10, 10), bool)
    gt = np.zeros((10, 10), np.uint8)
    pred[0:4, 0:5] = True  # 20 px
    gt[2:6, 0:5] = 1  # 20 px, overlap rows 2-3 -> 10 px
    assert M.iou(pred, gt) == pytest.approx(10 / 30)
    assert M.ior(pred, gt) == pytest.approx(10 / 20)
    empty = np.zeros((10, 10), bool)
    assert M.iou(empty, gt) == 0.0 and M.ior(empty, gt) == 0.0
    assert M.iou(empty, np.zeros((10, 10))) == 0.0  # union 0 -> max(.,1)


def test_localisation_meter_counts_thresholds_and_means():
    meter = M.LocalisationMeter(NAMES)
    gt = np.zeros((3, 10, 10), np.uint8)
    gt[0, 0:4, 0:5] = 1  # A: 20 px box
    gt[1, 5:10, 5:10] = 1  # B: 25 px box
    pred = np.zeros((3, 10, 10), bool)
    pred[0, 2:6, 0:5] = True  # A: IoU 1/3, IoR 1/2
    pred[1, 5:10, 5:10] = True  # B: perfect
    pred[2, :, :] = True  # C: not tagged -> ignored
    meter.update(pred, gt, np.array([1, 1, 0]))
    pred2 = np.zeros_like(pred)  # second image: A missed entirely
    meter.update(pred2, gt, np.array([1, 0, 0]))
    res = meter.result()
    a, b = res["per_class"]["A"], res["per_class"]["B"]
    assert a["box_images"] == 2 and b["box_images"] == 1
    # A: IoUs 1/3 and 0 -> thresholds 0.1, 0.2, 0.3 hit once of 2; 0.4+ never
    assert a["tiou"] == [0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    # A: IoRs 0.5 and 0 -> 0.1, 0.25, 0.5 hit once
    assert a["tior"] == [0.5, 0.5, 0.5, 0.0, 0.0]
    assert b["tiou"] == [1.0] * 7
    assert res["per_class"]["C"] is None
    assert res["classes_without_boxes"] == ["C"]
    assert res["mean"]["tiou"][2] == pytest.approx((0.5 + 1.0) / 2)  # C excluded from the mean
    assert M.tiou_at(res, 0.3) == pytest.approx(0.75)
    assert M.tiou_at(res, 0.3, "A") == pytest.approx(0.5)
    assert M.tiou_at(res, 0.3, "C") is None
    with pytest.raises(ValueError):
        M.tiou_at(res, 0.35)
    json.dumps(res)


def test_meter_threshold_is_inclusive_like_reference():
    # IoU exactly 0.3 counts for t = 0.3 (reference: batch_iou >= thresh).
    meter = M.LocalisationMeter(("A",))
    gt = np.zeros((1, 1, 10), np.uint8)
    gt[0, 0, :10] = 1
    pred = np.zeros((1, 1, 10), bool)
    pred[0, 0, :3] = True
    meter.update(pred, gt, [1])
    assert meter.result()["per_class"]["A"]["tiou"][:4] == [1.0, 1.0, 1.0, 0.0]


def test_meter_rejects_wrong_shapes():
    meter = M.LocalisationMeter(NAMES)
    with pytest.raises(ValueError):
        meter.update(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)), [1, 1])


def test_empty_meter_result():
    res = M.LocalisationMeter(NAMES).result()
    assert res["mean"]["tiou"] is None and res["classes_without_boxes"] == list(NAMES)


def test_format_table_renders_all_classes():
    from rich.console import Console

    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=np.float32)
    cls = M.classification_metrics(labels * 0.8 + 0.1, labels, NAMES, anomaly_probs=labels.max(1))
    meter = M.LocalisationMeter(NAMES)
    meter.update(np.ones((3, 4, 4), bool), np.ones((3, 4, 4)), [1, 0, 0])
    console = Console(record=True, width=200)
    console.print(M.format_table({"classification": cls, "localisation": meter.result()}))
    text = console.export_text()
    for name in (*NAMES, "mean", "anomaly", "IoU≥0.3", "IoR≥0.9"):
        assert name in text
