// The L-step backward kernels (launch_lstep_bwd_with, spec §7 steps 3, 4, 6) on their own, the tensor-core one
// (T ≤ 48) and the CUDA-core one, against an f64 computation of the documented formulas written here, on the
// same rounded inputs: the last L-step (dO set) and the earlier ones (daR set, the clamp rule on cR), with and
// without the exact gradient's dcL, dQ accumulated onto nonzero values, strided views, awkward T, HW, batch
// and heads, exact key groups (sink frames, temporal windows, the merged last step), bitwise repeatability.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "cuda/bwd/backward_params.hpp"
#include "cuda/bwd/lstep_bwd.hpp"
#include "gpu_test_util.hpp"

namespace gputest {
namespace {

using vmonarch::cuda::LStepBwdKernel;
using vmonarch::cuda::LStepBwdParams;
using vmonarch::cuda::RowView;

const char* kernel_name(LStepBwdKernel k) {
    switch (k) {
    case LStepBwdKernel::tensor_cores: return "tensor cores";
    case LStepBwdKernel::tensor_cores_pair: return "tensor cores, two warps";
    case LStepBwdKernel::tensor_cores_quad: return "tensor cores, four warps";
    case LStepBwdKernel::cuda_cores: return "CUDA cores";
    default: return "automatic";
    }
}

// The kernels that take T frames: all four for T ≤ 48, the CUDA-core one beyond.
std::vector<LStepBwdKernel> kernels_for(std::int64_t T) {
    if (T <= vmonarch::cuda::lstep_bwd_tensor_core_max_frames())
        return {LStepBwdKernel::tensor_cores, LStepBwdKernel::tensor_cores_pair, LStepBwdKernel::tensor_cores_quad,
                LStepBwdKernel::cuda_cores};
    return {LStepBwdKernel::cuda_cores};
}

struct BwdCase {
    DType dtype;
    int d;
    std::int64_t T, HW;
    int B, H;
    bool with_dc;
};

std::string case_name(const BwdCase& c) {
    std::ostringstream os;
    os << vmonarch::to_string(c.dtype) << "_d" << c.d << "_T" << c.T << "_HW" << c.HW << "_B" << c.B << "h" << c.H
       << (c.with_dc ? "_dc" : "");
    return os.str();
}

// Rows (b, h, frame f, position j) of `width` values each, stored in one of three strided layouts on the
// device; `values` holds them in logical order ((b·H + h)·T + f)·HW + j, rounded to the stored type.
enum class Store { half_bshd, f32_bhsd, f32_scalar_transposed };

struct Rows {
    const BwdCase& c;
    int width;
    Store store;
    bool half;
    DeviceBuffer buf;
    RowView view;
    std::vector<double> values;

    Rows(const BwdCase& cs, int w, Store st) : c(cs), width(w), store(st), half(st == Store::half_bshd) {
        const std::int64_t n = count();
        buf = DeviceBuffer(std::size_t(n) * (half ? 2 : 4));
        view.ptr = buf.get();
        const std::int64_t T = c.T, HW = c.HW, H = c.H, B = c.B;
        if (st == Store::half_bshd) { // [b][f][j][h][w]
            view.sr = H * w; view.sh = w; view.sf = HW * H * w; view.sb = T * HW * H * w;
        } else if (st == Store::f32_bhsd) { // [b][h][f][j][w]
            view.sr = w; view.sf = HW * w; view.sh = T * HW * w; view.sb = H * T * HW * w;
        } else { // scalars, [f][j][b][h]
            view.sh = 1; view.sb = H; view.sr = B * H; view.sf = HW * B * H;
        }
        values.assign(std::size_t(n), std::nan(""));
    }
    std::int64_t count() const { return std::int64_t(c.B) * c.H * c.T * c.HW * width; }
    std::size_t li(int b, int h, std::int64_t f, std::int64_t j) const {
        return std::size_t((((std::int64_t(b) * c.H + h) * c.T + f) * c.HW + j) * width);
    }
    std::int64_t off(int b, int h, std::int64_t f, std::int64_t j) const {
        return b * view.sb + h * view.sh + f * view.sf + j * view.sr;
    }
    template <typename F> void for_each(F&& fn) const {
        for (int b = 0; b < c.B; ++b)
            for (int h = 0; h < c.H; ++h)
                for (std::int64_t f = 0; f < c.T; ++f)
                    for (std::int64_t j = 0; j < c.HW; ++j)
                        for (int e = 0; e < width; ++e) fn(li(b, h, f, j) + std::size_t(e), off(b, h, f, j) + e);
    }
    void set(const std::vector<double>& logical) {
        if (half) {
            std::vector<std::uint16_t> host(static_cast<std::size_t>(count()));
            for_each([&](std::size_t l, std::int64_t o) {
                host[std::size_t(o)] = to_bits(logical[l], c.dtype);
                values[l] = from_bits(host[std::size_t(o)], c.dtype);
            });
            buf.upload(host.data(), host.size() * 2);
        } else {
            std::vector<float> host(static_cast<std::size_t>(count()));
            for_each([&](std::size_t l, std::int64_t o) {
                host[std::size_t(o)] = float(logical[l]);
                values[l] = host[std::size_t(o)];
            });
            buf.upload(host.data(), host.size() * 4);
        }
    }
    void poison() { set(std::vector<double>(std::size_t(count()), std::nan(""))); }
    std::vector<double> read() const {
        std::vector<double> out(static_cast<std::size_t>(count()));
        if (half) {
            const auto host = buf.read<std::uint16_t>(std::size_t(count()));
            for_each([&](std::size_t l, std::int64_t o) { out[l] = from_bits(host[std::size_t(o)], c.dtype); });
        } else {
            const auto host = buf.read<float>(std::size_t(count()));
            for_each([&](std::size_t l, std::int64_t o) { out[l] = host[std::size_t(o)]; });
        }
        return out;
    }
};

double dot(const double* x, const double* y, int n) {
    double s = 0;
    for (int e = 0; e < n; ++e) s += x[e] * y[e];
    return s;
}

double rms(const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x * x;
    return std::sqrt(s / double(std::max<std::size_t>(v.size(), 1)));
}

// Every element within rel·|ref| + abs_frac·rms(ref) + 1e-3, and the relative L2 error within l2. (A reference
// that is zero, such as daL for T = 1 where L ≡ 1, is matched to the absolute 1e-3: f32 leaves noise there.)
void expect_close(const char* what, const std::vector<double>& got, const std::vector<double>& ref, double rel,
                  double abs_frac, double l2) {
    ASSERT_EQ(got.size(), ref.size()) << what;
    EXPECT_EQ(count_nonfinite(got), 0u) << what << ": non-finite values";
    const double floor = abs_frac * rms(ref) + 1e-3;
    std::size_t bad = 0, first = 0;
    for (std::size_t n = 0; n < ref.size(); ++n)
        if (!(std::abs(got[n] - ref[n]) <= rel * std::abs(ref[n]) + floor)) {
            if (bad++ == 0) first = n;
        }
    EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << ref.size() << " elements off; first at " << first << ": got "
                       << got[first] << ", expected " << ref[first];
    const double err = rel_l2(got, ref);
    if (rms(ref) > 1e-6) {
        EXPECT_LE(err, l2) << what << ": relative L2 error";
    }
    std::printf("    %-8s rel L2 %.3e\n", what, err);
}

// What a run adds to the case: the kernel, the last step's frame-0 and stored-dq options, exact key groups.
struct RunOptions {
    LStepBwdKernel kernel = LStepBwdKernel::automatic;
    bool zero_frame0 = false, overwrite = false;
    std::int64_t sink = 0, window = -1; // spec §3b: key frame k exact for query frame i when k < sink or |i − k| <= window
    bool merged = false;                // last: L = exp(z − lse_i) with a given merged lse
};

struct GpuResult {
    std::vector<double> dq, da, dc, drow_r, dy;
};

// One L-step backward on the GPU against the formulas of spec §7 in f64.
// zero_frame0 / overwrite (last only): the kernel must read frame 0's dO and D as 0 (the device holds nonzero
// values there, the reference zeros) and store dq instead of adding to its nonzero initial values.
// Exact key groups: the device holds NaN in the a, c, y, ar, cr rows of key frames no query frame fits (they
// must not be read), the reference zeros; z = −inf at exact (i, k), a row without keys has L = 0.
void run_case(const BwdCase& c, bool last, std::uint64_t seed, const RunOptions& o = {}, GpuResult* out = nullptr) {
    const bool zero_frame0 = o.zero_frame0, overwrite = o.overwrite;
    SCOPED_TRACE(kernel_name(o.kernel));
    const int d = c.d;
    const std::int64_t T = c.T, HW = c.HW;
    const float clamp = 0.1f;
    Rows q(c, d, Store::half_bshd), a(c, d, Store::half_bshd), cl(c, 1, Store::f32_scalar_transposed);
    Rows y(c, d, Store::half_bshd), dout(c, d, Store::half_bshd), drow(c, 1, Store::f32_scalar_transposed);
    Rows ar(c, d, Store::half_bshd), cr(c, 1, Store::f32_scalar_transposed), dar(c, d, Store::f32_bhsd);
    Rows dq(c, d, Store::f32_bhsd), da(c, d, Store::half_bshd), dy(c, d, Store::half_bshd);
    Rows dc(c, 1, Store::f32_scalar_transposed), drow_r(c, 1, Store::f32_scalar_transposed);
    Rows mlse(c, 1, Store::f32_scalar_transposed);
    const std::size_t nv = std::size_t(q.count()), ns = std::size_t(cl.count());
    const auto exact = [&](std::int64_t i, std::int64_t k) { return k < o.sink || (o.window >= 0 && std::llabs(i - k) <= o.window); };
    const auto fitted = [&](std::int64_t k) {
        for (std::int64_t i = 0; i < T; ++i)
            if (!exact(i, k)) return true;
        return false;
    };
    // Logical values with NaN in the rows of unfitted key frames (what the device gets), and the reference's zeros.
    const auto unfitted_nan = [&](std::vector<double> v, int width) {
        for (int b = 0; b < c.B; ++b)
            for (int h = 0; h < c.H; ++h)
                for (std::int64_t f = 0; f < T; ++f)
                    if (!fitted(f))
                        for (std::int64_t jj = 0; jj < HW; ++jj)
                            for (int e = 0; e < width; ++e)
                                v[std::size_t((((std::int64_t(b) * c.H + h) * T + f) * HW + jj) * width + e)] = std::nan("");
        return v;
    };
    const auto unfitted_zero = [&](Rows& r) {
        for (std::size_t n = 0; n < r.values.size(); ++n)
            if (std::isnan(r.values[n])) r.values[n] = 0.0;
    };

    // z = ⟨Q, aL⟩ − cL of a few units; cL ≤ 0 like a negative entropy.
    q.set(random_normal(nv, seed + 1, 1.0));
    a.set(unfitted_nan(random_normal(nv, seed + 2, 2.0 / std::sqrt(double(d))), d));
    unfitted_zero(a);
    {
        std::mt19937_64 gen(seed + 3);
        std::uniform_real_distribution<double> ud(-6.0, 0.0);
        std::vector<double> v(ns);
        for (auto& x : v) x = ud(gen);
        cl.set(unfitted_nan(v, 1));
        unfitted_zero(cl);
    }
    dq.set(random_normal(nv, seed + 4, 0.7)); // accumulated onto
    const std::vector<double> dq0 = dq.values;
    da.poison();
    dc.poison();
    drow_r.poison();
    if (last) {
        y.set(unfitted_nan(random_normal(nv, seed + 5, 0.5), d));
        unfitted_zero(y);
        dout.set(random_normal(nv, seed + 6, 1.0));
        drow.set(random_normal(ns, seed + 7, 1.0));
        dy.poison();
        if (zero_frame0) // the reference's view only; the device keeps the values above
            for (int b = 0; b < c.B; ++b)
                for (int h = 0; h < c.H; ++h)
                    for (std::int64_t j = 0; j < HW; ++j) {
                        for (int e = 0; e < d; ++e) dout.values[dout.li(b, h, 0, j) + std::size_t(e)] = 0.0;
                        drow.values[drow.li(b, h, 0, j)] = 0.0;
                    }
    } else {
        ar.set(unfitted_nan(random_normal(nv, seed + 8, 0.8), d));
        unfitted_zero(ar);
        dar.set(random_normal(nv, seed + 9, 0.3));
        // cR: clamped (below the clamp, and exactly at it: zero gradient) and free values.
        std::mt19937_64 gen(seed + 10);
        std::uniform_real_distribution<double> ud(0.1, 3.0);
        std::vector<double> v(ns);
        for (std::size_t n = 0; n < ns; ++n) {
            const int kind = int(n % 5);
            v[n] = kind == 0 ? double(clamp) : kind == 1 ? 0.03 : kind == 2 ? double(clamp) * 1.0001 : ud(gen);
        }
        cr.set(unfitted_nan(v, 1));
        unfitted_zero(cr);
    }
    // z[i][k] = ⟨Q_i, aL_k⟩ − cL_k, −inf where k is exact for i (f64, on the rounded inputs).
    const auto logits = [&](int b, int h, std::int64_t j, std::vector<double>& z) {
        for (std::int64_t i = 0; i < T; ++i)
            for (std::int64_t k = 0; k < T; ++k)
                z[std::size_t(i * T + k)] = exact(i, k) ? -INFINITY
                                                        : dot(q.values.data() + q.li(b, h, i, j), a.values.data() + a.li(b, h, k, j), d) -
                                                              cl.values[cl.li(b, h, k, j)];
    };
    if (o.merged) { // the merged lse: the Monarch row's logsumexp plus up to 1.5 (an exact group's share), some −inf
        std::mt19937_64 gen(seed + 11);
        std::uniform_real_distribution<double> ud(0.0, 1.5);
        std::vector<double> v(ns), z(std::size_t(T * T));
        for (int b = 0; b < c.B; ++b)
            for (int h = 0; h < c.H; ++h)
                for (std::int64_t j = 0; j < HW; ++j) {
                    logits(b, h, j, z);
                    for (std::int64_t i = 0; i < T; ++i) {
                        double mx = -INFINITY, sum = 0;
                        for (std::int64_t k = 0; k < T; ++k) mx = std::max(mx, z[std::size_t(i * T + k)]);
                        if (mx != -INFINITY)
                            for (std::int64_t k = 0; k < T; ++k) sum += std::exp(z[std::size_t(i * T + k)] - mx);
                        const std::size_t n = mlse.li(b, h, i, j);
                        v[n] = mx == -INFINITY || n % 7 == 3 ? -INFINITY : mx + std::log(sum) + ud(gen);
                    }
                }
        mlse.set(v);
    }

    LStepBwdParams p;
    p.elem = c.dtype == DType::bf16 ? vmonarch::cuda::Elem::bf16 : vmonarch::cuda::Elem::f16;
    p.head_dim = d;
    p.q = q.view; p.a = a.view; p.c = cl.view;
    if (last) {
        p.y = y.view; p.dout = dout.view; p.drow = drow.view; p.dy = dy.view;
    } else {
        p.ar = ar.view; p.cr = cr.view; p.dar = dar.view;
    }
    p.clamp = clamp;
    p.dq = dq.view; p.da = da.view; p.drow_r = drow_r.view;
    if (c.with_dc) p.dc = dc.view;
    p.frames = T; p.positions = HW; p.heads = c.H; p.batch = c.B;
    p.zero_frame0 = zero_frame0;
    p.dq_overwrite = overwrite;
    p.sink_frames = o.sink;
    p.window_radius = o.window;
    if (o.merged) p.merged_lse = mlse.view;
    vmonarch::cuda::launch_lstep_bwd_with(p, o.kernel, nullptr, last ? "test L-step backward (last)" : "test L-step backward (earlier)");
    CUDA_OK(cudaDeviceSynchronize());
    const auto g_dq = dq.read(), g_da = da.read(), g_dc = dc.read(), g_drow_r = drow_r.read();
    const auto g_dy = last ? dy.read() : std::vector<double>();

    // f64 reference.
    std::vector<double> r_ddq(nv, 0.0), g_ddq(nv), r_da(nv, 0.0), r_dy(last ? nv : 0, 0.0), r_dc(ns, 0.0), r_drow_r(ns, 0.0);
    const auto tt = static_cast<std::size_t>(T * T);
    std::vector<double> L(tt), dz(tt), dl(tt), dcr(static_cast<std::size_t>(T));
    std::size_t clamped_rows = 0;
    for (int b = 0; b < c.B; ++b)
        for (int h = 0; h < c.H; ++h)
            for (std::int64_t j = 0; j < HW; ++j) {
                auto vec = [&](const Rows& r, std::int64_t f) { return r.values.data() + r.li(b, h, f, j); };
                auto sc = [&](const Rows& r, std::int64_t f) { return r.values[r.li(b, h, f, j)]; };
                logits(b, h, j, L);
                for (std::int64_t i = 0; i < T; ++i) {
                    double* Li = L.data() + i * T;
                    if (o.merged) { // L = exp(min(z − lse_i, 0)), 0 where lse_i = −inf
                        const double lse = sc(mlse, i);
                        for (std::int64_t k = 0; k < T; ++k) Li[k] = lse == -INFINITY ? 0.0 : std::exp(std::min(Li[k] - lse, 0.0));
                        continue;
                    }
                    double mx = -INFINITY;
                    for (std::int64_t k = 0; k < T; ++k) mx = std::max(mx, Li[k]);
                    if (mx == -INFINITY) { // every key frame exact
                        for (std::int64_t k = 0; k < T; ++k) Li[k] = 0.0;
                        continue;
                    }
                    double sum = 0;
                    for (std::int64_t k = 0; k < T; ++k) sum += (Li[k] = std::exp(Li[k] - mx));
                    for (std::int64_t k = 0; k < T; ++k) Li[k] /= sum;
                }
                if (last) {
                    for (std::int64_t k = 0; k < T; ++k) {
                        double* o = r_dy.data() + y.li(b, h, k, j);
                        for (std::int64_t i = 0; i < T; ++i)
                            for (int e = 0; e < d; ++e) o[e] += L[i * T + k] * vec(dout, i)[e];
                    }
                    for (std::int64_t i = 0; i < T; ++i)
                        for (std::int64_t k = 0; k < T; ++k)
                            dz[i * T + k] = L[i * T + k] * (dot(vec(dout, i), vec(y, k), d) - sc(drow, i));
                } else {
                    for (std::int64_t k = 0; k < T; ++k) {
                        const double crk = sc(cr, k);
                        clamped_rows += fitted(k) && !(crk > double(clamp));
                        dcr[std::size_t(k)] = fitted(k) && crk > double(clamp) ? -dot(vec(ar, k), vec(dar, k), d) / crk : 0.0;
                    }
                    for (std::int64_t i = 0; i < T; ++i) {
                        double dl_mean = 0;
                        double* o = r_ddq.data() + q.li(b, h, i, j);
                        for (std::int64_t k = 0; k < T; ++k) {
                            dl[i * T + k] = dot(vec(q, i), vec(dar, k), d) + dcr[std::size_t(k)];
                            dl_mean += L[i * T + k] * dl[i * T + k];
                            for (int e = 0; e < d; ++e) o[e] += L[i * T + k] * vec(dar, k)[e];
                        }
                        for (std::int64_t k = 0; k < T; ++k) dz[i * T + k] = L[i * T + k] * (dl[i * T + k] - dl_mean);
                    }
                }
                for (std::int64_t i = 0; i < T; ++i) {
                    double* o = r_ddq.data() + q.li(b, h, i, j);
                    for (std::int64_t k = 0; k < T; ++k)
                        for (int e = 0; e < d; ++e) o[e] += dz[i * T + k] * vec(a, k)[e];
                }
                for (std::int64_t k = 0; k < T; ++k) {
                    double* o = r_da.data() + a.li(b, h, k, j);
                    double colsum = 0;
                    for (std::int64_t i = 0; i < T; ++i) {
                        colsum += dz[i * T + k];
                        for (int e = 0; e < d; ++e) o[e] += dz[i * T + k] * vec(q, i)[e];
                    }
                    const std::size_t s = cl.li(b, h, k, j);
                    r_dc[s] = fitted(k) ? -colsum : 0.0;
                    // D_R from the GPU's rounded daL and dY (the values the R-step backward reads) and its dcL,
                    // each checked against its own reference below: D_R must be formed from the gradients the
                    // kernel hands on. (Where dZ = 0 exactly, as for a row with one key frame, daL and dcL are
                    // f32 cancellation noise on the GPU and 0 here; D_R is then noise too, and only D_R formed
                    // from that noise can be compared with it.)
                    r_drow_r[s] = dot(g_da.data() + a.li(b, h, k, j), vec(a, k), d) + (c.with_dc ? g_dc[s] * sc(cl, k) : 0.0) +
                                  (last ? dot(g_dy.data() + y.li(b, h, k, j), vec(y, k), d) : 0.0);
                }
            }
    for (std::size_t n = 0; n < nv; ++n) g_ddq[n] = overwrite ? g_dq[n] : g_dq[n] - dq0[n];
    bool any_fitted = false;
    for (std::int64_t k = 0; k < T; ++k) any_fitted = any_fitted || fitted(k);
    if (!last && any_fitted) {
        EXPECT_GT(clamped_rows, 0u) << "the case should have clamped cR rows";
    }

    const double rnd = c.dtype == DType::bf16 ? 1.0 / 256 : 1.0 / 1024; // one rounding, with margin
    std::printf("  %s %s\n", case_name(c).c_str(), last ? "last" : "earlier");
    expect_close("dq", g_ddq, r_ddq, 1e-3, 1e-4, 1e-4);
    expect_close("da", g_da, r_da, rnd, 1e-3, rnd);
    if (last) expect_close("dy", g_dy, r_dy, rnd, 1e-3, rnd);
    if (c.with_dc) {
        expect_close("dc", g_dc, r_dc, 1e-3, 1e-4, 1e-4);
    } else {
        EXPECT_EQ(count_nonfinite(g_dc), g_dc.size()) << "dc must not be written when it is null";
    }
    expect_close("drow_r", g_drow_r, r_drow_r, 1e-3, 1e-4, 1e-4);
    if (out != nullptr) *out = {g_dq, g_da, g_dc, g_drow_r, g_dy};
}

void run_kernels(const BwdCase& c, bool last, std::uint64_t seed, RunOptions o = {}) {
    for (const LStepBwdKernel k : kernels_for(c.T)) {
        o.kernel = k;
        run_case(c, last, seed, o);
    }
}

class LStepBwd : public ::testing::TestWithParam<BwdCase> {};

TEST_P(LStepBwd, LastMatchesFormulas) {
    REQUIRE_GPU();
    run_kernels(GetParam(), true, 1000);
}

TEST_P(LStepBwd, EarlierMatchesFormulas) {
    REQUIRE_GPU();
    run_kernels(GetParam(), false, 2000);
}

// The frame-0 recompute's masking read in place (frame 0's dO and D as 0) and dq stored, not added into.
TEST_P(LStepBwd, LastZeroFrame0AndStoredDq) {
    REQUIRE_GPU();
    RunOptions o;
    o.zero_frame0 = o.overwrite = true;
    run_kernels(GetParam(), true, 3000, o);
}

// Exact key groups (spec §3b): one sink frame, a temporal window of radius 1, both; the last step also merged
// (L = exp(z − lse) with the merged lse), as the exact-group forward leaves it.
TEST_P(LStepBwd, ExactKeyGroups) {
    REQUIRE_GPU();
    const BwdCase& c = GetParam();
    struct Groups {
        std::int64_t sink, window;
    };
    for (const Groups gr : {Groups{1, -1}, Groups{0, 1}, Groups{1, 1}}) {
        if (gr.sink >= c.T && gr.window < 0) continue; // every frame a sink: nothing left to the L-step
        SCOPED_TRACE("sink " + std::to_string(gr.sink) + ", window " + std::to_string(gr.window));
        RunOptions o;
        o.sink = gr.sink;
        o.window = gr.window;
        run_kernels(c, false, 5000, o);
        o.merged = true;
        run_kernels(c, true, 6000, o);
        o.zero_frame0 = true;
        run_kernels(c, true, 7000, o);
    }
}

// The same launch twice gives the same bits (a fixed order of accumulation; dq gets one addition per element).
TEST_P(LStepBwd, BitwiseRepeatable) {
    REQUIRE_GPU();
    for (const LStepBwdKernel k : kernels_for(GetParam().T)) {
        for (const bool last : {true, false}) {
            RunOptions o;
            o.kernel = k;
            o.overwrite = last;
            o.zero_frame0 = last;
            GpuResult r1, r2;
            run_case(GetParam(), last, 8000, o, &r1);
            run_case(GetParam(), last, 8000, o, &r2);
            ASSERT_EQ(r1.dq.size(), r2.dq.size());
            EXPECT_EQ(std::memcmp(r1.dq.data(), r2.dq.data(), r1.dq.size() * sizeof(double)), 0) << kernel_name(k);
            EXPECT_EQ(std::memcmp(r1.da.data(), r2.da.data(), r1.da.size() * sizeof(double)), 0) << kernel_name(k);
            EXPECT_EQ(std::memcmp(r1.drow_r.data(), r2.drow_r.data(), r1.drow_r.size() * sizeof(double)), 0) << kernel_name(k);
            if (last) EXPECT_EQ(std::memcmp(r1.dy.data(), r2.dy.data(), r1.dy.size() * sizeof(double)), 0) << kernel_name(k);
        }
    }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LStepBwd,
    ::testing::Values(BwdCase{DType::bf16, 128, 1, 7, 1, 2, false}, BwdCase{DType::f16, 128, 1, 7, 2, 1, true},
                      BwdCase{DType::f16, 64, 2, 13, 2, 1, true}, BwdCase{DType::bf16, 64, 2, 13, 1, 3, false},
                      BwdCase{DType::bf16, 64, 7, 31, 2, 3, true}, BwdCase{DType::f16, 128, 7, 31, 1, 2, false},
                      BwdCase{DType::bf16, 128, 16, 11, 1, 1, true}, BwdCase{DType::bf16, 128, 21, 17, 2, 2, false},
                      BwdCase{DType::f16, 128, 21, 17, 1, 3, true}, BwdCase{DType::f16, 64, 48, 5, 1, 2, true},
                      BwdCase{DType::bf16, 64, 64, 3, 2, 1, false}, BwdCase{DType::f16, 128, 97, 2, 1, 1, true}),
    [](const ::testing::TestParamInfo<BwdCase>& info) { return case_name(info.param); });

// The largest T the forward L-step takes on this device works in the backward too.
TEST(LStepBwdLimits, LargestForwardClip) {
    REQUIRE_GPU();
    for (int d : {64, 128}) {
        const std::int64_t T = vmonarch::cuda::lstep_max_frames(d);
        const BwdCase c{d == 64 ? DType::bf16 : DType::f16, d, T, 2, 1, 1, true};
        run_kernels(c, true, 3000 + d);
        run_kernels(c, false, 4000 + d);
        const BwdCase c48{d == 64 ? DType::f16 : DType::bf16, d, vmonarch::cuda::lstep_bwd_tensor_core_max_frames(), 3, 1, 1, true};
        run_kernels(c48, true, 3100 + d);
        run_kernels(c48, false, 4100 + d);
    }
}

// Configuration errors are CudaErrors naming what is wrong.
TEST(LStepBwdLimits, BadConfigurationThrows) {
    REQUIRE_GPU();
    LStepBwdParams p;
    p.frames = 4; p.positions = 3;
    auto message = [&](const LStepBwdParams& bad) {
        try {
            vmonarch::cuda::launch_lstep_bwd(bad, nullptr, "test");
        } catch (const vmonarch::CudaError& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    p.head_dim = 96;
    EXPECT_NE(message(p).find("head dim is 96"), std::string::npos) << message(p);
    p.head_dim = 64;
    p.frames = 100000;
    EXPECT_NE(message(p).find("exceed"), std::string::npos) << message(p);
    p.frames = 4;
    EXPECT_NE(message(p).find("'q' is null"), std::string::npos) << message(p);
    DeviceBuffer buf(4096);
    p.q = p.a = p.c = p.dq = p.da = p.drow_r = p.y = p.dout = p.drow = p.dy = RowView{buf.get(), 0, 0, 0, 0};
    p.dar = p.dout;
    EXPECT_NE(message(p).find("both dout"), std::string::npos) << message(p);
    p.dar = RowView{};
    p.q.sr = 3;
    EXPECT_NE(message(p).find("'q' is not 16-byte aligned"), std::string::npos) << message(p);
}

// The tensor-core kernel named explicitly for a clip longer than it takes, and a bad VMONARCH_LSTEP_BWD, are
// CudaErrors naming the limit and the value.
TEST(LStepBwdLimits, KernelChoiceErrors) {
    REQUIRE_GPU();
    DeviceBuffer buf(1 << 20);
    LStepBwdParams p;
    p.head_dim = 64;
    p.frames = vmonarch::cuda::lstep_bwd_tensor_core_max_frames() + 1;
    p.positions = 1;
    p.q = p.a = p.c = p.dq = p.da = p.drow_r = p.y = p.dout = p.drow = p.dy = RowView{buf.get(), 0, 0, 0, 0};
    for (LStepBwdKernel k : {LStepBwdKernel::tensor_cores, LStepBwdKernel::tensor_cores_pair, LStepBwdKernel::tensor_cores_quad}) {
        try {
            vmonarch::cuda::launch_lstep_bwd_with(p, k, nullptr, "test");
            ADD_FAILURE() << "no error for T = " << p.frames << " on " << kernel_name(k);
        } catch (const vmonarch::CudaError& e) {
            EXPECT_NE(std::string(e.what()).find("exceed the tensor-core"), std::string::npos) << e.what();
        }
    }
    const char* old = std::getenv("VMONARCH_LSTEP_BWD");
    const std::string saved = old != nullptr ? old : "";
    setenv("VMONARCH_LSTEP_BWD", "fastest", 1);
    try {
        vmonarch::cuda::lstep_bwd_kernel_from_env();
        ADD_FAILURE() << "no error for VMONARCH_LSTEP_BWD=fastest";
    } catch (const vmonarch::CudaError& e) {
        EXPECT_NE(std::string(e.what()).find("VMONARCH_LSTEP_BWD is 'fastest'"), std::string::npos) << e.what();
    }
    setenv("VMONARCH_LSTEP_BWD", "cuda-cores", 1);
    EXPECT_EQ(vmonarch::cuda::lstep_bwd_kernel_from_env(), LStepBwdKernel::cuda_cores);
    setenv("VMONARCH_LSTEP_BWD", "tensor-cores", 1);
    EXPECT_EQ(vmonarch::cuda::lstep_bwd_kernel_from_env(), LStepBwdKernel::tensor_cores);
    setenv("VMONARCH_LSTEP_BWD", "tensor-cores-pair", 1);
    EXPECT_EQ(vmonarch::cuda::lstep_bwd_kernel_from_env(), LStepBwdKernel::tensor_cores_pair);
    setenv("VMONARCH_LSTEP_BWD", "tensor-cores-quad", 1);
    EXPECT_EQ(vmonarch::cuda::lstep_bwd_kernel_from_env(), LStepBwdKernel::tensor_cores_quad);
    unsetenv("VMONARCH_LSTEP_BWD");
    EXPECT_EQ(vmonarch::cuda::lstep_bwd_kernel_from_env(), LStepBwdKernel::automatic);
    if (old != nullptr) setenv("VMONARCH_LSTEP_BWD", saved.c_str(), 1);
}

} // namespace
} // namespace gputest
