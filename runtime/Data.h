// Data.h — IDX data sets (MNIST, FashionMNIST): reading, normalising, batching.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace gradc {

/// The first `count` examples of an IDX image file and its label file.
struct Examples {
    int64_t count = 0;
    int64_t features = 0;        ///< rows * cols of each image
    std::vector<uint8_t> pixels; ///< count * features
    std::vector<uint8_t> labels; ///< count
    std::string imageFile, labelFile; ///< where they were read from, for diagnostics
};

/// The default data directory (Debian's dataset-fashion-mnist).
constexpr const char* kDefaultDataDir = "/usr/share/datasets/fashion-mnist";

/// Reads the first `count` examples (all of them when `count` < 0) of
/// `DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` (gzip or plain). Both headers are
/// checked first (magic, sizes, equal counts, and for a plain file its size against what the
/// header claims); then only the examples needed are read, and memory grows with the bytes
/// that actually arrive, never with what a header claims. Throws UserError naming the file
/// and what is wrong with it: missing, not IDX, truncated, corrupt, fewer examples than
/// asked for.
Examples readExamples(const std::string& dir, bool train, int64_t count);

/// An IDX file's bytes held in memory (plain or gzip), named for diagnostics.
struct IdxBytes {
    std::string name;
    std::string_view bytes;
};
/// The same reader over bytes in memory (tests, the fuzzer).
Examples readExamples(const IdxBytes& images, const IdxBytes& labels, int64_t count);

/// Checks that examples fit a classifier with `features` inputs and `classes` outputs:
/// throws UserError naming the image file (another image size) or the label file (a label
/// outside [0, classes), with the example's index).
void checkExamples(const Examples& e, int64_t features, int64_t classes);

/// `count` examples drawn without replacement from `all` (a partial Fisher-Yates shuffle
/// driven by `seed`; the same seed gives the same batch everywhere).
Examples sample(const Examples& all, int64_t count, uint64_t seed);

/// A permutation of 0 .. n-1 drawn by `seed` (Fisher-Yates, the same generator as sample).
std::vector<int64_t> permutation(int64_t n, uint64_t seed);

/// How many examples the data set in `dir` holds (its image file's header, checked).
int64_t exampleCount(const std::string& dir, bool train);

/// Pixels to model inputs: (p/255 - mean) / std, row-major [count, features].
std::vector<double> normalise(const Examples& e, double mean, double std);

} // namespace gradc
