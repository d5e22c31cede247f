"""`hamedge train --config REF.yaml` with the reference layout's fold lists, flags overriding the
file, both recorded; mixed precision (bf16 runs on CPUs too); a persistent-worker loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_datasets_release import FOLD1_YAML

SIZE = 64


@pytest.fixture(scope="module")
def fold_data(tmp_path_factory) -> Path:
    """A synthetic set in the reference layout with the fold1 list files the YAML names."""
    from hamedge.synth import generate

    root = tmp_path_factory.mktemp("ref") / "data"
    generate(root, 40, seed=5, size=SIZE, workers=1)
    tags = json.loads((root / "Annotations" / "Tags.json").read_text())
    boxes = json.loads((root / "Annotations" / "BBoxes.json").read_text())
    names = sorted(tags)
    main, bbox = root / "ImageSets" / "Main" / "fold1", root / "ImageSets" / "bbox" / "fold1"
    main.mkdir()
    bbox.mkdir()
    train, test = names[:30], names[30:]
    (main / "train_0.5_0.8.txt").write_text("\n".join(train) + "\n")
    (bbox / "train_0.8.txt").write_text("\n".join(n for n in train if n in boxes) + "\n")
    (main / "test_0_0.2.txt").write_text("\n".join(test) + "\n")
    (bbox / "test.txt").write_text("\n".join(n for n in test if n in boxes) + "\n")
    return root


def small_yaml(tmp_path: Path) -> Path:
    text = (FOLD1_YAML.replace("arch: resnet50", "arch: resnet18")
            .replace("Downsampling: 8", "Downsampling: 32").replace("Using_dilation: True", "Using_dilation: False")
            .replace("img_size: 512", f"img_size: {SIZE}").replace("batchsize: 24", "batchsize: 4")
            .replace("num_epoch: 30", "num_epoch: 1").replace("num_workers: 8", "num_workers: 0"))
    text = text.replace("Data_CLASSES: ['Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', "
                        "'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema', "
                        "'Fibrosis', 'Pleural_Thickening', 'Hernia']",
                        "Data_CLASSES: ['Atelectasis', 'Cardiomegaly', 'Effusion', 'Mass', 'Nodule', "
                        "'Pneumothorax', 'Consolidation']")
    path = tmp_path / "fold1.yaml"
    path.write_text(text)
    return path


def test_reference_config_runs_its_lists_and_flags_override(fold_data, tmp_path, capsys):
    from hamedge.cli import run_app
    from hamedge.model.checkpoint import load_model

    yaml_path = small_yaml(tmp_path)
    base = ["train", "--config", str(yaml_path), "--data", str(fold_data), "--out",
            str(tmp_path / "run"), "--limit-batches", "2", "--lr", "1e-3", "--limit-val", "6"]
    # The shipped fold configs validate on their test lists: refused unless asked for.
    rc = run_app(base)
    err = capsys.readouterr().err
    assert rc == 2 and "splits 'val' and 'test' share" in err and "--allow-patient-overlap" in err
    rc = run_app(base + ["--allow-patient-overlap"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 1e-3 and config["batch_size"] == 4 and config["sync_bn"]
    assert config["reference_config"]["settings"]["lr"] == 2e-5
    assert config["reference_config"]["flags"]["lr"] == "0.001"
    assert config["train_split"] == "fold1/train_0.5_0.8.txt"
    splits = json.loads((run / "splits.json").read_text())
    assert splits["train"]["images"] == 30 and splits["val"]["images"] == 10
    assert (run / "splits" / "train.txt").read_text().split() == \
        (fold_data / "ImageSets" / "Main" / "fold1" / "train_0.5_0.8.txt").read_text().split()
    model = load_model(run / "best.safetensors")
    assert model.spec.arch == "resnet18" and model.spec.num_classes == 7
    history = json.loads((run / "history.jsonl").read_text().splitlines()[0])
    assert history["train_images"] == 8 and history["val"]["images"] == 6


def test_bf16_autocast_and_persistent_workers_train(fold_data, tmp_path):
    # In a fresh process: in the suite's process, after the bench tests have run OpenVINO, ONNX
    # Runtime and torch side by side, this run was seen to crash the interpreter (SIGSEGV;
    # reproduced with tests/test_bench_run.py before it, not yet explained). Training is its own
    # process in real use.
    import subprocess
    import sys

    code = ("import sys; from hamedge.training.train import TrainConfig, train; "
            "train(TrainConfig(data=sys.argv[1], out=sys.argv[2], output_stride=32, "
            f"input_size={SIZE}, epochs=2, batch_size=4, lr=1e-3, limit_batches=2, "
            "val_split=None, amp='bf16', workers=1, threads=1))")
    proc = subprocess.run([sys.executable, "-c", code, str(fold_data), str(tmp_path / "amp")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "amp" / "history.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(np.isfinite(v) for line in lines for v in line["loss"].values())


def test_train_on_a_partial_nih_release_says_so_once(tmp_path, nih_images, capsys):
    import shutil

    from hamedge.cli import run_app
    from tests.test_datasets_release import write_nih_release

    root = write_nih_release(tmp_path / "nih", nih_images)
    (root / "images_002" / "images" / "00000005_000.png").unlink()  # an archive cut short
    run = tmp_path / "run"
    rc = run_app(["train", "--data", str(root), "--out", str(run), "--output-stride", "32",
                  "--img-size", str(SIZE), "--batch-size", "4", "--epochs", "1",
                  "--limit-batches", "1", "--lr", "1e-3", "--val-fraction", "0.25"])
    err = capsys.readouterr().err
    assert rc == 0, err
    warnings_ = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings_) == 1 and "1 of 24 rows have no image file" in warnings_[0], err
    splits = json.loads((run / "splits.json").read_text())
    assert splits["train"]["images"] + splits["val"]["images"] == 17
    assert "by patient" in splits["val"]["split_rule"] and splits["test"]["images"] == 6
    train_names = set((run / "splits" / "train.txt").read_text().split())
    val_names = set((run / "splits" / "val.txt").read_text().split())
    assert not {n[:8] for n in train_names} & {n[:8] for n in val_names}
    shutil.rmtree(root / "images_001")
    rc = run_app(["train", "--data", str(root), "--out", str(tmp_path / "r2"), "--require-all",
                  "--img-size", str(SIZE)])
    assert rc == 2 and "listed image" in capsys.readouterr().err
