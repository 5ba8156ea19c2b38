"""Triton kernels of the Langevin update and of the RNG contract (LPC.md §2 and §5).

Every kernel handles ``BLOCK`` consecutive elements of the flattened (row-major,
contiguous) tensor per program. Element ``i`` uses lane ``i % 4`` of the Philox
counter ``offset + i // 4``, so a program draws ``BLOCK // 4`` counters and
gets four uint32 words per counter from one ``tl.philox`` call; the four lane
blocks are interleaved back into element order. The result therefore does not
depend on ``BLOCK``, the grid or the number of warps.

Philox is called with uint32 counter words ``(c0, c1) = (low, high)`` of the
64-bit counter and ``c2 = c3 = 0`` rather than through ``tl.randn`` /
``tl.randint4x`` with an int64 offset: before triton-lang/triton PR #6832
(May 2025) ``randint4x`` passed a 64-bit offset straight to ``philox``, which
then ran the 64-bit Philox variant (other constants, the whole seed as one key
word, uint64 outputs), whereas newer releases (3.9 included) split it into the
two uint32 words used here. Calling ``tl.philox`` with uint32 words yields the
same stream on every release.

Seeds, offsets and steps arrive as int64 scalars (the bits of the unsigned
64-bit values), or as int32 when they fit, or as the compile-time constant 1:
Triton's launcher turns an integer argument equal to 1 into a ``constexpr``, and
so does the code ``torch.compile`` generates, whatever ``do_not_specialize`` says.
A constant is a Python int in the kernel, without ``.to``, so every integer
argument goes through ``tl.cast`` (which makes a tensor of a constant) first.
They are split into uint32 words with signed shifts and masks,
never with bitcasts: the interpreter stores an int in ``[2**31, 2**32)`` as a
4-byte value tagged int64, which a bitcast to a 64-bit type rejects (see ``_words``).

Float parameters arrive as ``(hi, lo)`` pairs of float32 values with
``hi + lo`` equal to the float64 value to about 48 bits: the launcher passes
Python floats, which Triton types as float32 (and the interpreter ignores
``tl.float64`` annotations), while the float64 kernels need them in double.
"""

from __future__ import annotations

import triton
import triton.language as tl

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


@triton.jit
def _words(x):
    """uint32 (low, high) words of a uint64 value carried as an int64 scalar."""
    # Through uint64 and back: a no-op on GPUs; under the interpreter it also widens an int
    # stored as 4 bytes but tagged int64 (values in [2**31, 2**32)), which shifts would misread.
    x = tl.cast(tl.cast(x, tl.int64), tl.uint64).to(tl.int64)
    lo = (x & 0xFFFFFFFF).to(tl.uint32)
    hi = ((x >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return lo, hi


@triton.jit
def _f64(hi, lo):
    """Rebuild a float64 parameter from its float32 (hi, lo) split."""
    return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)


@triton.jit
def _cvt(x, F64: tl.constexpr):
    """Convert to the compute type: float64 for float64 tensors, float32 otherwise."""
    if F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _sqrt(x, F64: tl.constexpr):
    # IEEE-rounded square root in both precisions (tl.sqrt is approximate for float32 on GPUs).
    if F64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _bias_correction(step, beta, BIAS_CORRECTION: tl.constexpr):
    """``1 / (1 - beta**step)`` in float64 (or 1): computed here so the step may live on the device."""
    if BIAS_CORRECTION:
        stepf = tl.cast(step, tl.int64).to(tl.float64)
        return 1.0 / (1.0 - tl.exp(stepf * tl.log(beta)))
    else:
        return tl.cast(1.0, tl.float64)


@triton.jit
def _philox_block(seed, offset, pid, Q: tl.constexpr):
    """Philox4x32-10 of the ``Q`` counters ``offset + pid*Q + [0, Q)``: four uint32 blocks."""
    s_lo, s_hi = _words(seed)
    o_lo, o_hi = _words(offset)
    j = pid.to(tl.int64) * Q + tl.arange(0, Q).to(tl.int64)
    j_lo = (j & 0xFFFFFFFF).to(tl.uint32)
    j_hi = ((j >> 32) & 0xFFFFFFFF).to(tl.uint32)
    # 64-bit counter addition done in uint32 words with an explicit carry (wraps modulo 2**64).
    c0 = o_lo + j_lo
    carry = (c0 < o_lo).to(tl.uint32)
    c1 = o_hi + j_hi + carry
    zero = tl.zeros([Q], dtype=tl.uint32)
    key = (s_hi.to(tl.uint64) << 32) | s_lo.to(tl.uint64)
    return tl.philox(key, c0, c1, zero, zero)


@triton.jit
def _interleave4(x0, x1, x2, x3):
    """Element ``4*j + l`` of the result is ``x_l[j]``."""
    return tl.interleave(tl.interleave(x0, x2), tl.interleave(x1, x3))


@triton.jit
def _box_muller_f64(u1, u2):
    # Clamp and angle exactly as Triton's float32 transform; radius and trig in double.
    u1 = tl.maximum(1.0e-7, u1)
    th = 6.283185307179586 * u2
    r = tl.sqrt(-2.0 * tl.log(u1.to(tl.float64)))
    thd = th.to(tl.float64)
    return r * tl.cos(thd), r * tl.sin(thd)


@triton.jit
def _normals(seed, offset, pid, BLOCK: tl.constexpr, F64: tl.constexpr):
    """The ``BLOCK`` standard normals of program ``pid`` in element order."""
    r0, r1, r2, r3 = _philox_block(seed, offset, pid, BLOCK // 4)
    u0 = tl.random.uint_to_uniform_float(r0)
    u1 = tl.random.uint_to_uniform_float(r1)
    u2 = tl.random.uint_to_uniform_float(r2)
    u3 = tl.random.uint_to_uniform_float(r3)
    if F64:
        n0, n1 = _box_muller_f64(u0, u1)
        n2, n3 = _box_muller_f64(u2, u3)
    else:
        n0, n1 = tl.random.pair_uniform_to_normal(u0, u1)
        n2, n3 = tl.random.pair_uniform_to_normal(u2, u3)
    return _interleave4(n0, n1, n2, n3)


@triton.jit
def _update(
    z,
    g,
    v,
    noise,
    c,
    eta,
    beta,
    omb,
    eps,
    ns,
    wd,
    F64: tl.constexpr,
    PRECONDITION: tl.constexpr,
    PRIOR_GRAD: tl.constexpr,
):
    """The forward update of one tile (lpc_fast.reference.langevin_update): ``(z_new, v_new)``.

    Without ``PRECONDITION`` ``v`` is not read and ``v_new`` is ``v``. ``PRIOR_GRAD`` adds the
    Gaussian prior's gradient ``wd * z`` (``wd`` = weight_decay != 0) to the drive.
    """
    if PRIOR_GRAD:
        s = g + wd * z
    else:
        s = g
    if PRECONDITION:
        v_new = beta * v + omb * s * s
        p = 1.0 / (eps + _sqrt(v_new * c, F64))
        z_new = z - eta * p * s + ns * _sqrt(p, F64) * noise
    else:
        v_new = v
        z_new = z - eta * s + ns * noise
    return z_new, v_new


@triton.jit
def _step_tile(
    z_ptr,
    g_ptr,
    v_ptr,
    z_out_ptr,
    v_out_ptr,
    n,
    seed,
    offset,
    blk,
    c64,
    eta64,
    beta64,
    omb64,
    eps64,
    ns64,
    wd64,
    BLOCK: tl.constexpr,
    F64: tl.constexpr,
    PRECONDITION: tl.constexpr,
    PRIOR_GRAD: tl.constexpr,
    STORE_V: tl.constexpr,
):
    """Block ``blk`` of one tensor: load, convert, update, store. The one body of the forward step.

    Both the single-tensor kernel and every dtype branch of the foreach kernel call this function
    with typed pointers and the float64 parameters: one source for the loads, conversions,
    arithmetic and stores, in one order, so that the two agree bit for bit also where a GPU
    compiler contracts multiply-adds (which the interpreter never does). The compiler still
    optimises each kernel as a whole (the foreach kernel holds four inlined copies), so identity
    of the compiled code is checked on a GPU (tests/gpu/test_gpu_triton_foreach_identity.py).
    ``z_out``/``v_out`` may alias ``z``/``v`` (in place); without ``PRECONDITION`` and with
    ``STORE_V``, ``v`` is copied to ``v_out``.
    """
    offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    c = _cvt(c64, F64)
    eta = _cvt(eta64, F64)
    beta = _cvt(beta64, F64)
    omb = _cvt(omb64, F64)
    eps = _cvt(eps64, F64)
    ns = _cvt(ns64, F64)
    wd = _cvt(wd64, F64)
    noise = _normals(seed, offset, blk, BLOCK, F64)
    z = _cvt(tl.load(z_ptr + offs, mask=mask, other=0.0), F64)
    g = _cvt(tl.load(g_ptr + offs, mask=mask, other=0.0), F64)
    if PRECONDITION:
        v = _cvt(tl.load(v_ptr + offs, mask=mask, other=0.0), F64)
        z_new, v_new = _update(z, g, v, noise, c, eta, beta, omb, eps, ns, wd, F64, True, PRIOR_GRAD)
        if STORE_V:
            tl.store(v_out_ptr + offs, v_new.to(tl.float32), mask=mask)
    else:
        z_new, _ = _update(z, g, z, noise, c, eta, beta, omb, eps, ns, wd, F64, False, PRIOR_GRAD)
        if STORE_V:
            tl.store(v_out_ptr + offs, tl.load(v_ptr + offs, mask=mask, other=0.0), mask=mask)
    tl.store(z_out_ptr + offs, z_new.to(z_out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["seed", "offset", "step"])
def langevin_fwd_kernel(
    z_ptr,
    g_ptr,
    v_ptr,
    z_out_ptr,
    v_out_ptr,
    state_ptr,
    n,
    seed: tl.int64,
    offset: tl.int64,
    step: tl.int64,
    eta_hi,
    eta_lo,
    beta_hi,
    beta_lo,
    omb_hi,
    omb_lo,
    eps_hi,
    eps_lo,
    ns_hi,
    ns_lo,
    wd_hi,
    wd_lo,
    BLOCK: tl.constexpr,
    F64: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    PRECONDITION: tl.constexpr,
    PRIOR_GRAD: tl.constexpr,
    USE_STATE: tl.constexpr,
    STORE_V: tl.constexpr,
):
    """One Langevin step; ``z_out``/``v_out`` may alias ``z``/``v`` (in place).

    With ``USE_STATE`` the seed, offset and step are read from the int64 tensor
    ``state = [seed, offset, step]`` (the scalar arguments are ignored); the state
    is advanced by a separate kernel launched after this one.
    ``omb = 1 - beta``, ``ns = sqrt(2 * step_size * temperature)`` and ``wd = weight_decay``.
    """
    pid = tl.program_id(0)
    if USE_STATE:
        seed = tl.load(state_ptr)
        offset = tl.load(state_ptr + 1)
        step = tl.load(state_ptr + 2)
    beta64 = _f64(beta_hi, beta_lo)
    c64 = _bias_correction(step, beta64, BIAS_CORRECTION)
    eta64 = _f64(eta_hi, eta_lo)
    omb64 = _f64(omb_hi, omb_lo)
    eps64 = _f64(eps_hi, eps_lo)
    ns64 = _f64(ns_hi, ns_lo)
    wd64 = _f64(wd_hi, wd_lo)
    _step_tile(z_ptr, g_ptr, v_ptr, z_out_ptr, v_out_ptr, n, seed, offset, pid, c64, eta64, beta64, omb64,
               eps64, ns64, wd64, BLOCK, F64, PRECONDITION, PRIOR_GRAD, STORE_V)  # fmt: skip


@triton.jit
def advance_state_kernel(state_ptr, increment):
    """``state[1] += increment`` (modulo 2**64) and ``state[2] += 1``: one program."""
    offset = tl.load(state_ptr + 1)
    step = tl.load(state_ptr + 2)
    # Unsigned arithmetic: the offset wraps modulo 2**64 like the counter words do.
    new_offset = offset.to(tl.uint64) + tl.cast(increment, tl.int64).to(tl.uint64)
    tl.store(state_ptr + 1, new_offset.to(tl.int64))
    tl.store(state_ptr + 2, step + 1)


@triton.jit(do_not_specialize=["seed", "offset", "step"])
def langevin_bwd_kernel(
    gz_ptr,
    gv_ptr,
    z_ptr,
    g_ptr,
    v_ptr,
    grad_z_ptr,
    grad_g_ptr,
    n,
    seed: tl.int64,
    offset: tl.int64,
    step: tl.int64,
    eta_hi,
    eta_lo,
    beta_hi,
    beta_lo,
    omb_hi,
    omb_lo,
    eps_hi,
    eps_lo,
    ns_hi,
    ns_lo,
    wd_hi,
    wd_lo,
    BLOCK: tl.constexpr,
    F64: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    PRECONDITION: tl.constexpr,
    PRIOR_GRAD: tl.constexpr,
    HAS_GV: tl.constexpr,
):
    """Vector-Jacobian product of the step w.r.t. ``(z, grad)``; the noise is regenerated."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    eta = _cvt(_f64(eta_hi, eta_lo), F64)
    wd = _cvt(_f64(wd_hi, wd_lo), F64)
    gz = _cvt(tl.load(gz_ptr + offs, mask=mask, other=0.0), F64)
    if PRECONDITION:
        beta64 = _f64(beta_hi, beta_lo)
        c = _cvt(_bias_correction(step, beta64, BIAS_CORRECTION), F64)
        beta = _cvt(beta64, F64)
        omb = _cvt(_f64(omb_hi, omb_lo), F64)
        eps = _cvt(_f64(eps_hi, eps_lo), F64)
        ns = _cvt(_f64(ns_hi, ns_lo), F64)
        noise = _normals(seed, offset, pid, BLOCK, F64)
        z = _cvt(tl.load(z_ptr + offs, mask=mask, other=0.0), F64)
        g = _cvt(tl.load(g_ptr + offs, mask=mask, other=0.0), F64)
        v = _cvt(tl.load(v_ptr + offs, mask=mask, other=0.0), F64)
        if PRIOR_GRAD:
            s = g + wd * z
        else:
            s = g
        v_new = beta * v + omb * s * s
        q = _sqrt(v_new * c, F64)
        p = 1.0 / (eps + q)
        # d q / d s, with the subgradient 0 at the kink q = 0.
        safe_q = tl.where(q > 0.0, q, 1.0)
        dq_ds = tl.where(q > 0.0, c * omb * s / safe_q, 0.0)
        dp_ds = -p * p * dq_ds
        dz_ds = -eta * (p + s * dp_ds) + ns * noise * dp_ds / (2.0 * _sqrt(p, F64))
        grad_s = gz * dz_ds
        if HAS_GV:
            gv = _cvt(tl.load(gv_ptr + offs, mask=mask, other=0.0), F64)
            grad_s = grad_s + gv * (2.0 * omb * s)
    else:
        grad_s = -eta * gz
    if PRIOR_GRAD:
        grad_z = gz + wd * grad_s  # ds/dz = wd
    else:
        grad_z = gz
    tl.store(grad_z_ptr + offs, grad_z.to(grad_z_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_g_ptr + offs, grad_s.to(grad_g_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed", "offset"])
def philox_normal_kernel(
    out_ptr, n, seed: tl.int64, offset: tl.int64, BLOCK: tl.constexpr, F64: tl.constexpr
):
    """Standard normals of the contract (float32 Box–Muller, or float64 from the float32 uniforms)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    noise = _normals(seed, offset, pid, BLOCK, F64)
    tl.store(out_ptr + offs, noise.to(out_ptr.dtype.element_ty), mask=offs < n)


@triton.jit(do_not_specialize=["seed", "offset"])
def philox_uint32_kernel(out_ptr, n, seed: tl.int64, offset: tl.int64, BLOCK: tl.constexpr):
    """The raw uint32 words of the contract, zero-extended into int64."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    r0, r1, r2, r3 = _philox_block(seed, offset, pid, BLOCK // 4)
    words = _interleave4(r0, r1, r2, r3)
    tl.store(out_ptr + offs, words.to(tl.int64), mask=offs < n)


# --------------------------------------------------------------------------------------------------
# multi-tensor step (device tables: lpc_fast.triton.foreach; launcher: lpc_fast.triton.launch)
# --------------------------------------------------------------------------------------------------


@triton.jit
def _foreach_tile(
    z_addr,
    g_addr,
    v_addr,
    n,
    seed,
    offset,
    blk,
    c64,
    eta64,
    beta64,
    omb64,
    eps64,
    ns64,
    wd64,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
    F64: tl.constexpr,
    PRECONDITION: tl.constexpr,
    PRIOR_GRAD: tl.constexpr,
):
    """Block ``blk`` of one tensor of the table: the single-tensor kernel's tile, in place, on the
    addresses cast to pointers of the tensor's dtype."""
    z_ptr = z_addr.to(tl.pointer_type(DTYPE))
    g_ptr = g_addr.to(tl.pointer_type(DTYPE))
    v_ptr = v_addr.to(tl.pointer_type(tl.float32))
    _step_tile(z_ptr, g_ptr, v_ptr, z_ptr, v_ptr, n, seed, offset, blk, c64, eta64, beta64, omb64, eps64,
               ns64, wd64, BLOCK, F64, PRECONDITION, PRIOR_GRAD, PRECONDITION)  # fmt: skip


@triton.jit(do_not_specialize=["seed", "offset", "step"])
def langevin_foreach_kernel(
    tensors_ptr,
    programs_ptr,
    state_ptr,
    seed: tl.int64,
    offset: tl.int64,
    step: tl.int64,
    eta_hi,
    eta_lo,
    beta_hi,
    beta_lo,
    omb_hi,
    omb_lo,
    eps_hi,
    eps_lo,
    ns_hi,
    ns_lo,
    wd_hi,
    wd_lo,
    BLOCK: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    PRECONDITION: tl.constexpr,
    PRIOR_GRAD: tl.constexpr,
    USE_STATE: tl.constexpr,
):
    """One block of one tensor per program, in place: ``programs[pid] = (tensor row, block)``.

    Tensor rows are ``(z address, grad address, v address, numel, offset relative to the call's,
    dtype code)``; the code picks the pointer element type (0 float32, 1 float64, 2 float16,
    3 bfloat16) in a run-time branch, so one launch serves mixed dtypes.
    """
    pid = tl.program_id(0).to(tl.int64)
    row = tl.load(programs_ptr + 2 * pid)
    blk = tl.load(programs_ptr + 2 * pid + 1)
    if USE_STATE:
        seed = tl.load(state_ptr)
        offset = tl.load(state_ptr + 1)
        step = tl.load(state_ptr + 2)
    meta = tensors_ptr + 6 * row
    z_addr = tl.load(meta)
    g_addr = tl.load(meta + 1)
    v_addr = tl.load(meta + 2)
    n = tl.load(meta + 3)
    rel = tl.load(meta + 4)
    code = tl.load(meta + 5)
    # The tensor's counter: offset + rel modulo 2**64 (unsigned, as the counter words wrap); the
    # offset argument may be the constant 1 (module docstring), hence tl.cast before .to.
    tensor_offset = (tl.cast(tl.cast(offset, tl.int64), tl.uint64) + rel.to(tl.uint64)).to(tl.int64)
    beta64 = _f64(beta_hi, beta_lo)
    c64 = _bias_correction(step, beta64, BIAS_CORRECTION)
    eta64 = _f64(eta_hi, eta_lo)
    omb64 = _f64(omb_hi, omb_lo)
    eps64 = _f64(eps_hi, eps_lo)
    ns64 = _f64(ns_hi, ns_lo)
    wd64 = _f64(wd_hi, wd_lo)
    # Pointer element types must be compile-time constants: one branch per dtype (foreach.DTYPE_CODES).
    if code == 0:
        _foreach_tile(z_addr, g_addr, v_addr, n, seed, tensor_offset, blk, c64, eta64, beta64, omb64,
                      eps64, ns64, wd64, tl.float32, BLOCK, False, PRECONDITION, PRIOR_GRAD)  # fmt: skip
    elif code == 1:
        _foreach_tile(z_addr, g_addr, v_addr, n, seed, tensor_offset, blk, c64, eta64, beta64, omb64,
                      eps64, ns64, wd64, tl.float64, BLOCK, True, PRECONDITION, PRIOR_GRAD)  # fmt: skip
    elif code == 2:
        _foreach_tile(z_addr, g_addr, v_addr, n, seed, tensor_offset, blk, c64, eta64, beta64, omb64,
                      eps64, ns64, wd64, tl.float16, BLOCK, False, PRECONDITION, PRIOR_GRAD)  # fmt: skip
    else:
        _foreach_tile(z_addr, g_addr, v_addr, n, seed, tensor_offset, blk, c64, eta64, beta64, omb64,
                      eps64, ns64, wd64, tl.bfloat16, BLOCK, False, PRECONDITION, PRIOR_GRAD)  # fmt: skip
