// Files.cpp — output files checked before the work and written together after it, and
// whole-file reads (see Files.h).
#include "Files.h"

#include "Source.h"

#include <fmt/format.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>

namespace gradc {

namespace {

UserError fileError(const std::string& path, const std::string& msg) {
    return UserError({makeSourceFile(path, ""), 0, 0}, msg);
}

[[noreturn]] void cannotWrite(const std::string& path, const std::string& what,
                              const std::string& why) {
    throw fileError(path, fmt::format("cannot write{}{}: {}", what.empty() ? "" : " ", what, why));
}

std::string folderOf(const std::string& p) {
    const size_t slash = p.find_last_of('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : p.substr(0, slash);
}

std::string nameOf(const std::string& p) {
    const size_t slash = p.find_last_of('/');
    return slash == std::string::npos ? p : p.substr(slash + 1);
}

bool writable(const std::string& p, int mode = W_OK) {
    return ::faccessat(AT_FDCWD, p.c_str(), mode, AT_EACCESS) == 0;
}

/// Follows `path` through its chain of symlinks to the file they name (which may not exist
/// yet). `throughProc` is set when a link lies under /proc (/dev/stdout -> /proc/self/fd/1):
/// those name open files, not places to put a new file.
std::string followLinks(const std::string& path, const std::string& what, bool& throughProc) {
    std::string p = path;
    throughProc = false;
    for (int hops = 0;; ++hops) {
        struct stat st {};
        if (::lstat(p.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return p;
        if (hops == 40) cannotWrite(path, what, std::strerror(ELOOP));
        if (p.rfind("/proc/", 0) == 0) throughProc = true;
        std::string link(PATH_MAX, '\0');
        const ssize_t n = ::readlink(p.c_str(), link.data(), link.size());
        if (n < 0) cannotWrite(path, what, std::strerror(errno));
        link.resize(size_t(n));
        p = !link.empty() && link[0] == '/' ? link : folderOf(p) + "/" + link;
    }
}

} // namespace

OutputTarget checkOutput(const std::string& path, const std::string& what) {
    OutputTarget t;
    t.path = path;
    if (path.empty()) cannotWrite(path, what, "the file name is empty");
    if (path.back() == '/') cannotWrite(path, what, "it names a folder, not a file");
    bool throughProc = false;
    t.target = followLinks(path, what, throughProc);
    struct stat st {};
    if (throughProc && ::stat(path.c_str(), &st) != 0)
        cannotWrite(path, what, std::strerror(errno));
    // Devices and FIFOs (also when reached through /proc's links to open files) are written
    // through, as a shell's `>` would.
    if (::stat(path.c_str(), &st) == 0 && !S_ISDIR(st.st_mode) &&
        (throughProc || !S_ISREG(st.st_mode))) {
        if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode) &&
            !S_ISFIFO(st.st_mode))
            cannotWrite(path, what, "it is not a file, a device or a FIFO");
        if (!writable(path)) cannotWrite(path, what, std::strerror(errno));
        t.target = path, t.exists = true, t.writeThrough = true, t.mode = st.st_mode;
        return t;
    }
    if (::stat(t.target.c_str(), &st) == 0) {
        if (S_ISDIR(st.st_mode)) cannotWrite(path, what, "it is a directory");
        if (!S_ISREG(st.st_mode)) cannotWrite(path, what, "it is not a file, a device or a FIFO");
        // A file the user cannot write is not replaced behind their back.
        if (!writable(t.target)) cannotWrite(path, what, std::strerror(errno));
        t.exists = true, t.mode = st.st_mode, t.uid = st.st_uid, t.gid = st.st_gid;
    } else if (errno != ENOENT) {
        cannotWrite(path, what, std::strerror(errno));
    }
    const std::string folder = folderOf(t.target);
    if (::stat(folder.c_str(), &st) != 0)
        cannotWrite(path, what,
                    errno == ENOENT
                        ? fmt::format("the folder '{}' does not exist", folder)
                        : fmt::format("the folder '{}': {}", folder, std::strerror(errno)));
    if (!S_ISDIR(st.st_mode)) cannotWrite(path, what, fmt::format("'{}' is not a folder", folder));
    if (!writable(folder, W_OK | X_OK))
        cannotWrite(path, what, fmt::format("the folder '{}': {}", folder, std::strerror(errno)));
    return t;
}

void checkOutputDirectory(const std::string& path, const std::string& what) {
    if (path.empty()) cannotWrite(path, what, "the folder name is empty");
    std::string p = path;
    while (p.size() > 1 && p.back() == '/')
        p.pop_back();
    // The nearest part of the path that exists must be a folder we may write in.
    for (;;) {
        struct stat st {};
        if (::stat(p.c_str(), &st) == 0) {
            if (!S_ISDIR(st.st_mode))
                cannotWrite(path, what, fmt::format("'{}' is not a folder", p));
            if (!writable(p, W_OK | X_OK))
                cannotWrite(path, what, fmt::format("'{}': {}", p, std::strerror(errno)));
            return;
        }
        if (errno != ENOENT && errno != ENOTDIR)
            cannotWrite(path, what, fmt::format("'{}': {}", p, std::strerror(errno)));
        const std::string up = folderOf(p);
        if (up == p) cannotWrite(path, what, std::strerror(ENOENT));
        p = up;
    }
}

// ---- PendingFile

namespace {
/// The files a run removes if a signal ends it (removeUnfinished): fixed slots of C strings,
/// so that the handler needs no allocation or lock.
constexpr int kUnfinished = 64;
char gUnfinished[kUnfinished][PATH_MAX];
std::atomic<int> gState[kUnfinished]; // 0 free, 1 being written, 2 registered
} // namespace

int registerUnfinished(const std::string& path) {
    if (path.size() >= PATH_MAX) return -1;
    for (int i = 0; i < kUnfinished; ++i) {
        int expected = 0;
        if (gState[i].compare_exchange_strong(expected, 1)) {
            std::memcpy(gUnfinished[i], path.c_str(), path.size() + 1);
            gState[i].store(2);
            return i;
        }
    }
    return -1; // more than 64 at once: those are left to the run's own clean-up
}

void unregisterUnfinished(int slot) {
    if (slot >= 0) gState[slot].store(0);
}

void removeUnfinished() {
    for (int i = 0; i < kUnfinished; ++i)
        if (gState[i].load() == 2) ::unlink(gUnfinished[i]);
}

PendingFile::PendingFile(OutputTarget target) : t_(std::move(target)) {
    if (t_.writeThrough) {
        std::fflush(stdout); // /dev/stdout: what the command printed comes first
        fd_ = ::open(t_.target.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NOCTTY);
        if (fd_ < 0) cannotWrite(t_.path, "", std::strerror(errno));
        return;
    }
    // `.NAME.PID.N.tmp` beside the target, NAME shortened so the whole is a legal name.
    static std::atomic<unsigned> counter{0};
    const std::string folder = folderOf(t_.target), name = nameOf(t_.target);
    for (int attempt = 0;; ++attempt) {
        const std::string suffix = fmt::format(".{}.{}.tmp", ::getpid(), counter++);
        const size_t keep = std::min(name.size(), size_t(NAME_MAX) - 1 - suffix.size());
        tmp_ = fmt::format("{}/.{}{}", folder, name.substr(0, keep), suffix);
        // An existing file's contents may be private: its temporary is too, until commit().
        fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                     t_.exists ? 0600 : 0666);
        if (fd_ >= 0) {
            slot_ = registerUnfinished(tmp_);
            return;
        }
        if (errno != EEXIST || attempt == 100) {
            const int err = errno;
            tmp_.clear();
            cannotWrite(t_.path, "", std::strerror(err));
        }
    }
}

PendingFile::~PendingFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
    unregisterUnfinished(slot_);
}

void PendingFile::write(std::string_view bytes) {
    internal_assert(fd_ >= 0, "write to a committed output file");
    while (!bytes.empty()) {
        const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) cannotWrite(t_.path, "", std::strerror(n < 0 ? errno : EIO));
        bytes.remove_prefix(size_t(n));
    }
}

void PendingFile::commit() {
    internal_assert(fd_ >= 0, "output file committed twice");
    const int fd = fd_;
    fd_ = -1;
    if (t_.writeThrough) {
        if (::close(fd) != 0) cannotWrite(t_.path, "", std::strerror(errno));
        committed_ = true;
        return;
    }
    // The new file takes the place of the old one as it is now: its mode, and its owner when
    // we may give it (root).
    struct stat st {};
    bool ok = true;
    if (::stat(t_.target.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
        if (::geteuid() == 0) ok = ::fchown(fd, st.st_uid, st.st_gid) == 0;
        ok = ok && ::fchmod(fd, st.st_mode & 07777) == 0;
    }
    ok = ok && (::fsync(fd) == 0 || errno == EINVAL);
    const int err = errno;
    ok = ::close(fd) == 0 && ok;
    if (!ok || ::rename(tmp_.c_str(), t_.target.c_str()) != 0)
        cannotWrite(t_.path, "", std::strerror(ok ? errno : err)); // the destructor removes tmp_
    committed_ = true;
    unregisterUnfinished(std::exchange(slot_, -1));
}

// ---- OutputSet

bool OutputSet::Identity::operator==(const Identity& o) const {
    return exists == o.exists && (exists ? dev == o.dev && ino == o.ino : resolved == o.resolved);
}

OutputSet::Identity OutputSet::identify(const std::string& path) {
    Identity id;
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) {
        id.exists = true, id.dev = st.st_dev, id.ino = st.st_ino;
        return id;
    }
    bool throughProc = false;
    std::string target;
    try {
        target = followLinks(path, "", throughProc);
    } catch (const UserError&) {
        target = path;
    }
    char* real = ::realpath(folderOf(target).c_str(), nullptr);
    id.resolved = (real ? std::string(real) : folderOf(target)) + "/" + nameOf(target);
    std::free(real);
    return id;
}

void OutputSet::claim(const std::string& path, const std::string& what, const Identity& id,
                      bool isOutput) {
    for (const Claim& c : claimed_) {
        if (!(c.id == id) || (!isOutput && !c.output)) continue; // two inputs may be one file
        if (isOutput)
            cannotWrite(
                path, what,
                fmt::format("it is the same file as {} '{}'",
                            c.output ? (c.what.empty() ? "the output" : c.what) : "the input",
                            c.path));
        cannotWrite(c.path, c.what, fmt::format("it is the same file as the input '{}'", path));
    }
    claimed_.push_back({path, what, id, isOutput});
}

void OutputSet::input(const std::string& path) {
    if (!path.empty()) claim(path, "", identify(path), false);
}

void OutputSet::output(const std::string& path, const std::string& what) {
    if (path.empty()) return;
    OutputTarget t = checkOutput(path, what);
    // A device or FIFO may be named more than once (--plot /dev/null --dump-grads /dev/null).
    if (!t.writeThrough) claim(path, what, identify(t.target), true);
    outputs_.push_back({std::move(t), std::nullopt, nullptr});
}

void OutputSet::directory(const std::string& path, const std::string& what) {
    if (path.empty()) return;
    checkOutputDirectory(path, what);
    claim(path, what, identify(path), true);
}

OutputSet::Entry& OutputSet::entry(const std::string& path) {
    for (auto& e : outputs_)
        if (e.target.path == path) return e;
    internalError(__FILE__, __LINE__, "declared",
                  fmt::format("output '{}' was not declared", path));
}

void OutputSet::set(const std::string& path, std::string bytes) {
    Entry& e = entry(path);
    internal_assert(!e.file, "an output both streamed and set");
    e.bytes = std::move(bytes);
}

PendingFile& OutputSet::stream(const std::string& path) {
    Entry& e = entry(path);
    internal_assert(!e.file && !e.bytes, "an output streamed twice");
    e.file = std::make_unique<PendingFile>(e.target);
    return *e.file;
}

void OutputSet::commit() {
    // Every temporary is written before anything is put in place, so a full disk or a
    // failing device leaves all the old files as they were.
    for (bool writeThrough : {false, true})
        for (auto& e : outputs_)
            if (e.bytes && e.target.writeThrough == writeThrough) {
                e.file = std::make_unique<PendingFile>(e.target);
                e.file->write(*e.bytes);
                e.bytes.reset();
            }
    for (auto& e : outputs_)
        if (e.file && e.target.writeThrough) e.file->commit();
    for (auto& e : outputs_)
        if (e.file && !e.target.writeThrough) e.file->commit();
    outputs_.clear();
}

void writeFileAtomically(const std::string& path, const std::string& bytes) {
    PendingFile f(checkOutput(path));
    f.write(bytes);
    f.commit();
}

std::string readWholeFile(const std::string& path, const char* what) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw fileError(path, fmt::format("cannot open {}: {}", what, std::strerror(errno)));
    if (S_ISDIR(st.st_mode))
        throw fileError(path, fmt::format("cannot read {}: it is a directory", what));
    std::ifstream in(path, std::ios::binary);
    if (!in) throw fileError(path, fmt::format("cannot open {}: {}", what, std::strerror(errno)));
    std::string data((std::istreambuf_iterator<char>(in)), {});
    if (in.bad()) throw fileError(path, fmt::format("error while reading {}", what));
    return data;
}

} // namespace gradc
