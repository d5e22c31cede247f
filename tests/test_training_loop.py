"""training.train / training.evaluate / hamedge.evaluation / CLI on a tiny synthetic set
(64 px, resnet18 stride 32: seconds on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hamedge.errors import HamedgeError

SIZE = 64


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from hamedge.synth import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, 40, seed=3, size=SIZE, val_fraction=0.25, test_fraction=0.25, workers=1)
    return root


def config(tiny_data: Path, out: Path, **kw):
    from hamedge.training.train import TrainConfig

    base = dict(data=str(tiny_data), out=str(out), arch="resnet18", output_stride=32,
                input_size=SIZE, epochs=2, batch_size=4, lr=1e-3, limit_batches=2,
                limit_val=8, val_batch_size=8, seed=1, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from hamedge.model.checkpoint import load_checkpoint

    return load_checkpoint(path)[1]


def test_train_writes_checkpoints_history_and_best(tiny_data, tmp_path):
    from hamedge.model.checkpoint import load_model
    from hamedge.training.train import train

    best = train(config(tiny_data, tmp_path / "run"))
    run = tmp_path / "run"
    assert best == run / "best.safetensors" and best.is_file()
    for name in ("last.safetensors", "last.train.pt", "history.jsonl", "config.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]
    assert lines[0]["train_images"] == 8
    assert set(lines[0]["loss"]) == {"ano", "cls", "ex_cls", "bound", "union", "total"}
    assert all(np.isfinite(v) for v in lines[0]["loss"].values())
    assert "mean_auc" in lines[0]["val"]["summary"] and len(lines[0]["val"]["tiou"]) == 7
    model = load_model(best)
    assert model.spec.input_size == SIZE and model.spec.class_names
    # Training moved the weights away from a fresh initialisation's last state.
    state = torch.load(run / "last.train.pt", weights_only=True)
    assert state["epoch"] == 3 and state["batch"] == 0


@pytest.mark.slow
def test_resume_after_interrupt_matches_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    import hamedge.training.train as T

    T.train(config(tiny_data, tmp_path / "straight"))
    calls = {"n": 0}
    real = T.batch_losses

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2, second batch, after its forward pass
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "batch_losses", interrupting)
    with pytest.raises(KeyboardInterrupt):
        T.train(config(tiny_data, tmp_path / "split"))
    state = torch.load(tmp_path / "split" / "last.train.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (2, 1)
    monkeypatch.setattr(T, "batch_losses", real)
    T.train(config(tiny_data, tmp_path / "split", resume=True))
    a = weights(tmp_path / "straight" / "last.safetensors")
    b = weights(tmp_path / "split" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    hist = (tmp_path / "split" / "history.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in hist] == [1, 2]


def test_resume_without_state_and_other_architecture(tiny_data, tmp_path):
    from hamedge.training.train import train

    with pytest.raises(HamedgeError, match="nothing to resume"):
        train(config(tiny_data, tmp_path / "empty", resume=True))
    train(config(tiny_data, tmp_path / "r", epochs=1, limit_batches=1))
    with pytest.raises(HamedgeError, match="resnet34|not this run"):
        train(config(tiny_data, tmp_path / "r", arch="resnet34", resume=True))


def test_evaluate_checkpoint_and_blob_baseline(tiny_data, tmp_path):
    from hamedge.model.checkpoint import save_checkpoint
    from hamedge.model.network import HAM
    from hamedge.spec import ModelSpec
    from hamedge.synth import SYNTH_CLASSES
    from hamedge.training.evaluate import evaluate_checkpoint

    spec = ModelSpec(arch="resnet18", output_stride=32, input_size=SIZE, class_names=SYNTH_CLASSES)
    torch.manual_seed(0)
    ckpt = save_checkpoint(HAM(spec), spec, tmp_path / "m.safetensors")
    res = evaluate_checkpoint(ckpt, tiny_data, split="test", batch_size=4, with_baseline=True)
    json.dumps(res)
    assert res["num_images"] == 10
    loc = res["localisation"]
    assert loc["box_images"] >= 1 and len(loc["mean"]["tiou"]) == 7
    blob = res["centred_blob_baseline"]
    assert blob["localisation"]["box_images"] == loc["box_images"]
    assert 0.0 <= blob["summary"]["mean_tiou@0.3"] <= 1.0


def test_run_evaluation_oracle_scores_perfectly(tiny_data):
    from hamedge.datasets import box_mask, load_nih_layout
    from hamedge.evaluation import run_evaluation
    from hamedge.io import read_image
    from hamedge.spec import ModelSpec

    labelled = load_nih_layout(tiny_data, "test")
    spec = ModelSpec(arch="resnet18", output_stride=32, input_size=SIZE,
                     class_names=tuple(labelled.class_names))
    records = list(labelled.records)
    pos = {"i": 0}

    def oracle(batch):  # perfect scores and refined heatmaps equal to the box masks
        chunk = records[pos["i"]:pos["i"] + batch.shape[0]]
        pos["i"] += batch.shape[0]
        labels = np.stack([r.labels for r in chunk])
        maps = np.zeros((len(chunk), 1 + spec.num_classes, SIZE, SIZE), np.float32)
        for j, r in enumerate(chunk):
            hw = read_image(r.path).shape[:2]
            for k, name in enumerate(spec.class_names):
                maps[j, 1 + k] = box_mask(r, name, SIZE, hw)
        return labels, labels.max(1), maps

    res = run_evaluation(oracle, labelled, spec, batch_size=3, heatmaps_refined=True)
    cls = res["classification"]
    assert all(v in (None, 1.0) for v in cls["auc"].values())
    assert cls["anomaly_auc"] == 1.0
    loc = res["localisation"]
    assert loc["box_images"] > 0
    assert loc["mean"]["tiou"] == [1.0] * 7 and loc["mean"]["tior"] == [1.0] * 5


def test_cli_evaluate_and_errors(tiny_data, tmp_path, capsys):
    from hamedge.cli import run_app
    from hamedge.model.checkpoint import save_checkpoint
    from hamedge.model.network import HAM
    from hamedge.spec import ModelSpec

    spec = ModelSpec(arch="resnet18", output_stride=32, input_size=SIZE,
                     class_names=("Mass", "Nodule"))
    ckpt = save_checkpoint(HAM(spec), spec, tmp_path / "two.safetensors")
    # data with classes the model does not know -> one-line error
    rc = run_app(["evaluate", str(ckpt), "--data", str(tiny_data), "--limit", "4"])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("error: ") and "Traceback" not in err
    rc = run_app(["evaluate", str(ckpt), "--data", str(tmp_path / "missing")])
    assert rc == 2 and "no such data set folder" in capsys.readouterr().err
    rc = run_app(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no known data set layout" in capsys.readouterr().err
    rc = run_app(["train", "--data", str(tiny_data), "--out", str(tmp_path / "o"),
                  "--loss-weights", "nope=1"])
    assert rc == 2 and "loss weight" in capsys.readouterr().err

    from hamedge.synth import SYNTH_CLASSES

    spec = spec.replace(class_names=SYNTH_CLASSES)
    ckpt = save_checkpoint(HAM(spec), spec, tmp_path / "full.safetensors")
    out_json = tmp_path / "m.json"
    rc = run_app(["evaluate", str(ckpt), "--data", str(tiny_data), "--json", str(out_json),
                  "--batch-size", "4"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "mean" in text and "IoU≥0.3" in text
    data = json.loads(out_json.read_text())
    assert data["num_images"] == 10 and "classification" in data


def test_cli_train_smoke(tiny_data, tmp_path):
    from hamedge.cli import run_app

    rc = run_app(["train", "--data", str(tiny_data), "--out", str(tmp_path / "cli"),
                  "--output-stride", "32", "--img-size", str(SIZE), "--epochs", "1",
                  "--batch-size", "4", "--limit-batches", "1", "--limit-val", "4", "--lr", "1e-3",
                  "--loss-weights", "ex_cls=1"])
    assert rc == 0
    assert (tmp_path / "cli" / "best.safetensors").is_file()
    cfg = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert cfg["loss_weights"]["ex_cls"] == 1.0 and cfg["loss_weights"]["ano"] == 0.01


def test_sigterm_saves_resumable_state(tiny_data, tmp_path, monkeypatch):
    import os
    import signal

    import hamedge.training.train as T

    calls = {"n": 0}
    real = T.batch_losses

    def terminated(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "batch_losses", terminated)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        T.train(config(tiny_data, tmp_path / "t", epochs=1))
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored
    state = torch.load(tmp_path / "t" / "last.train.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 1)
