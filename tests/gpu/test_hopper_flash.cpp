// The Hopper (sm_90a) flash kernel against the portable launch_flash on the same random inputs, every
// variant (O, A+ent, O+A+ent, row scale, LSE), bf16/f16, d = 64/128, tails (len 1, 7, 63, 64, 65, 1456,
// 3600), several batch/heads/segments, strided and permuted views; and against an f64 CPU computation of
// docs/algorithm.md §3 for small shapes. Skipped unless the device is sm_90 (H100/H200).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/backend.hpp"
#include "cuda/sm90/flash_sm90.hpp"
#include "cuda/common/kernel_params.hpp"
#include "cuda/flash_policy.hpp"
#include "cuda/monarch_plan.hpp"
#include "gpu_test_util.hpp"

namespace gputest {
namespace {

using vmonarch::cuda::Elem;
using vmonarch::cuda::FlashParams;
using vmonarch::cuda::RowView;

bool is_sm90() {
    if (!have_gpu()) return false;
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    return major == 9 && minor == 0;
}

bool hopper_env_disabled() { return !vmonarch::cuda::flash_policy().sm90; }

// Replaces the process's flash policy (flash_policy.hpp) for one scope, also when an assertion throws.
class PolicyGuard {
public:
    PolicyGuard() : saved_(vmonarch::cuda::flash_policy()) {}
    ~PolicyGuard() { vmonarch::cuda::set_flash_policy(saved_); }
    PolicyGuard(const PolicyGuard&) = delete;
    PolicyGuard& operator=(const PolicyGuard&) = delete;
    const vmonarch::cuda::FlashPolicy& saved() const { return saved_; }

private:
    vmonarch::cuda::FlashPolicy saved_;
};

vmonarch::cuda::FlashPolicy::Tile tile_named(const std::string& t) {
    return t == "narrow" ? vmonarch::cuda::FlashPolicy::Tile::narrow : vmonarch::cuda::FlashPolicy::Tile::wide;
}

#define REQUIRE_SM90() \
    do { \
        if (!gputest::is_sm90()) GTEST_SKIP() << "needs an sm_90 device (H100/H200)"; \
        if (gputest::hopper_env_disabled()) GTEST_SKIP() << "the sm90 peer is disabled (VMONARCH_DISABLE_HOPPER)"; \
    } while (0)

// The portable kernel even where launch_flash itself routes sm_90 devices to the Hopper kernel: the
// policy's sm90 peer is off for the duration of the call.
void launch_portable(const FlashParams& p, const char* what) {
    const PolicyGuard guard;
    vmonarch::cuda::FlashPolicy off = guard.saved();
    off.sm90 = false;
    vmonarch::cuda::set_flash_policy(off);
    vmonarch::cuda::launch_flash(p, nullptr, what);
}

void throw_if(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// ---- views ------------------------------------------------------------------------------------------------
// Row layouts of a [batch, heads, segments, rows] grid of `width`-element vectors (width = d, or 1 for f32
// scalars), in elements.
enum class VL {
    bhsr,      // contiguous [b][h][f][r][width]
    token,     // token-major like a user BSHD tensor: [b][f][r][h][width]
    padded,    // [b][h][f][r][width + 8] (row stride not the width)
    pos_major, // [b][h][r][f][width] like the workspace aL / y / cL
};

struct Grid {
    std::int64_t B, H, F, R; // batch, heads, segments, rows
};

RowView make_view(VL l, const Grid& g, std::int64_t width, std::int64_t* total) {
    RowView v;
    switch (l) {
    case VL::bhsr:
        v.sr = width; v.sf = g.R * width; v.sh = g.F * g.R * width; v.sb = g.H * g.F * g.R * width;
        *total = g.B * v.sb;
        break;
    case VL::token:
        v.sh = width; v.sr = g.H * width; v.sf = g.R * g.H * width; v.sb = g.F * g.R * g.H * width;
        *total = g.B * v.sb;
        break;
    case VL::padded: {
        const std::int64_t w = width + 8;
        v.sr = w; v.sf = g.R * w; v.sh = g.F * g.R * w; v.sb = g.H * g.F * g.R * w;
        *total = g.B * v.sb;
        break;
    }
    case VL::pos_major:
        v.sf = width; v.sr = g.F * width; v.sh = g.R * g.F * width; v.sb = g.H * g.R * g.F * width;
        *total = g.B * v.sb;
        break;
    }
    return v;
}

std::int64_t off(const RowView& v, std::int64_t b, std::int64_t h, std::int64_t f, std::int64_t r) {
    return b * v.sb + h * v.sh + f * v.sf + r * v.sr;
}

// A device buffer holding one strided view, with host copies of the logical values.
struct VecBuf {
    Grid g{};
    std::int64_t width = 0, total = 0;
    bool f32 = false;
    DType dt = DType::bf16;
    RowView view;
    DeviceBuffer buf;

    VecBuf(const Grid& grid, std::int64_t w, VL l, bool is_f32, DType t) : g(grid), width(w), f32(is_f32), dt(t) {
        view = make_view(l, g, w, &total);
        buf = DeviceBuffer(std::size_t(total) * (f32 ? 4 : 2));
        view.ptr = buf.get();
    }
    std::size_t count() const { return std::size_t(g.B * g.H * g.F * g.R * width); }
    std::size_t li(std::int64_t b, std::int64_t h, std::int64_t f, std::int64_t r, std::int64_t c) const {
        return std::size_t((((b * g.H + h) * g.F + f) * g.R + r) * width + c);
    }
    template <typename Fn> void each(Fn&& fn) const {
        for (std::int64_t b = 0; b < g.B; ++b)
            for (std::int64_t h = 0; h < g.H; ++h)
                for (std::int64_t f = 0; f < g.F; ++f)
                    for (std::int64_t r = 0; r < g.R; ++r)
                        for (std::int64_t c = 0; c < width; ++c) fn(li(b, h, f, r, c), off(view, b, h, f, r) + c);
    }
    // Upload logical values (rounded to the element type); returns the rounded values. Padding and gaps
    // hold NaN so that a kernel reading them shows up.
    std::vector<double> upload(const std::vector<double>& vals) {
        std::vector<double> rounded(vals.size());
        if (f32) {
            std::vector<float> host(std::size_t(total), std::numeric_limits<float>::quiet_NaN());
            each([&](std::size_t i, std::int64_t o) { host[std::size_t(o)] = float(vals[i]); rounded[i] = double(host[std::size_t(o)]); });
            buf.upload(host.data(), host.size() * 4);
        } else {
            std::vector<std::uint16_t> host(std::size_t(total), nan_bits(dt));
            each([&](std::size_t i, std::int64_t o) { host[std::size_t(o)] = to_bits(vals[i], dt); rounded[i] = from_bits(host[std::size_t(o)], dt); });
            buf.upload(host.data(), host.size() * 2);
        }
        return rounded;
    }
    void poison() { throw_if(cudaMemset(buf.get(), 0xff, buf.bytes()), "poison"); } // NaN in f32, bf16 and f16
    std::vector<double> read() const {
        std::vector<double> out(count());
        if (f32) {
            const auto host = buf.read<float>(std::size_t(total));
            each([&](std::size_t i, std::int64_t o) { out[i] = host[std::size_t(o)]; });
        } else {
            const auto host = buf.read<std::uint16_t>(std::size_t(total));
            each([&](std::size_t i, std::int64_t o) { out[i] = from_bits(host[std::size_t(o)], dt); });
        }
        return out;
    }
};

// ---- cases ------------------------------------------------------------------------------------------------
struct Case {
    DType dt = DType::bf16;
    int d = 128;
    std::int64_t len_q = 64, len_k = 64;
    int B = 1, H = 1, F = 1;
    bool kv = true, vv = false, rs = false, lse = false;
    VL in_layout = VL::bhsr, out_layout = VL::bhsr;
    double logit_std = 2.0;
    double key_ramp = 0;   // key row l scaled by 1 + key_ramp·l/len_k: later key tiles hold larger logits
    std::uint64_t seed = 1;
};

std::string name(const Case& c) {
    std::ostringstream os;
    os << vmonarch::to_string(c.dt) << " d" << c.d << " q" << c.len_q << " k" << c.len_k << " B" << c.B << "H" << c.H << "F" << c.F
       << (c.kv ? " A+ent" : "") << (c.vv ? " O" : "") << (c.rs ? " rs" : "") << (c.lse ? " lse" : "") << " in" << int(c.in_layout)
       << " out" << int(c.out_layout);
    return os.str();
}

struct Problem {
    Case c;
    VecBuf q, k, v, o, a, ent, lse, rs;
    std::vector<double> qv, kvals, vvals, rsv; // rounded logical values
    FlashParams p;

    explicit Problem(const Case& cs)
        : c(cs),
          q(Grid{cs.B, cs.H, cs.F, cs.len_q}, cs.d, cs.in_layout, false, cs.dt),
          k(Grid{cs.B, cs.H, cs.F, cs.len_k}, cs.d, cs.in_layout, false, cs.dt),
          v(Grid{cs.B, cs.H, cs.F, cs.len_k}, cs.d, cs.in_layout == VL::token ? VL::padded : VL::token, false, cs.dt),
          o(Grid{cs.B, cs.H, cs.F, cs.len_q}, cs.d, cs.out_layout, false, cs.dt),
          a(Grid{cs.B, cs.H, cs.F, cs.len_q}, cs.d, cs.out_layout, false, cs.dt),
          ent(Grid{cs.B, cs.H, cs.F, cs.len_q}, 1, cs.out_layout == VL::bhsr ? VL::pos_major : VL::bhsr, true, cs.dt),
          lse(Grid{cs.B, cs.H, cs.F, cs.len_q}, 1, cs.out_layout == VL::bhsr ? VL::token : VL::bhsr, true, cs.dt),
          rs(Grid{cs.B, cs.H, cs.F, cs.len_q}, 1, VL::bhsr, true, cs.dt) {
        const double qk_std = std::sqrt(c.logit_std);
        qv = q.upload(random_normal(q.count(), c.seed * 11 + 1, qk_std));
        std::vector<double> kraw = random_normal(k.count(), c.seed * 11 + 2, qk_std);
        if (c.key_ramp != 0) {
            const std::size_t row_elems = std::size_t(c.d);
            for (std::size_t i = 0; i < kraw.size(); ++i) {
                const std::int64_t l = std::int64_t(i / row_elems) % c.len_k; // logical [b][h][f][l][d]
                kraw[i] *= 1.0 + c.key_ramp * double(l) / double(c.len_k);
            }
        }
        kvals = k.upload(kraw);
        vvals = v.upload(random_normal(v.count(), c.seed * 11 + 3, 1.0));
        std::vector<double> r(rs.count());
        std::mt19937_64 gen(c.seed * 11 + 4);
        std::uniform_real_distribution<double> ud(0.02, 3.0); // the clamp 0.1 bites on some rows
        for (auto& x : r) x = ud(gen);
        rsv = rs.upload(r);

        p.elem = c.dt == DType::bf16 ? Elem::bf16 : Elem::f16;
        p.head_dim = c.d;
        p.q = q.view;
        p.k = k.view;
        if (c.vv) {
            p.v = v.view;
            p.o = o.view;
        }
        if (c.kv) {
            p.a = a.view;
            p.ent = ent.view;
        }
        if (c.lse) p.lse = lse.view;
        if (c.rs) p.rs = rs.view;
        p.len_q = c.len_q;
        p.len_k = c.len_k;
        p.segments = c.F;
        p.heads = c.H;
        p.batch = c.B;
        p.scale = float(1.0 / std::sqrt(double(c.d)));
        p.clamp = 0.1f;
        p.qk_scale = p.scale; // without row scale (first R-step, dense): x = s·⟨q,k⟩
    }

    struct Out {
        std::vector<double> o, a, ent, lse;
    };
    template <typename Launch> Out run(Launch&& launch) {
        o.poison(); a.poison(); ent.poison(); lse.poison();
        launch(p);
        throw_if(cudaGetLastError(), "launch");
        throw_if(cudaDeviceSynchronize(), "sync");
        Out r;
        if (c.vv) r.o = o.read();
        if (c.kv) { r.a = a.read(); r.ent = ent.read(); }
        if (c.lse) r.lse = lse.read();
        return r;
    }

    // f64 docs/algorithm.md §3 computation on the rounded inputs.
    Out reference() const {
        Out r;
        const std::size_t rows = std::size_t(c.B * c.H * c.F * c.len_q);
        if (c.vv) r.o.assign(rows * c.d, 0.0);
        if (c.kv) { r.a.assign(rows * c.d, 0.0); r.ent.assign(rows, 0.0); }
        if (c.lse) r.lse.assign(rows, 0.0);
        const double s = double(p.scale);
        std::vector<double> x(std::size_t(c.len_k));
        for (std::int64_t b = 0; b < c.B; ++b)
            for (std::int64_t h = 0; h < c.H; ++h)
                for (std::int64_t f = 0; f < c.F; ++f)
                    for (std::int64_t i = 0; i < c.len_q; ++i) {
                        const std::size_t row = q.li(b, h, f, i, 0) / std::size_t(c.d);
                        double mult = double(p.qk_scale);
                        if (c.rs) mult = s / std::max(rsv[row], double(p.clamp));
                        double mx = -INFINITY;
                        for (std::int64_t l = 0; l < c.len_k; ++l) {
                            double dot = 0;
                            for (int e = 0; e < c.d; ++e) dot += qv[q.li(b, h, f, i, e)] * kvals[k.li(b, h, f, l, e)];
                            x[std::size_t(l)] = dot * mult;
                            mx = std::max(mx, x[std::size_t(l)]);
                        }
                        double sum = 0, sx = 0;
                        for (std::int64_t l = 0; l < c.len_k; ++l) {
                            const double w = std::exp(x[std::size_t(l)] - mx);
                            sum += w;
                            sx += w * x[std::size_t(l)];
                        }
                        const double lse_v = mx + std::log(sum);
                        if (c.lse) r.lse[row] = lse_v;
                        if (c.kv) r.ent[row] = sx / sum - lse_v;
                        for (std::int64_t l = 0; l < c.len_k; ++l) {
                            const double w = std::exp(x[std::size_t(l)] - lse_v);
                            for (int e = 0; e < c.d; ++e) {
                                if (c.vv) r.o[row * c.d + e] += w * vvals[v.li(b, h, f, l, e)];
                                if (c.kv) r.a[row * c.d + e] += s * w * kvals[k.li(b, h, f, l, e)];
                            }
                        }
                    }
        return r;
    }
};

double max_abs_diff(const std::vector<double>& x, const std::vector<double>& y) {
    double m = 0;
    for (std::size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(x[i] - y[i]));
    return m;
}

// Hopper vs portable on one case; vectors by relative L2, scalars by absolute difference.
void compare_with_portable(const Case& c) {
    SCOPED_TRACE(name(c));
    Problem pr(c);
    ASSERT_TRUE(vmonarch::cuda::hopper_flash_supported(pr.p)) << "Hopper path refused " << name(c);
    const auto port = pr.run([](const FlashParams& p) { launch_portable(p, "test portable"); });
    const auto hop = pr.run([](const FlashParams& p) { vmonarch::cuda::launch_flash_hopper(p, nullptr, "test hopper"); });
    double eo = 0, ea = 0, ee = 0, el = 0;
    if (c.vv) {
        EXPECT_EQ(count_nonfinite(hop.o), 0u);
        EXPECT_EQ(count_nonfinite(port.o), 0u);
        eo = rel_l2(hop.o, port.o);
        EXPECT_LE(eo, 5e-3) << "O";
    }
    if (c.kv) {
        EXPECT_EQ(count_nonfinite(hop.a), 0u);
        EXPECT_EQ(count_nonfinite(hop.ent), 0u);
        ea = rel_l2(hop.a, port.a);
        ee = max_abs_diff(hop.ent, port.ent);
        EXPECT_LE(ea, 5e-3) << "A";
        EXPECT_LE(ee, 1e-3) << "ent";
    }
    if (c.lse) {
        EXPECT_EQ(count_nonfinite(hop.lse), 0u);
        el = max_abs_diff(hop.lse, port.lse);
        EXPECT_LE(el, 1e-3) << "lse";
    }
    std::printf("[ hopper   ] %-60s O %.1e  A %.1e  ent %.1e  lse %.1e\n", name(c).c_str(), eo, ea, ee, el);
}

std::vector<Case> variants(Case base) {
    std::vector<Case> out;
    struct V { bool kv, vv, rs; };
    for (const V v : {V{true, false, false}, V{true, false, true}, V{true, true, true}, V{true, true, false}, V{false, true, false}}) {
        Case c = base;
        c.kv = v.kv; c.vv = v.vv; c.rs = v.rs;
        out.push_back(c);
    }
    return out;
}

void sweep(DType dt, int d) {
    REQUIRE_SM90();
    struct S { std::int64_t lq, lk; int B, H, F; VL in, outl; };
    const S shapes[] = {
        {1, 1, 1, 2, 1, VL::bhsr, VL::bhsr},       {7, 7, 2, 3, 2, VL::token, VL::pos_major},
        {63, 65, 1, 2, 3, VL::padded, VL::bhsr},   {64, 64, 2, 1, 2, VL::bhsr, VL::token},
        {65, 63, 1, 3, 1, VL::token, VL::padded},  {1, 1456, 1, 2, 2, VL::bhsr, VL::pos_major},
        {130, 7, 1, 1, 2, VL::padded, VL::token},  {1456, 1456, 1, 2, 2, VL::token, VL::pos_major},
        {200, 3600, 1, 1, 1, VL::bhsr, VL::bhsr},
    };
    std::uint64_t seed = 100 + std::uint64_t(d) + (dt == DType::f16 ? 7 : 0);
    int i = 0;
    for (const S& s : shapes) {
        Case base;
        base.dt = dt; base.d = d; base.len_q = s.lq; base.len_k = s.lk; base.B = s.B; base.H = s.H; base.F = s.F;
        base.in_layout = s.in; base.out_layout = s.outl;
        for (Case c : variants(base)) {
            c.seed = ++seed;
            c.lse = (i++ % 2) == 0 || !c.kv; // LSE on about half the cases, always with the dense variant
            compare_with_portable(c);
        }
    }
}

TEST(HopperFlash, MatchesPortable_bf16_d128) { sweep(DType::bf16, 128); }
TEST(HopperFlash, MatchesPortable_bf16_d64) { sweep(DType::bf16, 64); }
TEST(HopperFlash, MatchesPortable_f16_d128) { sweep(DType::f16, 128); }
TEST(HopperFlash, MatchesPortable_f16_d64) { sweep(DType::f16, 64); }

// Short key ranges whose key tiles all stay in the ring, with enough blocks that the launch gives each
// block several query tiles (flash_sm90_instances.cuh: 40 views of 8 query tiles on a 132-SM H100/H200
// give 3 tiles per block, so the view's blocks hold tiles {0,1,2}, {3,4,5}, {6,7}: both Q slots, a slot
// refilled with the second parity, a block with fewer tiles than the others, and a last tile of 54 rows
// whose second warpgroup idles). Key lengths of 2 and 3 tiles and one below a tile; f16 at one of them.
TEST(HopperFlash, MatchesPortable_SeveralQueryTilesPerBlock) {
    REQUIRE_SM90();
    std::uint64_t seed = 9100;
    for (const int d : {64, 128})
        for (const DType dt : {DType::bf16, DType::f16})
            for (const std::int64_t lk : {226, 7, 300}) {
                if (dt == DType::f16 && lk != 226) { // keeps the suite short; f16 differs only in the MMA type
                    seed += 5;                        // (the other cases keep their seeds)
                    continue;
                }
                Case base;
                base.dt = dt; base.d = d; base.len_q = 950; base.len_k = lk; base.B = 2; base.H = 20; base.F = 1;
                base.in_layout = lk == 7 ? VL::token : VL::bhsr; base.out_layout = lk == 300 ? VL::pos_major : VL::bhsr;
                for (Case c : variants(base)) {
                    c.seed = ++seed;
                    c.lse = !c.kv || lk == 226;
                    compare_with_portable(c);
                }
            }
}

// Long key ranges with several query tiles per block (FlashPolicy::sm90_long_q_tiles = 3, d = 64): the key
// tiles stream through the ring once per query tile, ring positions continuing across the block's tiles.
// 950 query rows are 8 tiles, so a view's blocks hold tiles {0,1,2}, {3,4,5}, {6,7}: both Q slots, a slot
// refilled with the second parity, a block with fewer tiles, a last tile of 54 rows whose second warpgroup
// idles. Keys: 1350 (CogVideoX's frame: 11 tiles, a 70-key tail), 512 (4 tiles = the ring's stages: the
// smallest range that does not stay in the ring), 700; d = 128 with the same policy keeps one query tile
// per block (no second Q slot of its own there) and must match as well.
TEST(HopperFlash, MatchesPortable_SeveralQueryTilesPerBlock_LongKeys) {
    REQUIRE_SM90();
    const PolicyGuard guard;
    vmonarch::cuda::FlashPolicy policy = guard.saved();
    policy.sm90_long_q_tiles = 3;
    policy.sm90_long_q_min_waves = 0; // the small grids here would otherwise keep one tile per block
    vmonarch::cuda::set_flash_policy(policy);
    std::uint64_t seed = 9400;
    for (const int d : {64, 128})
        for (const DType dt : {DType::bf16, DType::f16})
            for (const std::int64_t lk : {1350, 512, 700}) {
                seed += 5;
                if ((dt == DType::f16 || d == 128) && lk != 1350) continue; // f16 and d 128: one key length
                Case base;
                base.dt = dt; base.d = d; base.len_q = 950; base.len_k = lk; base.B = 1; base.H = 3; base.F = 2;
                base.in_layout = lk == 700 ? VL::token : VL::bhsr; base.out_layout = lk == 512 ? VL::pos_major : VL::bhsr;
                std::uint64_t s = seed;
                for (Case c : variants(base)) {
                    c.seed = ++s;
                    c.lse = !c.kv || lk == 1350;
                    compare_with_portable(c);
                }
            }
}

// The same path at a small shape for compute-sanitizer (scripts/gpu_suite.sh): 300 query rows (3 tiles: blocks
// {0, 1} and {2} at 2 tiles per block) over 520 keys (5 tiles, one more than the ring's stages: each query
// tile's ring positions wrap), d = 64, bf16, K and V as values with LSE and with a row scale.
TEST(HopperFlash, SeveralQueryTilesPerBlock_LongKeysSmall) {
    REQUIRE_SM90();
    const PolicyGuard guard;
    vmonarch::cuda::FlashPolicy policy = guard.saved();
    policy.sm90_long_q_tiles = 2;
    policy.sm90_long_q_min_waves = 0;
    vmonarch::cuda::set_flash_policy(policy);
    Case base;
    base.d = 64; base.len_q = 300; base.len_k = 520; base.B = 1; base.H = 1; base.F = 1;
    base.kv = true; base.vv = true; base.rs = true; base.lse = true; base.seed = 9500;
    compare_with_portable(base);
    base.kv = false; base.rs = false; base.seed = 9501;
    compare_with_portable(base);
}

// The full-size per-frame shape (3600 keys per frame, several frames) on the R-step's variants.
TEST(HopperFlash, MatchesPortable_frame3600) {
    REQUIRE_SM90();
    Case base;
    base.len_q = base.len_k = 3600; base.B = 1; base.H = 2; base.F = 2;
    base.in_layout = VL::token; base.out_layout = VL::pos_major;
    for (Case c : variants(base)) {
        if (!c.kv) continue;
        c.seed = 7000 + c.rs + 2 * c.vv;
        compare_with_portable(c);
    }
}

// Against the f64 CPU computation for small shapes (both kernels' tolerance of the GPU suite).
TEST(HopperFlash, MatchesCpuReference) {
    REQUIRE_SM90();
    for (DType dt : {DType::bf16, DType::f16})
        for (int d : {64, 128}) {
            Case base;
            base.dt = dt; base.d = d; base.len_q = 70; base.len_k = 131; base.B = 2; base.H = 2; base.F = 2;
            base.in_layout = VL::token; base.out_layout = VL::pos_major; base.lse = true;
            for (Case c : variants(base)) {
                c.seed = 900 + std::uint64_t(d) + c.rs + 2 * c.vv + 4 * c.kv;
                SCOPED_TRACE(name(c));
                Problem pr(c);
                ASSERT_TRUE(vmonarch::cuda::hopper_flash_supported(pr.p));
                const auto got = pr.run([](const FlashParams& p) { vmonarch::cuda::launch_flash_hopper(p, nullptr, "test hopper"); });
                const auto ref = pr.reference();
                const double tol = tolerance(dt);
                if (c.vv) { EXPECT_EQ(count_nonfinite(got.o), 0u); EXPECT_LE(rel_l2(got.o, ref.o), tol) << "O"; }
                if (c.kv) {
                    EXPECT_EQ(count_nonfinite(got.a), 0u);
                    EXPECT_LE(rel_l2(got.a, ref.a), tol) << "A";
                    EXPECT_LE(max_abs_diff(got.ent, ref.ent), 1e-3) << "ent";
                }
                EXPECT_LE(max_abs_diff(got.lse, ref.lse), 1e-3) << "lse";
                std::printf("[ hopper   ] cpu %-56s O %.1e  A %.1e  ent %.1e  lse %.1e\n", name(c).c_str(),
                            c.vv ? rel_l2(got.o, ref.o) : 0.0, c.kv ? rel_l2(got.a, ref.a) : 0.0,
                            c.kv ? max_abs_diff(got.ent, ref.ent) : 0.0, max_abs_diff(got.lse, ref.lse));
            }
        }
}

// Logits that grow along the keys (the last keys' up to 9× the first's, row maxima tens of binary orders
// above the first tiles'): most tiles leave the running offset more than 2^8 behind, so the kernels'
// stale-max softmax must fall back to the exact one (S computed again) tile after tile; every variant
// against f64.
void check_growing_logits(const char* label, void (*launch)(const FlashParams&)) {
    for (DType dt : {DType::bf16, DType::f16})
        for (int d : {64, 128}) {
            Case base;
            base.dt = dt; base.d = d; base.len_q = 130; base.len_k = 1100; base.B = 1; base.H = 2; base.F = 1;
            base.lse = true; base.logit_std = 4.0; base.key_ramp = 8.0;
            for (Case c : variants(base)) {
                c.seed = 1300 + std::uint64_t(d) + c.rs + 2 * c.vv + 4 * c.kv + 8 * (dt == DType::f16);
                SCOPED_TRACE(name(c) + " " + label);
                Problem pr(c);
                const auto got = pr.run(launch);
                const auto ref = pr.reference();
                const double tol = tolerance(dt);
                if (c.vv) { EXPECT_EQ(count_nonfinite(got.o), 0u); EXPECT_LE(rel_l2(got.o, ref.o), tol) << "O"; }
                if (c.kv) {
                    EXPECT_EQ(count_nonfinite(got.a) + count_nonfinite(got.ent), 0u);
                    EXPECT_LE(rel_l2(got.a, ref.a), tol) << "A";
                    EXPECT_LE(max_abs_diff(got.ent, ref.ent), 2e-3 * (1 + std::fabs(ref.ent[0]))) << "ent";
                }
                EXPECT_LE(max_abs_diff(got.lse, ref.lse), 2e-3 * (1 + std::fabs(ref.lse[0]))) << "lse";
                std::printf("[ flash    ] ramp %-55s %s O %.1e  A %.1e  ent %.1e  lse %.1e (lse[0] %.1f)\n", name(c).c_str(), label,
                            c.vv ? rel_l2(got.o, ref.o) : 0.0, c.kv ? rel_l2(got.a, ref.a) : 0.0,
                            c.kv ? max_abs_diff(got.ent, ref.ent) : 0.0, max_abs_diff(got.lse, ref.lse), ref.lse[0]);
            }
        }
}

TEST(HopperFlash, GrowingLogitsAlongKeys) {
    REQUIRE_SM90();
    const PolicyGuard guard;
    for (const char* tile : {"narrow", "wide"}) {
        vmonarch::cuda::FlashPolicy pol = guard.saved();
        pol.tile = tile_named(tile);
        vmonarch::cuda::set_flash_policy(pol);
        check_growing_logits(tile, [](const FlashParams& p) { vmonarch::cuda::launch_flash_hopper(p, nullptr, "test hopper"); });
    }
}

// The same on the portable mma.sync kernel (what non-Hopper GPUs run).
TEST(PortableFlash, GrowingLogitsAlongKeys) {
    REQUIRE_GPU();
    check_growing_logits("portable", [](const FlashParams& p) { launch_portable(p, "test portable"); });
}

// The pipeline's own views (MonarchPlan: R-steps over the workspace, first-frame recompute, dense).
TEST(HopperFlash, MatchesPortable_PlanViews) {
    REQUIRE_SM90();
    for (DType dt : {DType::bf16, DType::f16}) {
        const std::int64_t B = 1, H = 3, T = 3, HW = 65, d = 128, N = T * HW;
        const double s = 1.0 / std::sqrt(double(d));
        GpuTensor q(random_normal(std::size_t(B * N * H * d), 31, std::sqrt(2.0)), dt, Layout::bshd, B, N, H, d);
        GpuTensor k(random_normal(std::size_t(B * N * H * d), 32, std::sqrt(2.0)), dt, Layout::bshd, B, N, H, d);
        GpuTensor v(random_normal(std::size_t(B * N * H * d), 33, 1.0), dt, Layout::bshd, B, N, H, d);
        GpuTensor out = GpuTensor::poisoned(dt, Layout::bshd, B, N, H, d);
        vmonarch::detail::MonarchProblem mp;
        mp.q = q.view; mp.k = k.view; mp.v = v.view; mp.out = out.view;
        mp.batch = B; mp.heads = H; mp.q_tokens = mp.kv_tokens = N; mp.head_dim = mp.value_dim = d;
        mp.scale = s;
        mp.grid = vmonarch::VideoGrid{T, 1, HW};
        mp.iterations = 2;
        mp.cr_clamp = 0.1;
        mp.recompute_first_frame = true;
        const auto wl = vmonarch::cuda::monarch_workspace_layout(mp);
        DeviceBuffer ws(wl.total);
        // aR: random rows; cR in [0.02, 3].
        {
            const std::size_t rows = std::size_t(B * H * N);
            std::vector<std::uint16_t> ar(rows * d);
            const auto vals = random_normal(ar.size(), 34, std::sqrt(2.0));
            for (std::size_t i = 0; i < ar.size(); ++i) ar[i] = to_bits(vals[i], dt);
            throw_if(cudaMemcpy(static_cast<char*>(ws.get()) + wl.ar, ar.data(), ar.size() * 2, cudaMemcpyHostToDevice), "ar");
            std::vector<float> cr(rows);
            std::mt19937_64 gen(35);
            std::uniform_real_distribution<float> ud(0.02f, 3.f);
            for (auto& x : cr) x = ud(gen);
            throw_if(cudaMemcpy(static_cast<char*>(ws.get()) + wl.cr, cr.data(), cr.size() * 4, cudaMemcpyHostToDevice), "cr");
        }
        vmonarch::cuda::MonarchPlan plan(mp, ws.get());
        const std::size_t rows = std::size_t(B * H * N);
        auto read16 = [&](std::size_t o, std::size_t n) {
            std::vector<std::uint16_t> raw(n);
            throw_if(cudaMemcpy(raw.data(), static_cast<char*>(ws.get()) + o, n * 2, cudaMemcpyDeviceToHost), "read");
            std::vector<double> r(n);
            for (std::size_t i = 0; i < n; ++i) r[i] = from_bits(raw[i], dt);
            return r;
        };
        auto read32 = [&](std::size_t o, std::size_t n) {
            std::vector<float> raw(n);
            throw_if(cudaMemcpy(raw.data(), static_cast<char*>(ws.get()) + o, n * 4, cudaMemcpyDeviceToHost), "read");
            return std::vector<double>(raw.begin(), raw.end());
        };
        struct Outs { std::vector<double> al, cl, y; };
        auto run_step = [&](const FlashParams& fp, bool hopper) {
            throw_if(cudaMemset(static_cast<char*>(ws.get()) + wl.al, 0xff, wl.y - wl.al + rows * d * 2), "poison");
            if (hopper) vmonarch::cuda::launch_flash_hopper(fp, nullptr, "test hopper R-step");
            else launch_portable(fp, "test portable R-step");
            throw_if(cudaDeviceSynchronize(), "sync");
            Outs o;
            o.al = read16(wl.al, rows * d);
            o.cl = read32(wl.cl, rows);
            if (fp.o.ptr) o.y = read16(wl.y, rows * d);
            return o;
        };
        for (int it = 0; it < 2; ++it) {
            SCOPED_TRACE("R-step " + std::to_string(it) + " " + vmonarch::to_string(dt));
            const FlashParams fp = plan.rstep_params(it);
            ASSERT_TRUE(vmonarch::cuda::hopper_flash_supported(fp));
            const Outs a = run_step(fp, false), b = run_step(fp, true);
            EXPECT_EQ(count_nonfinite(b.al), 0u);
            EXPECT_LE(rel_l2(b.al, a.al), 5e-3);
            EXPECT_LE(max_abs_diff(b.cl, a.cl), 1e-3);
            if (fp.o.ptr) { EXPECT_EQ(count_nonfinite(b.y), 0u); EXPECT_LE(rel_l2(b.y, a.y), 5e-3); }
        }
        {
            SCOPED_TRACE(std::string("recompute ") + vmonarch::to_string(dt));
            const FlashParams fp = plan.recompute_params();
            ASSERT_TRUE(vmonarch::cuda::hopper_flash_supported(fp));
            std::vector<double> res[2];
            for (int hopper = 0; hopper < 2; ++hopper) {
                GpuTensor o2 = GpuTensor::poisoned(dt, Layout::bshd, B, N, H, d);
                FlashParams f2 = fp;
                f2.o.ptr = o2.buf.get();
                if (hopper) vmonarch::cuda::launch_flash_hopper(f2, nullptr, "test hopper recompute");
                else launch_portable(f2, "test portable recompute");
                throw_if(cudaDeviceSynchronize(), "sync");
                const auto all = o2.read(); // frame 0 rows only were written
                for (std::int64_t n = 0; n < HW; ++n)
                    for (std::int64_t h = 0; h < H; ++h)
                        for (std::int64_t e = 0; e < d; ++e) res[hopper].push_back(all[std::size_t((n * H + h) * d + e)]);
            }
            EXPECT_EQ(count_nonfinite(res[1]), 0u);
            EXPECT_LE(rel_l2(res[1], res[0]), 5e-3);
        }
    }
}

// Small shapes for the sanitizers (scripts/gpu_suite.sh): every variant, both head dims, key tails and
// several key tiles (so the pipelined consumer loop runs its prologue, steady state and drain), a query
// tail inside the second consumer warpgroup, and a single-tile case.
TEST(HopperFlash, SmallShapes) {
    REQUIRE_SM90();
    struct S { std::int64_t lq, lk; int d; };
    const S shapes[] = {{70, 300, 128}, {130, 65, 64}, {7, 129, 128}};
    std::uint64_t seed = 4000;
    for (const S& s : shapes) {
        Case base;
        base.d = s.d; base.len_q = s.lq; base.len_k = s.lk; base.B = 1; base.H = 2; base.F = 1;
        base.in_layout = VL::token; base.out_layout = VL::pos_major; base.lse = true;
        for (Case c : variants(base)) {
            c.seed = ++seed;
            compare_with_portable(c);
        }
    }
}

// Bitwise determinism: the same inputs give the same bits on every run, and every consumer schedule the
// library carries (mode 0 = one tile at a time, 1 = pipelined, both only with VMONARCH_EXPERIMENTS;
// 2 = pipelined + ping-pong, the default) gives the same bits as the others (they do the same arithmetic in
// the same order; only the overlap differs), for each key-tile width (narrow / wide; the widths sum in
// different orders, so they are compared with each other only within a tolerance).
TEST(HopperFlash, DeterministicAcrossRunsAndSchedules) {
    REQUIRE_SM90();
    const PolicyGuard guard;
    Case base;
    base.len_q = 300; base.len_k = 777; base.B = 1; base.H = 2; base.F = 2;
    base.in_layout = VL::token; base.out_layout = VL::pos_major; base.lse = true;
    std::uint64_t seed = 5000;
    auto same = [](const std::vector<double>& x, const std::vector<double>& y) {
        if (x.size() != y.size()) return false;
        for (std::size_t i = 0; i < x.size(); ++i)
            if (!(x[i] == y[i]) && !(std::isnan(x[i]) && std::isnan(y[i]))) return false;
        return true;
    };
    for (Case c : variants(base)) {
        c.seed = ++seed;
        SCOPED_TRACE(name(c));
        Problem pr(c);
        ASSERT_TRUE(vmonarch::cuda::hopper_flash_supported(pr.p));
        auto launch = [](const FlashParams& p) { vmonarch::cuda::launch_flash_hopper(p, nullptr, "test hopper"); };
        std::vector<Problem::Out> first_of_tile;
        for (const char* tile : {"narrow", "wide"}) {
            SCOPED_TRACE(std::string("tile ") + tile);
            std::vector<Problem::Out> outs;
            for (int mode : {0, 1, 2, -1, -1, -1}) { // -1 = the default schedule, three runs
                vmonarch::cuda::FlashPolicy pol = guard.saved();
                pol.tile = tile_named(tile);
                if (mode >= 0) {
                    if (!vmonarch::cuda::flash_sm90_mode_available(mode)) continue;
                    pol.sm90_mode = mode;
                }
                vmonarch::cuda::set_flash_policy(pol);
                outs.push_back(pr.run(launch));
            }
            for (std::size_t i = 1; i < outs.size(); ++i) {
                SCOPED_TRACE("run " + std::to_string(i));
                EXPECT_EQ(count_nonfinite(outs[i].o) + count_nonfinite(outs[i].a) + count_nonfinite(outs[i].ent), 0u);
                EXPECT_TRUE(same(outs[i].o, outs[0].o)) << "O";
                EXPECT_TRUE(same(outs[i].a, outs[0].a)) << "A";
                EXPECT_TRUE(same(outs[i].ent, outs[0].ent)) << "ent";
                EXPECT_TRUE(same(outs[i].lse, outs[0].lse)) << "lse";
            }
            first_of_tile.push_back(outs[0]);
        }
        // narrow vs wide: the same function, summed over different tile partitions
        EXPECT_LE(rel_l2(first_of_tile[1].o, first_of_tile[0].o), 5e-3);
        EXPECT_LE(rel_l2(first_of_tile[1].a, first_of_tile[0].a), 5e-3);
        EXPECT_LE(rel_l2(first_of_tile[1].ent, first_of_tile[0].ent), 1e-4);
    }
}

// The policy's parsing of the environment (read once per process by flash_policy(); parsed again here).
TEST(FlashPolicy, ParsesTheEnvironment) {
    using vmonarch::cuda::FlashPolicy;
    const EnvGuard g1("VMONARCH_DISABLE_HOPPER"), g2("VMONARCH_HOPPER_TILE"), g3("VMONARCH_HOPPER_MODE"), g4("VMONARCH_HOPPER_STALE_MAX");
    for (const char* n : {"VMONARCH_DISABLE_HOPPER", "VMONARCH_HOPPER_TILE", "VMONARCH_HOPPER_MODE", "VMONARCH_HOPPER_STALE_MAX"}) unsetenv(n);
    FlashPolicy p = vmonarch::cuda::flash_policy_from_env();
    EXPECT_TRUE(p.sm90);
    EXPECT_EQ(p.tile, FlashPolicy::Tile::per_problem);
    EXPECT_EQ(p.sm90_mode, 2);
    EXPECT_TRUE(p.sm90_stale_max);
    setenv("VMONARCH_DISABLE_HOPPER", "1", 1);
    setenv("VMONARCH_HOPPER_TILE", "narrow", 1);
    setenv("VMONARCH_HOPPER_MODE", "0", 1);
    setenv("VMONARCH_HOPPER_STALE_MAX", "0", 1);
    p = vmonarch::cuda::flash_policy_from_env();
    EXPECT_FALSE(p.sm90);
    EXPECT_EQ(p.tile, FlashPolicy::Tile::narrow);
#ifdef VMONARCH_EXPERIMENTS
    EXPECT_EQ(p.sm90_mode, 0);
    EXPECT_FALSE(p.sm90_stale_max);
#else // the research switches exist only in experiment builds
    EXPECT_EQ(p.sm90_mode, 2);
    EXPECT_TRUE(p.sm90_stale_max);
#endif
    setenv("VMONARCH_DISABLE_HOPPER", "0", 1);
    setenv("VMONARCH_HOPPER_TILE", "wide", 1);
    p = vmonarch::cuda::flash_policy_from_env();
    EXPECT_TRUE(p.sm90);
    EXPECT_EQ(p.tile, FlashPolicy::Tile::wide);
    setenv("VMONARCH_HOPPER_TILE", "sideways", 1);
    EXPECT_EQ(vmonarch::cuda::flash_policy_from_env().tile, FlashPolicy::Tile::per_problem);
    EXPECT_TRUE(vmonarch::cuda::flash_sm90_mode_available(2));
}

TEST(HopperFlash, PolicySwitchAndRefusals) {
    REQUIRE_SM90();
    Case c;
    Problem pr(c);
    EXPECT_TRUE(vmonarch::cuda::hopper_flash_supported(pr.p));
    {
        const PolicyGuard guard;
        vmonarch::cuda::FlashPolicy off = guard.saved();
        off.sm90 = false;
        vmonarch::cuda::set_flash_policy(off);
        EXPECT_FALSE(vmonarch::cuda::hopper_flash_supported(pr.p));
    }
    EXPECT_TRUE(vmonarch::cuda::hopper_flash_supported(pr.p));
    // A row stride that is not a multiple of 16 bytes cannot be a TMA tensor map: refused, and the
    // launcher throws instead of computing garbage.
    FlashParams odd = pr.p;
    odd.k.sr = c.d + 1;
    odd.k.sf = odd.k.sr * c.len_k;
    EXPECT_FALSE(vmonarch::cuda::hopper_flash_supported(odd));
    EXPECT_THROW(vmonarch::cuda::launch_flash_hopper(odd, nullptr, "test"), vmonarch::CudaError);
    FlashParams d96 = pr.p;
    d96.head_dim = 96;
    EXPECT_FALSE(vmonarch::cuda::hopper_flash_supported(d96));
}

} // namespace
} // namespace gputest
