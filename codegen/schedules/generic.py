"""Default CPU schedules for the kernels that are not convolutions.

TVM 0.27's default CPU pipeline schedules nothing: every kernel is a serial, scalar loop
nest. ``schedule_generic(func, lanes, cores, l1d_bytes)`` gives one kernel (a PrimFunc as FuseTIR
made it) a fixed, untuned schedule by the first rule that applies, or returns ``None``
(the kernel stays unscheduled; convolutions are ``conv.py``'s):

1. matmul (``_schedule_matmul``): dense, matmul and batch-matmul blocks with fused
   epilogues (bias, GELU, scale, residual add);
2. pooling (``_schedule_pool``): 2-D max/avg windows in NCHW or blocked NCHW16c layout;
3. reductions (``_schedule_reduction``): softmax, layer norm, mean/sum over trailing or
   middle axes, global average pool;
4. injective (``_schedule_injective``): elementwise, broadcast, reshape, transpose,
   concatenate, gather.

Each rule works on its own ``s_tir.Schedule`` copy; a schedule primitive that refuses
(``ScheduleError``, or TVM's FFI errors, which TVM 0.27 raises as Python builtins) makes
the rule give up and the next one try, so no kernel makes this raise. Schedules only
split, reorder, fuse, inline, move and annotate loops, which TVM checks to keep results;
only the order of float additions in a reduction may change (it does not here: the
reduction loops keep their order, they are only split).

Kernels with symbolic shapes (a ``tirx.Var`` in a buffer shape) are left alone: bind the
input shapes first (``effc.ir.refine.bind_input_shapes``).

Measured on this 2-core host (haswell target, lanes=8, ms unscheduled -> scheduled,
TVM_NUM_THREADS=1): MiniLM-L3's dense kernels 3.27 -> 0.079 (x42), FFN-up+GELU 43.9 -> 1.28
(x34), FFN-down 15.3 -> 0.43 (x35); resnet50's gemm 3.35 -> 0.40 (x8); a [64,56,56]
elementwise 0.027 -> 0.020. Rules 2-3 measured 0.8-1.0x (LLVM already vectorizes those
plain loop nests well; see each rule). 2 threads gave no further gain on this host.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import s_tir, sym, tirx
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.tirx.analysis import undefined_vars

from ..layout import POINTWISE_BLOCK

SCHEDULE_ERRORS = (s_tir.ScheduleError, RuntimeError, ValueError, TypeError, IndexError)
"""What a refused schedule primitive raises: ``ScheduleError``, or an FFI error (TVM 0.27
has no ``TVMError`` class; its FFI raises builtins)."""

PARALLEL_MIN_WORK = 1 << 17
"""A loop nest runs in parallel only when it does at least this many inner iterations
(elements): below it, waking TVM's thread pool (several microseconds) costs more than it
saves."""
MATMUL_PARALLEL_MIN_WORK = 1 << 20
"""The same for a matmul's multiply-adds, which run ~10x faster per iteration vectorized."""
L1D_BYTES = 32 * 1024
"""The L1 data cache assumed when a caller names none."""


def schedule_generic(func: tirx.PrimFunc, lanes: int, cores: int, l1d_bytes: int = L1D_BYTES,
                     registers: int = 16) -> s_tir.Schedule | None:
    """A schedule of ``func`` for a CPU with ``lanes`` f32 vector lanes (8 for AVX2, 16 for
    AVX-512, 4 for Neon), ``cores`` cores, an L1 data cache of ``l1d_bytes`` and
    ``registers`` vector registers (``.mod["main"]`` the scheduled kernel, ``.trace`` how),
    or None when no rule applies (``func`` is then left to TVM unscheduled)."""
    if not isinstance(func, tirx.PrimFunc) or _has_symbolic_shape(func):
        return None
    for rule in RULES:
        try:
            sch = (_schedule_matmul(s_tir.Schedule(func), max(1, lanes), max(1, cores), l1d_bytes, registers)
                   if rule is _schedule_matmul else rule(s_tir.Schedule(func), max(1, lanes), max(1, cores)))
        except SCHEDULE_ERRORS:
            continue
        if sch is not None:
            return sch
    return None


# ----------------------------------------------------------------------------- analysis


def _has_symbolic_shape(func: tirx.PrimFunc) -> bool:
    """A parameter that is not a buffer of constant shape (a scalar parameter is a dim)."""
    for p in func.params:
        shape = getattr(p.ty, "shape", None)
        if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape):
            return True
    return False


def _blocks(sch: s_tir.Schedule) -> list[SBlockRV]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _kinds(sch: s_tir.Schedule, block: SBlockRV) -> str:
    """The block's iterators as a string: ``S`` spatial, ``R`` reduction, ``O`` other."""
    return "".join({tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}.get(iv.iter_type, "O")
                   for iv in sch.get(block).iter_vars)


def _extent(sch: s_tir.Schedule, loop: LoopRV) -> int:
    ext = sch.get(loop).extent
    if not isinstance(ext, tirx.IntImm):
        raise ValueError("symbolic loop extent")
    return int(ext.value)


def _work(sch: s_tir.Schedule, block: SBlockRV) -> int:
    """Iterations of the block's loop nest."""
    n = 1
    for loop in sch.get_loops(block):
        n *= _extent(sch, loop)
    return n


def _point(region: tirx.TensorRegion) -> list[tirx.PrimExpr] | None:
    """The indices of a one-element access, or None for a range."""
    if any(not (isinstance(r.extent, tirx.IntImm) and r.extent.value == 1) for r in region.region):
        return None
    return [r.min for r in region.region]


def _uses(expr: tirx.PrimExpr, var: tirx.Var) -> bool:
    return any(v.same_as(var) for v in undefined_vars(expr))


def _is_var(expr: tirx.PrimExpr, var: tirx.Var) -> bool:
    return isinstance(expr, tirx.Var) and expr.same_as(var)


def _vector_width(extent: int, lanes: int, most: int) -> int:
    """The inner extent to vectorize a loop of ``extent`` by: the largest multiple of
    ``lanes`` up to ``most`` that divides it, else the whole loop when it fits in one
    vector, else its largest divisor from ``lanes`` down to 4, else 1 (stay scalar). Odd
    widths over one vector (12, 24 on AVX2) measured 2-6x slower than a divisor."""
    for width in range(most - most % lanes, 0, -lanes):
        if extent % width == 0:
            return width
    if extent <= lanes:
        return extent
    for width in range(lanes, 3, -1):
        if extent % width == 0:
            return width
    return 1


def _vectorize_inner(sch: s_tir.Schedule, loop: LoopRV, lanes: int) -> LoopRV:
    """Split ``loop`` so that its inner part is vectorizable, vectorize that part and return
    the outer part (``loop`` itself when it is short or has no fitting factor)."""
    extent = _extent(sch, loop)
    width = _vector_width(extent, lanes, lanes)
    if width < 2:
        return loop
    if width == extent:
        sch.vectorize(loop)
        return loop
    outer, inner = sch.split(loop, [None, width])
    sch.vectorize(inner)
    return outer


def _parallel(sch: s_tir.Schedule, loop: LoopRV, work: int, cores: int, least: int = PARALLEL_MIN_WORK) -> None:
    if cores > 1 and work >= least and _extent(sch, loop) > 1:
        sch.parallel(loop)


def _inline_spatial(sch: s_tir.Schedule, keep: Sequence[SBlockRV] = ()) -> None:
    """Inline every spatial block that is not an output (nor in ``keep``) into its
    consumers where TVM allows it (padding, casts, elementwise chains)."""
    keep_names = {sch.get(b).name_hint for b in keep}
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    for block in _blocks(sch):
        name = sch.get(block).name_hint
        if name in keep_names or name in outputs or "R" in _kinds(sch, block):
            continue
        try:
            sch.compute_inline(block)
        except SCHEDULE_ERRORS:
            pass


# ----------------------------------------------------------------------------- rule 1: matmul


def _panel_width(index: list[tirx.PrimExpr], j: tirx.Var, k: tirx.Var) -> int | None:
    """``w`` when ``index`` reads a weight packed in panels (``layout.pack_dense``):
    ``B[j // w, k, j % w]``."""
    if len(index) != 3 or not _is_var(index[1], k):
        return None
    first, last = index[0], index[2]
    if (isinstance(first, tirx.FloorDiv) and isinstance(last, tirx.FloorMod) and _is_var(first.a, j)
            and _is_var(last.a, j) and isinstance(first.b, tirx.IntImm) and isinstance(last.b, tirx.IntImm)
            and first.b.value == last.b.value):
        return int(first.b.value)
    return None


def _matmul_axes(sch: s_tir.Schedule, block: SBlockRV) -> tuple[bool, int, int, bool, int | None] | None:
    """(B transposed, index of the row iterator, index of the column iterator, B shared
    by every batch, B's panel width when packed) when the block is ``C[..., i, j] +=
    A[..., i, k] * B[..., k, j]`` (or ``B[..., j, k]``, or ``B[j // w, k, j % w]``), else
    None."""
    stmt = sch.get(block)
    kinds = _kinds(sch, block)
    if kinds.count("R") != 1 or kinds.count("S") < 2 or "O" in kinds or len(stmt.writes) != 1:
        return None
    out = stmt.writes[0].source
    if not out.dtype.startswith("float"):
        return None
    ivars = [iv.var for iv in stmt.iter_vars]
    k = ivars[kinds.index("R")]
    c = _point(stmt.writes[0])
    if c is None or len(c) < 2 or not all(isinstance(e, tirx.Var) for e in c):
        return None
    i, j = c[-2], c[-1]
    reads = [r for r in stmt.reads if not r.source.same_as(out)]
    if len(reads) != 2:
        return None
    a, b = (_point(r) for r in reads)
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return None
    if not _is_var(a[-1], k):
        a, b = b, a
    if not (_is_var(a[-1], k) and _is_var(a[-2], i) and not any(_uses(e, j) for e in a)):
        return None
    panel = _panel_width(b, j, k)
    if panel is not None:
        transposed = False
    elif _is_var(b[-2], k) and _is_var(b[-1], j):
        transposed = False
    elif _is_var(b[-2], j) and _is_var(b[-1], k):
        transposed = True
    else:
        return None
    if any(_uses(e, i) for e in b):
        return None
    batch = [v for v in ivars if not any(v.same_as(x) for x in (i, j, k))]
    shared = not any(_uses(e, v) for e in b for v in batch)
    return transposed, ivars.index(i), ivars.index(j), shared, panel


MATMUL_ROWS = (6, 4, 3, 2, 8, 5, 7, 1)
"""Rows of the accumulator tile, in order of preference (the first that divides M)."""


def _matmul_rows(m: int, nr: int, lanes: int, registers: int | None) -> int:
    """Rows of the accumulator tile: the first of ``MATMUL_ROWS`` that divides ``m``. A
    pointwise convolution (``registers`` given) whose row is one vector (``nr`` <= ``lanes``)
    takes as many rows as the registers hold beside the broadcasts and the pixel vector
    (the largest divisor of ``m`` up to ``registers`` - 8), so enough independent FMAs are
    in flight: ShuffleNet's grouped 1x1 convs (34 rows x 784 pixels per group) ran 0.20 ms
    with 2 rows, 0.085 with 17 (AVX-512). Other matmuls keep ``MATMUL_ROWS`` (the same rule
    for all measured slower: minilm_l3 1.88 vs 1.45 ms, mobilenet_tiny 0.075 vs 0.067)."""
    if registers is not None and nr <= lanes:
        most = max(4, registers - 8)
        return max(r for r in range(1, min(m, most) + 1) if m % r == 0)
    return next(r for r in MATMUL_ROWS if m % r == 0)


def _k_block(k: int, nr: int, l1d_bytes: int) -> int:
    """The K block of a matmul whose accumulator tile is ``nr`` columns wide: the largest
    power of two (16 to 512) whose panel of B (K block x ``nr`` f32) takes at most a
    quarter of the L1 data cache (64 with AVX-512's 32-column tiles and 32 KiB, the value
    measured best here: 128 and 256 were no faster on minilm_l3 and light_bvlc_alexnet),
    when it divides ``k``; else all of ``k``."""
    kc = 512
    while kc > 16 and kc * nr * 4 > l1d_bytes // 4:
        kc //= 2
    return kc if k % kc == 0 else k


def _schedule_matmul(sch: s_tir.Schedule, lanes: int, cores: int, l1d_bytes: int = L1D_BYTES,
                     registers: int = 16) -> s_tir.Schedule | None:
    """Rule 1: one matmul block (``_matmul_axes``), spatial blocks before it (inlined) and
    after it (the epilogue: inlined into one block, computed per tile).

    Schedule: an accumulator tile of ``mr`` rows (``MATMUL_ROWS``) x ``2*lanes`` columns
    (or fewer, dividing N) in a local buffer (``cache_write``), loops
    ``[batch, j/nr, i/mr] (parallel) | k/kc | k%kc (``_k_block``) | mr (unrolled) | nr (vectorized)``, its
    zero-init split out and vectorized, then the epilogue applied to the tile while it is
    in cache (``reverse_compute_at``), vectorized over columns.

    B read as ``B[..., j, k]`` (reduction axis innermost, e.g. an ONNX Gemm with
    transB=1 or a Q.K^T batch matmul) makes the vectorized column loop gather from strided
    addresses: correct but several times slower. effc's lowering emits constant weights
    as ``[k, j]`` already (every fixture's dense/matmul weight is ``const[v_k, v_j]``);
    a lowering that does not should pre-transpose constant weights at compile time.
    """
    blocks = _blocks(sch)
    found = [(b, axes) for b in blocks if (axes := _matmul_axes(sch, b)) is not None]
    if len(found) != 1:
        return None
    [(mm, (transposed, i_index, j_index, shared, panel))] = found
    if any("R" in _kinds(sch, b) for b in blocks if not sch.get(b).same_as(sch.get(mm))):
        return None
    _inline_spatial(sch)
    again = _matmul_axes(sch, mm)  # an inlined transpose of B changes how B is read
    if again is not None and again[0]:
        return _schedule_dot_products(sch, mm, i_index, j_index, lanes, cores)
    after = sch.get_consumers(mm)
    epilogue = None
    if after:
        if len(after) != 1:
            return None
        epilogue = after[0]

    loops = sch.get_loops(mm)
    kinds = _kinds(sch, mm)
    if len(loops) != len(kinds):
        return None
    k_index = kinds.index("R")
    work = _work(sch, mm)
    m, n, k = (_extent(sch, loops[x]) for x in (i_index, j_index, k_index))
    nr = panel or _vector_width(n, lanes, 2 * lanes)  # (a packed weight: one panel per tile)
    mr = _matmul_rows(m, nr, lanes, registers if sch.get(mm).name_hint == POINTWISE_BLOCK else None)
    kc = _k_block(k, nr, l1d_bytes)
    batch = [loops[x] for x in range(len(loops)) if x not in (i_index, j_index, k_index)]
    io, ii = sch.split(loops[i_index], [None, mr])
    jo, ji = sch.split(loops[j_index], [None, nr])
    ko, ki = sch.split(loops[k_index], [None, kc])
    # column panels outside row tiles: a panel of B (K x nr) stays in cache while every
    # row tile uses it (rows outside re-streamed all of B once per row tile: 4x the traffic
    # on MiniLM's FFN, whose weights do not fit in L2)
    # on the same account, a weight shared by every batch (MiniLM's [2, 12, 384] x [384, N])
    # has its column panels outside the batch loops too
    outer = [jo, *batch, io] if shared else [*batch, jo, io]
    sch.reorder(*outer, ko, ki, ii, ji)

    acc = sch.cache_write(mm, 0, "local")
    if epilogue is not None:
        sch.reverse_compute_inline(epilogue)
    sch.reverse_compute_at(acc, io)
    *_, ai, aj = sch.get_loops(acc)
    sch.vectorize(aj)

    _parallel(sch, sch.fuse(*outer), work, cores, MATMUL_PARALLEL_MIN_WORK)
    sch.unroll(ii)
    sch.vectorize(ji)
    init = sch.decompose_reduction(mm, ko)
    *_, ni, nj = sch.get_loops(init)
    sch.vectorize(nj)
    sch.unroll(ni)
    return sch


DOT_ROWS = 4
"""Rows of ``B[j, k]`` one pass over a vector of ``A`` feeds (``_schedule_dot_products``)."""


def _schedule_dot_products(sch: s_tir.Schedule, mm: SBlockRV, i_index: int, j_index: int, lanes: int,
                           cores: int) -> s_tir.Schedule | None:
    """A matmul reading ``B[..., j, k]`` (k innermost: a weight computed at run time and
    used transposed, as the light VGG-19 and ZFNet-512 do) as dot products along k:
    ``rfactor`` keeps ``lanes`` partial sums per output, each a vector FMA of contiguous
    ``A[i, k:k+lanes]`` and ``B[j, k:k+lanes]``, ``DOT_ROWS`` rows of B per vector of A;
    then the partial sums are added up. Vectorizing over j instead gathers B with a stride
    of K (ZFNet-512's fc6, 4096 x 18432 read that way: 124 ms of its 181)."""
    loops = sch.get_loops(mm)
    kinds = _kinds(sch, mm)
    k_index = kinds.index("R")
    k = _extent(sch, loops[k_index])
    if k % lanes or k < 4 * lanes:
        return None
    work = _work(sch, mm)
    n = _extent(sch, loops[j_index])
    ko, ki = sch.split(loops[k_index], [None, lanes])
    rf = sch.rfactor(ki, factor_axis=len(kinds) - 1)  # partial sums [..., i, j, lane]
    rloops = sch.get_loops(rf)  # the original loops with k split: ..., ko, ki
    spatial = [lp for x, lp in enumerate(rloops[:-2]) if x != j_index]
    jo, ji = sch.split(rloops[j_index], [None, _dot_rows(n)])
    sch.reorder(*spatial, jo, rloops[-2], ji, rloops[-1])
    sch.vectorize(rloops[-1])
    sch.unroll(ji)
    outer = sch.fuse(*spatial, jo)
    _parallel(sch, outer, work, cores, MATMUL_PARALLEL_MIN_WORK)
    final = sch.get_consumers(rf)
    if len(final) == 1:
        sch.reverse_compute_at(final[0], outer)
    sch.decompose_reduction(rf, rloops[-2])
    return sch


def _dot_rows(n: int) -> int:
    return next(r for r in (DOT_ROWS, 2, 1) if n % r == 0)


# ----------------------------------------------------------------------------- rule 2: pool


def _pool_block(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """A sliding-window reduction: two trailing reduction iterators, each added to a
    spatial one in the index of the one buffer it reads (``x[n, c, h*s + r, w*s + q]``,
    or ``x[n, c, h*s + r, w*s + q, c16]``)."""
    stmt = sch.get(block)
    kinds = _kinds(sch, block)
    if not kinds.endswith("RR") or kinds.count("R") != 2 or "O" in kinds or len(stmt.writes) != 1:
        return False
    reads = [r for r in stmt.reads if not r.source.same_as(stmt.writes[0].source)]
    if len(reads) != 1 or (idx := _point(reads[0])) is None:
        return False
    spatial = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    windows = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    return all(any(_uses(e, r) and any(_uses(e, s) for s in spatial) for e in idx) for r in windows)


def _schedule_pool(sch: s_tir.Schedule, lanes: int, cores: int) -> s_tir.Schedule | None:
    """Rule 2: a pooling block (``_pool_block``); its padding and an elementwise block
    after it (avg pool's division) are scheduled on their own (``_schedule_spatial_block``).

    Applies when the pool's last axis reads consecutive elements: the channel block of
    NCHW16c, or W of a stride-1 NCHW pool. Schedule: the other spatial loops fused and
    parallel (N*C/16*H*W), then the window loops, then the last axis vectorized; the init is
    split out. Stride-2 NCHW pools are left alone (None): vectorizing W gathers, and
    parallel + unrolled windows measured 0.8-0.9x of the plain loop nest (resnet50's
    stem pool, 0.24 ms). The pool's consumer is never moved into its loops: TVM 0.27's
    ``reverse_compute_at`` of a pool's consumer gives wrong results.

    Measured (1 thread): NCHW16c max 3x3/2 on [1,8,28,28,16] 0.020 -> 0.025 ms and a
    stride-1 NCHW 3x3 max pool on [1,64,28,28] 0.034 -> 0.043 ms, i.e. 0.8x: LLVM already
    vectorizes the plain nest. In the models (1 thread, VM-instrumented) max pools were
    slower scheduled (light_squeezenet's 437 vs 298 us, light_inception_v1's 2.47 vs
    1.93 ms) and average pools faster (light_densenet121's transition pools 101 vs 214 us):
    the rule takes only average (sum) pools.
    """
    blocks = _blocks(sch)
    pools = [b for b in blocks if _pool_block(sch, b)]
    if len(pools) != 1:
        return None
    pool = pools[0]
    if any("R" in _kinds(sch, b) for b in blocks if not sch.get(b).same_as(sch.get(pool))):
        return None
    if not isinstance(getattr(sch.get(pool).body, "value", None), tirx.Add):
        return None  # a max pool: measured slower scheduled, in the models (see the docstring)
    for block in _blocks(sch):
        if not sch.get(block).same_as(sch.get(pool)):
            _schedule_spatial_block(sch, block, lanes, cores)
    *spatial, rh, rw = sch.get_loops(pool)
    if len(spatial) < 2:
        return None
    work = _work(sch, pool)
    inner = spatial[-1]
    extent = _extent(sch, inner)
    last = [iv.var for iv in sch.get(pool).iter_vars if iv.iter_type == tirx.IterVar.DataPar][-1]
    width = _vector_width(extent, lanes, 4 * lanes) if _contiguous_in(sch.get(pool), last) else 1
    if width < 2:
        return None
    if width < extent:
        wo, inner = sch.split(inner, [None, width])
        sch.reorder(wo, rh, rw, inner)
    else:
        sch.reorder(rh, rw, inner)
    _parallel(sch, sch.fuse(*spatial[:-1]), work, cores)
    sch.vectorize(inner)
    init = sch.decompose_reduction(pool, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch


# ----------------------------------------------------------------------------- rule 3: reduction


def _schedule_reduction(sch: s_tir.Schedule, lanes: int, cores: int) -> s_tir.Schedule | None:
    """Rule 3: kernels with reduction blocks that are neither matmuls nor pools.

    a. One reduction over a middle axis (``sum(x[b, k, j], k)``): the reduction loop moves
       outside the last spatial axis, which is vectorized; outer spatial axes parallel.
    b. Softmax, layer norm, mean (a chain whose blocks share leading spatial axes, the
       last one elementwise or a reduction): the shared axes are fused and parallel, every
       block is computed inside them (``compute_at``), elementwise blocks vectorized over
       their inner axis, reductions serial (their order of additions is kept). Only for
       kernels of ``PARALLEL_MIN_WORK`` and more on several cores: on MiniLM's small
       layer norm ([24, 384]) and softmax ([288, 12]) it measured 0.6-0.9x of LLVM's own
       vectorization of the plain loop nest, so those are left alone (None).
    """
    blocks = _blocks(sch)
    if not any("R" in _kinds(sch, b) for b in blocks) or any(_pool_block(sch, b) for b in blocks):
        return None
    if len(blocks) == 1 and _middle_axis_reduction(sch, blocks[0], lanes, cores):
        return sch
    leading = []
    for b in blocks:
        kinds = _kinds(sch, b)
        leading.append(len(kinds) - len(kinds.lstrip("S")))
    last = blocks[-1]
    shared = min(leading)
    if shared == 0:
        return None
    loops = sch.get_loops(last)
    extents = [_extent(sch, lp) for lp in loops[:shared]]
    for b in blocks[:-1]:
        if [_extent(sch, lp) for lp in sch.get_loops(b)[:shared]] != extents:
            return None
    if shared == len(_kinds(sch, last)) and len(blocks) == 1:
        return None  # a reduction to a scalar per ... nothing shared to split
    work = sum(_work(sch, b) for b in blocks)
    if cores == 1 or work < PARALLEL_MIN_WORK:
        return None
    outer = sch.fuse(*loops[:shared]) if shared > 1 else loops[0]
    _parallel(sch, outer, work, cores)
    for b in reversed(blocks[:-1]):
        sch.compute_at(b, outer, preserve_unit_loops=True)
    for b in _blocks(sch):
        rest = sch.get_loops(b)[1:]
        if not rest:
            continue
        if "R" not in _kinds(sch, b):
            _vectorize_inner(sch, sch.fuse(*rest) if len(rest) > 1 else rest[0], lanes)
    return sch


def _middle_axis_reduction(sch: s_tir.Schedule, block: SBlockRV, lanes: int, cores: int) -> bool:
    """Case a of rule 3; False (nothing changed) when the block is not one."""
    kinds = _kinds(sch, block)
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    if len(loops) != len(kinds) or not kinds.startswith("S") or "O" in kinds or len(stmt.reads) != 1:
        return False
    idx = _point(stmt.reads[0])
    ivars = [iv.var for iv in stmt.iter_vars]
    last_s = max(x for x, c in enumerate(kinds) if c == "S")
    if idx is None or not idx or not _is_var(idx[-1], ivars[last_s]) or _extent(sch, loops[last_s]) < lanes:
        return False
    spatial = [loops[x] for x, c in enumerate(kinds) if c == "S"]
    reduce = [loops[x] for x, c in enumerate(kinds) if c == "R"]
    work = _work(sch, block)
    sch.reorder(*spatial[:-1], *reduce, spatial[-1])
    _vectorize_inner(sch, spatial[-1], lanes)
    if len(spatial) > 1:
        _parallel(sch, sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0], work, cores)
    init = sch.decompose_reduction(block, reduce[0])
    _vectorize_inner(sch, sch.get_loops(init)[-1], lanes)
    return True


# ----------------------------------------------------------------------------- rule 4: injective


def _schedule_spatial_block(sch: s_tir.Schedule, block: SBlockRV, lanes: int, cores: int) -> None:
    """The innermost loop vectorized when its extent is a multiple of ``lanes`` and every
    access moves by 0 or 1 element along it (a transpose, a reshape with div/mod indices, a
    strided read or a padded copy with an odd width stays scalar: LLVM vectorizes plain
    loops well itself, and gathers cost more than they save); the fewest outer loops that
    give every core work fused and parallel when the block is big."""
    loops = sch.get_loops(block)
    if not loops:
        return
    work = _work(sch, block)
    inner = loops[-1]
    if _extent(sch, inner) % lanes == 0 and _contiguous_along(sch, block, inner):
        outer, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)
        loops = list(loops[:-1]) + [outer]
    if cores > 1 and work >= PARALLEL_MIN_WORK:
        prefix, extent = [], 1
        for loop in loops:
            prefix.append(loop)
            extent *= _extent(sch, loop)
            if extent >= 4 * cores:
                break
        _parallel(sch, sch.fuse(*prefix) if len(prefix) > 1 else prefix[0], work, cores)


def _contiguous_along(sch: s_tir.Schedule, block: SBlockRV, loop: LoopRV) -> bool:
    """Every buffer access of the block moves by 0 or 1 element per step of ``loop`` (and
    only in its last dimension): a vector of consecutive elements, or a broadcast."""
    var = _iter_of_loop(sch, block, loop)
    return var is not None and _contiguous_in(sch.get(block), var)


def _contiguous_in(stmt: s_tir.SBlock, var: tirx.Var) -> bool:
    """Every access of the block moves by 0 or 1 element per step of its iterator ``var``,
    in its last dimension only."""
    for region in list(stmt.reads) + list(stmt.writes):
        idx = _point(region)
        if idx is None:
            return False
        for d, e in enumerate(idx):
            linear = sym.detect_linear_equation(e, [var])
            if not linear or not isinstance(linear[0], tirx.IntImm):
                return False
            if linear[0].value not in ((0, 1) if d == len(idx) - 1 else (0,)):
                return False
    return True


def _iter_of_loop(sch: s_tir.Schedule, block: SBlockRV, loop: LoopRV) -> tirx.Var | None:
    """The block iterator bound to the bare variable of ``loop``, the block's innermost loop
    (None when there is none)."""
    realize = sch.get(loop).body
    if not isinstance(realize, s_tir.SBlockRealize):
        return None
    loop_var = sch.get(loop).loop_var
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        if value.same_as(loop_var):
            return iv.var
    return None


def _schedule_injective(sch: s_tir.Schedule, lanes: int, cores: int) -> s_tir.Schedule | None:
    """Rule 4: only spatial blocks. Producers are inlined where TVM allows; each remaining
    block gets ``_schedule_spatial_block``."""
    blocks = _blocks(sch)
    if not blocks or any(_kinds(sch, b).strip("S") for b in blocks):
        return None
    _inline_spatial(sch)
    for block in _blocks(sch):
        _schedule_spatial_block(sch, block, lanes, cores)
    return sch


RULES: tuple[Callable[[s_tir.Schedule, int, int], s_tir.Schedule | None], ...] = (
    _schedule_matmul, _schedule_pool, _schedule_reduction, _schedule_injective)
