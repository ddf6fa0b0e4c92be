"""Taking mmcvt's models out of PyTorch: ONNX export
(:mod:`mmcvt.deployment.onnx_export`, which needs the ``onnx`` extra:
``pip install 'mmcvt[onnx]'``)."""
