"""The network (a plain MLP) and its export to ONNX, written from the weights so the
servable graph does not depend on torch's exporter."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # readable by every onnxruntime the serving image may carry
INPUT_NAME = "features"


def build_mlp(width: int, hidden: Sequence[int], outputs: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    previous = width
    for units in hidden:
        layers += [nn.Linear(previous, units), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        previous = units
    layers.append(nn.Linear(previous, outputs))
    return nn.Sequential(*layers)


def to_onnx(model: nn.Sequential, width: int, classification: bool) -> bytes:
    """`features` float32 [batch, width] -> `probabilities` (softmax) or `value`."""
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    current = INPUT_NAME
    linear_index = 0
    for layer in model:
        if isinstance(layer, nn.Linear):
            w = f"w{linear_index}"
            b = f"b{linear_index}"
            weights.append(numpy_helper.from_array(_array(layer.weight), w))
            weights.append(numpy_helper.from_array(_array(layer.bias), b))
            out = f"linear{linear_index}"
            nodes.append(helper.make_node("Gemm", [current, w, b], [out], transB=1))
            current = out
            linear_index += 1
        elif isinstance(layer, nn.ReLU):
            out = f"{current}_relu"
            nodes.append(helper.make_node("Relu", [current], [out]))
            current = out
        elif not isinstance(layer, nn.Dropout):  # dropout is the identity when serving
            raise TypeError(f"cannot export layer {type(layer).__name__} to ONNX")
    outputs = model[-1].out_features if isinstance(model[-1], nn.Linear) else 0
    output_name = "probabilities" if classification else "value"
    if classification:
        nodes.append(helper.make_node("Softmax", [current], [output_name], axis=1))
    else:
        nodes.append(helper.make_node("Identity", [current], [output_name]))
    graph = helper.make_graph(
        nodes,
        "retrain_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", outputs])],
        initializer=weights,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="retrain-trainer",
    )
    proto.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _array(parameter: torch.Tensor) -> np.ndarray:
    return parameter.detach().to("cpu", torch.float32).numpy()


def predict(model: nn.Module, features: np.ndarray, classification: bool) -> np.ndarray:
    """The trained model's own outputs, as the ONNX graph computes them."""
    model.eval()
    with torch.no_grad():
        outputs = model(torch.from_numpy(features))
        if classification:
            outputs = torch.softmax(outputs, dim=1)
    return outputs.numpy()
