"""Training HAM models: data pipeline (training.data), losses, the training loop, evaluation."""
