// Data.cpp — the IDX reader. zlib's gzread reads gzip and plain files alike.
#include "Data.h"

#include "Source.h"

#include <fmt/format.h>
#include <zlib.h>

#include <memory>
#include <sys/stat.h>

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

class IdxFile {
public:
    explicit IdxFile(std::string path) : path_(std::move(path)), f_(gzopen(path_.c_str(), "rb"), gzclose) {
        if (!f_) fail(path_, "cannot open data file");
    }

    /// Reads the header; checks the magic number (type 0x08 unsigned bytes, `dims` dimensions).
    std::vector<int64_t> header(int dims) {
        uint8_t magic[4];
        read(magic, 4, "the IDX header");
        if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != dims)
            fail(path_, fmt::format("not an IDX file of {}-d unsigned bytes (magic {:02x} {:02x} "
                                    "{:02x} {:02x}, expected 00 00 08 {:02x})", dims, magic[0],
                                    magic[1], magic[2], magic[3], dims));
        std::vector<int64_t> shape;
        for (int i = 0; i < dims; ++i) {
            uint8_t b[4];
            read(b, 4, "the IDX header");
            shape.push_back(int64_t(b[0]) << 24 | int64_t(b[1]) << 16 | int64_t(b[2]) << 8 | b[3]);
        }
        return shape;
    }

    void read(uint8_t* out, size_t n, const char* what) {
        size_t done = 0;
        while (done < n) {
            unsigned chunk = unsigned(std::min<size_t>(n - done, 1u << 30));
            int got = gzread(f_.get(), out + done, chunk);
            if (got < 0) {
                int err = 0;
                const char* msg = gzerror(f_.get(), &err);
                fail(path_, fmt::format("cannot read {}: {}", what, msg ? msg : "corrupt data"));
            }
            if (got == 0) {
                int err = 0;
                const char* msg = gzerror(f_.get(), &err);
                if (err != Z_OK && err != Z_STREAM_END)
                    fail(path_, fmt::format("cannot read {}: {}", what, msg));
                fail(path_, fmt::format("file is truncated: {} ended after {} of {} bytes", what,
                                        done, n));
            }
            done += size_t(got);
        }
    }

private:
    std::string path_;
    std::unique_ptr<gzFile_s, int (*)(gzFile)> f_;
};

} // namespace

Examples readExamples(const std::string& dir, bool train, int64_t count) {
    const std::string prefix = train ? "train" : "t10k";
    const std::string imgPath = findFile(dir, prefix + "-images-idx3-ubyte");
    const std::string lblPath = findFile(dir, prefix + "-labels-idx1-ubyte");
    IdxFile img(imgPath), lbl(lblPath);
    std::vector<int64_t> ishape = img.header(3), lshape = lbl.header(1);
    if (ishape[1] <= 0 || ishape[2] <= 0 || ishape[1] * ishape[2] > (1 << 24))
        fail(imgPath, fmt::format("implausible image size {}x{}", ishape[1], ishape[2]));
    if (ishape[0] != lshape[0])
        fail(lblPath, fmt::format("holds {} labels but {} has {} images", lshape[0], imgPath, ishape[0]));
    if (count > ishape[0])
        fail(imgPath, fmt::format("holds {} examples; {} were asked for", ishape[0], count));
    Examples e;
    e.count = count;
    e.features = ishape[1] * ishape[2];
    e.pixels.resize(size_t(count * e.features));
    e.labels.resize(size_t(count));
    img.read(e.pixels.data(), e.pixels.size(), "the image data");
    lbl.read(e.labels.data(), e.labels.size(), "the label data");
    return e;
}

int64_t exampleCount(const std::string& dir, bool train) {
    const std::string path = findFile(dir, std::string(train ? "train" : "t10k") + "-images-idx3-ubyte");
    return IdxFile(path).header(3)[0];
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
