// Buffers, allocator counters, tensor views and the host fp16 / bf16 conversions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "base/buffer.h"
#include "base/dtype.h"
#include "heap_counter.h"
#include "tensor/tensor.h"
#include "test_util.h"

using base::DType;
using tensor::Tensor;

TEST(Buffer, AllocatorCountsAllocationsAndBytes) {
  auto* alloc = base::CPUAllocator::get();
  const int64_t n0 = alloc->allocations(), b0 = alloc->bytes_in_use();
  {
    Tensor t;
    ASSERT_TRUE(Tensor::create(DType::kFp32, {3, 5}, alloc, &t).ok());
    EXPECT_EQ(alloc->allocations(), n0 + 1);
    EXPECT_EQ(alloc->bytes_in_use(), b0 + 60);
    Tensor v = t.slice_rows(1, 3);  // a view allocates nothing
    EXPECT_EQ(alloc->allocations(), n0 + 1);
    EXPECT_EQ(v.data(), static_cast<char*>(t.data()) + 20);
  }
  EXPECT_EQ(alloc->bytes_in_use(), b0);
}

TEST(Buffer, WrappedMemoryIsNotOwned) {
  float data[4] = {1, 2, 3, 4};
  auto b = base::Buffer::wrap(data, sizeof(data), base::DeviceType::kCPU, 0);
  EXPECT_FALSE(b->owns_memory());
  Tensor t = Tensor::from_buffer(b, 4, DType::kFp32, {3});
  EXPECT_EQ(t.ptr<float>()[0], 2.f);
}

TEST(Tensor, RejectsNonPositiveDimensions) {
  Tensor t;
  EXPECT_FALSE(Tensor::create(DType::kFp32, {3, 0}, base::CPUAllocator::get(), &t).ok());
}

TEST(Tensor, ViewAndStrides) {
  Tensor t = testutil::random_cpu({4, 6}, 1);
  EXPECT_EQ(t.strides(), (std::vector<int64_t>{6, 1}));
  Tensor v = t.view({2, 12});
  EXPECT_EQ(v.dim(1), 12);
  EXPECT_EQ(v.ptr<float>()[13], t.ptr<float>()[13]);
  EXPECT_EQ(t.shape_string(), "fp32[4, 6] cpu");
}

// Shapes live inline: copying a tensor, slicing and re-viewing it touch no heap (the decode loop does
// this hundreds of times a token). Every allocation of the process is counted (heap_counter.h).
TEST(Tensor, CopiesAndViewsDoNotAllocate) {
  ASSERT_TRUE(testutil::heap_counter_works());
  Tensor t = testutil::random_cpu({8, 6, 2}, 1);
  Tensor sink[4];
  testutil::HeapCounter heap;
  Tensor copy = t;
  sink[0] = copy.slice_rows(2, 5);
  sink[1] = sink[0].view({3, 12});
  sink[2] = Tensor::from_buffer(t.buffer(), 96, DType::kFp32, {4, 3});
  sink[3] = std::move(copy);
  const int64_t n = heap.count();
  EXPECT_EQ(n, 0);
  EXPECT_EQ(sink[1].shape(), (tensor::Shape{3, 12}));
  EXPECT_EQ(sink[0].data(), static_cast<char*>(t.data()) + 2 * 12 * sizeof(float));
}

TEST(Tensor, ShapeHoldsUpToFourAxes) {
  const tensor::Shape s{2, 3, 4, 5};
  EXPECT_EQ(s.size(), 4);
  EXPECT_EQ(s.numel(), 120);
  EXPECT_EQ(s.to_vector(), (std::vector<int64_t>{2, 3, 4, 5}));
  EXPECT_NE(s, (tensor::Shape{2, 3, 4}));
  EXPECT_DEATH(tensor::Shape({1, 2, 3, 4, 5}), "at most 4 axes");
}

TEST(Tensor, TypedPointerChecksDtype) {
  Tensor t = testutil::random_cpu({2}, 1);
  EXPECT_DEATH(t.ptr<int32_t>(), "accessed as int32");
}

// Exhaustive over all 65536 half bit patterns: half -> float -> half is the identity (NaNs stay NaN).
TEST(DType, HalfRoundTripIsExact) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = base::half_to_float((uint16_t)h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(base::half_to_float(base::float_to_half(f))));
      continue;
    }
    ASSERT_EQ(base::float_to_half(f), h) << "pattern " << h;
  }
}

// float -> half rounds to nearest even: compare with the exact double-precision neighbours.
TEST(DType, HalfRoundsToNearestEven) {
  const float cases[] = {1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 65519.f, 65520.f, 5.96e-8f, 2.98e-8f, 1e-6f, -3.14159f};
  const uint16_t expect[] = {0x3c00, 0x3c02, 0x7bff, 0x7c00, 0x0001, 0x0000, 0x0011, 0xc248};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i)
    EXPECT_EQ(base::float_to_half(cases[i]), expect[i]) << cases[i];
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(base::float_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(base::float_to_bf16(1.0f + 1.0f / 256), 0x3f80);
  EXPECT_EQ(base::float_to_bf16(1.0f + 3.0f / 256), 0x3f82);
  EXPECT_EQ(base::bf16_to_float(0x4049), 3.140625f);
}

TEST(DType, Parse) {
  DType t;
  EXPECT_TRUE(base::parse_dtype("bf16", &t));
  EXPECT_EQ(t, DType::kBf16);
  EXPECT_FALSE(base::parse_dtype("fp8", &t));
}
