"""`hamedge export --triton-repo`: every config.pbtxt parses with Triton's own model-config
protobuf and says what the bundle says; the pre/post-processing Python models and the ensemble
run in the real tritonserver (the network step served by a Python-backend ONNX Runtime model, as
the bundled server has no ONNX Runtime backend) and answer what `hamedge infer` answers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from infer_helpers import write_dicom
from serve_helpers import free_ports, leftovers, require_triton

pytest.importorskip("tritonclient.grpc", reason="tritonclient not installed "
                    "(pip install 'hamedge[serve]')")


def test_configs_parse_with_tritons_protobuf(tiny_bundle, tmp_path):
    from hamedge.bundle import Bundle
    from hamedge.serve.repository import Batching, parse_config, write_triton_repo

    bundle = Bundle.open(tiny_bundle)
    written = write_triton_repo(tmp_path / "repo", bundle, batching=Batching(max_batch=4))
    assert sorted(written) == ["hamedge_ensemble", "hamedge_onnx", "hamedge_postprocess",
                               "hamedge_preprocess"]  # no engines in this bundle: no TensorRT
    configs = {name: parse_config((folder / "config.pbtxt").read_text())
               for name, folder in written.items()}
    onnx = configs["hamedge_onnx"]
    assert onnx.backend == "onnxruntime" and onnx.max_batch_size == 4
    assert (written["hamedge_onnx"] / "1" / "model.onnx").read_bytes() == \
        (tiny_bundle / "model.onnx").read_bytes()
    assert [(i.name, list(i.dims)) for i in onnx.input] == [("image", [1, 64, 64])]
    k, side = bundle.spec.num_classes, bundle.graph.heatmap_size
    assert [(o.name, list(o.dims)) for o in onnx.output] == [
        ("class_probs", [k]), ("anomaly_prob", [1]), ("attention_maps", [1 + k, side, side])]
    assert list(onnx.dynamic_batching.preferred_batch_size) == [4]
    ensemble = configs["hamedge_ensemble"]
    assert ensemble.platform == "ensemble"
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "hamedge_preprocess", "hamedge_onnx", "hamedge_postprocess"]
    assert configs["hamedge_preprocess"].input[0].allow_ragged_batch
    with pytest.raises(Exception):
        parse_config("name: 'x' no_such_field: 1")
    from hamedge.errors import HamedgeError

    with pytest.raises(HamedgeError, match="not an empty folder"):
        write_triton_repo(tmp_path / "repo", bundle)


@pytest.mark.slow
def test_ensemble_runs_in_tritonserver_like_infer(tiny_bundle, tmp_path, nih_images):
    require_triton()
    import hamedge
    from hamedge.bundle import Bundle
    from hamedge.client import Client, ServerError
    from hamedge.serve.repository import (Batching, python_model_config, write_model,
                                          write_triton_repo)
    from hamedge.serve.server import ServeConfig, ServerProcess
    from hamedge.serve.tritonserver import python_paths

    bundle = Bundle.open(tiny_bundle)
    batching = Batching(max_batch=4)
    repo = tmp_path / "repo"
    write_triton_repo(repo, bundle, batching=batching, sys_path=python_paths(),
                      model_step="hamedge_net_py")
    shutil.rmtree(repo / "hamedge_onnx")  # no onnxruntime backend in the bundled tritonserver
    write_model(repo, python_model_config("hamedge_net_py", "tensor", bundle, batching, {
        "bundle": str(tiny_bundle), "backend": "onnxruntime", "precision": "fp32",
        "threads": "1", "hamedge_sys_path": json.dumps(python_paths())}))
    http, grpc, metrics = free_ports(3)
    config = ServeConfig("", http_port=http, grpc_port=grpc, metrics_port=metrics,
                         drain_seconds=2, repository=str(repo))
    dicom = tmp_path / "dx.dcm"
    write_dicom(dicom, (np.arange(180 * 150).reshape(180, 150) % 4000).astype(np.uint16))
    model = hamedge.load(tiny_bundle)
    with ServerProcess(config) as server:
        supervisor = server.proc.pid
        with Client(f"grpc://{config.grpc_url}", timeout=30) as client:
            for path in (nih_images[0], dicom):
                want = model.predict(str(path)).to_dict()
                want.pop("path")
                assert client.infer_file(path, model="hamedge_ensemble") == want
            with pytest.raises(ServerError, match="not an image"):
                client.infer_file(b"garbage" * 40, model="hamedge_ensemble")
    assert leftovers(supervisor) == []


def test_export_cli_writes_the_repository(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("hamedge.calibration", reason="hamedge export needs hamedge.calibration")
    from hamedge.cli import run_app
    from hamedge.model.checkpoint import save_checkpoint
    from hamedge.model.network import random_model

    from infer_helpers import TINY_SPEC

    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(random_model(TINY_SPEC, 0), TINY_SPEC, ckpt)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert run_app(["export", str(ckpt), "--out", str(tmp_path / "b0"), "--triton-repo",
                    str(busy)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert not (tmp_path / "b0").exists()  # refused before exporting
    repo = tmp_path / "repo"
    assert run_app(["export", str(ckpt), "--out", str(tmp_path / "b"), "--triton-repo",
                    str(repo), "--max-batch", "4"]) == 0
    from hamedge.serve.repository import parse_config

    assert parse_config((repo / "hamedge_onnx" / "config.pbtxt").read_text()).max_batch_size == 4
    assert (repo / "hamedge_ensemble" / "config.pbtxt").is_file()
    assert (repo / "hamedge_preprocess" / "1" / "model.py").is_file()
