"""Serving a bundle on Triton Inference Server: ``hamedge serve``, the model repository it runs,
the DICOM listener and the load generator. No torch. Needs the ``serve`` extra (tritonclient,
pynetdicom) and a tritonserver binary (see hamedge.serve.tritonserver)."""
