// StagedFile and write_file: outputs appear whole or not at all. The data goes to a new temporary file
// (O_CREAT | O_EXCL, so nothing else is clobbered) in the target's folder, is flushed to disk, and is then
// renamed over the target: rename() within one file system replaces the target atomically, so a reader sees
// either the old file or the complete new one. Any failure removes the temporary file.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "io/io_common.hpp"

namespace vmonarch {

namespace {

namespace fs = std::filesystem;

std::string errno_text(int error) { return std::strerror(error); }

// A symbolic link to an existing file is followed, so that the link is kept and the file it names replaced.
std::string resolve_target(const std::string& target) {
    std::error_code ec;
    if (fs::is_symlink(fs::symlink_status(target, ec))) {
        const fs::path resolved = fs::canonical(target, ec);
        if (!ec) return resolved.string();
    }
    return target;
}

// Creates "<folder>/.<name>.vmonarch-tmp-<pid>-<n>", a name no other writer uses; returns its descriptor.
int create_temporary(const std::string& resolved, const std::string& target, std::string& temp) {
    static std::atomic<unsigned> counter{0};
    const fs::path path(resolved);
    const fs::path folder = path.has_parent_path() ? path.parent_path() : fs::path(".");
    const std::string name = path.filename().string().substr(0, 100);
    for (int attempt = 0; attempt < 100; ++attempt) {
        temp = (folder / ("." + name + ".vmonarch-tmp-" + std::to_string(::getpid()) + "-" +
                          std::to_string(counter++)))
                   .string();
        const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0) return fd;
        if (errno != EEXIST)
            throw FileFormatError(target + ": cannot create a file in the folder " + folder.string() + ": " +
                                  errno_text(errno));
    }
    throw FileFormatError(target + ": cannot create a temporary file in " + folder.string());
}

} // namespace

StagedFile::StagedFile(const std::string& target) : target_(target), resolved_(resolve_target(target)) {
    const int fd = create_temporary(resolved_, target_, temp_);
    struct stat existing {};
    if (::stat(resolved_.c_str(), &existing) == 0 && S_ISREG(existing.st_mode))
        (void)::fchmod(fd, existing.st_mode & 07777);
    ::close(fd);
}

StagedFile::~StagedFile() {
    if (!committed_) ::unlink(temp_.c_str());
}

void StagedFile::commit() {
    if (committed_) return;
    if (std::rename(temp_.c_str(), resolved_.c_str()) != 0)
        throw FileFormatError(target_ + ": cannot replace it with the written file: " + errno_text(errno));
    committed_ = true;
}

namespace io {

namespace {

void write_all(int fd, const char* data, std::size_t size, const std::string& target) {
    while (size > 0) {
        const ::ssize_t n = ::write(fd, data, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            throw FileFormatError(target + ": write failed: " + (n < 0 ? errno_text(errno) : std::string("no progress")));
        data += n;
        size -= std::size_t(n);
    }
}

} // namespace

void write_file(const std::string& path, const std::string& head,
                const std::vector<const std::vector<std::byte>*>& payloads) {
    StagedFile staged(path);
    const int fd = ::open(staged.path().c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) throw FileFormatError(path + ": cannot open for writing: " + errno_text(errno));
    try {
        write_all(fd, head.data(), head.size(), path);
        for (const auto* p : payloads) write_all(fd, reinterpret_cast<const char*>(p->data()), p->size(), path);
        if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
            throw FileFormatError(path + ": write failed: " + errno_text(errno));
    } catch (...) {
        ::close(fd);
        throw;
    }
    if (::close(fd) != 0) throw FileFormatError(path + ": write failed: " + errno_text(errno));
    staged.commit();
}

} // namespace io

} // namespace vmonarch
