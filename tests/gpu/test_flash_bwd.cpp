// The flash backward kernel (launch_flash_bwd, spec §7.5 and the dense backward of §7.2) on its own, against an
// f64 computation written here of exactly the formulas of cuda/bwd/backward_params.hpp, on the same rounded
// inputs: lse computed in f64 on the host from the rounded q, k, γ and stored as f32, drow a row constant near
// Σ_l P·dP. Gradients are added (+=) onto nonzero initial accumulators; what the kernel added is compared.
// Every case runs on both peers: the portable kernels (the flash policy's sm90 peer off) and whatever
// launch_flash_bwd routes to (the Hopper kernel on an sm_90 device with a 90a build).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <utility>

#include "cuda/bwd/backward_params.hpp"
#include "cuda/bwd/sm90/flash_bwd_sm90.hpp"
#include "cuda/flash_policy.hpp"
#include "gpu_test_util.hpp"

namespace gputest {
namespace {

using vmonarch::cuda::Elem;
using vmonarch::cuda::FlashBwdParams;
using vmonarch::cuda::RowView;

// Replaces the process's flash policy for one scope (also when an assertion throws): the sm90 peer on or off.
class PeerGuard {
public:
    explicit PeerGuard(bool sm90) : saved_(vmonarch::cuda::flash_policy()) {
        vmonarch::cuda::FlashPolicy p = saved_;
        p.sm90 = sm90 && saved_.sm90; // never turns on what the environment turned off
        vmonarch::cuda::set_flash_policy(p);
    }
    ~PeerGuard() { vmonarch::cuda::set_flash_policy(saved_); }
    PeerGuard(const PeerGuard&) = delete;
    PeerGuard& operator=(const PeerGuard&) = delete;

private:
    vmonarch::cuda::FlashPolicy saved_;
};

// Sets the Hopper kernel's schedule for one scope (also when an assertion throws).
class ScheduleGuard {
public:
    explicit ScheduleGuard(vmonarch::cuda::FlashBwdSm90Schedule s) : saved_(vmonarch::cuda::flash_bwd_sm90_schedule()) {
        vmonarch::cuda::set_flash_bwd_sm90_schedule(s);
    }
    ~ScheduleGuard() { vmonarch::cuda::set_flash_bwd_sm90_schedule(saved_); }
    ScheduleGuard(const ScheduleGuard&) = delete;
    ScheduleGuard& operator=(const ScheduleGuard&) = delete;

private:
    vmonarch::cuda::FlashBwdSm90Schedule saved_;
};

// The device is 9.0 and the library carries the sm_90a backward kernel.
bool sm90_kernel_present() {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    cudaFuncAttributes fa{};
    const bool ok = major == 9 && minor == 0 && cudaFuncGetAttributes(&fa, vmonarch::cuda::flash_bwd_sm90_probe_kernel()) == cudaSuccess &&
                    fa.binaryVersion == 90 && fa.numRegs >= 128; // not the empty stub of a plain sm_90 build
    cudaGetLastError();
    return ok;
}

struct BwdCase {
    std::int64_t batch, heads, segments, len_q, len_k, d;
    DType dtype;
    bool rs, da, dy, dent;
};

std::string case_name(const BwdCase& c) {
    std::ostringstream os;
    os << "B" << c.batch << "h" << c.heads << "_S" << c.segments << "_q" << c.len_q << "_k" << c.len_k << "_d" << c.d << "_"
       << vmonarch::to_string(c.dtype) << (c.rs ? "_rs" : "") << (c.da ? "_da" : "") << (c.dy ? "_dy" : "") << (c.dent ? "_dent" : "");
    return os.str();
}

// Element strides of a [batch, heads, segments, rows] grid of `width`-element rows: queries-like in (b, h, f, r)
// order, keys-like in (b, f, r, h) order (the user's BSHD), so that both stride patterns are exercised.
struct Grid {
    std::int64_t sb, sh, sf, sr, total;
    std::int64_t at(std::int64_t b, std::int64_t h, std::int64_t f, std::int64_t r) const { return b * sb + h * sh + f * sf + r * sr; }
    RowView view(void* ptr) const { return RowView{ptr, sb, sh, sf, sr}; }
};
Grid bhsr(const BwdCase& c, std::int64_t rows, std::int64_t width) {
    return {c.heads * c.segments * rows * width, c.segments * rows * width, rows * width, width, c.batch * c.heads * c.segments * rows * width};
}
Grid bsrh(const BwdCase& c, std::int64_t rows, std::int64_t width) {
    return {c.segments * rows * c.heads * width, width, rows * c.heads * width, c.heads * width, c.batch * c.segments * rows * c.heads * width};
}

// A 16-bit operand: device buffer plus its rounded values (same storage order).
struct Half16 {
    DeviceBuffer buf;
    std::vector<double> val;
    Half16(const std::vector<double>& x, DType t) : buf(x.size() * 2), val(x.size()) {
        std::vector<std::uint16_t> bits(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) {
            bits[i] = to_bits(x[i], t);
            val[i] = from_bits(bits[i], t);
        }
        buf.upload(bits.data(), bits.size() * 2);
    }
};
// An f32 operand or accumulator.
struct F32 {
    DeviceBuffer buf;
    std::vector<double> val; // as stored (f32-rounded)
    explicit F32(const std::vector<double>& x) : buf(x.size() * 4), val(x.size()) {
        std::vector<float> f(x.begin(), x.end());
        val.assign(f.begin(), f.end());
        buf.upload(f.data(), f.size() * 4);
    }
    void restore() const { // the initial contents again
        std::vector<float> f(val.begin(), val.end());
        buf.upload(f.data(), f.size() * 4);
    }
    std::vector<float> raw() const { return buf.read<float>(val.size()); }
    void fill_nan() const {
        const std::vector<float> f(val.size(), NAN);
        buf.upload(f.data(), f.size() * 4);
    }
};

struct Problem {
    BwdCase c;
    double scale, qk_scale, clamp = 0.1;
    Grid gq, gk, gs; // query rows, key rows, per-row scalars
    std::vector<double> q, k, v, da, dy, lse, rs, dent, drow; // rounded as uploaded
    std::vector<double> ref_dq, ref_dk, ref_dv;                // what the kernel must add
    std::unique_ptr<Half16> hq, hk, hv, hda, hdy;
    std::unique_ptr<F32> flse, frs, fdent, fdrow, fdq, fdk, fdv;

    // dead_rows: rows i with i % 5 == 2 get a non-finite lse (−∞ or +∞ alternately: a row that had no key in
    // the forward), which must contribute nothing.
    bool dead_rows = false;

    // zero_dent: with c.dent, an entropy factor of 0 on every row (the operand present, the term absent).
    Problem(const BwdCase& bc, std::uint64_t seed, bool dead = false, bool zero_dent = false) : c(bc), dead_rows(dead) {
        const std::int64_t d = c.d;
        scale = 1.0 / std::sqrt(double(d));
        qk_scale = c.rs ? scale : 0.9 * scale; // without rs the logits use qk_scale, which differs from s
        gq = bhsr(c, c.len_q, d);
        gk = bsrh(c, c.len_k, d);
        gs = bhsr(c, c.len_q, 1);
        // Logits γ·⟨q, k⟩ with std about 2 (10× larger on clamped rows), values and gradients of std 1.
        hq = std::make_unique<Half16>(random_normal(std::size_t(gq.total), seed + 1, std::sqrt(2.0)), c.dtype);
        hk = std::make_unique<Half16>(random_normal(std::size_t(gk.total), seed + 2, 1.0), c.dtype);
        q = hq->val;
        k = hk->val;
        if (c.dy) {
            hv = std::make_unique<Half16>(random_normal(std::size_t(gk.total), seed + 3, 1.0), c.dtype);
            hdy = std::make_unique<Half16>(random_normal(std::size_t(gq.total), seed + 4, 1.0), c.dtype);
            v = hv->val;
            dy = hdy->val;
        }
        if (c.da) {
            hda = std::make_unique<Half16>(random_normal(std::size_t(gq.total), seed + 5, 1.0), c.dtype);
            da = hda->val;
        }
        const std::size_t nrows = std::size_t(gs.total);
        if (c.rs) { // cR in [0.02, 3]: the clamp 0.1 bites on some rows
            std::mt19937_64 gen(seed + 6);
            std::uniform_real_distribution<double> ud(0.02, 3.0);
            std::vector<double> x(nrows);
            for (auto& r : x) r = ud(gen);
            frs = std::make_unique<F32>(x);
            rs = frs->val;
        }
        if (c.dent) {
            fdent = std::make_unique<F32>(zero_dent ? std::vector<double>(std::size_t(nrows), 0.0) : random_normal(nrows, seed + 7, 0.5));
            dent = fdent->val;
        }
        compute_reference(seed);
        const auto init = [&](std::size_t n, std::uint64_t s) { return std::make_unique<F32>(random_normal(n, s, 0.3)); };
        fdq = init(std::size_t(gq.total), seed + 8);
        fdk = init(std::size_t(gk.total), seed + 9);
        if (c.dy) fdv = init(std::size_t(gk.total), seed + 10);
    }

    double gamma(std::int64_t row_index) const { return c.rs ? scale / std::max(rs[std::size_t(row_index)], clamp) : qk_scale; }

    // f64 of exactly the documented formulas; lse and drow are made here (then rounded to f32 and used as such).
    void compute_reference(std::uint64_t seed) {
        const std::int64_t d = c.d, Lq = c.len_q, Lk = c.len_k;
        lse.assign(std::size_t(gs.total), 0.0);
        drow.assign(std::size_t(gs.total), 0.0);
        ref_dq.assign(std::size_t(gq.total), 0.0);
        ref_dk.assign(std::size_t(gk.total), 0.0);
        if (c.dy) ref_dv.assign(std::size_t(gk.total), 0.0);
        const auto noise = random_normal(std::size_t(gs.total), seed + 11, 0.3);
        const auto dot = [&](const std::vector<double>& a, std::int64_t ia, const std::vector<double>& b, std::int64_t ib) {
            double s = 0;
            for (std::int64_t e = 0; e < d; ++e) s += a[std::size_t(ia + e)] * b[std::size_t(ib + e)];
            return s;
        };
        std::vector<double> X(std::size_t(Lq * Lk)), dP(std::size_t(Lq * Lk));
        for (std::int64_t b = 0; b < c.batch; ++b)
            for (std::int64_t h = 0; h < c.heads; ++h)
                for (std::int64_t f = 0; f < c.segments; ++f) {
                    for (std::int64_t i = 0; i < Lq; ++i) {
                        const std::int64_t si = gs.at(b, h, f, i), qi = gq.at(b, h, f, i);
                        const double g = gamma(si);
                        double mx = -INFINITY;
                        for (std::int64_t l = 0; l < Lk; ++l) {
                            const std::int64_t kl = gk.at(b, h, f, l);
                            double x = g * dot(q, qi, k, kl);
                            X[std::size_t(i * Lk + l)] = x;
                            mx = std::max(mx, x);
                            double p = 0;
                            if (c.da) p += scale * dot(da, qi, k, kl);
                            if (c.dy) p += dot(dy, qi, v, kl);
                            dP[std::size_t(i * Lk + l)] = p;
                        }
                        double sum = 0;
                        for (std::int64_t l = 0; l < Lk; ++l) sum += std::exp(X[std::size_t(i * Lk + l)] - mx);
                        lse[std::size_t(si)] = double(float(mx + std::log(sum))); // stored as f32
                        const double ls = lse[std::size_t(si)];
                        double pdp = 0;
                        for (std::int64_t l = 0; l < Lk; ++l) {
                            const std::size_t il = std::size_t(i * Lk + l);
                            if (c.dent) dP[il] += dent[std::size_t(si)] * (X[il] - ls);
                            pdp += std::exp(X[il] - ls) * dP[il];
                        }
                        drow[std::size_t(si)] = double(float(pdp + noise[std::size_t(si)]));
                        if (dead_rows && i % 5 == 2) lse[std::size_t(si)] = i % 10 == 2 ? -INFINITY : INFINITY;
                    }
                    for (std::int64_t i = 0; i < Lq; ++i) {
                        const std::int64_t si = gs.at(b, h, f, i), qi = gq.at(b, h, f, i);
                        const double g = gamma(si), ls = lse[std::size_t(si)], dr = drow[std::size_t(si)];
                        if (!std::isfinite(ls)) continue; // P = 0 on the row
                        for (std::int64_t l = 0; l < Lk; ++l) {
                            const std::size_t il = std::size_t(i * Lk + l);
                            const std::int64_t kl = gk.at(b, h, f, l);
                            const double P = std::exp(X[il] - ls);
                            const double dS = g * P * (dP[il] - dr); // γ·dX
                            for (std::int64_t e = 0; e < d; ++e) {
                                const std::size_t qe = std::size_t(qi + e), ke = std::size_t(kl + e);
                                ref_dq[qe] += dS * k[ke];
                                double dk = dS * q[qe];
                                if (c.da) dk += scale * P * da[qe];
                                ref_dk[ke] += dk;
                                if (c.dy) ref_dv[ke] += P * dy[qe];
                            }
                        }
                    }
                }
        flse = std::make_unique<F32>(lse);
        fdrow = std::make_unique<F32>(drow);
    }

    FlashBwdParams params(bool deterministic, bool overwrite = false) const {
        FlashBwdParams p;
        p.elem = c.dtype == DType::bf16 ? Elem::bf16 : Elem::f16;
        p.head_dim = int(c.d);
        p.q = gq.view(hq->buf.get());
        p.k = gk.view(hk->buf.get());
        if (c.dy) {
            p.v = gk.view(hv->buf.get());
            p.dy = gq.view(hdy->buf.get());
            p.dv = gk.view(fdv->buf.get());
        }
        if (c.da) p.da = gq.view(hda->buf.get());
        p.lse = gs.view(flse->buf.get());
        if (c.rs) p.rs = gs.view(frs->buf.get());
        if (c.dent) p.dent = gs.view(fdent->buf.get());
        p.drow = gs.view(fdrow->buf.get());
        p.dq = gq.view(fdq->buf.get());
        p.dk = gk.view(fdk->buf.get());
        p.len_q = c.len_q;
        p.len_k = c.len_k;
        p.segments = int(c.segments);
        p.heads = int(c.heads);
        p.batch = int(c.batch);
        p.scale = float(scale);
        p.qk_scale = float(qk_scale);
        p.clamp = float(clamp);
        p.deterministic = deterministic;
        p.dkdv_overwrite = overwrite;
        return p;
    }

    struct Result {
        std::vector<float> dq, dk, dv;
    };
    // overwrite: dk and dv start as NaN and must be stored (FlashBwdParams::dkdv_overwrite), not added into.
    Result run(bool deterministic, bool overwrite = false) const {
        fdq->restore();
        fdk->restore();
        if (fdv) fdv->restore();
        if (overwrite) {
            fdk->fill_nan();
            if (fdv) fdv->fill_nan();
        }
        vmonarch::cuda::launch_flash_bwd(params(deterministic, overwrite), nullptr, "test flash backward");
        if (cudaDeviceSynchronize() != cudaSuccess) throw std::runtime_error("flash backward failed");
        Result r{fdq->raw(), fdk->raw(), fdv ? fdv->raw() : std::vector<float>{}};
        return r;
    }
};

// What the kernel added: got − initial.
std::vector<double> added(const std::vector<float>& got, const std::vector<double>& init) {
    std::vector<double> out(got.size());
    for (std::size_t i = 0; i < got.size(); ++i) out[i] = double(got[i]) - init[i];
    return out;
}

void check(const char* what, const BwdCase& c, const char* peer, bool det, const std::vector<float>& got, const std::vector<double>& init,
           const std::vector<double>& ref) {
    const auto add = added(got, init);
    EXPECT_EQ(count_nonfinite(add), 0u) << what << " " << peer;
    const double err = rel_l2(add, ref), tol = tolerance(c.dtype);
    EXPECT_LE(err, tol) << what << " " << case_name(c) << " " << peer << (det ? " deterministic" : "");
    std::printf("[ flashbwd ] %-44s %-8s %-3s %s rel-L2 %.2e (tol %.0e)\n", case_name(c).c_str(), peer, what, det ? "det" : "   ", err, tol);
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class FlashBwd : public ::testing::TestWithParam<BwdCase> {};

// Both modes on both peers (the Hopper kernel under each of its schedules) against the f64 formulas;
// deterministic mode twice, bitwise equal.
void check_every_peer(const Problem& pr) {
    const BwdCase& c = pr.c;
    using vmonarch::cuda::FlashBwdSm90Schedule;
    const std::pair<bool, FlashBwdSm90Schedule> peers[] = {
        {false, FlashBwdSm90Schedule::cooperative},          {true, FlashBwdSm90Schedule::cooperative},
        {true, FlashBwdSm90Schedule::specialized},           {true, FlashBwdSm90Schedule::cooperative_prepared},
        {true, FlashBwdSm90Schedule::specialized_prepared},  {true, FlashBwdSm90Schedule::cooperative_pipelined}};
    for (const auto& [sm90, schedule] : peers) {
        const PeerGuard peer(sm90);
        const ScheduleGuard sched(schedule);
        const bool routed = vmonarch::cuda::flash_bwd_sm90_supported(pr.params(false));
        if (sm90 && !routed) continue; // no Hopper kernel here: the routed run is the portable one again
        const std::string name_s = routed ? std::string("sm90 ") + vmonarch::cuda::to_string(schedule) : std::string("portable");
        const char* name = name_s.c_str();
        for (bool det : {false, true}) {
            const auto r = pr.run(det);
            check("dq", c, name, det, r.dq, pr.fdq->val, pr.ref_dq);
            check("dk", c, name, det, r.dk, pr.fdk->val, pr.ref_dk);
            if (c.dy) check("dv", c, name, det, r.dv, pr.fdv->val, pr.ref_dv);
            if (det) {
                const auto again = pr.run(true);
                EXPECT_TRUE(bitwise_equal(r.dq, again.dq)) << "dq not repeatable " << case_name(c) << " " << name;
                EXPECT_TRUE(bitwise_equal(r.dk, again.dk)) << "dk not repeatable " << case_name(c) << " " << name;
                EXPECT_TRUE(bitwise_equal(r.dv, again.dv)) << "dv not repeatable " << case_name(c) << " " << name;
            }
        }
    }
}

TEST_P(FlashBwd, MatchesF64Formulas) {
    REQUIRE_GPU();
    const BwdCase c = GetParam();
    check_every_peer(Problem(c, 1000 + std::uint64_t(c.len_q * 7 + c.len_k + c.d)));
}

// dkdv_overwrite (the backward plan's frame-0 recompute, the first writer of dk and dv): dk and dv, filled with
// NaN, are stored as what the kernel would add, on every peer and schedule, in both modes; dq is still added.
TEST(FlashBwdOverwrite, DkDvStoredNotAdded) {
    REQUIRE_GPU();
    using vmonarch::cuda::FlashBwdSm90Schedule;
    for (const BwdCase& c : {BwdCase{1, 2, 2, 67, 131, 128, DType::bf16, true, true, true, true},
                             BwdCase{1, 1, 1, 70, 259, 64, DType::f16, false, false, true, false},
                             BwdCase{2, 1, 1, 33, 97, 128, DType::f16, true, true, false, false}}) {
        const Problem pr(c, 77 + std::uint64_t(c.len_k));
        const std::vector<double> zk(pr.fdk->val.size(), 0.0), zv(pr.fdv ? pr.fdv->val.size() : 0, 0.0);
        for (const auto& [sm90, schedule] : {std::pair{false, FlashBwdSm90Schedule::cooperative},
                                             std::pair{true, FlashBwdSm90Schedule::specialized_prepared},
                                             std::pair{true, FlashBwdSm90Schedule::cooperative_pipelined},
                                             std::pair{true, FlashBwdSm90Schedule::cooperative}}) {
            const PeerGuard peer(sm90);
            const ScheduleGuard sched(schedule);
            const bool routed = vmonarch::cuda::flash_bwd_sm90_supported(pr.params(false));
            if (sm90 && !routed) continue;
            const std::string name = routed ? std::string("sm90 ") + vmonarch::cuda::to_string(schedule) : std::string("portable");
            for (bool det : {false, true}) {
                const auto r = pr.run(det, true);
                check("dq", c, name.c_str(), det, r.dq, pr.fdq->val, pr.ref_dq);
                check("dk", c, name.c_str(), det, r.dk, zk, pr.ref_dk);
                if (c.dy) check("dv", c, name.c_str(), det, r.dv, zv, pr.ref_dv);
            }
        }
    }
}

// The pipelined cooperative form only reorders the cooperative prepared form's work: dk and dv (each added
// once by the block that owns the keys) are bitwise the same, in both modes, for every variant, head dim,
// element type and the key / query tails; dq (TMA reduce-adds from many blocks, in any order) is
// checked against the f64 formulas by MatchesF64Formulas.
TEST(FlashBwdPipelined, DkDvBitwiseThoseOfCooperativePrepared) {
    REQUIRE_GPU();
    if (!sm90_kernel_present() || !vmonarch::cuda::flash_policy().sm90) GTEST_SKIP() << "no sm_90a Hopper kernel on this device";
    using vmonarch::cuda::FlashBwdSm90Schedule;
    for (const BwdCase& c : {BwdCase{1, 2, 2, 131, 131, 128, DType::bf16, true, true, true, true}, BwdCase{1, 2, 2, 131, 131, 128, DType::bf16, true, true, false, true},
                             BwdCase{2, 1, 1, 70, 259, 128, DType::f16, false, false, true, false}, BwdCase{1, 2, 2, 97, 97, 64, DType::f16, true, true, true, false},
                             BwdCase{1, 1, 3, 150, 150, 64, DType::bf16, true, true, false, true}, BwdCase{1, 2, 1, 65, 200, 64, DType::bf16, false, false, true, false}}) {
        const Problem pr(c, 31 + std::uint64_t(c.len_q));
        for (bool det : {false, true}) {
            Problem::Result ref, got;
            {
                const ScheduleGuard sched(FlashBwdSm90Schedule::cooperative_prepared);
                ref = pr.run(det);
            }
            {
                const ScheduleGuard sched(FlashBwdSm90Schedule::cooperative_pipelined);
                got = pr.run(det);
            }
            EXPECT_TRUE(bitwise_equal(ref.dk, got.dk)) << "dk " << case_name(c) << (det ? " deterministic" : "");
            if (c.dy) EXPECT_TRUE(bitwise_equal(ref.dv, got.dv)) << "dv " << case_name(c) << (det ? " deterministic" : "");
            if (det) EXPECT_TRUE(bitwise_equal(ref.dq, got.dq)) << "dq " << case_name(c) << " deterministic"; // one portable dq kernel
        }
    }
}

// Without the entropy operand the specialized prepared form keeps P in place of the raw scores (no second
// exponential; with dA only also dQ out behind the next tile): dk and dv are bitwise those of the same problem
// with an entropy factor of 0 on every row (the forms that keep the logits), in both modes, for every variant,
// head dim and element type, with the key and query tails and dead rows.
TEST(FlashBwdSpecialized, NoEntropyFormBitwiseThatOfZeroEntropy) {
    REQUIRE_GPU();
    if (!sm90_kernel_present() || !vmonarch::cuda::flash_policy().sm90) GTEST_SKIP() << "no sm_90a Hopper kernel on this device";
    const ScheduleGuard sched(vmonarch::cuda::FlashBwdSm90Schedule::specialized_prepared);
    for (BwdCase c : {BwdCase{1, 2, 2, 131, 131, 128, DType::bf16, true, true, true, false}, BwdCase{1, 2, 2, 131, 131, 128, DType::bf16, true, true, false, false},
                      BwdCase{2, 1, 1, 70, 259, 128, DType::f16, false, false, true, false}, BwdCase{1, 2, 2, 97, 97, 64, DType::f16, true, true, true, false},
                      BwdCase{1, 1, 3, 150, 150, 64, DType::bf16, true, true, false, false}, BwdCase{1, 2, 1, 65, 200, 64, DType::bf16, false, false, true, false},
                      BwdCase{1, 1, 2, 1, 130, 128, DType::bf16, true, true, true, false}}) {
        for (bool dead : {false, true}) {
            const Problem none(c, 41 + std::uint64_t(c.len_k), dead);
            BwdCase cz = c;
            cz.dent = true;
            const Problem zero(cz, 41 + std::uint64_t(c.len_k), dead, true);
            for (bool det : {false, true}) {
                const Problem::Result ref = zero.run(det), got = none.run(det);
                const std::string what = case_name(c) + (dead ? " dead rows" : "") + (det ? " deterministic" : "");
                EXPECT_TRUE(bitwise_equal(ref.dk, got.dk)) << "dk " << what;
                if (c.dy) EXPECT_TRUE(bitwise_equal(ref.dv, got.dv)) << "dv " << what;
            }
        }
    }
}

// Rows whose lse is not finite (−∞: no key in the forward; +∞) contribute nothing and put no NaN anywhere,
// on every peer and schedule, with the key tail, the entropy term and every value variant.
TEST(FlashBwdRows, NonFiniteLseRowsContributeNothing) {
    REQUIRE_GPU();
    for (const BwdCase& c : {BwdCase{1, 2, 2, 67, 131, 128, DType::bf16, true, true, true, true},
                             BwdCase{1, 1, 2, 70, 70, 64, DType::f16, true, true, false, true},
                             BwdCase{1, 2, 1, 41, 200, 128, DType::bf16, false, false, true, false}})
        check_every_peer(Problem(c, 77 + std::uint64_t(c.len_k), true));
}

const DType bf = DType::bf16, hf = DType::f16;
INSTANTIATE_TEST_SUITE_P(
    Kernel, FlashBwd,
    ::testing::Values(
        // R-step-like: segments = key frames, len_q = len_k = HW (prime), row scale with the clamp active.
        BwdCase{2, 2, 3, 37, 37, 128, bf, true, true, true, false},   // last iteration: K and V values
        BwdCase{1, 3, 5, 61, 61, 64, bf, true, true, false, true},    // earlier iteration, exact (entropy) gradient
        BwdCase{2, 1, 3, 61, 61, 128, hf, false, true, true, true},   // t = 1: no row scale, both values, entropy
        BwdCase{1, 2, 2, 293, 293, 64, hf, true, true, true, true},   // several key and query tiles
        BwdCase{1, 2, 1, 151, 151, 128, bf, true, true, false, false},
        // Dense-like (frame-0 recompute): len_q = HW queries over all N keys, dy = dO, no row scale.
        BwdCase{2, 2, 1, 37, 185, 128, bf, false, false, true, false},
        BwdCase{1, 3, 1, 61, 305, 64, hf, false, false, true, false},
        BwdCase{1, 1, 1, 200, 333, 128, hf, false, false, true, false},
        BwdCase{2, 1, 1, 97, 131, 64, bf, false, false, true, false},
        // Awkward shapes for the 128-key / 64-query tiles: a key tail of 1 and of 2, len_q below one tile
        // (and of 1), several full and partial tiles, f16 at d 64 with every operand.
        BwdCase{1, 2, 2, 129, 129, 128, bf, true, true, true, true},
        BwdCase{2, 1, 1, 5, 258, 128, bf, false, false, true, false},
        BwdCase{1, 2, 3, 1, 130, 64, hf, true, true, false, true},
        BwdCase{1, 1, 2, 300, 300, 128, hf, true, true, true, true},
        BwdCase{2, 3, 1, 70, 383, 64, hf, true, true, true, false},
        BwdCase{1, 1, 4, 64, 128, 64, bf, false, true, true, true}),
    [](const auto& info) { return case_name(info.param); });

// The route: on an sm_90 device with the 90a kernel launch_flash_bwd takes the Hopper kernel (every variant,
// both element types and head dims, also deterministic), unless the policy turns the sm90 peer off or the
// operands are ones it does not take; on any other device never.
TEST(FlashBwdRoute, HopperKernelOnSm90Only) {
    REQUIRE_GPU();
    const bool present = sm90_kernel_present() && vmonarch::cuda::flash_policy().sm90;
    for (const BwdCase& c : {BwdCase{1, 1, 1, 17, 17, 64, bf, true, true, true, true}, BwdCase{1, 1, 1, 17, 17, 128, hf, false, true, false, false},
                             BwdCase{1, 1, 1, 17, 40, 128, bf, false, false, true, false}}) {
        const Problem pr(c, 11);
        for (bool det : {false, true}) EXPECT_EQ(vmonarch::cuda::flash_bwd_sm90_supported(pr.params(det)), present) << case_name(c);
        if (present) {
            // dq rows that TMA reduce-adds cannot take (not 16-byte aligned) keep the portable kernel, unless
            // deterministic (the Hopper kernel then leaves dq to the portable query-tile kernel).
            auto p = pr.params(false);
            p.dq.ptr = static_cast<char*>(p.dq.ptr) + 4;
            EXPECT_FALSE(vmonarch::cuda::flash_bwd_sm90_supported(p)) << case_name(c);
            p.deterministic = true;
            EXPECT_TRUE(vmonarch::cuda::flash_bwd_sm90_supported(p)) << case_name(c);
            if (c.da) { // dK and dQ are accumulated divided by s
                p = pr.params(false);
                p.scale = 0.f;
                EXPECT_FALSE(vmonarch::cuda::flash_bwd_sm90_supported(p)) << case_name(c);
            }
        }
        const PeerGuard off(false);
        EXPECT_FALSE(vmonarch::cuda::flash_bwd_sm90_supported(pr.params(false))) << case_name(c);
    }
}

// The Hopper kernel's schedule: an explicit one is taken as set; per_problem picks the specialized prepared
// form for every problem (both head dims and element types, both modes, row scale, entropy, value operands).
TEST(FlashBwdRoute, SchedulePerProblem) {
    REQUIRE_GPU();
    using vmonarch::cuda::FlashBwdSm90Schedule;
    using vmonarch::cuda::resolve_flash_bwd_sm90_schedule;
    for (const BwdCase& c : {BwdCase{1, 1, 1, 17, 17, 128, bf, true, true, true, true}, BwdCase{1, 1, 1, 17, 17, 128, hf, false, true, true, false},
                             BwdCase{1, 1, 1, 17, 17, 64, bf, true, true, true, false}, BwdCase{1, 1, 1, 17, 17, 128, bf, true, true, false, false},
                             BwdCase{1, 1, 1, 17, 40, 128, hf, false, false, true, false}, BwdCase{1, 1, 1, 17, 17, 64, hf, true, true, false, true},
                             BwdCase{1, 1, 1, 17, 40, 64, bf, false, false, true, false}}) {
        const Problem pr(c, 13);
        for (bool det : {false, true}) {
            const FlashBwdParams p = pr.params(det);
            const FlashBwdSm90Schedule want = FlashBwdSm90Schedule::specialized_prepared;
            EXPECT_EQ(resolve_flash_bwd_sm90_schedule(FlashBwdSm90Schedule::per_problem, p), want) << case_name(c) << (det ? " deterministic" : "");
            EXPECT_EQ(resolve_flash_bwd_sm90_schedule(FlashBwdSm90Schedule::cooperative, p), FlashBwdSm90Schedule::cooperative) << case_name(c);
            EXPECT_EQ(resolve_flash_bwd_sm90_schedule(FlashBwdSm90Schedule::specialized, p), FlashBwdSm90Schedule::specialized) << case_name(c);
            for (FlashBwdSm90Schedule e : {FlashBwdSm90Schedule::cooperative_prepared, FlashBwdSm90Schedule::specialized_prepared,
                                           FlashBwdSm90Schedule::cooperative_pipelined})
                EXPECT_EQ(resolve_flash_bwd_sm90_schedule(e, p), e) << case_name(c);
        }
    }
}

// Bad configurations are refused with the kernel's context, before any launch.
TEST(FlashBwdErrors, RefusesBadConfigurations) {
    REQUIRE_GPU();
    const BwdCase c{1, 1, 1, 17, 17, 64, bf, false, false, true, false};
    const Problem pr(c, 5);
    auto p = pr.params(false);
    p.head_dim = 96;
    EXPECT_THROW(vmonarch::cuda::launch_flash_bwd(p, nullptr, "bad head dim"), vmonarch::CudaError);
    p = pr.params(false);
    p.dy = RowView{};
    EXPECT_THROW(vmonarch::cuda::launch_flash_bwd(p, nullptr, "no value gradient"), vmonarch::CudaError);
    p = pr.params(false);
    p.dv = RowView{};
    EXPECT_THROW(vmonarch::cuda::launch_flash_bwd(p, nullptr, "dy without dv"), vmonarch::CudaError);
    p = pr.params(false);
    p.q.sr = 60;
    EXPECT_THROW(vmonarch::cuda::launch_flash_bwd(p, nullptr, "misaligned rows"), vmonarch::CudaError);
    p = pr.params(false);
    p.len_k = 0; // nothing to add: the accumulators stay as they were
    EXPECT_NO_THROW(vmonarch::cuda::launch_flash_bwd(p, nullptr, "no keys"));
    ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
    const auto dq = pr.fdq->raw();
    EXPECT_TRUE(bitwise_equal(dq, std::vector<float>(pr.fdq->val.begin(), pr.fdq->val.end())));
}

} // namespace
} // namespace gputest
