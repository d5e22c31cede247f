"""Labelled data set readers: NIH layout, NIH CSVs, CheXpert CSVs, box masks, sampling."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hamedge.datasets import (CHEXPERT_CLASSES, Record, box_mask, load_chexpert_csv, load_dataset,
                              load_nih_csv, load_nih_layout, stratified_sample)
from hamedge.errors import DataError
from hamedge.spec import NIH_CLASSES
from hamedge.synth import SYNTH_CLASSES, generate


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "set"
    generate(root, 40, seed=2, size=64, workers=1)
    return root


def _write_nih_layout(root: Path, tags, boxes, splits, bbox_splits=None, size=(100, 80)):
    (root / "images").mkdir(parents=True)
    for name in tags:
        Image.new("L", size, 50).save(root / "images" / name)
    (root / "Annotations").mkdir()
    (root / "Annotations" / "Tags.json").write_text(json.dumps(tags))
    (root / "Annotations" / "BBoxes.json").write_text(json.dumps(boxes))
    for kind, sets in (("Main", splits), ("bbox", bbox_splits or {})):
        (root / "ImageSets" / kind).mkdir(parents=True)
        for split, names in sets.items():
            (root / "ImageSets" / kind / f"{split}.txt").write_text("\n".join(names) + "\n")


def test_synthetic_set_round_trip(synth_set):
    info = json.loads((synth_set / "dataset.json").read_text())
    tags = json.loads((synth_set / "Annotations" / "Tags.json").read_text())
    for split in ("train", "val", "test"):
        s = load_nih_layout(synth_set, split)
        assert s.class_names == SYNTH_CLASSES  # from dataset.json
        assert len(s) == info["splits"][split]
        for r in s:
            assert r.path.is_file()
            assert [c for c, v in zip(s.class_names, r.labels) if v] == tags[r.name]
            if split != "train":
                assert r.box_supervised == bool(tags[r.name])
            if r.box_supervised:
                assert set(r.boxes) == set(tags[r.name])
    assert load_dataset(synth_set, "val").records[0].name == load_nih_layout(synth_set, "val").records[0].name
    assert len(load_nih_layout(synth_set, None)) == 40


def test_nih_layout_string_labels_no_finding_and_unknown(tmp_path):
    tags = {"a.png": "Cardiomegaly|Effusion", "b.png": "No Finding", "c.png": ["Mass", "Hernia"],
            "d.png": "Infiltration"}
    boxes = {"a.png": {"Cardiomegaly": [[10.5, 20, 30, 40]]}, "d.png": {"Infiltrate": [[1, 2, 3, 4]]}}
    _write_nih_layout(tmp_path, tags, boxes, {"test": list(tags)}, {"test": ["a.png", "d.png"]})
    s = load_nih_layout(tmp_path, "test")
    assert s.class_names == NIH_CLASSES
    by = {r.name: r for r in s}
    assert by["a.png"].labels[[1, 2]].tolist() == [1, 1] and by["a.png"].labels.sum() == 2
    assert by["b.png"].is_normal and by["c.png"].labels[13] == 1
    assert by["a.png"].boxes == {"Cardiomegaly": [(10.5, 20.0, 30.0, 40.0)]} and by["a.png"].box_supervised
    assert by["d.png"].boxes == {"Infiltration": [(1.0, 2.0, 3.0, 4.0)]}  # NIH's "Infiltrate" alias
    assert not by["b.png"].box_supervised
    with pytest.raises(DataError, match="Hernia"):
        load_nih_layout(tmp_path, "test", class_names=("Cardiomegaly", "Effusion", "Mass", "Infiltration"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = load_nih_layout(tmp_path, "test", class_names=("Cardiomegaly", "Mass"), unknown="ignore")
    assert any("Effusion" in str(w.message) for w in caught)
    assert small.records[0].labels.tolist() == [1, 0]
    with pytest.raises(DataError, match="no split 'train'"):
        load_nih_layout(tmp_path, "train")


def test_nih_layout_errors(tmp_path):
    with pytest.raises(DataError, match="Tags.json"):
        load_nih_layout(tmp_path)
    _write_nih_layout(tmp_path, {"a.png": ["Mass"]}, {}, {"test": ["a.png", "zz.png"]})
    with pytest.raises(DataError, match="no labels"):
        load_nih_layout(tmp_path, "test")
    (tmp_path / "Annotations" / "Tags.json").write_text(json.dumps({"a.png": ["Mass"], "zz.png": []}))
    with pytest.warns(UserWarning, match="1 of 2 rows have no image file"):  # a partial download
        assert [r.name for r in load_nih_layout(tmp_path, "test")] == ["a.png"]
    with pytest.raises(DataError, match="1 of 2 listed image"):
        load_nih_layout(tmp_path, "test", require_all=True)
    (tmp_path / "Annotations" / "Tags.json").write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        load_nih_layout(tmp_path, "test")


def test_real_nih_samples(shared_data):
    s = load_nih_layout(shared_data / "nih-samples", None)
    assert [r.name for r in s] == ["00000001_000.png", "00000001_001.png", "00000001_002.png"]
    assert s[1].labels[NIH_CLASSES.index("Emphysema")] == 1 and s[1].labels.sum() == 2
    assert all(r.path.is_file() and not r.boxes for r in s)


def test_nih_csv(tmp_path):
    (tmp_path / "images").mkdir()
    for n in ("x1.png", "x2.png", "x3.png"):
        Image.new("L", (64, 64)).save(tmp_path / "images" / n)
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #\nx1.png,Atelectasis|Nodule,0\nx2.png,No Finding,0\n"
        "x3.png,Pneumothorax,1\n")
    (tmp_path / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\nx1.png,Nodule,1.5,2,3,4,,,\nx1.png,Nodule,10,10,5,5,,,\n")
    (tmp_path / "test_list.txt").write_text("x1.png\nx3.png\n")
    s = load_nih_csv(tmp_path)
    assert len(s) == 3 and s[0].boxes == {"Nodule": [(1.5, 2.0, 3.0, 4.0), (10.0, 10.0, 5.0, 5.0)]}
    assert s[0].box_supervised and not s[1].box_supervised and s[1].is_normal
    assert s[0].path == tmp_path / "images" / "x1.png"
    assert [r.name for r in load_dataset(tmp_path, "test")] == ["x1.png", "x3.png"]


def test_chexpert_csv_uncertain_and_boxes(tmp_path, shared_data):
    cols = ",".join(CHEXPERT_CLASSES)
    key = next(iter(json.loads((shared_data / "chexpert-boxes" / "BBoxes.json").read_text())))
    (tmp_path / "valid.csv").write_text(
        f"Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,{cols}\n"
        f"CheXpert-v1.0-small/{key},Male,50,Frontal,AP,,{','.join(['1', '-1', '', '0'] + [''] * 9)}\n"
        f"CheXpert-v1.0-small/valid/patient1/study1/view1_frontal.jpg,F,3,Frontal,PA,1,{',' * 12}\n")
    boxes = shared_data / "chexpert-boxes" / "BBoxes.json"
    for mode, expect in (("zeros", [1, 0, 0, 0]), ("ones", [1, 1, 0, 0]), ("ignore", [1, 0, 0, 0])):
        s = load_chexpert_csv(tmp_path, "valid.csv", uncertain=mode, boxes_json=boxes)
        assert s[0].labels[:4].tolist() == expect and s[1].is_normal
        if mode == "ignore":
            assert s[0].label_weights[:4].tolist() == [1, 0, 1, 1]
    r = s[0]
    raw = json.loads(boxes.read_text())[key]
    assert r.box_supervised and not s[1].box_supervised
    assert sum(len(v) for v in r.boxes.values()) == sum(len(v) for v in raw.values())
    for cls, bs in r.boxes.items():  # corners -> x, y, w, h and spelling variants -> canonical
        assert cls in CHEXPERT_CLASSES
        for x, y, w, h in bs:
            assert w > 0 and h > 0
    (tmp_path / "BBoxes.json").write_bytes(boxes.read_bytes())  # picked up by load_dataset
    for rec in s:  # load_dataset uses only images that are present
        rec.path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (32, 32)).save(rec.path)
    auto = load_dataset(tmp_path, "test")  # CheXpert's valid.csv is the labelled hold-out
    assert auto[0].box_supervised and auto[0].boxes == load_chexpert_csv(tmp_path, boxes_json=boxes)[0].boxes
    with pytest.raises(DataError, match="uncertain"):
        load_chexpert_csv(tmp_path, "valid.csv", uncertain="maybe")


def test_chexpert_box_spelling_variants(tmp_path):
    (tmp_path / "valid.csv").write_text("Path,Pleural Effusion,Enlarged Cardiomediastinum,Edema\n"
                                        "X/valid/p/s/v.jpg,1,1,1\n")
    (tmp_path / "b.json").write_text(json.dumps({"valid/p/s/v.jpg": {
        "Pleural_Effusion": [[1, 2, 11, 22]], "Enlarg_Cardiomediastinum": [[0, 0, 5, 5]], "edema": [[3, 3, 4, 4]]}}))
    s = load_chexpert_csv(tmp_path, "valid.csv", boxes_json=tmp_path / "b.json",
                          class_names=("Pleural Effusion", "Enlarged Cardiomediastinum", "Edema"))
    assert s[0].boxes == {"Pleural Effusion": [(1.0, 2.0, 10.0, 20.0)],
                          "Enlarged Cardiomediastinum": [(0.0, 0.0, 5.0, 5.0)], "Edema": [(3.0, 3.0, 1.0, 1.0)]}


def test_box_mask_full_resolution_then_nearest():
    r = Record("a", Path("a.png"), np.zeros(2, np.float32),
               {"Mass": [(10.7, 20.2, 30.0, 10.0), (50, 50, 10, 40)]}, True)
    full = box_mask(r, "Mass", (100, 120), image_size_hw=(100, 120))
    assert full.dtype == np.uint8 and full.shape == (100, 120)
    assert full[20:30, 10:40].all() and full.sum() == 10 * 30 + 40 * 10  # int() truncation, union
    small = box_mask(r, 1, 50, image_size_hw=(100, 120), class_names=("Nodule", "Mass"))
    expected = np.asarray(Image.fromarray(full).resize((50, 50), Image.NEAREST))
    assert np.array_equal(small, expected)
    assert box_mask(r, "Nodule", 16, image_size_hw=(100, 120)).sum() == 0


def test_stratified_sample_keeps_shares():
    labels = [np.array([1, 0], np.float32)] * 60 + [np.array([0, 1], np.float32)] * 30 + \
             [np.array([0, 0], np.float32)] * 10
    records = [Record(f"{i}", Path(f"{i}"), lab) for i, lab in enumerate(labels)]
    pick = stratified_sample(records, 20, seed=1)
    assert len(pick) == 20
    counts = [sum(r.labels[0] == 1 for r in pick), sum(r.labels[1] == 1 for r in pick), sum(r.is_normal for r in pick)]
    assert counts == [12, 6, 2]
    assert [r.name for r in pick] == [r.name for r in stratified_sample(records, 20, seed=1)]
    assert [r.name for r in pick] != [r.name for r in stratified_sample(records, 20, seed=2)]
    assert [int(r.name) for r in pick] == sorted(int(r.name) for r in pick)


def test_load_dataset_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="no known data set layout"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such"):
        load_dataset(tmp_path / "missing")
