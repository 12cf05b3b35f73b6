// --version: what was built, from what, for which GPUs.
#include <string>

#include "app_common.h"
#include "version_info.h"  // KUIPER_GIT_COMMIT, written at build time by cmake/version.cmake

#ifdef KUIPER_WITH_CUDA
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace app {

namespace {
std::string dotted(int v, int major_div, int minor_div) {
  return std::to_string(v / major_div) + "." + std::to_string(v % major_div / minor_div) + "." +
         std::to_string(v % minor_div);
}
}  // namespace

std::string version_text(const std::string& prog) {
  std::string s = prog + " " KUIPER_VERSION "\n";
  s += "git commit        " KUIPER_GIT_COMMIT "\n";
#ifdef KUIPER_WITH_CUDA
  int nccl = 0, runtime = 0, driver = 0;
  ncclGetVersion(&nccl);
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);  // 0 without a driver
  s += "CUDA              built for architectures " KUIPER_CUDA_ARCHS "; runtime " + std::to_string(runtime / 1000) +
       "." + std::to_string(runtime % 1000 / 10) + (driver ? ", driver supports " + std::to_string(driver / 1000) +
       "." + std::to_string(driver % 1000 / 10) : std::string(", no driver")) + "\n";
  // NCCL >= 2.9 encodes major * 10000 + minor * 100 + patch.
  s += "NCCL              " + dotted(nccl, 10000, 100) + "\n";
#else
  s += "CUDA              not built (CPU only: -DKUIPER_WITH_CUDA=OFF)\n";
  s += "NCCL              not built\n";
#endif
  return s;
}

}  // namespace app
