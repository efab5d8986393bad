// unet_fast::winograd_conv3x3 on the CPU: argument checks, the work split over threads, and the
// choice between the AVX-512 and the portable build of winograd_kernel.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>

#include "winograd_params.h"

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace unet_fast {
namespace {

bool cpu_has_avx512(bool bf16) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool base = wino_avx512::compiled() && __builtin_cpu_supports("avx512f") &&
                           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                           __builtin_cpu_supports("avx512vl");
  static const bool with_bf16 = base && __builtin_cpu_supports("avx512bf16");
  return bf16 ? with_bf16 : base;
#else
  (void)bf16;
  return false;
#endif
}

// AMX needs the CPU's tiles and the kernel's permission to use their register state (Linux asks
// each process to request it; oneDNN does the same). Asked once.
bool cpu_has_amx() {
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = [] {
    if (!wino_avx512::amx_compiled() || !cpu_has_avx512(true)) return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return tile && bf16 && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

// Cache budgets of one work item (see wino_split).
constexpr int64_t kPointBytes = 256 << 10;
constexpr int64_t kItemBytes = 768 << 10;
constexpr int64_t kMaxRows = 32 * kWinoRows;
constexpr int64_t kBigWeightBytes = 6 << 20;
constexpr int64_t kBigPointBytes = 512 << 10;
constexpr int64_t kRawSmallKp = 512;
constexpr int64_t kRawRows = 72;
constexpr int64_t kAmxBigRows = 64;

struct WinoSplit {
  int64_t rows, chunks, groups;
};

// Work items are chunks of `rows` tiles x `groups` groups of 32-wide output-channel blocks.
// - Small weights (U up to 6 MiB): a chunk's rows are bounded so its transformed input
//   and GEMM results (points x rows x (Kp + Cout)) stay in L2 (768 KiB measured best on the
//   2-core machine against 0.25-8 MiB) and one point's transformed input within 256 KiB.
// - Large weights (U over 6 MiB): every chunk streams all of U from L3 or memory, so chunks take
//   as many rows as one point's transformed input allows in 512 KiB of L2 (the results then live
//   in L3). Measured on the paper network's layers (2 threads, interleaved): 1.3-1.9x faster
//   from 256->256 channels up (U 9.4-151 MiB); at U 1.2-4.7 MiB the L2-bounded chunks stay
//   8-34% faster, hence the threshold.
// - Weights transformed on the fly (raw_u), at most 512 input channels: 72 rows. Each chunk
//   transforms its blocks' weights again, but shorter chunks keep the transformed input near
//   the core: measured 1.1-1.3x faster than the rows above on the paper network's 128- to
//   512-channel layers; at 1024 input channels the longer chunks win (weights cost more per row).
// - AMX GEMMs (bf16): rows in multiples of 32 (two 16-row tiles per micro-kernel). With large
//   weights 64 rows: measured 1.2-1.4x faster than the rows above on 512- and 1024-channel
//   layers, where every chunk streams all of U and the longer chunks leave the results in L3.
// - Few chunks: output-channel groups share the work (each group transforms its chunk's input
//   again, cheap next to the GEMMs when Cout is large).
// - The item count is made a multiple of the thread count where it can be, so no thread idles
//   through the last item.
WinoSplit wino_split(const WinoParams& prm, int64_t ntiles, int64_t threads) {
  const int64_t points = (prm.m + 2) * (prm.m + 2), ncob = (prm.cout + 31) / 32;
  const int64_t esize = prm.bf16 ? 2 : 4, kp = prm.kp;
  const int64_t u_bytes = points * kp * ncob * 32 * esize;
  const bool big = u_bytes > kBigWeightBytes;
  int64_t rows = std::min((big ? kBigPointBytes : kPointBytes) / (kp * esize), kMaxRows);
  if (!big) rows = std::min(rows, kItemBytes / (points * (ncob * 32 * 4 + kp * esize)));
  if (prm.raw_u && kp <= kRawSmallKp) rows = kRawRows;
  const int64_t unit = prm.amx ? 2 * kAmxRows : kWinoRows;  // one micro-kernel's rows
  rows = std::max<int64_t>(rows / unit * unit, unit);
  int64_t chunks = (ntiles + rows - 1) / rows;
  if (chunks < 2 * threads && ncob < 2 * threads)  // too few output blocks to share: split tiles
    chunks = std::min<int64_t>(2 * threads, (ntiles + unit - 1) / unit);
  int64_t groups = 1;
  if (chunks < 2 * threads) {
    groups = std::min<int64_t>(ncob, (2 * threads + chunks - 1) / chunks);
    while (groups < ncob && (chunks * groups) % threads) ++groups;
  } else if (chunks % threads) {
    chunks = std::min(ntiles, (chunks + threads - 1) / threads * threads);
  }
  rows = (ntiles + chunks - 1) / chunks;
  rows = wino_row_stride(prm, rows);  // AMX: 16-row tiles, padding rows in the last chunk only
  chunks = (ntiles + rows - 1) / rows;
  return {rows, chunks, groups};
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// Each thread's scratch, kept between calls: a fresh allocation of this size is mmapped and
// page-faulted in again on every call (measured 5% of a 64-channel layer's time).
void* thread_scratch(int64_t bytes) {
  thread_local std::unique_ptr<void, FreeDeleter> buf;
  thread_local int64_t capacity = 0;
  if (bytes > capacity) {
    buf.reset();
    const int64_t rounded = (bytes + 4095) / 4096 * 4096;
    buf.reset(std::aligned_alloc(4096, rounded));
    capacity = buf ? rounded : 0;
  }
  return buf.get();
}

void set_source(const at::Tensor& t, int64_t oy, int64_t ox, const void*& base, int64_t& sn,
                int64_t& sh, int64_t& sw, int64_t& h, int64_t& w, int64_t& c, int64_t& py,
                int64_t& px) {
  base = t.const_data_ptr();
  sn = t.stride(0);
  sh = t.stride(2);
  sw = t.stride(3);
  h = t.size(2);
  w = t.size(3);
  c = t.size(1);
  py = oy;
  px = ox;
}

at::Tensor winograd_conv3x3_cpu(const at::Tensor& a_in, const std::optional<at::Tensor>& b_in,
                                at::IntArrayRef offsets, at::IntArrayRef size,
                                const at::Tensor& weight, const at::Tensor& bias,
                                int64_t in_channels, int64_t out_channels, int64_t padding, int64_t m, bool relu,
                                c10::string_view isa) {
  TORCH_CHECK(m == 2 || m == 4, "winograd_conv3x3: m (output tile) must be 2 or 4, got ", m);
  TORCH_CHECK(padding == 0 || padding == 1, "winograd_conv3x3: padding must be 0 or 1, got ",
              padding);
  TORCH_CHECK(offsets.size() == 4 && size.size() == 2,
              "winograd_conv3x3: offsets must be (a_oy, a_ox, b_oy, b_ox) and size (H, W)");
  TORCH_CHECK(a_in.dim() == 4, "winograd_conv3x3: input must be 4-D (N, C, H, W), got shape ",
              a_in.sizes());
  const auto dtype = a_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16,
              "winograd_conv3x3: input must be float32 or bfloat16, got ", dtype);
  TORCH_CHECK(weight.scalar_type() == dtype, "winograd_conv3x3: weight is ", weight.scalar_type(),
              " but the input is ", dtype);
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.dim() == 1 && bias.is_contiguous(),
              "winograd_conv3x3: bias must be a contiguous float32 vector");
  const std::string isa_s(isa);
  TORCH_CHECK(isa_s == "auto" || isa_s == "amx" || isa_s == "avx512" || isa_s == "portable",
              "winograd_conv3x3: isa must be 'auto', 'amx', 'avx512' or 'portable', got '", isa_s,
              "'");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor a = a_in.contiguous(cl);
  at::Tensor b;
  int64_t b_c = 0;
  if (b_in.has_value()) {
    TORCH_CHECK(b_in->dim() == 4 && b_in->size(0) == a.size(0) && b_in->scalar_type() == dtype,
                "winograd_conv3x3: the second input must be 4-D with the first's batch size and "
                "dtype, got shape ", b_in->sizes(), " and ", b_in->scalar_type());
    b = b_in->contiguous(cl);
    b_c = b.size(1);
  }
  const int64_t alpha = m + 2, points = alpha * alpha;
  const int64_t cin = a.size(1) + b_c, kp = (cin + 15) / 16 * 16;
  TORCH_CHECK(cin == in_channels, "winograd_conv3x3: the weight is packed for ", in_channels,
              " input channels but the input has ", cin,
              b_c ? " (the two inputs together)" : "");
  const int64_t ncob = (out_channels + 31) / 32;
  TORCH_CHECK(out_channels >= 1 && bias.numel() == ncob * 32,
              "winograd_conv3x3: bias must hold out_channels rounded up to 32 (", ncob * 32,
              "), got ", bias.numel());
  // The weight is either U (transformed, laid out by unet_fast.winograd.pack) or, in float32,
  // the module's (C_out, C_in, 3, 3) weight itself, transformed on the fly (U's third dimension
  // is a multiple of 16, never 3).
  const bool raw_u = weight.dim() == 4 && weight.size(0) == out_channels &&
                     weight.size(1) == cin && weight.size(2) == 3 && weight.size(3) == 3;
  TORCH_CHECK(weight.is_contiguous() && (raw_u || weight.numel() == points * ncob * kp * 32),
              "winograd_conv3x3: weight is not packed for F(", m, "x", m, ", 3x3) with ", cin,
              " input and ", out_channels, " output channels (expected ", points * ncob * kp * 32,
              " contiguous elements, or the (", out_channels, ", ", cin, ", 3, 3) taps; got shape ",
              weight.sizes(), ")");
  TORCH_CHECK(!raw_u || dtype == at::kFloat,
              "winograd_conv3x3: raw (untransformed) weights are supported in float32 only");
  const int64_t vh = size[0], vw = size[1];
  const int64_t oh = vh + 2 * padding - 2, ow = vw + 2 * padding - 2;
  TORCH_CHECK(oh >= 1 && ow >= 1, "winograd_conv3x3: input size ", vh, "x", vw,
              " is too small for a 3x3 convolution with padding ", padding);
  const int64_t batch = a.size(0);
  at::Tensor out = at::empty({batch, out_channels, oh, ow}, a.options().memory_format(cl));
  if (batch == 0) return out;

  WinoParams prm{};
  prm.m = static_cast<int>(m);
  prm.bf16 = dtype == at::kBFloat16;
  prm.relu = relu;
  prm.padding = padding;
  prm.vh = vh;
  prm.vw = vw;
  prm.oh = oh;
  prm.ow = ow;
  prm.tiles_y = (oh + m - 1) / m;
  prm.tiles_x = (ow + m - 1) / m;
  prm.kp = kp;
  prm.cout = out_channels;
  set_source(a, offsets[0], offsets[1], prm.a, prm.a_sn, prm.a_sh, prm.a_sw, prm.a_h, prm.a_w,
             prm.a_c, prm.a_oy, prm.a_ox);
  if (b.defined()) {
    set_source(b, offsets[2], offsets[3], prm.b, prm.b_sn, prm.b_sh, prm.b_sw, prm.b_h, prm.b_w,
               prm.b_c, prm.b_oy, prm.b_ox);
  }
  prm.u = weight.const_data_ptr();
  prm.raw_u = raw_u;
  prm.bias = bias.const_data_ptr<float>();
  prm.out = out.mutable_data_ptr();
  prm.out_sn = out.stride(0);
  prm.out_sh = out.stride(2);
  prm.out_sw = out.stride(3);

  // AMX: bf16 GEMMs whose channel count fills its 32-wide operand rows (U-Net's all do, but the
  // first layer's); 'auto' takes it wherever it can run, 'amx' insists.
  const bool amx_fits = prm.bf16 && kp % 32 == 0;
  TORCH_CHECK(isa_s != "amx" || amx_fits, "winograd_conv3x3: isa='amx' needs bfloat16 and a "
              "multiple of 32 input channels (after rounding up to 16), got ", dtype, " and ", kp);
  TORCH_CHECK(isa_s != "amx" || cpu_has_amx(), "winograd_conv3x3: isa='amx' but this CPU, its "
              "kernel or this build lacks AMX-BF16");
  prm.amx = isa_s == "amx" || (isa_s == "auto" && amx_fits && cpu_has_amx());
  const bool avx = prm.amx || isa_s == "avx512" || (isa_s == "auto" && cpu_has_avx512(prm.bf16));
  TORCH_CHECK(!avx || cpu_has_avx512(prm.bf16), "winograd_conv3x3: isa='avx512' but this CPU (or "
              "build) lacks AVX-512", prm.bf16 ? " with AVX512-BF16" : "");
  auto run = avx ? wino_avx512::run_work_item : wino_portable::run_work_item;

  // Work items: chunks of tiles x groups of output-channel blocks (see wino_split).
  const int64_t ntiles = batch * prm.tiles_y * prm.tiles_x;
  const int64_t threads = at::get_num_threads();
  const WinoSplit split = wino_split(prm, ntiles, threads);
  const int64_t rows = split.rows, nchunks = split.chunks, groups = split.groups;
  const int64_t items = nchunks * groups;
  const int64_t scratch = wino_scratch_bytes(prm, rows, (ncob + groups - 1) / groups);
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    void* buf = thread_scratch(scratch);
    TORCH_CHECK(buf, "winograd_conv3x3: out of memory for ", scratch, " bytes of scratch");
    for (int64_t item = begin; item < end; ++item) {
      const int64_t chunk = item / groups, group = item % groups;
      const int64_t t0 = chunk * rows, t1 = std::min(ntiles, t0 + rows);
      const int64_t c0 = group * ncob / groups, c1 = (group + 1) * ncob / groups;
      if (t0 < t1 && c0 < c1) run(prm, t0, t1, c0, c1, buf);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("winograd_conv3x3", &winograd_conv3x3_cpu);
}

}  // namespace unet_fast
