"""Lowering an effc Module to a TVM Relax IRModule, built directly with ``relax.BlockBuilder``.

Stages, in order:
1. ``check_lowerable``: every node has an emitter (``relax_ops.EMITTERS``, one table) and
   every shape is known; all problems are reported at once, before anything is built.
2. each ``fused`` node becomes one private Relax function with ``Primitive=True``, shaped
   like the groups TVM's own ``FuseOps`` makes (tensor constants are parameters, never
   constants inside the function), so ``FuseTIR`` turns it into exactly one PrimFunc; so
   does a lone conv/gemm with a bias, or an LRN (``GROUPED_ALONE``);
3. ``main`` takes the graph inputs, calls those functions and the emitters in graph order,
   and returns a tuple of the graph outputs.

Constants become ``relax.const`` (effc folds constants before lowering; TVM's FoldConstant
is not needed). A symbolic dim (``N``) becomes a ``tirx.Var`` per function, so a model with
a symbolic batch compiles once for every batch size. A dim effc cannot tell (``?``) stops
lowering with an error that says how to fix it: ``bind_input_shapes``
(``effc compile --input-shape x=1,3,224,224``), then fold constants again.

What an emitter works with (``Scope``, ``Emit``, ``relax_dtype``, ``identifier``,
``LoweringError``) is in ``relax_emit.py``, which both this module and ``relax_ops.py`` import.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import tvm
import tvm.sym
from tvm import relax

from effc.ir.core import Graph, Module, Node, Value
from effc.ir.errors import EffcError, IndexOutOfRangeError, UnsupportedOpError
from effc.ir.limits import check_tensor_sizes
from effc.ir.opdef import REGISTRY
from effc.ir.types import UNKNOWN_DIM, DType, TensorType

from .layout import BlockedEmit, blocked_shape, plan_layouts
from .relax_emit import Emit, FusedScope, LoweringError, Scope, identifier, relax_dtype
from .relax_ops import EMITTERS, UNSUPPORTED_REASONS


# ----------------------------------------------------------------------------- checks


def _all_nodes(g: Graph):
    for n in g.nodes:
        yield n
        if n.body is not None:
            yield from _all_nodes(n.body)


def _walk_with_consts(g: Graph, known: dict[int, np.ndarray]):
    """Nodes of ``g`` and of fused bodies, with a map from a body's inputs to the outer
    constants they are bound to."""
    for n in g.nodes:
        yield n
        if n.body is not None:
            for bv, ov in zip(n.body.inputs, [v for v in n.inputs if v is not None]):
                c = known.get(id(ov), ov.const_value)
                if c is not None:
                    known[id(bv)] = c
            yield from _walk_with_consts(n.body, known)


def unsupported_nodes(module: Module) -> list[tuple[str, str, str]]:
    """``(op, node, reason)`` for every node the Relax lowering cannot handle."""
    known: dict[int, np.ndarray] = {}

    def const(v: Value | None) -> np.ndarray | None:
        return None if v is None else known.get(id(v), v.const_value)

    out = []
    for n in _walk_with_consts(module.graph, known):
        if n.op in ("const", "fused"):
            continue
        # named as InferCtx.unsupported names them: the ONNX op, the ONNX node
        op = getattr(REGISTRY.get(n.op), "onnx_name", None) or n.op
        where = n.loc or f"%{n.outputs[0].name}"
        em = EMITTERS.get(n.op)
        if em is None:
            out.append((op, where, UNSUPPORTED_REASONS.get(n.op, "no lowering to TVM Relax yet")))
            continue
        why = em.check(n, const) if em.check is not None else None
        if why:
            out.append((op, where, why))
    return out


def _unknown_dims(module: Module) -> list[tuple[Node | None, Value]]:
    bad = []
    for v in module.graph.inputs:
        if UNKNOWN_DIM in v.type.shape:
            bad.append((None, v))
    for n in _all_nodes(module.graph):
        for v in n.outputs:
            if UNKNOWN_DIM in v.type.shape and (v.num_uses or v.is_graph_output):
                bad.append((n, v))
    return bad


def check_lowerable(module: Module) -> None:
    """Raise before any build starts: UnsupportedOpError listing every node that has no
    lowering, or LoweringError naming the values whose shapes are unknown."""
    bad_ops = unsupported_nodes(module)
    if bad_ops:
        raise UnsupportedOpError(bad_ops)
    unknown = _unknown_dims(module)
    if unknown:
        lines = [f"  %{v.name}: {v.type}" + (f" ({n.describe()})" if n is not None else " (graph input)")
                 for n, v in unknown[:8]]
        more = f"\n  ... and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        inputs = " ".join(f"--input-shape {v.name}=" + ",".join(str(d) if isinstance(d, int) else "1"
                                                                 for d in v.type.shape) for v in module.graph.inputs)
        raise LoweringError(
            f"cannot lower @{module.name}: {len(unknown)} value(s) have dims that are only known at run time "
            "('?', from shapes computed out of the data):\n" + "\n".join(lines) + more +
            f"\nfix: give the inputs static shapes, e.g. `{inputs}` "
            "(library: effc.ir.refine.bind_input_shapes(module, {name: shape}) before optimizing), "
            "so constant folding can resolve them")


# ----------------------------------------------------------------------------- lowering


def _check_result(scope: Scope, node: Node, v: Value, expr: relax.Expr, block: int | None = None) -> None:
    """The emitted expression must have the type effc inferred (in NCHW[block]c when
    ``block`` is given): catches a wrong emitter (or a wrong shape rule) at the node, not
    as wrong numbers later."""
    ty = expr.ty
    want = v.type
    dims = [scope.dim(d) for d in want.shape]
    if block is not None:
        dims = blocked_shape(dims, block)
    ok = isinstance(ty, relax.TensorType) and str(ty.dtype) == relax_dtype(want.dtype) and ty.ndim == len(dims)
    if ok and ty.shape is not None:
        analyzer = tvm.sym.Analyzer()
        for got, w in zip(ty.shape.values, dims):
            if not analyzer.can_prove_equal(got, w):
                ok = False
    if not ok:
        layout = f" (in NCHW{block}c)" if block is not None else ""
        raise LoweringError(f"{node.describe()}: output %{v.name} lowered to {ty}, but effc infers {want}{layout}")


_HALF = (DType.f16, DType.bf16)


def _widened(t: TensorType) -> TensorType:
    return t.with_dtype(DType.f32) if t.dtype in _HALF else t


class WideEmit(Emit):
    """An op on float16/bfloat16 values computed in float32 and rounded once at the end,
    as effc's reference and onnxruntime do (x86 has no half arithmetic anyway)."""

    def x(self, i: int) -> relax.Expr | None:
        v = self.node.input(i)
        if v is None or v.type.dtype not in _HALF:
            return super().x(i)
        c = self.const(i)
        if c is not None:
            return self.scope.constant(c)
        return relax.op.astype(self.scope.value(v), "float32")

    def const(self, i: int) -> np.ndarray | None:
        c = super().const(i)
        v = self.node.input(i)
        return c.astype(np.float32) if c is not None and v is not None and v.type.dtype in _HALF else c

    def in_type(self, i: int) -> TensorType:
        return _widened(super().in_type(i))

    def out_type(self, i: int = 0) -> TensorType:
        return _widened(super().out_type(i))


def _uses_half(node: Node) -> bool:
    return any(v is not None and v.type.dtype in _HALF for v in (*node.inputs, *node.outputs))


def _lower_node(scope: Scope, node: Node, emitters: Mapping[str, Any]) -> None:
    em = emitters[node.op]
    wide = em.half_in_f32 and _uses_half(node)
    block = scope.plan.block.get(id(node.outputs[0])) if scope.plan and id(node) in scope.plan.blocked_nodes else None
    e = BlockedEmit(scope, node, block) if block is not None else (WideEmit if wide else Emit)(scope, node)
    try:
        result = em.fn(e)
    except EffcError:
        raise
    except Exception as err:  # TVM's own type errors: say which node
        raise LoweringError(f"{node.describe()}: Relax lowering failed: {type(err).__name__}: {err}") from err
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    for k, (v, r) in enumerate(zip(node.outputs, results)):
        if r is None:
            if v.num_uses or v.is_graph_output:
                raise e.fail(f"output %{v.name} is used but has no lowering")
            continue
        if not isinstance(r, (relax.Var, tvm.ir.expr.Constant)):
            r = scope.bb.emit(r, identifier(v.name))
        if wide and v.type.dtype in _HALF and str(r.ty.dtype) == "float32":
            r = scope.bb.emit(relax.op.astype(r, relax_dtype(v.type.dtype)), identifier(v.name))
        b = block if k == 0 else None
        _check_result(scope, node, v, r, b)
        scope.bind(v, r, b)


def _lower_graph_body(scope: Scope, g: Graph, emitters: Mapping[str, Any],
                      fused: Mapping[int, Callable[[Scope, Node], None]] | None = None) -> None:
    for node in g.nodes:
        if node.op == "const":
            continue
        if fused is not None and id(node) in fused:
            fused[id(node)](scope, node)
            continue
        if node.op == "fused":
            raise LoweringError(f"{node.describe()}: nested fused groups are not supported")
        _lower_node(scope, node, emitters)


VALUE_NAMES = "effc_value_names"
"""IRModule attribute of ``lower_to_relax``'s result: ``main``'s var names -> effc value names."""

GROUPED_ALONE = {"conv": 3, "conv_transpose": 3, "gemm": 3, "lrn": 1, "qlinear_conv": 8, "qlinear_mat_mul": 8,
                 "qgemm": 6, "quantize_linear": 2, "dequantize_linear": 2, "qlinear_global_average_pool": 4}
"""Ops whose emitters emit several Relax ops (a conv and its bias add; a gemm's transposes,
scaling and bias; LRN's square, window sum, power and divide; an integer op's zero-point
subtraction, int32 sum and requantization; Q/DQ's scaling, rounding and clamping), with the
inputs a node (not ``qlinear_add``/``mul``: in one kernel LLVM contracts their dequantizing
multiply and the add into an FMA, which rounds once where the definition rounds twice, and
the result moved by a step against the interpreter)
needs for that: a node of them outside any fused group is lowered as a group of its own,
so it becomes one kernel, not a kernel per op with a full-size tensor between them."""


def _alone_body(node: Node) -> Graph | None:
    """A one-node body for ``node`` when it is lowered as its own group, else None."""
    if node.op not in GROUPED_ALONE or sum(v is not None for v in node.inputs) < GROUPED_ALONE[node.op]:
        return None
    body = Graph(f"{node.op}_group")
    ins = [None if v is None else body.add_input(f"in{i}", v.type) for i, v in enumerate(node.inputs)]
    inner = body.append(Node(node.op, ins, [o.type for o in node.outputs], node.attrs,
                             output_names=[f"out{i}" for i in range(len(node.outputs))]))
    body.set_outputs(list(inner.outputs))
    return body


def _fused_name(node: Node) -> str:
    kind = str(node.attrs.get("kind") or "group")
    return "fused_" + identifier(kind.replace("+", "_"))


class _FusedFunction:
    """A fused node's Primitive function, and how main calls it."""

    def __init__(self, gv: relax.GlobalVar, const_args: list[np.ndarray], in_blocks: list[int | None],
                 out_blocks: list[int | None]):
        self.gv = gv
        self.const_args = const_args
        self.in_blocks = in_blocks
        """The channel block each data parameter takes (None: NCHW)."""
        self.out_blocks = out_blocks

    def call(self, scope: Scope, node: Node) -> None:
        data = [v for v in node.inputs if v is not None and not _is_const_like(scope, v)]
        args = [scope.value_in(v, b) for v, b in zip(data, self.in_blocks)]
        args += [scope.constant(a) for a in self.const_args]
        call = scope.bb.emit(relax.Call(self.gv, args), identifier(node.outputs[0].name))
        if len(node.outputs) == 1:
            _check_result(scope, node, node.outputs[0], call, self.out_blocks[0])
            scope.bind(node.outputs[0], call, self.out_blocks[0])
            return
        for i, v in enumerate(node.outputs):
            item = scope.bb.emit(relax.TupleGetItem(call, i), identifier(v.name))
            _check_result(scope, node, v, item, self.out_blocks[i])
            scope.bind(v, item, self.out_blocks[i])


def _is_const_like(scope: Scope, v: Value) -> bool:
    return scope.const_value(v) is not None


def _build_fused(bb: relax.BlockBuilder, outer: Scope, node: Node, emitters: Mapping[str, Any],
                 body: Graph | None = None) -> _FusedFunction:
    """The group's body (``node.body``, or ``body`` for a node grouped alone) as a private
    ``Primitive`` function, the shape FuseOps gives its groups: data parameters first,
    then the constants it uses."""
    alone = body is not None
    body = body or node.body
    assert body is not None
    # A builder of its own, the function added whole at the end: the constant parameters
    # are known only once the body is lowered, and a GlobalVar keeps the type it was
    # first added with.
    sub = relax.BlockBuilder()
    scope = FusedScope(sub)
    scope.root_bb = outer.root_bb
    scope.lanes = outer.lanes
    scope.int8_dot = outer.int8_dot
    plan = scope.plan = outer.plan
    copied = alone and plan is not None and id(node) in plan.blocked_nodes
    if copied:  # the copy decides as its original
        inner = list(body.nodes)[-1]
        plan.blocked_nodes.add(id(inner))
        if id(node) in plan.convs:
            plan.convs[id(inner)] = plan.convs[id(node)]
        plan.block[id(inner.outputs[0])] = plan.block[id(node.outputs[0])]
    params, in_blocks = [], []
    for bv, ov in zip(body.inputs, [v for v in node.inputs if v is not None]):
        known = outer.const_value(ov)
        if known is not None:
            scope.known[id(bv)] = known  # a parameter only if an emitter uses it as a tensor
            continue
        b = plan.of(ov) if plan is not None else None  # (fused functions are built before main)
        ty = bv.type
        shape = scope.shape(ty) if b is None else blocked_shape(scope.shape(ty), b)
        p = relax.Var(identifier(bv.name), relax.TensorType(shape, relax_dtype(ty.dtype)))
        scope.bind(bv, p, b)
        params.append(p)
        in_blocks.append(b)
    name = identifier(node.op) if alone else _fused_name(node)
    with sub.function(name, params, attrs={"Primitive": True}, private=True):
        with sub.dataflow():
            _lower_graph_body(scope, body, emitters)
            out_blocks = [scope.block_of(v) for v in body.outputs]
            outs = [scope.value_in(v, b) for v, b in zip(body.outputs, out_blocks)]
            out = sub.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        sub_gv = sub.emit_func_output(out)
    if copied:  # the copy dies with this function: a later node must not inherit its id's entries
        plan.blocked_nodes.discard(id(inner))
        plan.convs.pop(id(inner), None)
        plan.block.pop(id(inner.outputs[0]), None)
    func = sub.get()[sub_gv]
    if scope.const_params:
        func = relax.Function(params + scope.const_params, func.body, func.ret_ty, func.is_pure, func.attrs)
    return _FusedFunction(bb.add_func(func, name), scope.const_args, in_blocks, out_blocks)


def lower_to_relax(module: Module, *, func_name: str = "main", index_checks: bool = True,
                   labels_in_result: bool = True, lanes: int | None = None,
                   int8_dot: str | None = None) -> tvm.IRModule:
    """The module as a Relax IRModule whose ``main`` takes the graph inputs in order and
    returns a tuple of the graph outputs, then ``CHECK_FIELDS`` fields per run-time index
    check (``index_check_results``). Raises UnsupportedOpError / LoweringError before
    building anything. ``index_checks=False`` drops the checks (only to measure them);
    ``labels_in_result=False`` returns only each check's status (the AOT C driver names
    the node from the ``INDEX_CHECKS`` attribute instead). ``lanes``: hold convolutions and
    what follows them in blocked channel layouts for a CPU with that many f32 vector lanes
    (``layout.plan_layouts``); None: every value NCHW. ``int8_dot``: the CPU's 8-bit
    dot-product instructions (``schedules.Cpu.int8_dot``; None: plain integer kernels)."""
    check_tensor_sizes(module)  # before TVM allocates anything: a tensor too large is the user's error
    check_lowerable(module)
    g = module.graph
    bb = relax.BlockBuilder()
    main = Scope(bb)
    main.index_checks = index_checks
    main.checks = [] if index_checks else None
    main.int8_dot = int8_dot
    if lanes:
        main.lanes = lanes
        main.plan = plan_layouts(g, lanes, int8=int8_dot is not None) or None

    fused: dict[int, Callable[[Scope, Node], None]] = {}
    for n in g.nodes:
        if n.op == "fused":
            fused[id(n)] = _build_fused(bb, main, n, EMITTERS).call
        elif (alone := _alone_body(n)) is not None:
            fused[id(n)] = _build_fused(bb, main, n, EMITTERS, alone).call

    params = [relax.Var(identifier(v.name), main.tensor_type(v.type)) for v in g.inputs]
    for v, p in zip(g.inputs, params):
        main.bind(v, p)
    with bb.function(func_name, params):
        with bb.dataflow():
            _lower_graph_body(main, g, EMITTERS, fused)
            results = [main.value(v) for v in g.outputs] + _check_fields(main, labels_in_result)
            out = bb.emit_output(relax.Tuple(results))
        bb.emit_func_output(out)
    mod = bb.finalize().with_attr(VALUE_NAMES, main.names)
    return mod.with_attr(INDEX_CHECKS, [label for _, label in main.checks or []])


CHECK_FIELDS = 2
"""Fields ``main`` returns per index check, after the graph outputs: the int64[3] status
``[bad, first bad index, axis length]`` and the node's description as a uint8 constant
(so a library loaded without its IR still names the node)."""


INDEX_CHECKS = "effc_index_checks"
"""IRModule attribute of ``lower_to_relax``'s result: the checked nodes' descriptions, in
the order of their statuses in ``main``'s result."""


def _check_fields(scope: Scope, labels: bool) -> list[relax.Expr]:
    fields: list[relax.Expr] = []
    for status, label in scope.checks or []:
        fields.append(status)
        if labels:
            fields.append(relax.const(np.frombuffer(label.encode(), dtype=np.uint8), "uint8"))
    return fields


def index_check_failure(status: np.ndarray, label: bytes | np.ndarray) -> IndexOutOfRangeError | None:
    """The error one check's returned fields describe, or None when it passed."""
    status = np.asarray(status).reshape(-1)
    if not status[0]:
        return None
    return IndexOutOfRangeError(bytes(np.asarray(label, dtype=np.uint8)).decode(errors="replace"),
                                int(status[1]), int(status[2]))
