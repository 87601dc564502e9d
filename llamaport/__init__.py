"""llamaport: Llama-family models from PyTorch to ONNX / TensorRT engines and a runtime to run them.

Subpackages: `llamaport.models` (eager model, loaders), `llamaport.exporter`, `llamaport.plugins`,
`llamaport.runtime`, `llamaport.ci`. Nothing heavy is imported here, so `import llamaport` never needs torch.
"""

__version__ = "0.1.0"
