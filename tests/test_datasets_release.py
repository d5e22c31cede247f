"""The data sets as their publishers ship them: NIH ChestX-ray14's release files (headers exactly
as NIH publishes them, checked against public copies: Data_Entry's bracketed columns split in
two by the comma inside the bracket and a trailing empty column; BBox_List's 'Bbox [x,y,w,h]'
with three trailing empty columns), CheXpert's train.csv/valid.csv, the reference layout's image
lists, and the reference's YAML configs. Real NIH images from ../shared/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hamedge.datasets import (CHEXPERT_CLASSES, DataWarning, check_disjoint, load_dataset,
                              split_by_patient)
from hamedge.errors import DataError, HamedgeError

DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                     "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
# 24 images of 8 patients (3 follow-ups each); the first three are NIH's real 00000001_00x.png.
ROWS = [(f"{p:08d}_{f:03d}.png", lab, f, p) for p in range(1, 9) for f, lab in
        enumerate(("Cardiomegaly", "Cardiomegaly|Emphysema", "No Finding"))]
TEST_PATIENTS = {7, 8}


def write_nih_release(root: Path, nih_images: list[Path], csv_name="Data_Entry_2017_v2020.csv",
                      archives=("images_001", "images_002")) -> Path:
    """NIH's release as its archives unpack: images_001/images/..., images_002/images/...;
    the first 12 images go in the first archive, the rest in the second."""
    root.mkdir(parents=True)
    lines = [DATA_ENTRY_HEADER] + [
        f"{name},{labels},{fu},{pid},{40 + fu:03d},M,PA,1024,1024,0.143,0.143," for name, labels, fu, pid in ROWS]
    (root / csv_name).write_text("\n".join(lines) + "\n")
    (root / "BBox_List_2017.csv").write_text(
        BBOX_HEADER + "\n" + "00000002_001.png,Cardiomegaly,225.084745762712,547.019216763771,"
        "86.7796610169491,79.1864406779661,,,\n")
    test = [n for n, _, _, p in ROWS if p in TEST_PATIENTS]
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(n for n, *_ in ROWS if n not in test) + "\n")
    for i, (name, *_rest) in enumerate(ROWS):
        folder = root / archives[min(i // 12, len(archives) - 1)] / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(nih_images[i % len(nih_images)], folder / name)
    return root


@pytest.fixture()
def nih_release(tmp_path, nih_images) -> Path:
    return write_nih_release(tmp_path / "ChestXray-NIHCC", nih_images)


def test_nih_release_as_downloaded(nih_release):
    full = load_dataset(nih_release, "all")
    assert len(full) == 24 and full.info["layout"] == "nih-release"
    assert full.info["labels"] == "Data_Entry_2017_v2020.csv"
    r = {x.name: x for x in full}
    assert r["00000001_001.png"].labels.sum() == 2 and r["00000001_002.png"].is_normal
    assert r["00000001_000.png"].path.parent.parent.name == "images_001"
    assert r["00000008_002.png"].path.parent.parent.name == "images_002"
    assert r["00000003_000.png"].patient == "3"
    boxed = r["00000002_001.png"]
    assert boxed.box_supervised and boxed.boxes["Cardiomegaly"][0][0] == pytest.approx(225.0847457)
    test = load_dataset(nih_release, "test")
    assert {x.patient for x in test} == {"7", "8"} and len(test) == 6
    trainval = load_dataset(nih_release, "trainval")
    assert len(trainval) == 18


def test_older_csv_name_and_plain_images_folder(tmp_path, nih_images):
    root = write_nih_release(tmp_path / "old", nih_images, csv_name="Data_Entry_2017.csv",
                             archives=("images",))
    for folder in (root / "images" / "images",):
        for f in folder.iterdir():
            f.rename(root / "images" / f.name)
        folder.rmdir()
    s = load_dataset(root, "test")
    assert len(s) == 6 and all(x.path.parent == root / "images" for x in s)


def test_val_is_carved_by_patient_seeded(nih_release):
    train = load_dataset(nih_release, "train", val_fraction=0.3, split_seed=1)
    val = load_dataset(nih_release, "val", val_fraction=0.3, split_seed=1)
    test = load_dataset(nih_release, "test")
    assert len(train) + len(val) == 18 and val.info["val_patients"] == 2
    assert not {x.patient for x in train} & {x.patient for x in val}
    check_disjoint({"train": train.records, "val": val.records, "test": test.records})
    again = load_dataset(nih_release, "val", val_fraction=0.3, split_seed=1)
    assert [x.name for x in again] == [x.name for x in val]
    other = {tuple(x.name for x in load_dataset(nih_release, "val", val_fraction=0.3, split_seed=s))
             for s in range(2, 8)}
    assert len(other) > 1  # the seed changes the draw
    assert "by patient" in val.info["split_rule"] and "seed 1" in val.info["split_rule"]


def test_patient_in_two_hand_lists_is_an_error(nih_release):
    full = load_dataset(nih_release, "all").records
    a, b = full[:3], full[2:5]  # 00000001_002 in both
    with pytest.raises(DataError, match="share 1 patient"):
        check_disjoint({"train": a, "val": b})
    with pytest.raises(DataError, match="share 1 patient"):  # another image of the same patient
        check_disjoint({"train": full[:2], "val": full[2:4]})
    with pytest.raises(DataError, match="cannot carve"):
        split_by_patient(full[:3], 0.5, 0)  # one patient only


def test_partial_download_warns_once_and_require_all_refuses(nih_release):
    shutil.rmtree(nih_release / "images_002")  # one of NIH's 12 archives is missing
    with pytest.warns(DataWarning, match=r"12 of 24 rows have no image file") as caught:
        s = load_dataset(nih_release, "all")
    assert len(caught) == 1 and len(s) == 12 and s.info["missing_files"] == 12
    with pytest.raises(DataError, match="12 of 24 listed image"):
        load_dataset(nih_release, "all", require_all=True)
    with pytest.raises(DataError, match="none of the 6 listed images"):
        load_dataset(nih_release, "test")  # patients 7 and 8 live in images_002 only
    # The patient split does not depend on which archives are present, and the warning reads the
    # same for every split (one line in a training run).
    with pytest.warns(DataWarning, match=r"12 of 24 rows have no image file"):
        val = load_dataset(nih_release, "val", val_fraction=0.3, split_seed=1)
    assert val.info["val_patients"] >= 1


def write_chexpert(root: Path, small: bool = True) -> Path:
    """CheXpert's published CSV format, images as tiny JPEGs (its licence forbids copies)."""
    name = "CheXpert-v1.0-small" if small else "CheXpert-v1.0"
    base = root / name
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding," + ",".join(CHEXPERT_CLASSES)
    rows = {"train.csv": [], "valid.csv": []}
    for csv_name, part, patients in (("train.csv", "train", range(1, 11)), ("valid.csv", "valid", range(64541, 64544))):
        for p in patients:
            for view, fl, appa in (("view1_frontal.jpg", "Frontal", "AP"), ("view2_lateral.jpg", "Lateral", "")):
                rel = f"{name}/{part}/patient{p:05d}/study1/{view}"
                values = ["1.0", "-1.0", "", "0.0"] + [""] * 9 if p % 2 else [""] * 13
                nofind = "" if p % 2 else "1.0"
                if csv_name == "valid.csv":
                    values = [v if v != "-1.0" else "0.0" for v in values]
                rows[csv_name].append(f"{rel},Female,68,{fl},{appa},{nofind}," + ",".join(values))
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (40, 32), 90).save(path)
    for csv_name, lines in rows.items():
        (base / csv_name).write_text(header + "\n" + "\n".join(lines) + "\n")
    return root


def test_chexpert_release_policies_and_patient_split(tmp_path):
    root = write_chexpert(tmp_path / "dl")
    for where in (root, root / "CheXpert-v1.0-small"):  # the download folder or the release folder
        with pytest.warns(DataWarning, match="lateral"):
            test = load_dataset(where, "test")
        assert len(test) == 3 and test.info["layout"] == "chexpert"
    for policy, second in (("zeros", 0.0), ("ones", 1.0), ("ignore", 0.0)):
        with pytest.warns(DataWarning):
            s = load_dataset(root, "trainval", uncertain=policy)
        first = next(x for x in s if x.patient == "patient00001")
        assert first.labels[:2].tolist() == [1.0, second]
        if policy == "ignore":
            assert first.label_weights[:2].tolist() == [1.0, 0.0]
        else:
            assert first.label_weights is None
    with pytest.warns(DataWarning):
        train = load_dataset(root, "train", val_fraction=0.2, split_seed=3)
        val = load_dataset(root, "val", val_fraction=0.2, split_seed=3)
    assert len(train) == 8 and len(val) == 2
    assert not {x.patient for x in train} & {x.patient for x in val}
    with pytest.raises(DataError, match="uncertain"):
        load_dataset(root, "test", uncertain="maybe")


def test_reference_layout_image_lists(tmp_path):
    from hamedge.synth import generate

    root = tmp_path / "ref"
    generate(root, 20, seed=1, size=48, workers=1)
    names = sorted(p.name for p in (root / "images").iterdir())
    (root / "ImageSets" / "Main" / "fold1").mkdir()
    (root / "ImageSets" / "bbox" / "fold1").mkdir()
    (root / "ImageSets" / "Main" / "fold1" / "train_0.5_0.8.txt").write_text("\n".join(names[:12]))
    (root / "ImageSets" / "bbox" / "fold1" / "train_0.8.txt").write_text(names[0] + "\n")
    s = load_dataset(root, "fold1/train_0.5_0.8.txt", box_list="fold1/train_0.8.txt")
    assert [x.name for x in s] == names[:12]
    assert [x.name for x in s if x.box_supervised] == [names[0]]
    with pytest.raises(DataError, match="not found"):
        load_dataset(root, "fold9/nothing.txt")


FOLD1_YAML = """DataRoot: /PATH/TO/NIH_Chest_Xray14
Data_CLASSES: ['Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', 'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening', 'Hernia']
GPUs: [0,1]
num_workers: 8
Means: [0.5, 0.5, 0.5] 
Stds: [0.5, 0.5, 0.5]
display_freq: 10
arch: resnet50
Downsampling: 8
Using_pooling: True
Using_dilation: True
Using_pretrained_weights: True
Using_CRF: False
in_channels: 3
img_size: 512
batchsize: 24
resize_factor: dynamic
optim: Adam
lr: 0.00002
weight_decay: 0.0001
lr_decay_freq: 10
lr_decay: 0.1
trainSet: fold1/train_0.5_0.8.txt
helperSet: fold1/train_0.8.txt
valClsSet: fold1/test_0_0.2.txt
valIoUSet: fold1/test.txt
testClsSet: fold1/test_0_0.2.txt
testIoUSet: fold1/test.txt
num_epoch: 30
print_freq: 20
test_freq: 1
save_model_freq: 2
Attention:
  resume: 
"""


def test_reference_config_maps_onto_train_config(tmp_path):
    from hamedge.training.reference_config import read_reference_config
    from hamedge.training.train import TrainConfig

    path = tmp_path / "fold1.yaml"
    path.write_text(FOLD1_YAML)
    values, raw = read_reference_config(path)
    config = TrainConfig(data="x", out=str(tmp_path / "o"), **values)
    spec = config.spec(config.class_names)
    assert (spec.arch, spec.output_stride, spec.dilation, spec.keep_maxpool, spec.input_size) == \
        ("resnet50", 8, True, True, 512)
    assert (config.batch_size, config.lr, config.weight_decay, config.lr_step, config.lr_gamma,
            config.epochs, config.optimizer) == (24, 2e-5, 1e-4, 10, 0.1, 30, "adam")
    assert (config.train_split, config.train_box_list, config.val_split, config.val_box_list,
            config.test_split) == ("fold1/train_0.5_0.8.txt", "fold1/train_0.8.txt",
                                   "fold1/test_0_0.2.txt", "fold1/test.txt", "fold1/test_0_0.2.txt")
    assert config.sync_bn and "data" not in values and raw["GPUs"] == [0, 1]
    path.write_text(FOLD1_YAML + "mystery: 1\n")
    with pytest.raises(HamedgeError, match="unknown setting"):
        read_reference_config(path)


def test_train_cli_validates_options_before_work(tmp_path, capsys):
    from hamedge.cli import run_app

    data = tmp_path / "nothing-read"
    for args, text in ((["--lr", "-1"], "--lr must be > 0"), (["--lr", "nan"], "--lr must be a finite"),
                       (["--weight-decay", "inf"], "finite"), (["--lr-gamma", "0"], "--lr-gamma"),
                       (["--batch-size", "10", "--accum-steps", "3"], "does not split"),
                       (["--amp", "fp8"], "--amp"), (["--val-fraction", "1.5"], "val-fraction"),
                       (["--uncertain", "maybe"], "uncertain")):
        rc = run_app(["train", "--data", str(data), "--out", str(tmp_path / "o"), *args])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and text in err, (args, err)
    rc = run_app(["train", "--data", str(data), "--out", "/proc/x"])
    assert rc == 2 and "cannot create" in capsys.readouterr().err


def test_evaluate_cli_on_nih_release(nih_release, tmp_path, capsys):
    from hamedge.cli import run_app
    from hamedge.model.checkpoint import save_checkpoint
    from hamedge.model.network import HAM
    from hamedge.spec import ModelSpec

    spec = ModelSpec(arch="resnet18", output_stride=32, input_size=64)
    ckpt = save_checkpoint(HAM(spec), spec, tmp_path / "m.safetensors")
    (nih_release / "images_002" / "images" / "00000008_000.png").unlink()
    rc = run_app(["evaluate", str(ckpt), "--data", str(nih_release), "--split", "test"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.err.count("warning: ") == 1 and "1 of 24 rows have no image file" in cap.err
    assert "5 images" in cap.out
    rc = run_app(["evaluate", str(ckpt), "--data", str(nih_release), "--require-all"])
    assert rc == 2 and "listed image" in capsys.readouterr().err
