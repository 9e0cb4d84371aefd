#!/usr/bin/env python3
"""Golden vectors for moe-fp8 from an independent oracle.

Written from SPEC.md alone, without reading or porting the project's Rust code:
- E4M3 encode/decode: ml_dtypes.float8_e4m3fn (encode of clip(x, -448, 448); NaN -> 0x7F per SPEC §2).
- BF16 rounding: ml_dtypes.bfloat16 (round to nearest even).
- UE8M0 ceil: from numpy.frexp.
- f32 arithmetic: numpy float32 (IEEE, one rounding per operation).
- GEMM: block partials exactly with int64 (E4M3 values are integer multiples of 2^-9), the f32
  promotion acc = fma(s, p, acc) rounded exactly once from the exact rational value (fractions).

Usage:
  gen.py OUT_DIR                 write the golden files
  gen.py --exhaustive-e4m3       read the project's E4M3 encodings of all 2^32 f32 inputs from
                                 stdin, in bit-pattern order, and compare them with ml_dtypes
"""
import json
import sys
from fractions import Fraction

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

E4M3 = ml_dtypes.float8_e4m3fn
BF16 = ml_dtypes.bfloat16
F32 = np.float32
GROUP = 128


# ----------------------------------------------------------------------------- formats

def e4m3_encode(x):
    """float32 array -> uint8 E4M3 codes (SPEC §2: saturate, RNE, NaN -> 0x7F)."""
    x = np.asarray(x, dtype=F32)
    codes = np.clip(x, F32(-448), F32(448)).astype(E4M3).view(np.uint8)
    return np.where(np.isnan(x), np.uint8(0x7F), codes).astype(np.uint8)


def e4m3_decode(b):
    return np.asarray(b, dtype=np.uint8).view(E4M3).astype(F32)


def bf16_round(x):
    """float32 -> float32 rounded to bf16 (RNE)."""
    return np.asarray(x, dtype=F32).astype(BF16).astype(F32)


def bf16_bits(x):
    return np.asarray(x, dtype=F32).astype(BF16).view(np.uint16)


def ceil_pow2(x):
    """Smallest power of two >= x for positive finite float32 x (at least 2^-126), via frexp."""
    x = np.asarray(x, dtype=np.float64)
    m, e = np.frexp(x)  # x = m * 2^e, m in [0.5, 1)
    p = np.where(m == 0.5, np.ldexp(1.0, e - 1), np.ldexp(1.0, e))
    return np.maximum(p, 2.0 ** -126).astype(F32)


def ue8m0_code(p):
    """Biased exponent of a power of two (float32) 2^-127..2^127."""
    p = np.asarray(p, dtype=np.float64)
    _, e = np.frexp(p)
    # An infinite scale (a group holding inf) has no UE8M0 code but the NaN code 0xFF.
    return np.where(np.isfinite(p), e - 1 + 127, 255).astype(np.int64)


def ue8m0_decode(c):
    c = np.asarray(c, dtype=np.int64)
    v = np.ldexp(1.0, np.minimum(c, 254) - 127).astype(F32)
    return np.where(c == 255, F32(np.nan), v)


def round_to_f32(q):
    """Correct rounding (nearest, ties to even) of an exact rational to float32."""
    if q == 0:
        return F32(0.0)
    sign = -1.0 if q < 0 else 1.0
    a = abs(q)
    # Find e with 2^23 <= a / 2^e < 2^24, but not below the subnormal exponent -149.
    e = a.numerator.bit_length() - a.denominator.bit_length() - 24
    while a / Fraction(2) ** e >= 2 ** 24:
        e += 1
    while a / Fraction(2) ** e < 2 ** 23:
        e -= 1
    e = max(e, -149)
    scaled = a / Fraction(2) ** e
    m, rem = divmod(scaled.numerator, scaled.denominator)
    twice = 2 * rem
    if twice > scaled.denominator or (twice == scaled.denominator and m % 2 == 1):
        m += 1
    if m == 2 ** 24:
        m //= 2
        e += 1
    if e > 104:  # m * 2^e beyond the float32 range
        return F32(sign * np.inf)
    return F32(sign * float(m) * 2.0 ** e)


def fma_f32(s, p, acc):
    s, p, acc = F32(s), F32(p), F32(acc)
    if not (np.isfinite(s) and np.isfinite(p) and np.isfinite(acc)):
        return F32(np.float64(s) * np.float64(p) + np.float64(acc))
    return round_to_f32(Fraction(float(s)) * Fraction(float(p)) + Fraction(float(acc)))


# ----------------------------------------------------------------------------- value generators

def e4m3_midpoints():
    v = e4m3_decode(np.arange(0, 0x7F, dtype=np.uint8)).astype(np.float64)
    return ((v[:-1] + v[1:]) / 2).astype(F32)


def hard_f32(rng, n):
    """Encoder inputs: midpoints and neighbours, the 448/464 boundary, subnormals, random bits."""
    mids = e4m3_midpoints()
    parts = [
        mids, np.nextafter(mids, F32(np.inf)), np.nextafter(mids, F32(0)),
        np.array([0.0, -0.0, 448.0, 464.0, 480.0, 1e30, np.inf, -np.inf, 2.0 ** -10, 2.0 ** -149], dtype=F32),
        np.nextafter(F32(464.0), F32(0)), np.nextafter(F32(464.0), F32(np.inf)),
        rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32).view(F32),
        (rng.uniform(-500, 500, n)).astype(F32),
        (rng.uniform(-1, 1, n) * 2.0 ** rng.integers(-12, 0, n)).astype(F32),
    ]
    x = np.concatenate([np.atleast_1d(p).astype(F32) for p in parts])
    x = np.concatenate([x, -x])
    return x[~np.isnan(x)]


def activations(rng, rows, k, hard):
    """Rows with a wide dynamic range; hard rows pin the group max to 448*2^e so midpoints tie."""
    x = np.zeros((rows, k), dtype=F32)
    mids = e4m3_midpoints()
    for r in range(rows):
        e = int(rng.integers(-20, 21))
        for g in range(k // GROUP):
            kind = int(rng.integers(0, 6))
            sl = slice(g * GROUP, (g + 1) * GROUP)
            if kind == 0:
                continue  # all zero: the epsilon path
            vals = rng.uniform(-448, 448, GROUP)
            if hard:
                pick = rng.integers(0, len(mids), GROUP)
                vals = np.where(rng.integers(0, 2, GROUP) == 1, mids[pick] * rng.choice([-1, 1], GROUP), vals)
            vals = (vals * 2.0 ** e).astype(F32)
            anchor = int(rng.integers(0, GROUP))
            if kind == 1:
                vals[anchor] = F32(448 * 2.0 ** e)
            elif kind == 2:  # scale one ulp above a power of two
                vals[anchor] = np.nextafter(F32(448 * 2.0 ** e), F32(np.inf))
            elif kind == 3 and hard:
                vals[anchor] = F32(rng.choice([np.nan, np.inf, -np.inf]))
            x[r, sl] = vals
    return x


# ----------------------------------------------------------------------------- operations (SPEC §5.1, §4, §5.3)

FORMATS = ["f32", "f32-ceil-ue8m0", "ue8m0-packed"]


def quant_group(v, ceil, eps):
    amax = np.fmax.reduce(np.abs(v), initial=F32(eps))  # maxNum: NaN loses
    s = F32(F32(amax) / F32(448))
    if ceil:
        s = ceil_pow2(s) if np.isfinite(s) else F32(np.inf)
    q = e4m3_encode(v.astype(F32) / s)
    return q, F32(s)


def pack(scales_rg):
    """(rows, G) power-of-two scales -> (rows, ceil(G/4)) int32 words, byte k = group 4p+k."""
    rows, g = scales_rg.shape
    words = (g + 3) // 4
    out = np.zeros((rows, words), dtype=np.uint32)
    codes = ue8m0_code(scales_rg)
    for j in range(g):
        out[:, j // 4] |= (codes[:, j].astype(np.uint32) << np.uint32(8 * (j % 4)))
    return out.view(np.int32)


def token_group_quant(x, fmt):
    rows, k = x.shape
    q = np.zeros((rows, k), dtype=np.uint8)
    s = np.zeros((rows, k // GROUP), dtype=F32)
    for r in range(rows):
        for g in range(k // GROUP):
            q[r, g * GROUP:(g + 1) * GROUP], s[r, g] = quant_group(x[r, g * GROUP:(g + 1) * GROUP], fmt != "f32", 1e-10)
    return q, (pack(s) if fmt == "ue8m0-packed" else s)


def block_quant(w, pow2):
    e, r, c = w.shape
    rb, cb = -(-r // GROUP), -(-c // GROUP)
    q = np.zeros(w.shape, dtype=np.uint8)
    s = np.zeros((e, rb, cb), dtype=F32)
    for i in range(e):
        for a in range(rb):
            for b in range(cb):
                blk = w[i, a * GROUP:(a + 1) * GROUP, b * GROUP:(b + 1) * GROUP]
                amax = np.fmax.reduce(np.abs(blk).ravel(), initial=F32(1e-4))
                sc = F32(F32(amax) / F32(448))
                if pow2:
                    sc = ceil_pow2(sc)
                q[i, a * GROUP:(a + 1) * GROUP, b * GROUP:(b + 1) * GROUP] = e4m3_encode(blk / sc)
                s[i, a, b] = sc
    return q, s


def grouped_gemm(a, sa_etg, b, sb, counts):
    """a (E,T,K) u8, sa (E,T,G) f32 decoded, b (E,N,K) u8, sb (E,N/128,K/128) -> d (E,T,N) bf16 bits."""
    e_, t_, k = a.shape
    n = b.shape[1]
    ai = (e4m3_decode(a).astype(np.float64) * 512).astype(np.int64)  # exact integers
    bi = (e4m3_decode(b).astype(np.float64) * 512).astype(np.int64)
    d = np.zeros((e_, t_, n), dtype=np.uint16)
    for e in range(e_):
        for t in range(int(counts[e])):
            for j in range(n):
                acc = F32(0.0)
                for kb in range(k // GROUP):
                    sl = slice(kb * GROUP, (kb + 1) * GROUP)
                    exact = int(np.dot(ai[e, t, sl], bi[e, j, sl]))  # S * 2^18, exact
                    p = F32(exact / 2.0 ** 18)  # exact in float64 (< 2^43), one rounding to f32
                    s = F32(sa_etg[e, t, kb]) * F32(sb[e, j // GROUP, kb])
                    acc = fma_f32(s, p, acc)
                d[e, t, j] = bf16_bits(acc)
    return d


# ----------------------------------------------------------------------------- files

def gen(out):
    np.seterr(invalid="ignore", over="ignore", divide="ignore")  # inf/inf -> NaN is specified
    rng = np.random.default_rng(20260326)
    # Tables.
    codes = np.arange(256, dtype=np.uint8)
    enc_in = hard_f32(rng, 1500)
    ceil_in = np.concatenate([
        np.ldexp(1.0, np.arange(-126, 127)).astype(F32),
        np.nextafter(np.ldexp(1.0, np.arange(-126, 127)).astype(F32), F32(np.inf)),
        np.nextafter(np.ldexp(1.0, np.arange(-125, 127)).astype(F32), F32(0)),
        np.array([1e-45, 1e-40, 1.1754942e-38, 3.0, 448.0 / 448.0], dtype=F32),
        rng.integers(1, 0x7F000000, 2000, dtype=np.uint64).astype(np.uint32).view(F32),
    ]).astype(F32)
    tables = {
        "e4m3_decode": e4m3_decode(codes),
        "e4m3_encode_in": enc_in,
        "e4m3_encode_out": e4m3_encode(enc_in),
        "ue8m0_decode": ue8m0_decode(codes.astype(np.int64)),
        "ceil_in": ceil_in,
        "ceil_out": ceil_pow2(ceil_in),
        "ceil_code": ue8m0_code(ceil_pow2(ceil_in)).astype(np.uint8),
    }
    save_file(tables, f"{out}/tables.safetensors", metadata={"generator": "moe-testing/golden/gen.py", "numpy": np.__version__, "ml_dtypes": ml_dtypes.__version__})

    # Token-group quantization: every format, both input dtypes, both layouts (layout is a
    # transpose, applied by the Rust test from the row-major tensors stored here).
    tensors, cases = {}, []
    i = 0
    for fmt in FORMATS:
        for dtype in ["bf16", "f32"]:
            for hard in [False, True]:
                rows, k = int(rng.integers(1, 7)), GROUP * int(rng.integers(1, 6))
                x = activations(rng, rows, k, hard)
                if dtype == "bf16":
                    x = bf16_round(x)
                    tensors[f"c{i}.x"] = bf16_bits(x)
                else:
                    tensors[f"c{i}.x"] = x
                q, s = token_group_quant(x, fmt)
                tensors[f"c{i}.q"], tensors[f"c{i}.s"] = q, s
                cases.append({"name": f"c{i}", "fmt": fmt, "dtype": dtype, "rows": rows, "k": k})
                i += 1
    save_file(tensors, f"{out}/token_group_quant.safetensors", metadata={"cases": json.dumps(cases)})

    # Block quantization with ragged edges.
    tensors, cases = {}, []
    for i, (shape, pow2, dtype) in enumerate([((1, 130, 72), False, "f32"), ((2, 64, 129), True, "bf16"), ((1, 1, 5), True, "f32"), ((1, 129, 40), False, "bf16")]):
        e, r, c = shape
        w = (rng.standard_normal(shape) * 2.0 ** rng.integers(-16, 16, (e, r, 1))).astype(F32)
        w[0, 0, :min(c, 3)] = [0.0, -0.0, np.nextafter(F32(0.0448), F32(1))][:min(c, 3)]
        if dtype == "bf16":
            w = bf16_round(w)
            tensors[f"c{i}.w"] = bf16_bits(w)
        else:
            tensors[f"c{i}.w"] = w
        q, s = block_quant(w, pow2)
        tensors[f"c{i}.q"], tensors[f"c{i}.s"] = q, s
        cases.append({"name": f"c{i}", "shape": list(shape), "pow2": pow2, "dtype": dtype})
    save_file(tensors, f"{out}/block_quant.safetensors", metadata={"cases": json.dumps(cases)})

    # Grouped GEMM, every activation scale format.
    tensors, cases = {}, []
    for i, fmt in enumerate(FORMATS + ["f32"]):
        e, t, n, k = 2, int(rng.integers(1, 6)), 128, GROUP * int(rng.integers(1, 3))
        a = rng.integers(0, 256, (e, t, k), dtype=np.uint64).astype(np.uint8)
        b = rng.integers(0, 256, (e, n, k), dtype=np.uint64).astype(np.uint8)
        a[(a & 0x7F) == 0x7F] = 0x00  # no NaN codes
        b[(b & 0x7F) == 0x7F] = 0x80
        g = k // GROUP
        if fmt == "f32":
            sa = (rng.uniform(0.5, 2, (e, t, g)) * 2.0 ** rng.integers(-20, 4, (e, t, g))).astype(F32)
        else:
            sa = np.ldexp(1.0, rng.integers(-20, 4, (e, t, g))).astype(F32)
        sb = (rng.uniform(0.5, 2, (e, n // GROUP, g)) * 2.0 ** rng.integers(-14, 0, (e, n // GROUP, g))).astype(F32)
        counts = np.array([t, int(rng.integers(0, t + 1))], dtype=np.int32)
        d = grouped_gemm(a, sa, b, sb, counts)
        # Physical MN-major (E, cols, T) activation scales.
        if fmt == "ue8m0-packed":
            sa_phys = np.stack([pack(sa[j]).T for j in range(e)])
        else:
            sa_phys = np.ascontiguousarray(sa.transpose(0, 2, 1))
        tensors.update({f"c{i}.a": a, f"c{i}.sa": sa_phys, f"c{i}.b": b, f"c{i}.sb": sb, f"c{i}.counts": counts, f"c{i}.d": d})
        cases.append({"name": f"c{i}", "fmt": fmt, "e": e, "t": t, "n": n, "k": k})
    save_file(tensors, f"{out}/grouped_gemm.safetensors", metadata={"cases": json.dumps(cases)})
    print(f"golden vectors written to {out}")


def exhaustive():
    """Compare the project's encodings of all 2^32 inputs (stdin, bit-pattern order) with ml_dtypes."""
    chunk = 1 << 24
    src = sys.stdin.buffer
    bad = 0
    shown = 0
    for c in range(1 << 32 >> 24):
        bits = np.arange(c * chunk, (c + 1) * chunk, dtype=np.uint64).astype(np.uint32)
        expected = e4m3_encode(bits.view(F32))
        got = np.frombuffer(src.read(chunk), dtype=np.uint8)
        if got.size != chunk:
            print(f"short read at chunk {c}", file=sys.stderr)
            return 2
        diff = np.nonzero(got != expected)[0]
        bad += diff.size
        for j in diff[: max(0, 10 - shown)]:
            b = int(bits[j])
            print(f"MISMATCH x={b:#010x} ({bits[j:j+1].view(F32)[0]!r}): rust {got[j]:#04x}, ml_dtypes {expected[j]:#04x}")
            shown += 1
        if c % 32 == 31:
            print(f"  {(c + 1) * chunk:>10} inputs checked, {bad} mismatches", file=sys.stderr, flush=True)
    print(f"exhaustive E4M3: {1 << 32} inputs, {bad} mismatches")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--exhaustive-e4m3"]:
        sys.exit(exhaustive())
    gen(sys.argv[1])
