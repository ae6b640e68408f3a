"""A second signature in model.tflite that scores without the map: the forward operators only.

The exported graph computes the Grad-CAM map's gradient with a backward pass (trainer/cam_backward.py), about a
third of its arithmetic, in every inference. Scoring a folder into a CSV needs only the probability, P(viral)
and the refusal score. This adds a subgraph holding just the operators those outputs depend on, with tensors
pointing at the same weight buffers (the file grows by its operator and tensor tables only, ~50 kB), and a
signature `score` (model_card.SCORE_SIGNATURE_KEY) for it. Same operators on the same weights: its outputs are
the full signature's, bit for bit (checked at export; at load the runtime falls back to the full signature if
they ever differ). Graphs with control flow or variables are refused (their effects are not outputs). Packing
the model again keeps every buffer's bytes but not the converter's 16-byte alignment of them; LiteRT reads
them either way (the export's checks run on the packed file).
"""

from __future__ import annotations

import copy
import logging

import flatbuffers
from tensorflow.lite.python import schema_py_generated as schema

from pneumo_desktop.core import model_card as mc

log = logging.getLogger(__name__)

_IDENTIFIER = b"TFL3"


def add_score_signature(tflite: bytes) -> bytes:
    """`tflite` (one subgraph with the contract's signature) with the `score` signature added."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
    signatures = {sig.signatureKey.decode(): sig for sig in model.signatureDefs or []}
    if mc.SCORE_SIGNATURE_KEY in signatures:
        return tflite
    full = signatures[mc.SIGNATURE_KEY]
    graph = model.subgraphs[full.subgraphIndex]
    outputs = {t.name.decode(): t.tensorIndex for t in full.outputs}
    kept_names = [name for name in mc.SCORE_OUTPUTS if name in outputs]

    codes = [model.operatorCodes[op.opcodeIndex] for op in graph.operators]
    stateful = {name for code in codes
                if (name := _builtin_name(max(code.builtinCode, code.deprecatedBuiltinCode))) in _STATEFUL}
    if stateful:  # an operator with an effect but no output we keep would be dropped silently
        raise ValueError(f"cannot add a score signature to a graph with stateful operators {sorted(stateful)}")
    # Walk the operators backwards from the kept outputs: an operator stays if it writes a tensor needed later,
    # and then all its tensors are the new subgraph's (outputs it writes that nobody reads, intermediates).
    needed = {outputs[name] for name in kept_names}
    operators = []
    for op in reversed(graph.operators):
        if any(o in needed for o in op.outputs):
            operators.append(op)
            needed.update(i for i in op.inputs if i >= 0)
            needed.update(op.outputs)
            needed.update(op.intermediates if op.intermediates is not None else [])
    operators.reverse()
    inputs = {t.name.decode(): t.tensorIndex for t in full.inputs}
    tensors = sorted(needed | set(inputs.values()))
    index = {old: new for new, old in enumerate(tensors)}

    sub = schema.SubGraphT()
    sub.name = mc.SCORE_SIGNATURE_KEY.encode()
    sub.tensors = [copy.deepcopy(graph.tensors[t]) for t in tensors]  # same buffer indices: shared weights
    sub.inputs = [index[t] for t in graph.inputs]
    sub.outputs = [index[outputs[name]] for name in kept_names]
    sub.operators = []
    for op in operators:
        new = copy.deepcopy(op)
        new.inputs = [index[i] if i >= 0 else i for i in op.inputs]  # -1: an optional input left out
        new.outputs = [index[o] for o in op.outputs]
        new.intermediates = [index[i] for i in op.intermediates] if op.intermediates is not None else None
        sub.operators.append(new)
    model.subgraphs.append(sub)

    signature = schema.SignatureDefT()
    signature.signatureKey = mc.SCORE_SIGNATURE_KEY.encode()
    signature.subgraphIndex = len(model.subgraphs) - 1
    signature.inputs = [_tensor_map(name, index[t]) for name, t in inputs.items()]
    signature.outputs = [_tensor_map(name, index[outputs[name]]) for name in kept_names]
    model.signatureDefs.append(signature)
    log.info("score signature: %d of %d operators, outputs %s", len(operators), len(graph.operators), kept_names)

    builder = flatbuffers.Builder(len(tflite) + (1 << 20))
    builder.Finish(model.Pack(builder), file_identifier=_IDENTIFIER)
    return bytes(builder.Output())


_STATEFUL = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE", "WHILE", "IF", "CALL"}


_BUILTIN_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items() if isinstance(value, int)}


def _builtin_name(code: int) -> str:
    return _BUILTIN_NAMES.get(code, str(code))


def _tensor_map(name: str, tensor: int) -> schema.TensorMapT:
    entry = schema.TensorMapT()
    entry.name, entry.tensorIndex = name.encode(), tensor
    return entry
