"""The out-of-distribution part of the input gate (hamedge.ood): statistics and threshold, the
bundle file, and how `hamedge infer` and the API use it on files without DICOM tags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import hamedge
from dicom_corpus import corpus_file
from hamedge import ood
from hamedge.cli import run_app
from hamedge.errors import BundleError, InputRefused
from infer_helpers import make_bundle, write_dicom


def test_features_pool_each_map_to_a_grid():
    maps = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    got = ood.features(maps).reshape(2, 3, ood.GRID, ood.GRID)
    assert got[1, 2, 0, 1] == pytest.approx(maps[1, 2, 0:2, 2:4].mean(), rel=1e-6)
    odd = np.ones((1, 2, 7, 7), np.float32)  # not divisible: area averages, still exact here
    assert ood.features(odd).shape == (1, 2 * ood.GRID ** 2) and np.allclose(ood.features(odd), 1)


def test_fit_sets_the_threshold_on_heldout_images_and_refuses_far_ones():
    rng = np.random.default_rng(1)
    fit_maps, held, new = (rng.normal(1.0, 0.2, (n, 2, 4, 4)) for n in (400, 400, 2000))
    model = ood.fit(fit_maps, held, target_false_refusals=0.05)
    assert model.info["heldout_images"] == 400 and model.info["fit_images"] == 400
    assert model.info["heldout_refused"] <= 0.05
    # new in-distribution images are refused at about the stated rate ...
    assert 0.01 < np.mean(model.distances(new) > model.threshold) < 0.12
    # ... images of another distribution nearly always
    far = rng.normal(1.6, 0.2, (200, 2, 4, 4))
    assert np.mean(model.distances(far) > model.threshold) > 0.95
    again = ood.OODModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.allclose(again.distances(far), model.distances(far)) and again.threshold == model.threshold
    with pytest.raises(ValueError, match="at least 8"):
        ood.fit(fit_maps[:3], held)


def test_malformed_statistics_are_refused_in_one_line():
    good = ood.fit(np.random.default_rng(2).random((20, 1, 4, 4)),
                   np.random.default_rng(3).random((20, 1, 4, 4))).to_dict()
    for broken in ({**good, "threshold": float("nan")}, {**good, "precision": [[1.0]]},
                   {**good, "format": "other"}, {k: v for k, v in good.items() if k != "mean"}):
        with pytest.raises(BundleError, match="ood.json is not a valid"):
            ood.OODModel.from_dict(broken)


# --- in a folder run and the API --------------------------------------------------------------

@pytest.fixture(scope="module")
def gated_bundle(tmp_path_factory) -> tuple[Path, float]:
    """The tiny test bundle with an ood.json fitted on synthetic X-rays; its threshold is then set
    to the median distance of a few inputs, so that both outcomes happen (random weights)."""
    from hamedge import synth
    from hamedge.bundle import Bundle, BundleWriter
    from hamedge.preprocess import preprocess
    from hamedge.runtime import open_backend

    root = make_bundle(tmp_path_factory.mktemp("ood") / "tiny.hamedge")
    bundle = Bundle.open(root)
    with open_backend(bundle, "onnxruntime") as backend:
        def maps(seed, n):
            batch = np.stack([preprocess(synth.render(i, seed, 128)[0], bundle.spec, 1)
                              for i in range(n)])
            return backend.run(batch).attention_maps
        model = ood.fit(maps(1, 24), maps(2, 24), heatmaps="raw")
    data = model.to_dict()
    with BundleWriter(root, force=True) as writer:  # rewrite the bundle with ood.json added
        for rel in bundle.files:
            writer.copy_file(root / rel, rel)
        writer.write_json(ood.OOD_FILE, data)
        writer.commit()
    return root, data


@pytest.fixture(scope="module")
def untagged_folder(tmp_path_factory) -> Path:
    from hamedge import synth
    from hamedge.io import read_image

    root = tmp_path_factory.mktemp("untagged")
    for i in range(4):
        cv2.imwrite(str(root / f"synth{i}.png"), (synth.render(i, 9, 128)[0] * 255).astype(np.uint8))
    for name in ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm"):  # slices rendered to PNG
        try:
            image = read_image(corpus_file(name))
        except pytest.skip.Exception:
            continue
        cv2.imwrite(str(root / f"{name}.png"), (np.asarray(image, np.float32) * (255 if
                                                  image.dtype != np.uint8 else 1)).astype(np.uint8))
    cv2.imwrite(str(root / "noise.png"), np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))
    write_dicom(root / "chest.dcm", (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16))
    return root


def test_infer_scores_untagged_files_and_refuses_above_the_threshold(gated_bundle, untagged_folder,
                                                                   tmp_path, capsys):
    root, data = gated_bundle
    out = tmp_path / "o"
    run_app(["infer", str(untagged_folder), "--model", str(root), "--out", str(out),
             "--heatmaps", "none", "--quiet"])
    rows = {Path(r["path"]).name: r for r in
            map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    threshold = data["threshold"]
    for name, row in rows.items():
        gate = row["gate"]
        assert gate["ood_threshold"] == pytest.approx(threshold, abs=1e-3)
        if name == "chest.dcm":  # decided by its tags; the distance is recorded only
            assert gate["verdict"] == "accepted" and row["status"] == "ok"
        elif gate["ood_distance"] > threshold:
            assert row["status"] == "refused" and gate["verdict"] == "refused"
            assert row["reason"].startswith("out of distribution for this model: feature distance")
            assert "anomaly" not in row
        else:
            assert row["status"] == "ok" and gate["verdict"] == "accepted"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["gate"]["ood"]["threshold"] == pytest.approx(threshold, abs=1e-3)
    capsys.readouterr()


def test_threshold_decides_and_accept_any_skips_it(gated_bundle, untagged_folder, tmp_path, capsys):
    root, data = gated_bundle
    # a threshold below every distance: every untagged file is refused, the DICOM chest is not
    strict = tmp_path / "strict.hamedge"
    shutil.copytree(root, strict)
    from hamedge.bundle import Bundle, BundleWriter

    bundle = Bundle.open(strict)
    with BundleWriter(strict, force=True) as writer:
        for rel in bundle.files:
            if rel != ood.OOD_FILE:
                writer.copy_file(strict / rel, rel)
        writer.write_json(ood.OOD_FILE, {**data, "threshold": 1e-6})
        writer.commit()
    out = tmp_path / "s"
    assert run_app(["infer", str(untagged_folder), "--model", str(strict), "--out", str(out),
                    "--heatmaps", "none", "--quiet"]) == 0
    rows = {Path(r["path"]).name: r for r in
            map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert {n for n, r in rows.items() if r["status"] == "ok"} == {"chest.dcm"}
    out_any = tmp_path / "a"
    run_app(["infer", str(untagged_folder), "--model", str(strict), "--out", str(out_any),
             "--heatmaps", "none", "--quiet", "--accept-any"])
    rows = [json.loads(x) for x in (out_any / "results.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" and "ood_distance" not in r["gate"] for r in rows)
    with hamedge.load(strict, backend="onnxruntime") as model:
        with pytest.raises(InputRefused, match="^array: refused by the input gate: out of distribution"):
            model.predict(np.tile(np.arange(32, dtype=np.uint8), (32, 1)))  # not blank: the OOD rule
        assert model.predict(untagged_folder / "chest.dcm").image_size == (64, 64)
    with hamedge.load(strict, backend="onnxruntime", accept_any=True) as model:
        assert model.predict(np.zeros((32, 32), np.uint8)).image_size == (32, 32)
    capsys.readouterr()


def test_a_non_finite_distance_is_refused_and_stays_json():
    import json
    import math

    from hamedge.gate import REFUSED, UNTAGGED
    from hamedge.pipeline.run import apply_ood

    class Model:
        threshold = 16.0

        def reason(self, distance):
            return f"distance {distance}"

    for bad in (math.nan, math.inf):
        gate = {"verdict": UNTAGGED}
        reason = apply_ood(gate, bad, Model())
        assert gate["verdict"] == REFUSED and "could not be computed" in reason
        json.dumps(gate, allow_nan=False)
    gate = {"verdict": UNTAGGED}
    assert apply_ood(gate, 3.0, Model()) == "" and gate["verdict"] != REFUSED
