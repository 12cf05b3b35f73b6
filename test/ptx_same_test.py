#!/usr/bin/env python3
"""tools/ptx_same.py on small CUDA files written here: a kernel and a rewrite of it that computes the
same (a helper function, other names, operands swapped, a copy through another variable) are the same;
the rewrite with one changed constant, one swapped index and one dropped guard each are not.

    python3 test/ptx_same_test.py NVCC
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL = os.path.join(HERE, "..", "tools", "ptx_same.py")

ORIGINAL = r"""
namespace {
__global__ void scale_rows(const float* x, const float* s, float* y, int cols, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float v = x[i] * s[i / cols];
  y[i] = v + 1.0f;
}
}  // namespace
void launch(const float* x, const float* s, float* y, int cols, int n) { scale_rows<<<1, 32>>>(x, s, y, cols, n); }
"""

REWRITE = r"""
namespace {
__device__ __forceinline__ float scaled(const float* row_scales, const float* values, int at, int width) {
  const float scale = row_scales[at / width];
  return scale * values[at];
}
__global__ void scale_rows(const float* x, const float* s, float* y, int cols, int n) {
  const int index = threadIdx.x + blockIdx.x * blockDim.x;
  if (index < n) {
    const int j = index;
    y[j] = 1.0f + scaled(s, x, j, cols);
  }
}
}  // namespace
void launch(const float* x, const float* s, float* y, int cols, int n) { scale_rows<<<1, 32>>>(x, s, y, cols, n); }
"""

BUGS = {
    "constant": REWRITE.replace("1.0f + scaled", "2.0f + scaled"),
    "index": REWRITE.replace("row_scales[at / width]", "row_scales[at % width]"),
    "guard": REWRITE.replace("if (index < n) {", "if (index <= n) {"),
}


def ptx(nvcc, workdir, name, source):
    cu = os.path.join(workdir, name + ".cu")
    with open(cu, "w") as f:
        f.write(source)
    out = os.path.join(workdir, name + ".ptx")
    subprocess.run([nvcc, "-O3", "-arch=sm_90", "-ptx", cu, "-o", out], check=True)
    return out


def same(a, b):
    r = subprocess.run([sys.executable, TOOL, a, b], capture_output=True, text=True)
    print(r.stdout.strip().splitlines()[-1])
    return r.returncode == 0


def main():
    nvcc = sys.argv[1] if len(sys.argv) > 1 else "nvcc"
    with tempfile.TemporaryDirectory() as d:
        original = ptx(nvcc, d, "original", ORIGINAL)
        rewrite = ptx(nvcc, d, "rewrite", REWRITE)
        failures = []
        if not same(original, rewrite):
            failures.append("the rewrite was reported different")
        for what, source in BUGS.items():
            if same(original, ptx(nvcc, d, "bug_" + what, source)):
                failures.append(f"the {what} bug was not seen")
    for f in failures:
        print("FAILED:", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
