// PNG output through libpng. libpng reports errors by longjmp, so the libpng calls live in one function
// with no C++ objects that need destruction, and it returns an error message instead of throwing.
#include "viz/png_write.hpp"

#include <png.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace vmonarch::viz {

namespace {

struct PngError {
    char message[256];
};

void on_png_error(png_structp png, png_const_charp msg) {
    auto* err = static_cast<PngError*>(png_get_error_ptr(png));
    if (err != nullptr) std::snprintf(err->message, sizeof(err->message), "%s", msg);
    png_longjmp(png, 1);
}
void on_png_warning(png_structp, png_const_charp) {}

// Returns true on success; on failure err->message says why. rows: height pointers to RGB rows.
bool write_png_rows(std::FILE* file, int width, int height, png_bytep* rows, PngError* err) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, err, on_png_error, on_png_warning);
    if (png == nullptr) {
        std::snprintf(err->message, sizeof(err->message), "png_create_write_struct failed");
        return false;
    }
    png_infop info = png_create_info_struct(png);
    if (info == nullptr) {
        png_destroy_write_struct(&png, nullptr);
        std::snprintf(err->message, sizeof(err->message), "png_create_info_struct failed");
        return false;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return false;
    }
    png_init_io(png, file);
    png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_compression_level(png, 6);
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
    return true;
}

} // namespace

void write_png(const std::string& path, const Canvas& canvas) {
    std::FILE* file = std::fopen(path.c_str(), "wb");
    if (file == nullptr)
        throw std::runtime_error("cannot open '" + path + "' for writing: " + std::strerror(errno));
    std::vector<png_bytep> rows(static_cast<std::size_t>(canvas.height()));
    auto* base = const_cast<std::uint8_t*>(canvas.pixels().data());
    for (int y = 0; y < canvas.height(); ++y)
        rows[static_cast<std::size_t>(y)] = base + static_cast<std::size_t>(y) * static_cast<std::size_t>(canvas.width()) * 3;
    PngError err{};
    const bool ok = write_png_rows(file, canvas.width(), canvas.height(), rows.data(), &err);
    const bool flushed = std::fflush(file) == 0;
    const int saved_errno = errno;
    const bool closed = std::fclose(file) == 0;
    if (!ok) throw std::runtime_error("writing PNG '" + path + "' failed: " + err.message);
    if (!flushed || !closed)
        throw std::runtime_error("writing PNG '" + path + "' failed: " + std::strerror(saved_errno ? saved_errno : EIO));
}

} // namespace vmonarch::viz
