"""The torch layer: the HAM network (`network`), hamedge checkpoints (`checkpoint`: save_checkpoint,
load_checkpoint, load_model, resolve_checkpoint, load_any), import of the reference repository's
checkpoints and configs (`reference`), ONNX export (`export`). Import the submodules directly."""
