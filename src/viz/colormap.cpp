// A nine-stop, inferno-like colormap with linear interpolation between stops.
#include "viz/colormap.hpp"

#include <algorithm>
#include <cmath>

namespace vmonarch::viz {

namespace {
struct Stop {
    double t, r, g, b;
};
constexpr Stop kStops[] = {
    {0.000, 2, 2, 8},      {0.125, 32, 12, 72},   {0.250, 84, 16, 110},  {0.375, 136, 34, 106}, {0.500, 186, 54, 86},
    {0.625, 226, 88, 52},  {0.750, 248, 138, 14}, {0.875, 248, 200, 50}, {1.000, 252, 254, 164},
};
} // namespace

Rgb colormap(double t) {
    if (!(t > 0)) t = 0; // also NaN
    if (t > 1) t = 1;
    constexpr int n = sizeof(kStops) / sizeof(kStops[0]);
    int i = 0;
    while (i + 2 < n && t > kStops[i + 1].t) ++i;
    const Stop& a = kStops[i];
    const Stop& b = kStops[i + 1];
    const double f = (t - a.t) / (b.t - a.t);
    auto mix = [f](double x, double y) { return static_cast<std::uint8_t>(std::lround(x + (y - x) * f)); };
    return {mix(a.r, b.r), mix(a.g, b.g), mix(a.b, b.b)};
}

} // namespace vmonarch::viz
