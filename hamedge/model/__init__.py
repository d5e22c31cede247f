"""The torch layer: the HAM network (`network`), hamedge checkpoints (`checkpoint`: save_checkpoint,
load_checkpoint, load_model, resolve_checkpoint, checkpoint_info), import of the reference
repository's checkpoints and configs (`reference`), the exported graph contract (`graph`: ONNX).
The `hamedge export` flow built on it is hamedge.export. Import the submodules directly."""
