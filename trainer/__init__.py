"""The training job and the serving container.

`trainer.task` trains (needs torch); `trainer.serving` serves what it wrote (needs only
numpy and onnxruntime). Shared pieces (`features`, `blobs`, `errors`) import no torch.
"""
