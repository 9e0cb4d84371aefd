# Writes small inputs for every `moe op` (with ±inf, -0, tiny and >448 values sprinkled in) into
# the folder given as the first argument; used by run_ops.sh to compare the cpu and cuda backends.
import numpy as np, ml_dtypes, sys
from safetensors.numpy import save_file
out = sys.argv[1]
rng = np.random.default_rng(7)
bf = ml_dtypes.bfloat16
f8 = ml_dtypes.float8_e4m3fn
def sp(x):  # sprinkle special values
    x = x.copy(); flat = x.reshape(-1)
    idx = rng.integers(0, flat.size, size=max(1, flat.size // 200))
    flat[idx[0::4]] = np.inf; flat[idx[1::4]] = -0.0; flat[idx[2::4]] = 1e-30; flat[idx[3::4]] = 460.0
    return x
save_file({"x": sp(rng.normal(size=(37, 512)) * 3).astype(bf)}, f"{out}/token-group-quant.safetensors")
save_file({"w": sp(rng.normal(size=(2, 200, 300))).astype(np.float32)}, f"{out}/block-quant.safetensors")
save_file({"y": sp(rng.normal(size=(3, 17, 512)) * 4).astype(bf), "counts": np.array([0, 17, 5], np.int32)}, f"{out}/silu-mul-quant.safetensors")
E, T, K, N = 2, 9, 256, 384
save_file({"a": (rng.normal(size=(E, T, K)) * 50).astype(f8), "sa": np.exp2(rng.integers(-8, 0, size=(E, K // 128, T))).astype(np.float32),
           "b": (rng.normal(size=(E, N, K)) * 50).astype(f8), "sb": (rng.random(size=(E, N // 128, K // 128)) * 1e-3).astype(np.float32),
           "counts": np.array([9, 4], np.int32)}, f"{out}/grouped-gemm.safetensors")
I = 128
save_file({"a1q": (rng.normal(size=(E, T, K)) * 50).astype(f8), "a1s": np.exp2(rng.integers(-8, 0, size=(E, K // 128, T))).astype(np.float32),
           "w1": (rng.normal(size=(E, 2 * I, K)) * 50).astype(f8), "w1s": (rng.random(size=(E, 2 * I // 128, K // 128)) * 1e-3).astype(np.float32),
           "w2": (rng.normal(size=(E, K, I)) * 50).astype(f8), "w2s": (rng.random(size=(E, K // 128, I // 128)) * 1e-3).astype(np.float32),
           "counts": np.array([9, 2], np.int32)}, f"{out}/experts.safetensors")
M, k = 20, 2
ids = rng.integers(-1, 4, size=(M, k)).astype(np.int32)
save_file({"x": sp(rng.normal(size=(M, 256))).astype(bf), "topk_ids": ids}, f"{out}/prepare.safetensors")
save_file({"expert_out": rng.normal(size=(4, 20, 256)).astype(bf), "topk_ids": ids, "topk_weights": rng.random(size=(M, k)).astype(np.float32)}, f"{out}/finalize.safetensors")
print("ok")
