// Communicator's default all_reduce_add_rmsnorm (all_reduce_sum + kernel::add_rmsnorm) through the CPU
// communicator (label unit): 2 and 3 ranks as threads, against a float64 reference, bitwise equal across
// ranks. The GPU implementations are tested in test_peer_comm.cpp.
//
// Bound: the inputs are fp32 in [-1, 1) (partials) and [-2, 2) (residual). x = x0 + sum p is within
// (N + 2) 2^-24 (|x0| + sum|p|) of the float64 value (fp32 recursive summation). xb is compared with
// rmsnorm(x) * w computed in float64 from the stored x, within 1e-5 relative (the fp32 arithmetic of a
// row of 512 is well inside that).
#include <gtest/gtest.h>

#include <cmath>
#include <thread>
#include <vector>

#include "comm/cpu_communicator.h"
#include "test_util.h"

namespace {

using tensor::Tensor;

TEST(CommunicatorDefault, CpuAllReduceAddRmsnorm) {
  constexpr int64_t kRows = 3, kDim = 512;
  const float eps = 1e-5f;
  for (int world : {2, 3}) {
    SCOPED_TRACE("world " + std::to_string(world));
    comm::CpuCommGroup group(world, 10000);
    const Tensor x0 = testutil::random_cpu({kRows, kDim}, 7, -2.f, 2.f);
    const Tensor w = testutil::random_cpu({kDim}, 8, 0.5f, 1.5f);
    std::vector<Tensor> p0(world), p(world), x(world), xb(world);
    for (int r = 0; r < world; ++r) {
      p0[r] = testutil::random_cpu({kRows, kDim}, 100 + r);
      p[r] = testutil::random_cpu({kRows, kDim}, 100 + r);
      x[r] = testutil::random_cpu({kRows, kDim}, 7, -2.f, 2.f);
      xb[r] = testutil::random_cpu({kRows, kDim}, 0);
    }
    std::vector<base::Status> st(world);
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r)
      threads.emplace_back([&, r] {
        Tensor wr = w;
        st[r] = group.rank(r)->all_reduce_add_rmsnorm(p[r], x[r], wr, eps, xb[r], nullptr);
      });
    for (auto& t : threads) t.join();
    for (int r = 0; r < world; ++r) ASSERT_TRUE(st[r].ok()) << st[r].message();
    const float* fx0 = x0.ptr<float>();
    const float* fw = w.ptr<float>();
    for (int r = 0; r < world; ++r) {
      const float* fx = x[r].ptr<float>();
      const float* fxb = xb[r].ptr<float>();
      int bad = 0;
      for (int64_t i = 0; i < kRows; ++i) {
        double ss = 0;
        for (int64_t j = 0; j < kDim; ++j) ss += (double)fx[i * kDim + j] * fx[i * kDim + j];
        const double inv = 1.0 / std::sqrt(ss / kDim + eps);
        for (int64_t j = 0; j < kDim; ++j) {
          const int64_t k = i * kDim + j;
          double ref = fx0[k], mag = std::fabs(fx0[k]);
          for (int s = 0; s < world; ++s) {
            ref += p0[s].ptr<float>()[k];
            mag += std::fabs(p0[s].ptr<float>()[k]);
          }
          const double xb_ref = fx[k] * inv * fw[j];
          bad += std::fabs(fx[k] - ref) > (world + 2) * std::ldexp(1.0, -24) * mag;
          bad += std::fabs(fxb[k] - xb_ref) > 1e-5 * std::fabs(xb_ref) + 1e-30;
        }
      }
      EXPECT_EQ(bad, 0) << "rank " << r;
      for (int64_t k = 0; k < kRows * kDim; ++k) {
        ASSERT_EQ(fx[k], x[0].ptr<float>()[k]) << "rank " << r << " x[" << k << "]";
        ASSERT_EQ(fxb[k], xb[0].ptr<float>()[k]) << "rank " << r << " xb[" << k << "]";
      }
    }
  }
}

}  // namespace
