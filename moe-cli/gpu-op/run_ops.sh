#!/usr/bin/env bash
# Inputs: `python3 moe-cli/gpu-op/gen_inputs.py gpu-bundle/op` (numpy, ml_dtypes, safetensors), then copy this
# script to gpu-bundle/op/ and run `bash gpu-bundle/op/run_ops.sh` on the GPU machine.
# moe op on both backends, every op and scale format; bit-exact ops must give identical files.
set -u
H="$(cd "$(dirname "$0")/.." && pwd)"; D="$H/op"; W=/tmp/opw; mkdir -p $W; fail=0
for fmt in f32 f32-ceil-ue8m0 ue8m0-packed; do
  for op in token-group-quant block-quant silu-mul-quant grouped-gemm experts prepare finalize; do
    extra=""; [ $op = prepare ] && extra="--experts 4 --capacity 20"
    sfmt="--scale-fmt $fmt"; case $op in grouped-gemm|experts|finalize|block-quant) [ $fmt = ue8m0-packed ] && continue;; esac
    for be in cpu cuda; do "$H/moe" op $op --in $D/$op.safetensors --out $W/$op-$fmt-$be.safetensors --backend $be $sfmt $extra 2>$W/err-$be || { echo "FAIL rc $op $fmt $be: $(cat $W/err-$be)"; fail=1; }; done
    case $op in grouped-gemm|experts) r="ran (bounded)";; *) cmp -s $W/$op-$fmt-cpu.safetensors $W/$op-$fmt-cuda.safetensors && r="bit-identical" || { r="DIFFERENT"; fail=1; };; esac
    echo "moe op $op --scale-fmt $fmt: cpu vs cuda $r"
  done
done
# A bad input through the cuda backend: exit code 2, one line, nothing written.
"$H/moe" op grouped-gemm --in $D/silu-mul-quant.safetensors --out $W/bad.safetensors --backend cuda; rc=$?
echo "bad input rc=$rc, out exists: $([ -e $W/bad.safetensors ] && echo yes || echo no)"; [ $rc -eq 2 ] && [ ! -e $W/bad.safetensors ] || fail=1
echo "ops overall: $([ $fail -eq 0 ] && echo PASS || echo FAIL)"; exit $fail
