// ObjectCache.cpp — the on-disk cache of compiled objects. See ObjectCache.h for what it
// promises. An entry is one file in the folder, named by the SHA-256 of its key:
//   "GRADCOBJ" | format u32 | key size u64 | object size u64 | xxh3 u64 of the object | key | object
// The key is the whole text the object was built from (versions, CPU, options, unoptimised
// IR), so a name that matches by accident or by design still does not load another model's
// code. The folder is opened once and every entry is reached relative to it (openat), so the
// folder that was checked is the folder that is used. readFile and writeFile do that for
// any file of the folder: the entries, and the register tile speeds (Codegen.cpp).
#include "ObjectCache.h"

#include <fmt/format.h>
#include <llvm/ADT/ArrayRef.h>
#include <llvm/ADT/StringExtras.h>
#include <llvm/Support/SHA256.h>
#include <llvm/Support/xxhash.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace gradc {

namespace {

constexpr char kMagic[8] = {'G', 'R', 'A', 'D', 'C', 'O', 'B', 'J'};
constexpr uint32_t kFormat = 2;
constexpr size_t kHeader = 8 + 4 + 8 + 8 + 8;
/// No entry is read past this size: compiled models are megabytes, their IR tens of them.
constexpr uint64_t kMaxEntry = uint64_t(1) << 30;

/// The passwd entry's home folder of the effective user, or empty.
std::string passwdHome() {
    long hint = ::sysconf(_SC_GETPW_R_SIZE_MAX);
    std::vector<char> buffer(hint > 0 ? size_t(hint) : 4096);
    for (;;) {
        struct passwd pw, *result = nullptr;
        int rc = ::getpwuid_r(::geteuid(), &pw, buffer.data(), buffer.size(), &result);
        if (rc == ERANGE && buffer.size() < (size_t(1) << 20)) {
            buffer.resize(buffer.size() * 2);
            continue;
        }
        if (rc != 0 || !result || !pw.pw_dir || pw.pw_dir[0] != '/') return {};
        return pw.pw_dir;
    }
}

const char* fileKind(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISLNK(mode)) return "a symbolic link";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    return "not a regular file";
}

/// Why a file or folder with this status is not safe to trust, or empty when it is: it must
/// be owned by the effective user and writable by no one else.
std::string untrusted(const struct stat& st) {
    if (st.st_uid != ::geteuid())
        return fmt::format("is owned by uid {}, not by this user (uid {})", st.st_uid, ::geteuid());
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return fmt::format("is writable by {} (mode {:04o})", (st.st_mode & S_IWOTH) ? "others" : "its group",
                           st.st_mode & 07777);
    return {};
}

/// mkdir -p with mode 0700 for every folder it creates. Returns errno of the first failure.
int makeFolders(const std::string& dir) {
    for (size_t pos = dir.find('/', 1);; pos = dir.find('/', pos + 1)) {
        std::string prefix = dir.substr(0, pos);
        if (!prefix.empty() && ::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) return errno;
        if (pos == std::string::npos) return 0;
    }
}

/// Moves all `size` bytes with `io` (::read or ::write), retrying after signals and short
/// transfers. False on an error or an early end of file.
template <typename Data, typename Io> bool transferAll(int fd, Data* data, size_t size, Io io) {
    while (size > 0) {
        ssize_t n = io(fd, data, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        data += n, size -= size_t(n);
    }
    return true;
}
bool readAll(int fd, char* data, size_t size) { return transferAll(fd, data, size, ::read); }
bool writeAll(int fd, const char* data, size_t size) { return transferAll(fd, data, size, ::write); }

/// The fixed-size start of an entry, after the magic: where each field sits, written once.
struct EntryHeader {
    uint32_t format = kFormat;
    uint64_t keySize = 0, objectSize = 0, sum = 0; ///< sum: xxh3 of the object

    std::string encode() const {
        std::string h(kHeader, '\0');
        std::memcpy(h.data(), kMagic, 8);
        std::memcpy(h.data() + 8, &format, 4);
        std::memcpy(h.data() + 12, &keySize, 8);
        std::memcpy(h.data() + 20, &objectSize, 8);
        std::memcpy(h.data() + 28, &sum, 8);
        return h;
    }
    /// False when `data` does not start with the magic and a whole header.
    bool decode(const std::string& data) {
        if (data.size() < kHeader || data.compare(0, 8, kMagic, 8) != 0) return false;
        std::memcpy(&format, data.data() + 8, 4);
        std::memcpy(&keySize, data.data() + 12, 8);
        std::memcpy(&objectSize, data.data() + 20, 8);
        std::memcpy(&sum, data.data() + 28, 8);
        return true;
    }
};

std::atomic<bool> warned{false};
std::atomic<uint64_t> temporaries{0};

} // namespace

std::string defaultCacheDir() {
    if (const char* dir = std::getenv("GRADC_CACHE_DIR"); dir && *dir) return dir;
    if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && xdg[0] == '/') return std::string(xdg) + "/gradc";
    if (const char* home = std::getenv("HOME"); home && home[0] == '/') return std::string(home) + "/.cache/gradc";
    if (std::string home = passwdHome(); !home.empty()) return home + "/.cache/gradc";
    return {};
}

std::string ObjectCache::entryName(const std::string& key) {
    llvm::SHA256 h;
    h.update(key);
    return llvm::toHex(h.final(), /*LowerCase=*/true) + ".o";
}

void ObjectCache::ignore(const std::string& path, const std::string& why) {
    problem_ = fmt::format("{}: {}", path, why);
    // One warning per process: a run that compiles many models should not repeat it.
    if (!warned.exchange(true) || std::getenv("GRADC_DEBUG"))
        fmt::print(stderr, "{}: warning: {}\n", path, why);
}

ObjectCache::ObjectCache(std::string dir) {
    try {
        dir_ = dir.empty() ? defaultCacheDir() : std::move(dir);
        open();
    } catch (...) { // out of memory while naming the folder: no cache
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
}

void ObjectCache::open() {
    if (dir_.empty()) {
        ignore("gradc", "no folder for the cache of compiled code (GRADC_CACHE_DIR, XDG_CACHE_HOME and HOME are "
                        "unset and the user has no home); running without the cache");
        return;
    }
    const int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    int fd = ::open(dir_.c_str(), flags);
    if (fd < 0 && errno == ENOENT) {
        if (int err = makeFolders(dir_)) {
            ignore(dir_, fmt::format("cannot create the cache folder: {}; running without the cache", std::strerror(err)));
            return;
        }
        fd = ::open(dir_.c_str(), flags);
    }
    if (fd < 0) {
        ignore(dir_, fmt::format("cannot open the cache folder: {}; running without the cache", std::strerror(errno)));
        return;
    }
    struct stat st;
    std::string why = ::fstat(fd, &st) != 0 ? std::string("cannot be examined: ") + std::strerror(errno) : untrusted(st);
    if (!why.empty()) {
        ::close(fd);
        ignore(dir_, fmt::format("the cache folder {}; running without the cache", why));
        return;
    }
    fd_ = fd;
}

ObjectCache::~ObjectCache() {
    if (fd_ >= 0) ::close(fd_);
}

std::optional<std::string> ObjectCache::readFile(const std::string& name, const char* what, uint64_t maxBytes) {
    if (fd_ < 0) return std::nullopt;
    int fd = -1;
    try {
        const std::string path = dir_ + "/" + name;
        // O_NOFOLLOW: a symbolic link is refused; O_NONBLOCK: a FIFO opens at once (and is
        // then refused as not a regular file) instead of waiting for a writer.
        fd = ::openat(fd_, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT) return std::nullopt; // the ordinary miss
            ignore(path, errno == ELOOP ? fmt::format("{} is a symbolic link; ignored", what)
                                        : fmt::format("cannot open {}: {}; ignored", what, std::strerror(errno)));
            return std::nullopt;
        }
        struct stat st;
        std::string why;
        if (::fstat(fd, &st) != 0)
            why = std::string("cannot be examined: ") + std::strerror(errno);
        else if (!S_ISREG(st.st_mode))
            why = fmt::format("is {}", fileKind(st.st_mode));
        else if (why = untrusted(st); why.empty() && uint64_t(st.st_size) > maxBytes)
            why = fmt::format("is {} bytes, more than the limit of {} bytes", st.st_size, maxBytes);
        if (!why.empty()) {
            ::close(fd);
            ignore(path, fmt::format("{} {}; ignored", what, why));
            return std::nullopt;
        }
        std::string data(size_t(st.st_size), '\0');
        const bool complete = readAll(fd, data.data(), data.size());
        ::close(fd);
        if (!complete) return std::nullopt;
        return data;
    } catch (...) { // out of memory: a miss like any other
        if (fd >= 0) ::close(fd);
        return std::nullopt;
    }
}

bool ObjectCache::writeFile(const std::string& name, std::initializer_list<std::string_view> parts) {
    if (fd_ < 0) return false;
    std::string tmp;
    int fd = -1;
    try {
        for (int attempt = 0; fd < 0 && attempt < 100; ++attempt) {
            tmp = fmt::format("{}.tmp.{}.{}", name, ::getpid(), temporaries++);
            fd = ::openat(fd_, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
            if (fd < 0 && errno != EEXIST) return false;
        }
        if (fd < 0) return false;
        // fchmod: a umask such as 0277 must not leave a file its owner cannot read back.
        bool ok = ::fchmod(fd, 0600) == 0;
        for (std::string_view part : parts) ok = ok && writeAll(fd, part.data(), part.size());
        ok = ::close(fd) == 0 && ok;
        fd = -1;
        if (ok && ::renameat(fd_, tmp.c_str(), fd_, name.c_str()) == 0) return true;
        ::unlinkat(fd_, tmp.c_str(), 0);
        return false;
    } catch (...) {
        if (fd >= 0) {
            ::close(fd);
            ::unlinkat(fd_, tmp.c_str(), 0);
        }
        return false;
    }
}

std::optional<std::string> ObjectCache::load(const std::string& key) {
    if (fd_ < 0) return std::nullopt;
    try {
        problem_.clear();
        const std::string name = entryName(key);
        std::optional<std::string> data = readFile(name, "the cache entry", kMaxEntry);
        EntryHeader h;
        if (!data || !h.decode(*data)) return std::nullopt;
        if (h.format != kFormat || h.keySize > data->size() || h.objectSize != data->size() - kHeader - h.keySize)
            return std::nullopt; // another format, truncated or padded
        if (h.keySize != key.size() || data->compare(kHeader, h.keySize, key) != 0) {
            ignore(dir_ + "/" + name, "the cache entry was built from another key; ignored");
            return std::nullopt;
        }
        std::string object = data->substr(kHeader + h.keySize);
        if (llvm::xxh3_64bits(llvm::arrayRefFromStringRef(object)) != h.sum) return std::nullopt;
        return object;
    } catch (...) { // out of memory: a miss like any other
        return std::nullopt;
    }
}

void ObjectCache::store(const std::string& key, const std::string& object) {
    if (fd_ < 0) return;
    try {
        EntryHeader h;
        h.keySize = key.size(), h.objectSize = object.size();
        h.sum = llvm::xxh3_64bits(llvm::arrayRefFromStringRef(object));
        const std::string header = h.encode();
        writeFile(entryName(key), {header, key, object});
    } catch (...) { // a cache that cannot be written is no error
    }
}

} // namespace gradc
