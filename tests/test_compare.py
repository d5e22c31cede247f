"""hamedge.compare: the one budget, agreement rule and deltas that the export guard and the bench
share (they used to disagree on pairs of empty masks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hamedge.compare import (Budget, MaskAgreement, deltas, heatmap_agreement,
                             probability_agreement)
from hamedge.spec import ModelSpec

SPEC = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B"))


def test_pairs_empty_in_both_are_counted_not_scored():
    ref = np.zeros((1, 3, 4, 4), bool)
    got = np.zeros((1, 3, 4, 4), bool)
    ref[0, 0, :2] = True  # map 0: reference marks 8 pixels, candidate 4 of them
    got[0, 0, :1] = True
    ref[0, 1, 0, 0] = True  # map 1: only the reference marks a pixel -> IoU 0
    agree = MaskAgreement()
    agree.add(ref, got)  # map 2: empty in both
    result = agree.result()
    assert result["maps"] == 2 and result["both_empty"] == 1
    assert result["mean_iou"] == pytest.approx(0.25) and result["min_iou"] == 0.0
    empty = MaskAgreement()
    empty.add(np.zeros((2, 2, 3, 3), bool), np.zeros((2, 2, 3, 3), bool))
    assert empty.result() == {"mean_iou": None, "min_iou": None, "maps": 0, "both_empty": 4}


def test_heatmap_agreement_binarises_float_maps_the_same_way():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 3, 4, 4)).astype(np.float32)
    same = heatmap_agreement(maps, maps.copy(), SPEC)
    assert same["mean_iou"] == pytest.approx(1.0) and same["maps"] + same["both_empty"] == 9
    assert heatmap_agreement(maps, np.roll(maps, 2, axis=-1), SPEC)["mean_iou"] < 0.9


def test_probability_agreement_counts_flips():
    spec = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B"),
                     class_thresholds=(0.5, 0.5), anomaly_threshold=0.5)
    ref = np.array([[0.4, 0.9]])
    got = np.array([[0.6, 0.9]])
    out = probability_agreement(ref, got, np.array([0.2]), np.array([0.25]), spec)
    assert out == {"max_prob_diff": pytest.approx(0.2), "flips": 1, "decisions": 3}


def test_probability_agreement_reports_a_nan_anomaly_difference():
    spec = ModelSpec(arch="resnet18", output_stride=16, input_size=64, class_names=("A", "B"))
    probs = np.array([[0.4, 0.9]])
    out = probability_agreement(probs, probs + 0.1, np.array([0.2]), np.array([np.nan]), spec)
    assert np.isnan(out["max_prob_diff"])


def _eval(aucs, tiou):
    return {"classification": {"auc": dict(zip(SPEC.class_names, aucs)),
                               "mean_auc": float(np.mean(aucs)), "anomaly_auc": 0.8},
            "localisation": {"tiou_thresholds": [0.1, 0.3, 0.5], "mean": {"tiou": [0.9, tiou, 0.1]},
                             "per_class": {}}}


def test_deltas_and_budget_verdict():
    ok = deltas(_eval([0.8, 0.7], 0.5), _eval([0.799, 0.699], 0.495), Budget(), SPEC.class_names)
    assert ok.passed and ok.mean_auc == pytest.approx(-0.001) and ok.tiou == pytest.approx(-0.005)
    bad = deltas(_eval([0.8, 0.7], 0.5), _eval([0.78, 0.7], 0.45), Budget(), SPEC.class_names)
    assert bad.failures == ["mean AUC drop 0.0100 > 0.005", "mean T(IoU=0.3) drop 0.0500 > 0.01"]
    loose = Budget(max_mean_auc_drop=0.02, max_tiou_drop=0.1)
    assert deltas(_eval([0.8, 0.7], 0.5), _eval([0.78, 0.7], 0.45), loose, SPEC.class_names).passed


def test_one_set_of_budget_keys():
    b = Budget(max_mean_auc_drop=0.01)
    assert Budget.from_dict(b.to_dict()) == b
    assert set(b.to_dict()) == {"max_mean_auc_drop", "max_tiou_drop", "tiou_threshold"}
    assert b.tiou_key == "tiou_0.3"


def test_compare_module_is_torch_free():
    code = ("import sys, hamedge.compare\n"
            "assert 'torch' not in sys.modules\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert out.returncode == 0, out.stderr
