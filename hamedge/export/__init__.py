"""`hamedge export`: checkpoint -> bundle. The orchestration above the model (the graph),
calibration (INT8) and hamedge.trt (engines) layers: ``ExportOptions`` (validated as a whole before
any work) and ``export_bundle``. Parity numbers are hamedge.compare's."""

from hamedge.export.flow import check_parity, export_bundle
from hamedge.export.options import ExportOptionError, ExportOptions

__all__ = ["ExportOptionError", "ExportOptions", "check_parity", "export_bundle"]
