"""A trained head as a TFLite file, written with LiteRT's own flatbuffer schema.

The head is three built-in operators: L2_NORMALIZATION, FULLY_CONNECTED and SOFTMAX. Writing them
directly, rather than through TensorFlow's converter, keeps TensorFlow out of ``scai train`` (its
import alone is four times the rest of a cached run) and makes the quantised file exactly what
post-training quantisation defines: int8 input and logits scaled to the ranges seen on a
representative set of training features, int8 weights with one symmetric scale, int32 bias, and the
fixed output scales TFLite requires of L2_NORMALIZATION (1/128) and SOFTMAX (1/256, zero point -128).
``float16`` stores the weights as float16 and dequantises them when the model is loaded.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from scai.train.head import normalise

MODES = ("none", "float16", "int8")
_TYPES = {
    np.dtype(np.float32): schema.TensorType.FLOAT32,
    np.dtype(np.float16): schema.TensorType.FLOAT16,
    np.dtype(np.int8): schema.TensorType.INT8,
    np.dtype(np.int32): schema.TensorType.INT32,
}


class _Graph:
    """One subgraph under construction: tensors, constant buffers, operators."""

    def __init__(self) -> None:
        self.model = schema.ModelT()
        self.model.version, self.model.description = 3, "scai trained head"
        self.model.buffers, self.model.operatorCodes = [schema.BufferT()], []  # buffer 0 is the empty one
        self.graph = schema.SubGraphT()
        self.graph.tensors, self.graph.operators = [], []
        self.model.subgraphs = [self.graph]

    def tensor(
        self,
        name: str,
        shape: list[int],
        dtype: type,
        scale: float | None = None,
        zero: int = 0,
        data: np.ndarray | None = None,
    ) -> int:
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type = name, shape, _TYPES[np.dtype(dtype)]
        if shape and shape[0] == 1 and data is None:
            tensor.shapeSignature = [-1, *shape[1:]]
        if scale is not None:
            tensor.quantization = schema.QuantizationParametersT()
            tensor.quantization.scale, tensor.quantization.zeroPoint = [float(scale)], [int(zero)]
        if data is not None:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data, dtype).tobytes(), np.uint8)
            self.model.buffers.append(buffer)
            tensor.buffer = len(self.model.buffers) - 1
        self.graph.tensors.append(tensor)
        return len(self.graph.tensors) - 1

    def operator(
        self, code: int, version: int, inputs: list[int], output: int, options_type: int = 0, options: object = None
    ) -> None:
        known = [(c.builtinCode, c.version) for c in self.model.operatorCodes]
        if (code, version) not in known:
            opcode = schema.OperatorCodeT()
            opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), version
            self.model.operatorCodes.append(opcode)
            known.append((code, version))
        operator = schema.OperatorT()
        operator.opcodeIndex, operator.inputs, operator.outputs = known.index((code, version)), inputs, [output]
        operator.builtinOptionsType, operator.builtinOptions = options_type, options
        self.graph.operators.append(operator)

    def finish(self, inputs: list[int], outputs: list[int]) -> bytes:
        self.graph.inputs, self.graph.outputs, self.graph.name = inputs, outputs, "main"
        builder = flatbuffers.Builder(1024)
        builder.Finish(self.model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def head_model(
    weights: np.ndarray, bias: np.ndarray, mode: str = "none", representative: np.ndarray | None = None
) -> bytes:
    """The TFLite file of a head taking raw features [1, D] to class scores [1, C].

    ``weights`` [D, C] and ``bias`` [C] apply to L2-normalised features. ``int8`` needs
    ``representative`` features to set the input and logits ranges."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    if mode == "int8" and (representative is None or not len(representative)):
        raise ValueError("int8 quantisation needs representative features")
    size, classes = weights.shape
    g = _Graph()
    if mode == "int8":
        features = g.tensor("features", [1, size], np.int8, *_range_params(representative))
        normalised = g.tensor("normalised", [1, size], np.int8, 1 / 128, 0)
        constants = _int8_constants(g, weights, bias)
        logits_range = _range_params(normalise(representative) @ weights + bias)
        logits = g.tensor("logits", [1, classes], np.int8, *logits_range)
        scores = g.tensor("scores", [1, classes], np.int8, 1 / 256, -128)
    else:
        features = g.tensor("features", [1, size], np.float32)
        normalised = g.tensor("normalised", [1, size], np.float32)
        constants = _float_constants(g, weights, bias, mode)
        logits = g.tensor("logits", [1, classes], np.float32)
        scores = g.tensor("scores", [1, classes], np.float32)
    quantised = mode == "int8"  # the operators' int8 kernels are later versions
    op, options = schema.BuiltinOperator, schema.BuiltinOptions
    softmax = schema.SoftmaxOptionsT()
    softmax.beta = 1.0
    g.operator(op.L2_NORMALIZATION, 2 if quantised else 1, [features], normalised,
               options.L2NormOptions, schema.L2NormOptionsT())  # fmt: skip
    g.operator(op.FULLY_CONNECTED, 4 if quantised else 1, [normalised, *constants], logits,
               options.FullyConnectedOptions, schema.FullyConnectedOptionsT())  # fmt: skip
    g.operator(op.SOFTMAX, 2 if quantised else 1, [logits], scores, options.SoftmaxOptions, softmax)
    return g.finish([features], [scores])


def _float_constants(g: _Graph, weights: np.ndarray, bias: np.ndarray, mode: str) -> list[int]:
    """Weights [C, D] and bias as float32 tensors; for float16, stored as float16 and dequantised."""
    kernel, offsets = weights.T.astype(np.float32), bias.astype(np.float32)
    if mode != "float16":
        return [g.tensor("weights", list(kernel.shape), np.float32, data=kernel),
                g.tensor("bias", list(offsets.shape), np.float32, data=offsets)]  # fmt: skip
    constants = []
    for name, values in (("weights", kernel), ("bias", offsets)):
        stored = g.tensor(f"{name}_f16", list(values.shape), np.float16, data=values)
        constants.append(g.tensor(name, list(values.shape), np.float32))
        g.operator(schema.BuiltinOperator.DEQUANTIZE, 3, [stored], constants[-1])
    return constants


def _int8_constants(g: _Graph, weights: np.ndarray, bias: np.ndarray) -> list[int]:
    """int8 weights [C, D] with one symmetric scale; int32 bias at the scale of its products with the
    normalised input (1/128)."""
    w_scale = max(float(np.abs(weights).max()), 1e-12) / 127
    kernel = np.clip(np.round(weights.T / w_scale), -127, 127).astype(np.int8)
    b_scale = w_scale / 128
    return [g.tensor("weights", list(kernel.shape), np.int8, w_scale, 0, kernel),
            g.tensor("bias", [len(bias)], np.int32, b_scale, 0, np.round(bias / b_scale).astype(np.int32))]  # fmt: skip


def _range_params(values: np.ndarray) -> tuple[float, int]:
    """Asymmetric int8 scale and zero point covering ``values`` (and 0, which must be exact)."""
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    scale = max(high - low, 1e-12) / 255
    return scale, int(np.clip(np.round(-128 - low / scale), -128, 127))
