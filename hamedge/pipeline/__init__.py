"""Batched, pipelined inference over many files with a durable, resumable results store."""

from hamedge.pipeline.prediction import Prediction, predictions_from_outputs
from hamedge.pipeline.run import (EXIT_FATAL, EXIT_OK, EXIT_SOME_FAILED, InferOptions, RunSummary,
                                  discover, model_id, run_inference)
from hamedge.pipeline.store import ResultsStore

__all__ = ["EXIT_FATAL", "EXIT_OK", "EXIT_SOME_FAILED", "InferOptions", "Prediction", "ResultsStore",
           "RunSummary", "discover", "model_id", "predictions_from_outputs", "run_inference"]
