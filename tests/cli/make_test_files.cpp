// Test helper for the CLI tests: writes the tensor files no vmonarch command makes on purpose (values out of
// the f16 range, a NaN in an output, a huge sparse .npy whose data would not fit in memory) and lists the
// tensors of a .safetensors file.
//
//   make_test_files scale SRC DST FACTOR          DST (.npy, f32) = SRC * FACTOR
//   make_test_files poke SRC DST INDEX VALUE      DST (.npy, f32) = SRC with element INDEX set to VALUE
//                                                 (a number, nan, inf or -inf)
//   make_test_files sparse-npy PATH D0 D1 ...     an f32 .npy of that shape whose data is a hole (all zeros,
//                                                 no disk space used)
//   make_test_files names FILE.safetensors        prints the tensor names, one per line
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "vmonarch/extras/tensor_file.hpp"

namespace {

using vmonarch::DType;
using vmonarch::HostTensor;

double parse_value(const std::string& text) {
    if (text == "nan") return std::nan("");
    if (text == "inf") return INFINITY;
    if (text == "-inf") return -INFINITY;
    return std::stod(text);
}

HostTensor f32_from_doubles(const std::vector<double>& values, const std::vector<std::int64_t>& shape) {
    return HostTensor::from_floats(std::vector<float>(values.begin(), values.end()), shape, DType::f32);
}

int scale(const std::string& src, const std::string& dst, double factor) {
    const HostTensor in = vmonarch::read_tensor(src);
    std::vector<double> values = in.to_doubles();
    for (double& x : values) x *= factor;
    vmonarch::write_npy(dst, f32_from_doubles(values, in.shape));
    return 0;
}

int poke(const std::string& src, const std::string& dst, std::size_t index, double value) {
    const HostTensor in = vmonarch::read_tensor(src);
    std::vector<double> values = in.to_doubles();
    values.at(index) = value;
    vmonarch::write_npy(dst, f32_from_doubles(values, in.shape));
    return 0;
}

// Header as numpy writes it (version 1.0, data at a multiple of 64 bytes), then a hole up to the data size.
int sparse_npy(const std::string& path, const std::vector<std::int64_t>& shape) {
    std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
    std::uintmax_t elements = 1;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        dict += (i ? ", " : "") + std::to_string(shape[i]);
        elements *= std::uintmax_t(shape[i]);
    }
    dict += shape.size() == 1 ? ",), }" : "), }";
    dict.append((64 - (10 + dict.size() + 1) % 64) % 64, ' ');
    dict += '\n';
    std::string head = "\x93NUMPY";
    head += char(1);
    head += char(0);
    head += char(dict.size() & 0xff);
    head += char(dict.size() >> 8);
    head += dict;
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(head.data(), std::streamsize(head.size()));
        if (!out) return 1;
    }
    std::filesystem::resize_file(path, head.size() + elements * 4);
    return 0;
}

int names(const std::string& path) {
    for (const auto& [name, tensor] : vmonarch::read_safetensors(path)) {
        (void)tensor;
        std::cout << name << "\n";
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    const std::vector<std::string> a(argv + 1, argv + argc);
    try {
        if (a.size() == 4 && a[0] == "scale") return scale(a[1], a[2], std::stod(a[3]));
        if (a.size() == 5 && a[0] == "poke") return poke(a[1], a[2], std::stoul(a[3]), parse_value(a[4]));
        if (a.size() >= 3 && a[0] == "sparse-npy") {
            std::vector<std::int64_t> shape;
            for (std::size_t i = 2; i < a.size(); ++i) shape.push_back(std::stoll(a[i]));
            return sparse_npy(a[1], shape);
        }
        if (a.size() == 2 && a[0] == "names") return names(a[1]);
    } catch (const std::exception& e) {
        std::cerr << "make_test_files: " << e.what() << "\n";
        return 1;
    }
    std::cerr << "usage: make_test_files scale|poke|sparse-npy|names ... (see the source)\n";
    return 2;
}
