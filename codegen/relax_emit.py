"""What an emitter works with: ``Scope`` (the Relax function being built), ``Emit`` (the
node being lowered), Relax dtype names, identifiers clear of C's reserved names, and
``LoweringError``. ``relax.py`` (the lowering driver) and ``relax_ops.py`` (the emitter
table) both build on it; it imports neither."""
from __future__ import annotations

import re
from typing import Any

import numpy as np
from tvm import relax, te, tirx

from effc.ir.core import Node, Value
from effc.ir.errors import EffcError
from effc.ir.opdef import node_attrs
from effc.ir.types import UNKNOWN_DIM, DType, TensorType


def _to_blocked_te(x: te.Tensor, b: int) -> te.Tensor:
    """NCHW → ``[N, C/b, H, W, b]``, looping in the order it writes (TVM's layout_transform
    loops in the order it reads: every store a cache miss)."""
    n, c, h, w = x.shape
    return te.compute((n, c // b, h, w, b), lambda i, o, y, z, j: x[i, o * b + j, y, z], name="to_blocked")


def _to_plain_te(x: te.Tensor) -> te.Tensor:
    """``[N, C/b, H, W, b]`` → NCHW, looping in the order it writes."""
    n, o, h, w, b = x.shape
    return te.compute((n, o * b, h, w), lambda i, c, y, z: x[i, c // b, y, z, c % b], name="to_plain")


class LoweringError(EffcError):
    """The module cannot be lowered to Relax (other than an unsupported op)."""


RELAX_DTYPES: dict[DType, str] = {
    DType.f16: "float16", DType.bf16: "bfloat16", DType.f32: "float32", DType.f64: "float64",
    DType.i8: "int8", DType.i16: "int16", DType.i32: "int32", DType.i64: "int64",
    DType.u8: "uint8", DType.u16: "uint16", DType.u32: "uint32", DType.u64: "uint64", DType.bool: "bool",
}


def relax_dtype(dtype: DType) -> str:
    if dtype not in RELAX_DTYPES:
        raise LoweringError(f"{dtype} tensors are not compiled: effc's kernels take no {dtype.bits}-bit elements. "
                            "4-bit weights behind a DequantizeLinear fold into float weights with fold-constants "
                            "(in -O1 and up); 4-bit graph inputs or activations run in the interpreter only")
    return RELAX_DTYPES[dtype]


C_RESERVED = frozenset("""
auto break case char const continue default do double else enum extern float for goto if inline int long
register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
bool true false nullptr alignas alignof constexpr static_assert thread_local typeof typeof_unqual noreturn
complex imaginary asm fortran
NULL offsetof memcpy memset memmove memcmp strlen errno stdin stdout stderr assert main argc argv
clock fprintf printf fopen fread fwrite fclose fgetc strtol exit abort malloc free
linux unix i386 arena args self result num_args
""".split())
"""Names a C identifier made from a value name must not take: keywords (C89 to C23), what
the headers the generated files include declare or define in lower case (``memcpy`` as a
parameter would hide the function the driver calls; ``stdin``, ``errno`` are macros),
GNU's predefined ``linux``/``unix``, names the harness and driver use, and the parameters
of TVM's C kernels (``args``). Upper-case names, ``*_t`` names and the DLPack/TVM ABI's
names are refused by rule (``c_reserved``)."""

_RESERVED_PREFIXES = ("effc_", "EFFC_", "DL", "kDL", "TVM", "kTVM", "FTVM", "__")


def c_reserved(name: str) -> bool:
    """Whether ``name`` could clash with a keyword, a type, a macro or a function the
    generated C sees: upper-case names may be macros (``NULL``, ``EOF``, ``INT8_MAX``),
    ``_t`` names are typedefs (``uint8_t``, ``size_t``; POSIX reserves the suffix), ``E``
    and a capital are errno macros, ``DL*``/``TVM*`` are the kernels' ABI (``DLTensor``)."""
    return (name in C_RESERVED or name.endswith("_t") or re.fullmatch(r"[A-Z0-9_]+", name) is not None
            or re.match(r"E[A-Z0-9]|_[A-Z_]", name) is not None or name.startswith(_RESERVED_PREFIXES))


def identifier(name: str) -> str:
    """A value name as a Relax/TIR identifier (``/enc/Add_output_0`` → ``_enc_Add_output_0``).
    TVM's C codegen (Cortex-M kernels) declares the buffers under these names, so they are
    ASCII and clear of C's reserved names (``NULL`` → ``v_NULL``)."""
    out = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return out if out and not out[0].isdigit() and not c_reserved(out) else f"v_{out}"


# ----------------------------------------------------------------------------- scopes


class Scope:
    """One Relax function being built: its symbolic dims, what each effc value lowered to,
    and the values known at compile time (constants, also inside fused bodies)."""

    def __init__(self, bb: relax.BlockBuilder):
        self.bb = bb
        self.root_bb = bb
        """The module's builder, where PrimFuncs made from TE go (a fused function's own
        builder keeps only that function)."""
        self.symbols: dict[str, tirx.Var] = {}
        self.env: dict[int, relax.Expr] = {}
        self.known: dict[int, np.ndarray] = {}
        self._constants: dict[Any, relax.Expr] = {}
        self.names: dict[str, str] = {}
        """Relax var name -> the effc value it holds. The BlockBuilder renames a var whose
        name is taken (by a function, say), so a var's name alone does not tell."""
        self.index_checks = True
        """Index ops clamp their run-time indices into range (False: the unchecked lowering,
        kept only to measure what the checks cost, bench/bounds_checks.py)."""
        self.checks: list[tuple[relax.Expr, str]] | None = None
        """Index checks of this function: (int64[3] status ``[bad, first bad index, axis
        length]``, the node's description); None where a check cannot be returned (a fused
        group's function: its indices are still clamped)."""
        self.plan: Any = None
        """``layout.LayoutPlan`` when values may be held in blocked layouts, else None."""
        self.lanes: int | None = None
        """f32 vector lanes of the CPU built for (None: not a CPU build with effc's
        schedules): constant matmul weights are packed into panels of that width."""
        self.int8_dot: str | None = None
        """The CPU's 8-bit dot-product instruction set (``schedules.Cpu.int8_dot``), for
        the integer kernels' fast paths; None: plain integer kernels."""
        self.blocks: dict[int, int] = {}
        """Value id -> the channel block its lowered expression is in (absent: NCHW)."""
        self._views: dict[tuple[int, int], relax.Expr] = {}

    def bind(self, v: Value, r: relax.Expr, block: int | None = None) -> None:
        """``v`` lowered to ``r`` (in NCHW[block]c when ``block`` is given)."""
        self.env[id(v)] = r
        if block is not None:
            self.blocks[id(v)] = block
        if isinstance(r, relax.Var):
            self.names.setdefault(r.name, v.name)

    def dim(self, d: int | str) -> int | tirx.Var:
        if isinstance(d, int):
            return d
        if d == UNKNOWN_DIM:
            raise LoweringError("internal: an unknown dim reached the lowering")
        if d not in self.symbols:
            self.symbols[d] = tirx.Var(identifier(d), "int64")
        return self.symbols[d]

    def shape(self, t: TensorType) -> list[int | tirx.Var]:
        return [self.dim(d) for d in t.shape]

    def tensor_type(self, t: TensorType) -> relax.TensorType:
        return relax.TensorType(self.shape(t), relax_dtype(t.dtype))

    def constant(self, array: np.ndarray, key: Any = None) -> relax.Expr:
        """A constant operand. ``key`` identifies it for reuse (default: the bytes of a small array)."""
        array = np.asarray(array, order="C")  # (ascontiguousarray would make a scalar 1-D)
        if key is None:  # small literals (scalars, per-channel vectors) are shared
            if array.size <= 4096:
                key = ("literal", array.dtype.str, array.shape, array.tobytes())
            else:
                key = ("anonymous", len(self._constants))
        if key not in self._constants:
            self._constants[key] = self._make_constant(array, key)
        return self._constants[key]

    def _make_constant(self, array: np.ndarray, key: Any) -> relax.Expr:
        return relax.const(array, relax_dtype(DType.from_numpy(array.dtype)))

    def block_of(self, v: Value | None) -> int | None:
        """The channel block ``v`` is held in (None: NCHW, or not lowered yet)."""
        return None if v is None else self.blocks.get(id(v))

    def value_in(self, v: Value, block: int | None) -> relax.Expr:
        """``v`` in layout NCHW[block]c (``block`` None: NCHW), converted once per value
        and layout (``_to_plain_te``, ``_to_blocked_te``; a block to another goes through NCHW)."""
        have = self.blocks.get(id(v))
        if have == block:
            return self.value(v) if block is None else self.env[id(v)]
        key = (id(v), block or 0)
        if key in self._views:
            return self._views[key]
        if have is None:
            plain = self.value(v)
        elif (id(v), 0) in self._views:
            plain = self._views[(id(v), 0)]
        else:
            plain = self._views[(id(v), 0)] = self.bb.emit(
                self.root_bb.call_te(_to_plain_te, self.env[id(v)], primfunc_name_hint="to_nchw"))
        if block is not None:
            self._views[key] = self.bb.emit(
                self.root_bb.call_te(_to_blocked_te, plain, block, primfunc_name_hint=f"to_nchw{block}c"))
        return self._views[key]

    def value(self, v: Value) -> relax.Expr:
        """What effc value ``v`` lowered to in this function, in NCHW."""
        if id(v) in self.blocks:
            return self.value_in(v, None)
        if id(v) in self.env:
            return self.env[id(v)]
        known = self.known.get(id(v))
        if known is None and v.is_const:
            known = v.const_value
        if known is not None:
            return self.constant(np.asarray(known, dtype=v.type.dtype.np), key=("value", id(v)))
        raise LoweringError(f"internal: %{v.name} is used before it is lowered")

    def const_value(self, v: Value | None) -> np.ndarray | None:
        if v is None:
            return None
        if id(v) in self.known:
            return self.known[id(v)]
        return v.const_value


class FusedScope(Scope):
    """A fused group's function: constants it needs become extra parameters (after the
    data parameters), and the caller passes them as ``relax.const``, as FuseOps does;
    FuseTIR refuses tensor constants inside a primitive function."""

    def __init__(self, bb: relax.BlockBuilder):
        super().__init__(bb)
        self.const_params: list[relax.Var] = []
        self.const_args: list[np.ndarray] = []

    def _make_constant(self, array: np.ndarray, key: Any) -> relax.Expr:
        t = TensorType.of(array)
        param = relax.Var(f"const_{len(self.const_params)}", relax.TensorType(list(t.shape), relax_dtype(t.dtype)))
        self.const_params.append(param)
        self.const_args.append(array)
        return param


# ----------------------------------------------------------------------------- emitting


class Emit:
    """What an emitter sees: the node, its attributes (defaults filled) and operands."""

    def __init__(self, scope: Scope, node: Node):
        self.scope = scope
        self.node = node
        self.attrs = node_attrs(node)
        self.bb = scope.bb

    def x(self, i: int) -> relax.Expr | None:
        """Operand ``i`` as a Relax expression (None when the optional input is absent)."""
        v = self.node.input(i)
        return None if v is None else self.scope.value(v)

    def const(self, i: int) -> np.ndarray | None:
        """Operand ``i``'s value when it is known at compile time."""
        return self.scope.const_value(self.node.input(i))

    def ints(self, i: int) -> list[int] | None:
        c = self.const(i)
        return None if c is None else [int(e) for e in np.asarray(c).reshape(-1)]

    def has(self, i: int) -> bool:
        return self.node.input(i) is not None

    def in_type(self, i: int) -> TensorType:
        v = self.node.input(i)
        assert v is not None
        return v.type

    def out_type(self, i: int = 0) -> TensorType:
        return self.node.outputs[i].type

    def out_shape(self, i: int = 0) -> list[int | tirx.Var]:
        return self.scope.shape(self.out_type(i))

    def constant(self, array: Any, dtype: DType | np.dtype | None = None) -> relax.Expr:
        """A compile-time constant operand (a parameter inside fused functions)."""
        np_dtype = dtype.np if isinstance(dtype, DType) else dtype
        return self.scope.constant(np.asarray(array, dtype=np_dtype))

    def scalar(self, value: float | int | bool, like: DType | None = None) -> relax.Expr:
        """A rank-0 constant in the dtype of output 0 (or ``like``)."""
        return self.constant(np.array(value), like or self.out_type().dtype)

    def emit(self, expr: relax.Expr, hint: str = "") -> relax.Var:
        return self.bb.emit(expr, hint or identifier(self.node.outputs[0].name) + "_t")

    def fail(self, msg: str) -> LoweringError:
        return LoweringError(f"{self.node.describe()}: {msg}")
