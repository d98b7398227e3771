// Data.cpp — the IDX reader. A file (or bytes in memory) is read through a small stream that
// inflates gzip with zlib in bounded chunks and passes plain bytes through; the examples'
// buffers grow with what actually arrives, so a header's claim never decides how much
// memory is taken.
#include "Data.h"

#include "Source.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <optional>
#include <sys/stat.h>
#include <unistd.h>

namespace gradc {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
    throw UserError({makeSourceFile(path, ""), 0, 0}, msg);
}

std::string findFile(const std::string& dir, const std::string& stem) {
    struct stat st {};
    for (const char* ext : {".gz", ""}) {
        std::string p = dir + "/" + stem + ext;
        if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return p;
    }
    fail(dir + "/" + stem + ".gz", "data file not found (nor without .gz); give the data set's "
                                   "directory with --data DIR");
}

/// The bytes of a data file or of memory, inflated when they are gzip (one member or
/// several, as gzip writes them; bytes after the last member are ignored, as gunzip does).
class ByteStream {
public:
    explicit ByteStream(std::string path) : name_(std::move(path)) {
        fd_ = ::open(name_.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd_ < 0) fail(name_, fmt::format("cannot open data file: {}", std::strerror(errno)));
        struct stat st {};
        if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
            ::close(fd_);
            fail(name_, "cannot read data file: not a regular file");
        }
        rawSize_ = uint64_t(st.st_size);
        start();
    }
    ByteStream(std::string name, std::string_view bytes) : name_(std::move(name)), mem_(bytes) {
        rawSize_ = bytes.size();
        start();
    }
    ~ByteStream() {
        if (gzip_) inflateEnd(&z_);
        if (fd_ >= 0) ::close(fd_);
    }
    ByteStream(const ByteStream&) = delete;
    ByteStream& operator=(const ByteStream&) = delete;

    const std::string& name() const { return name_; }
    bool gzip() const { return gzip_; }
    /// The size of a plain file (of a gzip file, its compressed size).
    uint64_t rawSize() const { return rawSize_; }

    /// Up to `n` bytes; fewer only where the data ends. Throws on corrupt gzip data.
    size_t read(uint8_t* out, size_t n) {
        size_t done = 0;
        if (!gzip_) {
            while (done < n && inLen_ > inPos_) { // bytes looked at by start()
                out[done++] = in_[inPos_++];
            }
            while (done < n) {
                size_t got = raw(out + done, n - done);
                if (got == 0) break;
                done += got;
            }
            return done;
        }
        while (done < n && !ended_) {
            if (z_.avail_in == 0) {
                inLen_ = raw(in_, sizeof in_);
                z_.next_in = in_, z_.avail_in = uInt(inLen_);
                if (inLen_ == 0) { // the end (inside a member: truncated, which the caller reports)
                    ended_ = true;
                    break;
                }
            }
            if (memberDone_) { // another member follows, or trailing bytes that are ignored
                if (z_.next_in[0] != 0x1f) {
                    ended_ = true;
                    break;
                }
                inflateReset(&z_);
                memberDone_ = false;
            }
            const size_t want = std::min<size_t>(n - done, 1u << 30);
            z_.next_out = out + done, z_.avail_out = uInt(want);
            int rc = inflate(&z_, Z_NO_FLUSH);
            done += want - z_.avail_out;
            if (rc == Z_STREAM_END) memberDone_ = true;
            else if (rc != Z_OK && rc != Z_BUF_ERROR)
                fail(name_, fmt::format("corrupt gzip data: {}", z_.msg ? z_.msg : zError(rc)));
        }
        return done;
    }

private:
    /// Raw bytes from the file or memory; 0 at the end.
    size_t raw(uint8_t* out, size_t n) {
        if (fd_ < 0) {
            size_t k = std::min(n, mem_.size() - memPos_);
            std::memcpy(out, mem_.data() + memPos_, k);
            memPos_ += k;
            return k;
        }
        for (;;) {
            ssize_t got = ::read(fd_, out, std::min<size_t>(n, 1u << 30));
            if (got >= 0) return size_t(got);
            if (errno != EINTR) fail(name_, fmt::format("cannot read data file: {}", std::strerror(errno)));
        }
    }

    /// Looks at the first two bytes: gzip's magic number, or plain data.
    void start() {
        while (inLen_ < 2) {
            size_t got = raw(in_ + inLen_, 2 - inLen_);
            if (got == 0) break;
            inLen_ += got;
        }
        if (inLen_ == 2 && in_[0] == 0x1f && in_[1] == 0x8b) {
            gzip_ = true;
            z_ = z_stream{};
            if (inflateInit2(&z_, 16 + MAX_WBITS) != Z_OK) fail(name_, "cannot start zlib");
            z_.next_in = in_, z_.avail_in = uInt(inLen_);
        }
    }

    std::string name_;
    int fd_ = -1;
    std::string_view mem_;
    size_t memPos_ = 0;
    uint64_t rawSize_ = 0;
    uint8_t in_[1 << 16];
    size_t inLen_ = 0, inPos_ = 0;
    bool gzip_ = false, memberDone_ = false, ended_ = false;
    z_stream z_{};
};

/// An IDX file of unsigned bytes: its header read and checked, then its data on demand.
class IdxFile {
public:
    /// Reads the header: the magic number (type 0x08 unsigned bytes, `dims` dimensions) and
    /// the sizes; a plain file must hold at least the bytes its header claims.
    IdxFile(ByteStream& s, int dims) : s_(s) {
        uint8_t magic[4];
        exactly(magic, 4, "the IDX header");
        if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != dims)
            fail(s_.name(), fmt::format("not an IDX file of {}-d unsigned bytes (magic {:02x} {:02x} "
                                        "{:02x} {:02x}, expected 00 00 08 {:02x})", dims, magic[0],
                                        magic[1], magic[2], magic[3], dims));
        for (int i = 0; i < dims; ++i) {
            uint8_t b[4];
            exactly(b, 4, "the IDX header");
            shape.push_back(int64_t(b[0]) << 24 | int64_t(b[1]) << 16 | int64_t(b[2]) << 8 | b[3]);
        }
        if (dims == 3 && (shape[1] <= 0 || shape[2] <= 0 || shape[1] * shape[2] > (1 << 24)))
            fail(s_.name(), fmt::format("implausible image size {}x{}", shape[1], shape[2]));
        itemBytes = dims == 3 ? shape[1] * shape[2] : 1;
        if (!s_.gzip()) { // sizes below 2^32 * 2^24: no overflow in 64 bits
            const uint64_t claimed = uint64_t(4 + 4 * dims) + uint64_t(shape[0]) * uint64_t(itemBytes);
            if (claimed > s_.rawSize())
                fail(s_.name(), fmt::format("file is truncated: its header claims {} {} ({} bytes with the "
                                            "header), but the file holds {} bytes",
                                            shape[0], dims == 3 ? fmt::format("images of {}x{} pixels", shape[1], shape[2])
                                                                : std::string("labels"),
                                            claimed, s_.rawSize()));
        }
    }

    /// The next `n` items into `out`. From gzip the buffer grows as the bytes arrive (by what
    /// it holds, from 64 KiB up to 16 MiB at a time), so a false claim costs no more memory
    /// than about twice the data really there.
    void items(std::vector<uint8_t>& out, int64_t n, const char* what) {
        const uint64_t total = uint64_t(n) * uint64_t(itemBytes);
        out.clear();
        if (!s_.gzip()) out.reserve(size_t(total)); // the file's size was checked
        while (out.size() < total) {
            const size_t old = out.size();
            const size_t chunk = size_t(std::min<uint64_t>(total - old, std::clamp<size_t>(old, 64u << 10, 16u << 20)));
            out.resize(old + chunk);
            const size_t got = s_.read(out.data() + old, chunk);
            if (got < chunk)
                fail(s_.name(), fmt::format("file is truncated: {} ended after {} of {} bytes", what, old + got, total));
        }
    }

    std::vector<int64_t> shape;
    int64_t itemBytes = 1;

private:
    void exactly(uint8_t* out, size_t n, const char* what) {
        const size_t got = s_.read(out, n);
        if (got < n) fail(s_.name(), fmt::format("file is truncated: {} ended after {} of {} bytes", what, got, n));
    }
    ByteStream& s_;
};

Examples readBoth(ByteStream& imgStream, ByteStream& lblStream, int64_t count) {
    IdxFile img(imgStream, 3), lbl(lblStream, 1);
    const std::string &imgPath = imgStream.name(), &lblPath = lblStream.name();
    if (img.shape[0] != lbl.shape[0])
        fail(lblPath, fmt::format("holds {} labels but {} has {} images", lbl.shape[0], imgPath, img.shape[0]));
    if (count < 0) count = img.shape[0];
    if (count > img.shape[0])
        fail(imgPath, fmt::format("holds {} examples; {} were asked for", img.shape[0], count));
    Examples e;
    e.count = count;
    e.features = img.itemBytes;
    e.imageFile = imgPath, e.labelFile = lblPath;
    img.items(e.pixels, count, "the image data");
    lbl.items(e.labels, count, "the label data");
    return e;
}

} // namespace

Examples readExamples(const std::string& dir, bool train, int64_t count) {
    const std::string prefix = train ? "train" : "t10k";
    ByteStream img(findFile(dir, prefix + "-images-idx3-ubyte")), lbl(findFile(dir, prefix + "-labels-idx1-ubyte"));
    return readBoth(img, lbl, count);
}

Examples readExamples(const IdxBytes& images, const IdxBytes& labels, int64_t count) {
    ByteStream img(images.name, images.bytes), lbl(labels.name, labels.bytes);
    return readBoth(img, lbl, count);
}

void checkExamples(const Examples& e, int64_t features, int64_t classes) {
    if (e.features != features)
        fail(e.imageFile, fmt::format("the images have {} pixels, but the model takes {} inputs", e.features, features));
    for (size_t i = 0; i < e.labels.size(); ++i)
        if (e.labels[i] >= classes)
            fail(e.labelFile, fmt::format("label {} of example {} is out of range for the model's {} classes",
                                          e.labels[i], i, classes));
}

int64_t exampleCount(const std::string& dir, bool train) {
    ByteStream s(findFile(dir, std::string(train ? "train" : "t10k") + "-images-idx3-ubyte"));
    return IdxFile(s, 3).shape[0];
}

Examples sample(const Examples& all, int64_t count, uint64_t seed) {
    std::vector<int64_t> order(size_t(all.count));
    for (int64_t i = 0; i < all.count; ++i) order[size_t(i)] = i;
    uint64_t state = seed;
    auto next = [&] { // splitmix64
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    };
    Examples out;
    out.count = count, out.features = all.features;
    out.imageFile = all.imageFile, out.labelFile = all.labelFile;
    for (int64_t i = 0; i < count; ++i) {
        int64_t j = i + int64_t(next() % uint64_t(all.count - i));
        std::swap(order[size_t(i)], order[size_t(j)]);
        int64_t k = order[size_t(i)];
        out.pixels.insert(out.pixels.end(), all.pixels.begin() + k * all.features,
                          all.pixels.begin() + (k + 1) * all.features);
        out.labels.push_back(all.labels[size_t(k)]);
    }
    return out;
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
    uint64_t state = seed;
    for (int64_t i = 0; i + 1 < n; ++i) {
        uint64_t z = (state += 0x9e3779b97f4a7c15ull); // splitmix64
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        std::swap(order[size_t(i)], order[size_t(i + int64_t(z % uint64_t(n - i)))]);
    }
    return order;
}

std::vector<double> normalise(const Examples& e, double mean, double std) {
    std::vector<double> x(e.pixels.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = (e.pixels[i] / 255.0 - mean) / std;
    return x;
}

} // namespace gradc
