"""Grow a graph traced with a few decoder layers to the model's depth by cloning its last layer.

Tracing (torch.export, its decompositions, the ONNX translation) costs time per traced op, so a model's layers
cost it in proportion to their number; the exporter traces `TRACED_LAYERS` of them and clones the last one here,
on the unoptimized graph, which then goes through the optimizer and fusions like a full trace.

Why three layers: layer 0 differs from the others (it computes what every layer shares: attention lengths, the
constants torch.onnx caches and reuses), and layers 1 and 2 are the same code. Comparing layer 1 with layer 2,
node for node, checks that the layers really are copies of one template (same ops, attributes, and each input
taken from the same place: the layer itself, the previous layer's residual stream, the layer's own weights and
cache, or a value all layers share), and shows how every name moves on from one layer to the next: torch numbers
values with per-kind counters (`linear_4` -> `linear_8`, `val_29` -> `val_34`), and the numbers in
`model.model.layers.1.*` and `past.1.key` move by one. Clones and the part after the layers (final norm, head)
get the names a full trace gives them, so the initializers the optimizer folds from weights (named after values,
`val_N`) come out under a full trace's names. Anything that does not fit raises `NotReplicable`; the caller then
traces the whole model. Layer membership comes from torch.onnx's node metadata (the module scopes), not names.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

TRACED_LAYERS = 3  # layer 0 (different), layer 1 (the reference), layer 2 (the template cloned)
_SCOPES = "pkg.torch.onnx.name_scopes"
_LAYER_SCOPE = re.compile(r"(?:.*\.)?layers\.(\d+)")
_DIGITS = re.compile(r"\d+")


class NotReplicable(Exception):
    """The traced layers are not copies of one template (or their names do not advance regularly)."""


def _layer_of(node: ir.Node) -> int | None:
    """The decoder layer whose module scope the node was traced in (torch.onnx's name_scopes metadata)."""
    scopes = node.metadata_props.get(_SCOPES)
    if not scopes:
        return None
    for scope in ast.literal_eval(scopes):
        match = _LAYER_SCOPE.fullmatch(scope)
        if match:
            return int(match.group(1))
    return None


def _skeleton(text: str) -> tuple[str, list[int]]:
    """`text` with its digit runs taken out: ("val_#", [29]) for "val_29"."""
    numbers = _DIGITS.findall(text)
    if any(len(n) > 1 and n.startswith("0") for n in numbers):  # "007" + 1 would not print back as "008"
        raise NotReplicable(f"name {text!r} has zero-padded numbers")
    return _DIGITS.sub("#", text), [int(n) for n in numbers]


def _advance(first: str, second: str, steps: int) -> str | None:
    """`second` moved on `steps` more layers, each number by as much as it moved from `first` to `second`;
    None where the two do not differ by their numbers only."""
    shape1, numbers1 = _skeleton(first)
    shape2, numbers2 = _skeleton(second)
    if shape1 != shape2:
        return None
    numbers = [b + (b - a) * steps for a, b in zip(numbers1, numbers2)]
    if any(n < 0 for n in numbers):
        return None
    parts = shape2.split("#")
    return parts[0] + "".join(str(n) + part for n, part in zip(numbers, parts[1:]))


class _Steps:
    """How names of one kind (value names, node names) move from one layer to the next: skeleton -> step of
    each of its numbers, learned from pairs (layer 1 name, layer 2 name) and required to be the same for all."""

    def __init__(self, kind: str):
        self.kind, self.steps = kind, {}

    def learn(self, first: str, second: str) -> None:
        (shape1, numbers1), (shape2, numbers2) = _skeleton(first), _skeleton(second)
        if shape1 != shape2:
            raise NotReplicable(f"{self.kind} names {first!r} and {second!r} differ by more than their numbers")
        step = tuple(b - a for a, b in zip(numbers1, numbers2))
        if self.steps.setdefault(shape2, step) != step:
            raise NotReplicable(f"{self.kind} names {shape2!r} do not advance by one step per layer")

    def shift(self, name: str, layers: int) -> str:
        """`name` (of the part after the layers) as it reads with `layers` more layers before it."""
        shape, numbers = _skeleton(name)
        step = self.steps.get(shape)
        if step is None:  # no name of this kind inside a layer: nothing says it moves
            return name
        parts = shape.split("#")
        return parts[0] + "".join(str(n + s * layers) + p for n, s, p in zip(numbers, step, parts[1:]))


@dataclass(frozen=True)
class _Input:
    """Where a template node's input comes from: `kind` in internal (this layer's node `node`, output `index`),
    previous (the previous layer's node `node`, output `index`), leaf (this layer's own graph input or
    initializer; `first` is layer 1's), shared (`value`, the same for all layers), none (an omitted input)."""

    kind: str
    node: int = -1
    index: int = -1
    first: ir.Value | None = None
    value: ir.Value | None = None


def _blocks(graph: ir.Graph) -> tuple[list[ir.Node], list[ir.Node], list[ir.Node], list[ir.Node]]:
    """(nodes before layer 1, layer 1, layer 2, nodes after layer 2), each layer a contiguous run of nodes."""
    nodes = list(graph)
    layers = [_layer_of(node) for node in nodes]
    found = sorted({layer for layer in layers if layer is not None})
    if found != list(range(TRACED_LAYERS)):
        raise NotReplicable(f"traced layers {found}, expected {list(range(TRACED_LAYERS))}")
    runs = {}
    for layer in (1, 2):
        positions = [i for i, found_layer in enumerate(layers) if found_layer == layer]
        if positions != list(range(positions[0], positions[-1] + 1)):
            raise NotReplicable(f"layer {layer}'s nodes are not contiguous")
        runs[layer] = (positions[0], positions[-1] + 1)
    (start1, end1), (start2, end2) = runs[1], runs[2]
    if end1 != start2 or any(layer is not None for layer in layers[end2:]):
        raise NotReplicable("nodes between or after the layers belong to a layer")
    return nodes[:start1], nodes[start1:end1], nodes[start2:end2], nodes[end2:]


def _same_attributes(a: ir.Node, b: ir.Node) -> bool:
    if a.attributes.keys() != b.attributes.keys():
        return False
    for name, x in a.attributes.items():
        y = b.attributes[name]
        if x.type != y.type or x.is_ref() or y.is_ref():
            return False
        if x.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return False  # subgraphs would need cloning of their own; torch emits none for a Llama
        if x.type in (ir.AttributeType.TENSOR, ir.AttributeType.TENSORS):
            xs = [x.value] if x.type == ir.AttributeType.TENSOR else list(x.value)
            ys = [y.value] if y.type == ir.AttributeType.TENSOR else list(y.value)
            if len(xs) != len(ys) or any(
                    s.dtype != t.dtype or not np.array_equal(s.numpy(), t.numpy()) for s, t in zip(xs, ys)):
                return False
        elif x.value != y.value:
            return False
    return True


class _Template:
    """Layer 2 of the trace, checked against layer 1, with each input's origin and the naming steps."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.head, self.first, self.nodes, self.tail = _blocks(graph)
        self.position = {}  # value -> (layer 1 or 2, node position in its layer, output index)
        for layer, nodes in ((1, self.first), (2, self.nodes)):
            for i, node in enumerate(nodes):
                for j, out in enumerate(node.outputs):
                    self.position[out] = (layer, i, j)
        self.values, self.names = _Steps("value"), _Steps("node")
        self.node_counter_steps: set[int] = set()
        if len(self.first) != len(self.nodes):
            raise NotReplicable(f"layer 1 has {len(self.first)} nodes, layer 2 {len(self.nodes)}")
        self.inputs = [self._match(a, b) for a, b in zip(self.first, self.nodes)]  # per node, per input

    def _match(self, a: ir.Node, b: ir.Node) -> list[_Input]:
        if (a.domain, a.op_type, a.overload, a.version, len(a.inputs), len(a.outputs)) != \
                (b.domain, b.op_type, b.overload, b.version, len(b.inputs), len(b.outputs)):
            raise NotReplicable(f"layer 1 runs {a.op_type} where layer 2 runs {b.op_type}")
        if not _same_attributes(a, b):
            raise NotReplicable(f"{b.op_type} node {b.name!r} has other attributes than layer 1's")
        for x, y in zip(a.outputs, b.outputs):
            if x.type != y.type or str(x.shape) != str(y.shape):
                raise NotReplicable(f"value {y.name!r} has another type or shape than layer 1's {x.name!r}")
            self.values.learn(x.name, y.name)
        if a.name and b.name:
            self.names.learn(a.name, b.name)
            made_up = [re.fullmatch(f"node_{re.escape(b.op_type)}_(\\d+)", name) for name in (a.name, b.name)]
            if all(made_up):  # a name onnx_ir made up from its node counter
                self.node_counter_steps.add(int(made_up[1].group(1)) - int(made_up[0].group(1)))
        return [self._origin(x, y) for x, y in zip(a.inputs, b.inputs)]

    def _origin(self, x: ir.Value | None, y: ir.Value | None) -> _Input:
        """Where layer 2's input `y` comes from, given that layer 1 reads `x` in its place."""
        if x is None or y is None:
            if x is not y:
                raise NotReplicable("an input one layer omits is given in the other")
            return _Input("none")
        at_x, at_y = self.position.get(x), self.position.get(y)
        if at_y is not None and at_y[0] == 2:
            if at_x != (1, *at_y[1:]):
                raise NotReplicable(f"value {y.name!r} is not computed in the same place in both layers")
            return _Input("internal", at_y[1], at_y[2])
        if x is y:  # computed before the layers, or once and reused by later layers: shared by every layer
            return _Input("shared", value=y)
        if at_y is not None:  # computed by layer 1: the residual stream, which layer 1 reads from layer 0
            if at_x is not None:
                raise NotReplicable(f"layer 1 reads {x.name!r} where layer 2 reads the previous layer's {y.name!r}")
            return _Input("previous", at_y[1], at_y[2])
        for kind in (ir.Value.is_graph_input, ir.Value.is_initializer):
            if kind(x) and kind(y) and x.producer() is None and y.producer() is None:
                self.values.learn(x.name, y.name)  # the layer's own weight or cache: model.model.layers.1.* ...
                return _Input("leaf", first=x, value=y)
        raise NotReplicable(f"layer 2 reads {y.name!r} where layer 1 reads {x.name!r}")


def _advanced(first: str, second: str, steps: int, what: str) -> str:
    name = _advance(first, second, steps)
    if name is None:
        raise NotReplicable(f"{what} {second!r} has no counterpart name {steps} layers on")
    return name


def _metadata(first: dict[str, str], template: dict[str, str], steps: int) -> dict[str, str]:
    """The template's metadata (module scopes, FX names) with its layer numbers moved on, where they move."""
    metadata = {}
    for key, text in template.items():
        try:
            metadata[key] = _advance(first.get(key, ""), text, steps) or text
        except NotReplicable:  # zero-padded numbers in a stack trace: only names must advance
            metadata[key] = text
    return metadata


def _copy_value(first: ir.Value, like: ir.Value, name: str, steps: int) -> ir.Value:
    """A copy of the template's value `like` (layer 1's is `first`) named `name`."""
    shape = None if like.shape is None else like.shape.copy()
    return ir.Value(name=name, shape=shape, type=like.type, doc_string=like.doc_string,
                    metadata_props=_metadata(first.metadata_props, like.metadata_props, steps))


def _copy_attribute(attr: ir.Attr) -> ir.Attr:
    return ir.Attr(attr.name, attr.type, attr.value, doc_string=attr.doc_string)


class _Clones:
    """The layers 3.. built from the template, one table of outputs per layer (index = layer)."""

    def __init__(self, template: _Template):
        self.t = template
        self.outputs = {1: [list(n.outputs) for n in template.first], 2: [list(n.outputs) for n in template.nodes]}
        self.leaves: dict[int, dict[ir.Value, ir.Value]] = {}  # layer -> {template leaf: its copy}
        self.nodes: list[ir.Node] = []

    def build(self, layer: int) -> None:
        steps = layer - 2
        t, made, leaves = self.t, [], {}
        for i, (first, node) in enumerate(zip(t.first, t.nodes)):
            inputs = []
            for origin in t.inputs[i]:
                if origin.kind == "internal":
                    inputs.append(made[origin.node].outputs[origin.index])
                elif origin.kind == "previous":
                    inputs.append(self.outputs[layer - 1][origin.node][origin.index])
                elif origin.kind == "leaf":
                    if origin.value not in leaves:
                        name = _advanced(origin.first.name, origin.value.name, steps, "input")
                        leaves[origin.value] = _copy_value(origin.first, origin.value, name, steps)
                    inputs.append(leaves[origin.value])
                else:
                    inputs.append(origin.value)  # shared, or None
            outputs = [_copy_value(x, y, _advanced(x.name, y.name, steps, "value"), steps)
                       for x, y in zip(first.outputs, node.outputs)]
            name = _advance(first.name, node.name, steps) if first.name and node.name else None
            made.append(ir.Node(
                node.domain, node.op_type, inputs, [_copy_attribute(a) for a in node.attributes.values()],
                overload=node.overload, outputs=outputs, version=node.version, name=name,
                doc_string=node.doc_string, metadata_props=_metadata(first.metadata_props, node.metadata_props, steps)))
            self.nodes.append(made[-1])
        self.outputs[layer] = [list(n.outputs) for n in made]
        self.leaves[layer] = leaves

    def discard(self) -> None:
        """Unhook the clones from the values they read, so the traced graph is as it was."""
        for node in self.nodes:
            for i in range(len(node.inputs)):
                node.replace_input_with(i, None)


def _with_copies(values: Sequence[ir.Value], template: Sequence[ir.Value], copies: list[dict]) -> list[ir.Value]:
    """`values` with each layer's copies of the `template` values among them, in their order, after the last."""
    values = list(values)
    template = sorted(template, key=values.index)
    if not template:
        return values
    at = values.index(template[-1]) + 1
    return values[:at] + [layer[v] for layer in copies for v in template] + values[at:]


def _advance_name_counters(graph: ir.Graph, template: _Template, layers: int) -> None:
    """Move onnx_ir's name counters on as tracing `layers` more layers would have.

    onnx_ir names what has no name from per-graph counters (`val_N`, `node_<op>_N`; torch.onnx leaves most
    names to it), and the optimizer's rewrites name what they make, the constants they lift among them, from the
    same counters: moved on by one layer's names per layer, they give a full trace's names. The counters are
    private to onnx_ir (no public way to set them): where they are missing those names differ from a full
    trace's, and stay unique, since the graph registers every name it holds.
    """
    authority = getattr(graph, "_name_authority", None)
    value_step = template.values.steps.get("val_#")
    if value_step is not None and hasattr(authority, "_value_counter"):
        authority._value_counter += value_step[0] * layers
    if len(template.node_counter_steps) == 1 and hasattr(authority, "_node_counter"):
        authority._node_counter += next(iter(template.node_counter_steps)) * layers


def replicate_layers(model: ir.Model, num_layers: int) -> None:
    """Grow `model`, traced with `TRACED_LAYERS` decoder layers, to `num_layers` in place (layer 2 cloned).

    Raises NotReplicable, leaving `model` untouched, where the traced layers do not fit one template.
    """
    graph = model.graph
    template = _Template(graph)  # checks the layers fit one template, and learns how names move on
    clones = _Clones(template)
    layers = range(TRACED_LAYERS, num_layers)
    more = num_layers - TRACED_LAYERS
    try:
        for layer in layers:
            clones.build(layer)  # new nodes, not in the graph yet
        tail_values = [(v, template.values.shift(v.name, more)) for node in template.tail for v in node.outputs]
        tail_nodes = [(node, template.names.shift(node.name, more)) for node in template.tail if node.name]
        kept = [v.name for v in graph.inputs] + list(graph.initializers) + \
            [v.name for n in template.head + template.first + template.nodes for v in n.outputs]
        made = [v.name for n in clones.nodes for v in n.outputs] + \
            [v.name for layer in layers for v in clones.leaves[layer].values()] + [name for _, name in tail_values]
        if len(set(kept) | set(made)) != len(kept) + len(made):
            raise NotReplicable("names of the cloned layers collide")
    except NotReplicable:
        clones.discard()
        raise

    # Nothing raises from here on: the graph changes.
    leaves = [origin.value for node in template.inputs for origin in node if origin.kind == "leaf"]
    copies = [clones.leaves[layer] for layer in layers]
    new_inputs = _with_copies(graph.inputs, [v for v in set(leaves) if v.is_graph_input()], copies)
    new_initializers = _with_copies(graph.initializers.values(), [v for v in set(leaves) if v.is_initializer()], copies)
    template_outputs = [v for v in graph.outputs if template.position.get(v, (0,))[0] == 2]  # present.2.*
    new_outputs = _with_copies(graph.outputs, template_outputs, [
        {v: clones.outputs[layer][template.position[v][1]][template.position[v][2]] for v in template_outputs}
        for layer in layers])
    for node in template.tail:  # the final norm (and whatever else reads the layers) reads the last layers
        for i, value in enumerate(node.inputs):
            at = template.position.get(value)
            if at is not None:
                layer, position, index = at
                node.replace_input_with(i, clones.outputs[num_layers - 3 + layer][position][index])
    graph.remove(template.tail)  # re-inserted below, so that the graph registers the tail's new names
    for value, name in tail_values:
        value.name = name
    for node, name in tail_nodes:
        node.name = name
    graph.insert_after(template.nodes[-1], clones.nodes + template.tail)
    _advance_name_counters(graph, template, more)
    for values, new in ((graph.inputs, new_inputs), (graph.outputs, new_outputs)):
        values.clear()
        values.extend(new)
    graph.initializers.clear()
    for value in new_initializers:
        graph.initializers.add(value)
    # torch.export's signature of the traced program lists the traced layers' weights only: no longer this graph's
    graph.metadata_props.pop("pkg.torch.export.ExportedProgram.graph_signature", None)
