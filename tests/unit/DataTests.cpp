// DataTests.cpp — the IDX reader on files made here: good ones (gzip and plain) and every
// kind of bad one; and `gradc grads` refusing data that does not fit the model.
#include "Data.h"
#include "Source.h"

#include <catch2/catch.hpp>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

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

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

struct DataDir {
    fs::path dir;
    explicit DataDir(const std::string& name) : dir(fs::temp_directory_path() / ("gradc_data_" + name)) {
        fs::remove_all(dir);
        fs::create_directories(dir);
    }
    ~DataDir() { fs::remove_all(dir); }
    void plain(const std::string& file, const std::string& bytes) const {
        std::ofstream(dir / file, std::ios::binary) << bytes;
    }
    void gz(const std::string& file, const std::string& bytes) const {
        gzFile f = gzopen((dir / (file + ".gz")).c_str(), "wb");
        gzwrite(f, bytes.data(), unsigned(bytes.size()));
        gzclose(f);
    }
    std::string error(bool train, int64_t count) const {
        try {
            readExamples(dir.string(), train, count);
        } catch (const UserError& e) {
            return e.format();
        }
        return "";
    }
};

} // namespace

TEST_CASE("IDX files are read from gzip and plain files, only as far as needed", "[data]") {
    DataDir d("good");
    auto [img, lbl] = idx(5, 2, 3);
    d.gz("train-images-idx3-ubyte", img);
    d.gz("train-labels-idx1-ubyte", lbl);
    d.plain("t10k-images-idx3-ubyte", img);
    d.plain("t10k-labels-idx1-ubyte", lbl);
    for (bool train : {true, false}) {
        Examples e = readExamples(d.dir.string(), train, 3);
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
        d.plain("train-images-idx3-ubyte", img.substr(0, 30));
        d.plain("train-labels-idx1-ubyte", lbl);
        CHECK_THAT(d.error(true, 5), Catch::Contains("train-images-idx3-ubyte: error: file is truncated: the image data ended after 14 of 30 bytes"));
        CHECK_THAT(d.error(true, 6), Catch::Contains("holds 5 examples; 6 were asked for"));
        d.plain("train-images-idx3-ubyte", img.substr(0, 7));
        CHECK_THAT(d.error(true, 1), Catch::Contains("file is truncated: the IDX header"));
    }
    SECTION("damaged gzip") {
        DataDir d("gzip");
        d.gz("train-images-idx3-ubyte", img);
        d.gz("train-labels-idx1-ubyte", lbl);
        auto p = d.dir / "train-images-idx3-ubyte.gz";
        const std::string good = slurp(p);
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
        std::string out = (d.dir / "out.txt").string();
        std::string cmd = std::string(GRADC_EXE) + " grads " + model + " --batch 4 --data " +
                          d.dir.string() + " >" + out + " 2>&1";
        int rc = std::system(cmd.c_str());
        std::ifstream in(out);
        return std::make_pair(WEXITSTATUS(rc), std::string(std::istreambuf_iterator<char>(in), {}));
    };
    auto [rc, text] = run(GRADC_SOURCE_DIR "/models/seed_sigmoid.nn --dump-grads " + (d.dir / "g.safetensors").string());
    CHECK(rc == 1);
    CHECK_FALSE(fs::exists(d.dir / "g.safetensors")); // a failed run writes no file
    CHECK_THAT(text, Catch::Contains("seed_sigmoid.nn: error: the model takes 784 inputs, but the "
                                     "images in " + d.dir.string() + " have 6 pixels"));
    std::ofstream(d.dir / "six.nn") << "input 6\ndense 10\nloss cross_entropy\n";
    std::tie(rc, text) = run((d.dir / "six.nn").string() + " --plot " + (d.dir / "p.svg").string());
    CHECK(rc == 1);
    CHECK_FALSE(fs::exists(d.dir / "p.svg"));
    CHECK_THAT(text, Catch::Contains("train-labels-idx1-ubyte: error: label 12 of example 0 is out "
                                     "of range for the model's 10 classes"));
    std::ofstream(d.dir / "sixteen.nn") << "input 6\ndense 5 relu\ndense 16\nloss cross_entropy\n";
    std::tie(rc, text) = run((d.dir / "sixteen.nn").string());
    CHECK(rc == 0);
    CHECK_THAT(text, Catch::Contains("vanishing factor"));
}
