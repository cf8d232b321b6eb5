"""Deployment export of a finished QAT run (`python -m qat.export RUN_DIR`).

- run_model.py  rebuild a run's final fake-quant model from its directory (config, final.pt, frozen codes)
- onnx_qdq.py   ONNX in QDQ form: integer weight initializers + DequantizeLinear, Clip→Q→DQ on activations
- packed.py     bit-packed integer checkpoint and its loader
- check.py      ONNX Runtime against the PyTorch fake-quant model on the run's test set
- report.py     sizes: FP32 weights, packed checkpoint, ONNX file, and their ratios
"""
