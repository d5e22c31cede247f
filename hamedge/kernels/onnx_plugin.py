"""The ONNX form TensorRT maps to the FusedRefine plugin (`hamedge export --fused-plugin`).

One node, op_type ``FusedRefine``, domain ``hamedge``, attributes H, W, gain, center, zero_range,
plugin_namespace "hamedge", plugin_version "1" and aot=1 (TensorRT's ONNX parser turns a node it
has no importer for into the plugin of the same name; from 10.9 ``aot`` picks the Python plugin's
ahead-of-time implementation). It consumes the raw low-resolution maps and gives the refined ones,
replacing whatever refinement the graph had.

ONNX Runtime cannot run such a graph (it knows no ``hamedge`` domain): the bundle keeps the
standard-op graph as model.onnx, and the plugin graph sits beside it for TensorRT only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hamedge.errors import HamedgeError

if TYPE_CHECKING:
    import onnx

    from hamedge.spec import ModelSpec

PLUGIN_NAME = "FusedRefine"
PLUGIN_NAMESPACE = "hamedge"
PLUGIN_VERSION = "1"
MAPS_OUTPUT = "attention_maps"


class PluginGraphError(HamedgeError):
    """The graph does not have the shape the fused-plugin rewrite needs."""


def make_fused_refine_node(input_name: str, output_name: str, size, gain: float, center: float,
                           zero_range: float = 1e-5, aot: bool = True, name: str = "FusedRefine"):
    """The plugin node: raw maps (B, K, h, w) -> refined maps (B, K, H, W)."""
    from onnx import helper

    height, width = (size, size) if isinstance(size, int) else size
    return helper.make_node(
        PLUGIN_NAME, [input_name], [output_name], name=name, domain=PLUGIN_NAMESPACE,
        H=int(height), W=int(width), gain=float(gain), center=float(center),
        zero_range=float(zero_range), plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION, aot=int(bool(aot)))


def _shape(value_info) -> list[Any]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def _find_raw_maps(model: "onnx.ModelProto", output: str, channels: int | None,
                   size: tuple[int, int]) -> str:
    """Name of the raw low-resolution maps feeding ``output``.

    They are the last tensor (in graph order) that only ``output`` depends on, has rank 4 (with
    ``channels`` channels) and not the full spatial ``size``, does not depend on a
    ReduceMin/ReduceMax of that exclusive part (the refinement's normalisation does; the CAM
    projection and ReLU do not), and lies on every path to ``output`` (so the refinement's side
    branches, e.g. the extreme-candidate MatMuls, are not taken for it).
    """
    import onnx

    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: _shape(vi) for vi in list(inferred.graph.value_info) + list(
        inferred.graph.output) + list(inferred.graph.input)}
    producer = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer}

    def ancestors(name: str, stop: str | None = None) -> set[int]:
        seen, stack = set(), [name]
        while stack:
            tensor = stack.pop()
            node = producer.get(tensor)
            if tensor == stop or node is None or id(node) in seen:
                continue
            seen.add(id(node))
            stack.extend(node.input)
        return seen

    def dominates(tensor: str) -> bool:
        cut = ancestors(output, stop=tensor)
        for node in graph.node:
            if id(node) in cut:
                for i in node.input:
                    if i and i != tensor and i not in constants and (
                            i not in producer or id(producer[i]) not in cut):
                        return False
        return True

    others = set()
    for out in graph.output:
        if out.name != output:
            others |= ancestors(out.name)
    exclusive = ancestors(output) - others
    tainted: set[str] = set()  # tensors downstream of a reduction inside the exclusive part
    candidates = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if id(node) not in exclusive:
            continue
        is_tainted = node.op_type in ("ReduceMin", "ReduceMax") or any(
            i in tainted for i in node.input)
        for o in node.output:
            if is_tainted:
                tainted.add(o)
                continue
            shape = shapes.get(o)
            if (shape and len(shape) == 4 and (channels is None or shape[1] == channels)
                    and (o == output or list(shape[2:]) != list(size))):
                candidates.append(o)
    for name in reversed(candidates):
        if dominates(name):
            return name
    raise PluginGraphError(f"cannot find the raw attention maps feeding {output!r}")


def add_fused_plugin_node(model: "onnx.ModelProto", cams_output_name: "str | ModelSpec" = MAPS_OUTPUT,
                          size=None, gain: float | None = None, center: float | None = None,
                          aot: bool = True) -> "onnx.ModelProto":
    """A copy of ``model`` whose output ``cams_output_name`` comes from one FusedRefine node.

    Works on low-resolution graphs (the output is the raw maps: it becomes the refined maps at
    ``size``) and on full-resolution graphs (the refinement subgraph is replaced). The second
    argument may also be a ModelSpec: output "attention_maps", size/gain/center from the spec.
    """
    import onnx
    from onnx import helper

    if not isinstance(cams_output_name, str):  # a ModelSpec
        spec = cams_output_name
        cams_output_name = MAPS_OUTPUT
        size = spec.input_size if size is None else size
        gain = spec.cam_gain if gain is None else gain
        center = spec.cam_center if center is None else center
        channels = 1 + spec.num_classes
    else:
        channels = None
    if size is None or gain is None or center is None:
        raise ValueError("size, gain and center are required")
    height, width = (size, size) if isinstance(size, int) else size
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    outputs = {o.name: o for o in graph.output}
    if cams_output_name not in outputs:
        raise PluginGraphError(f"graph has no output {cams_output_name!r}")
    raw = _find_raw_maps(out, cams_output_name, channels, (int(height), int(width)))
    if raw == cams_output_name:  # low-res graph: rename the raw output inside the graph
        raw = cams_output_name + "_raw"
        for node in graph.node:
            node.output[:] = [raw if o == cams_output_name else o for o in node.output]
            node.input[:] = [raw if i == cams_output_name else i for i in node.input]
    else:  # full-res graph: drop the refinement nodes (everything between raw and the output)
        producer = {o: n for n in graph.node for o in n.output}
        drop, stack = set(), [cams_output_name]
        while stack:
            node = producer.get(stack.pop())
            if node is None or id(node) in drop:
                continue
            drop.add(id(node))
            stack.extend(i for i in node.input if i != raw)
        needed_elsewhere = set()
        for node in graph.node:
            if id(node) not in drop:
                needed_elsewhere.update(node.input)
        keep = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(keep)
        used = needed_elsewhere | {i for n in keep for i in n.input}
        inits = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(inits)
    graph.node.append(make_fused_refine_node(raw, cams_output_name, (height, width), gain, center,
                                             aot=aot))
    # The output keeps its name; its spatial size is now the full size.
    vi = outputs[cams_output_name]
    dims = vi.type.tensor_type.shape.dim
    if len(dims) == 4:
        dims[2].Clear()
        dims[2].dim_value = int(height)
        dims[3].Clear()
        dims[3].dim_value = int(width)
    kept = [v for v in graph.value_info if v.name != cams_output_name]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    if not any(op.domain == PLUGIN_NAMESPACE for op in out.opset_import):
        out.opset_import.append(helper.make_opsetid(PLUGIN_NAMESPACE, 1))
    out.doc_string = ("TensorRT-only graph: node FusedRefine (domain hamedge) is the hamedge "
                      "TensorRT plugin; ONNX Runtime cannot run it (use model.onnx).")
    return out
