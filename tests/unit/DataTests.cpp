// DataTests.cpp — the IDX reader on files made here: good ones (gzip and plain) and every
// kind of bad one; and `gradc grads` refusing data that does not fit the model.
#include "Data.h"
#include "TestUtil.h"
#include "Source.h"
#include "Train.h"

#include <catch2/catch.hpp>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sys/resource.h>
#include <tuple>

using namespace gradc;
namespace fs = std::filesystem;

namespace {

std::string be32(uint32_t v) {
    return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
}

/// An IDX image file of n images of r x c pixels (pixel = i + j), and its label file.
std::pair<std::string, std::string> idx(uint32_t n, uint32_t r, uint32_t c, int label = -1) {
    std::string img = std::string("\0\0\x08\x03", 4) + be32(n) + be32(r) + be32(c);
    for (uint32_t i = 0; i < n; ++i)
        for (uint32_t j = 0; j < r * c; ++j) img += char((i + j) & 0xff);
    std::string lbl = std::string("\0\0\x08\x01", 4) + be32(n);
    for (uint32_t i = 0; i < n; ++i) lbl += char(label >= 0 ? label : int(i % 10));
    return {img, lbl};
}

/// A folder of its own (two runs of the suite at once never share one), removed at the end.
struct DataDir : TempDir {
    explicit DataDir(const std::string& name) : TempDir("data_" + name) {}
    void gz(const std::string& name, const std::string& bytes) const {
        gzFile f = gzopen((path / (name + ".gz")).c_str(), "wb");
        gzwrite(f, bytes.data(), unsigned(bytes.size()));
        gzclose(f);
    }
    std::string error(bool train, int64_t count) const {
        try {
            readExamples(path.string(), train, count);
        } catch (const UserError& e) {
            return e.format();
        }
        return "";
    }
};

/// gzip bytes of `plain` (one member).
std::string gzipped(const std::string& plain) {
    z_stream z{};
    deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
    std::string out(deflateBound(&z, uLong(plain.size())) + 32, '\0');
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(plain.data()));
    z.avail_in = uInt(plain.size());
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = uInt(out.size());
    deflate(&z, Z_FINISH);
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
}

/// The process's peak resident memory so far, in MiB.
double peakMiB() {
    struct rusage u {};
    getrusage(RUSAGE_SELF, &u);
    return double(u.ru_maxrss) / 1024;
}

} // namespace

TEST_CASE("IDX files are read from gzip and plain files, only as far as needed", "[data]") {
    DataDir d("good");
    auto [img, lbl] = idx(5, 2, 3);
    d.gz("train-images-idx3-ubyte", img);
    d.gz("train-labels-idx1-ubyte", lbl);
    d.write("t10k-images-idx3-ubyte", img);
    d.write("t10k-labels-idx1-ubyte", lbl);
    for (bool train : {true, false}) {
        Examples e = readExamples(d.path.string(), train, 3);
        CHECK(e.count == 3);
        CHECK(e.features == 6);
        CHECK(e.pixels[size_t(2 * 6 + 4)] == 6); // image 2, pixel 4
        CHECK(e.labels == std::vector<uint8_t>{0, 1, 2});
        std::vector<double> x = normalise(e, 0.5, 0.5);
        CHECK(x[0] == Approx(-1));
        CHECK(x[size_t(2 * 6 + 4)] == Approx((6 / 255.0 - 0.5) / 0.5));
    }
}

TEST_CASE("bad data files are refused with the file named", "[data]") {
    auto [img, lbl] = idx(5, 2, 3);
    SECTION("missing") {
        DataDir d("missing");
        CHECK_THAT(d.error(true, 1), Catch::Contains("train-images-idx3-ubyte.gz: error: data file not found"));
    }
    SECTION("wrong magic") {
        DataDir d("magic");
        std::string bad = img;
        bad[3] = 1;
        d.gz("train-images-idx3-ubyte", bad);
        d.gz("train-labels-idx1-ubyte", lbl);
        CHECK_THAT(d.error(true, 1), Catch::Contains("train-images-idx3-ubyte.gz: error: not an IDX file"));
    }
    SECTION("short file") {
        DataDir d("short");
        d.write("train-images-idx3-ubyte", img.substr(0, 30));
        d.write("train-labels-idx1-ubyte", lbl);
        // The header's claim is checked against the file's size before anything is read.
        CHECK_THAT(d.error(true, 1), Catch::Contains("train-images-idx3-ubyte: error: file is truncated: its header "
                                                     "claims 5 images of 2x3 pixels (46 bytes with the header), but "
                                                     "the file holds 30 bytes"));
        d.write("train-images-idx3-ubyte", img);
        CHECK_THAT(d.error(true, 6), Catch::Contains("holds 5 examples; 6 were asked for"));
        d.write("train-labels-idx1-ubyte", lbl.substr(0, 10));
        CHECK_THAT(d.error(true, 1), Catch::Contains("train-labels-idx1-ubyte: error: file is truncated: its header "
                                                     "claims 5 labels (13 bytes with the header), but the file holds 10"));
        d.write("train-images-idx3-ubyte", img.substr(0, 7));
        CHECK_THAT(d.error(true, 1), Catch::Contains("file is truncated: the IDX header"));
    }
    SECTION("truncated gzip: reported when the examples needed run out") {
        DataDir d("shortgz");
        d.gz("train-images-idx3-ubyte", img.substr(0, 30));
        d.gz("train-labels-idx1-ubyte", lbl);
        CHECK(d.error(true, 2).empty()); // the first two images are there
        CHECK_THAT(d.error(true, 5), Catch::Contains("train-images-idx3-ubyte.gz: error: file is truncated: the image "
                                                     "data ended after 14 of 30 bytes"));
    }
    SECTION("damaged gzip") {
        DataDir d("gzip");
        d.gz("train-images-idx3-ubyte", img);
        d.gz("train-labels-idx1-ubyte", lbl);
        auto p = d.path / "train-images-idx3-ubyte.gz";
        const std::string good = readFile(p);
        fs::resize_file(p, good.size() / 2); // truncated
        CHECK_THAT(d.error(true, 5), Catch::Contains("train-images-idx3-ubyte.gz: error:"));
        std::ofstream(p, std::ios::binary) << good; // corrupt: bytes overwritten mid-stream
        std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(12);
        f.write("\xff\xff\xff\xff\xff\xff", 6);
        f.close();
        CHECK_THAT(d.error(true, 5), Catch::Contains("train-images-idx3-ubyte.gz: error:"));
    }
    SECTION("labels and images disagree") {
        DataDir d("count");
        d.gz("train-images-idx3-ubyte", img);
        d.gz("train-labels-idx1-ubyte", idx(4, 2, 3).second);
        CHECK_THAT(d.error(true, 1), Catch::Contains("holds 4 labels but"));
    }
}

TEST_CASE("gradc grads refuses images that do not fit the model and labels out of range",
          "[data]") {
    DataDir d("cli");
    auto [img, lbl] = idx(8, 2, 3, 12);
    d.gz("train-images-idx3-ubyte", img);
    d.gz("train-labels-idx1-ubyte", lbl);
    auto run = [&](const std::string& model) {
        return gradcCommand("grads " + model + " --batch 4 --data " + d.path.string(), true);
    };
    auto [rc, text] = run(GRADC_SOURCE_DIR "/models/seed_sigmoid.nn --dump-grads " + (d.path / "g.safetensors").string());
    CHECK(rc == 1);
    CHECK_FALSE(fs::exists(d.path / "g.safetensors")); // a failed run writes no file
    CHECK_THAT(text, Catch::Contains("seed_sigmoid.nn: error: the model takes 784 inputs, but the "
                                     "images in " + d.path.string() + " have 6 pixels"));
    std::ofstream(d.path / "six.nn") << "input 6\ndense 10\nloss cross_entropy\n";
    std::tie(rc, text) = run((d.path / "six.nn").string() + " --plot " + (d.path / "p.svg").string());
    CHECK(rc == 1);
    CHECK_FALSE(fs::exists(d.path / "p.svg"));
    CHECK_THAT(text, Catch::Contains("train-labels-idx1-ubyte.gz: error: label 12 of example 0 is out "
                                     "of range for the model's 10 classes"));
    std::ofstream(d.path / "sixteen.nn") << "input 6\ndense 5 relu\ndense 16\nloss cross_entropy\n";
    std::tie(rc, text) = run((d.path / "sixteen.nn").string());
    CHECK(rc == 0);
    CHECK_THAT(text, Catch::Contains("vanishing factor"));
}

TEST_CASE("a header's claim costs no memory until the bytes are there", "[data]") {
    auto [img, lbl] = idx(3, 28, 28);
    auto claim = [](std::string bytes, uint32_t n) { return bytes.replace(4, 4, be32(n)); };
    const double before = peakMiB();
    SECTION("a plain file claiming 4,000,000 images holds 3") {
        DataDir d("claim");
        d.write("train-images-idx3-ubyte", claim(img, 4000000));
        d.write("train-labels-idx1-ubyte", claim(lbl, 4000000));
        CHECK_THAT(d.error(true, -1), Catch::Contains("train-images-idx3-ubyte: error: file is truncated: its header "
                                                      "claims 4000000 images of 28x28 pixels (3136000016 bytes with "
                                                      "the header), but the file holds 2368 bytes"));
        CHECK_THAT(errorOf([&] { exampleCount(d.path.string(), true); }), Catch::Contains("claims 4000000 images"));
    }
    SECTION("2^32-1 images, plain and gzip") {
        DataDir d("claim32");
        d.write("train-images-idx3-ubyte", claim(img, 0xffffffffu));
        d.write("train-labels-idx1-ubyte", claim(lbl, 0xffffffffu));
        CHECK_THAT(d.error(true, -1), Catch::Contains("train-images-idx3-ubyte: error: file is truncated: its header "
                                                      "claims 4294967295 images of 28x28 pixels"));
        fs::remove(d.path / "train-images-idx3-ubyte");
        fs::remove(d.path / "train-labels-idx1-ubyte");
        d.gz("train-images-idx3-ubyte", claim(img, 0xffffffffu));
        d.gz("train-labels-idx1-ubyte", claim(lbl, 0xffffffffu));
        CHECK_THAT(d.error(true, -1), Catch::Contains("train-images-idx3-ubyte.gz: error: file is truncated: the image "
                                                      "data ended after 2352 of 3367254359280 bytes"));
        CHECK(d.error(true, 3).empty()); // what is there reads
    }
    // The old reader allocated (and zeroed) what the header claimed: gigabytes.
    CHECK(peakMiB() - before < 64 * kMemorySlack);
}

TEST_CASE("IDX bytes in memory: plain, gzip, several gzip members, trailing bytes", "[data]") {
    std::string img, lbl; // not a structured binding: the lambdas below capture them (clang 14)
    std::tie(img, lbl) = idx(4, 2, 2);
    const std::string twoMembers = gzipped(img.substr(0, 10)) + gzipped(img.substr(10)) + "trailing";
    for (const std::string& bytes : {img, gzipped(img), twoMembers}) {
        Examples e = readExamples({"img", bytes}, {"lbl", lbl}, -1);
        CHECK(e.count == 4);
        CHECK(e.pixels.size() == 16);
        CHECK(e.pixels[5] == 2); // image 1, pixel 1: 1 + 1
        CHECK(e.imageFile == "img");
    }
    std::string corrupt = gzipped(img);
    corrupt[12] = char(~corrupt[12]), corrupt[13] = char(~corrupt[13]), corrupt[14] = char(~corrupt[14]);
    CHECK_THAT(errorOf([&] { readExamples({"bad.gz", corrupt}, {"lbl", lbl}, -1); }), Catch::StartsWith("bad.gz: error:"));
    CHECK_THAT(errorOf([&] { readExamples({"e", ""}, {"lbl", lbl}, -1); }),
               Catch::Contains("e: error: file is truncated: the IDX header ended after 0 of 4 bytes"));
}

TEST_CASE("examples are checked against the model: image size and label range, naming the file", "[data]") {
    auto [img, lbl] = idx(4, 2, 3, 3);
    Examples e = readExamples({"img", img}, {"lbl", lbl}, -1);
    CHECK_NOTHROW(checkExamples(e, 6, 4));
    CHECK_THAT(errorOf([&] { checkExamples(e, 784, 4); }),
               Catch::StartsWith("img: error: the images have 6 pixels, but the model takes 784 inputs"));
    CHECK_THAT(errorOf([&] { checkExamples(e, 6, 3); }),
               Catch::StartsWith("lbl: error: label 3 of example 0 is out of range for the model's 3 classes"));
}

TEST_CASE("loadSplit checks the test files as well as the training files", "[data]") {
    DataDir d("split");
    auto [img, lbl] = idx(20, 2, 3);
    d.write("train-images-idx3-ubyte", img);
    d.write("train-labels-idx1-ubyte", lbl);
    auto split = [&] { return errorOf([&] { loadSplit(d.path.string(), 5, 0.5, 0.5); }); };
    SECTION("test images of another size") {
        auto [small, small_lbl] = idx(4, 2, 2);
        d.write("t10k-images-idx3-ubyte", small);
        d.write("t10k-labels-idx1-ubyte", small_lbl);
        CHECK_THAT(split(), Catch::StartsWith((d.path / "t10k-images-idx3-ubyte").string() +
                                              ": error: the test images have 4 pixels, but the training images in " +
                                              (d.path / "train-images-idx3-ubyte").string() + " have 6"));
    }
    SECTION("an empty test set") {
        auto [none, none_lbl] = idx(0, 2, 3);
        d.write("t10k-images-idx3-ubyte", none);
        d.write("t10k-labels-idx1-ubyte", none_lbl);
        CHECK_THAT(split(), Catch::StartsWith((d.path / "t10k-images-idx3-ubyte").string() +
                                              ": error: the test set is empty: the file holds no images"));
    }
    SECTION("an empty training set") {
        auto [none, none_lbl] = idx(0, 2, 3);
        d.write("train-images-idx3-ubyte", none);
        d.write("train-labels-idx1-ubyte", none_lbl);
        d.write("t10k-images-idx3-ubyte", img);
        d.write("t10k-labels-idx1-ubyte", lbl);
        CHECK_THAT(split(), Catch::Contains("train-images-idx3-ubyte: error: the training set is empty"));
    }
    SECTION("good files") {
        d.write("t10k-images-idx3-ubyte", img);
        d.write("t10k-labels-idx1-ubyte", lbl);
        DataSplit s = loadSplit(d.path.string(), 5, 0.5, 0.5);
        CHECK(s.fit.size() == 15);
        CHECK(s.val.size() == 5);
        CHECK(s.test.count == 20);
    }
}
