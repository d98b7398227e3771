// Data.h — IDX data sets (MNIST, FashionMNIST): reading, normalising, batching.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gradc {

/// The first `count` examples of an IDX image file and its label file.
struct Examples {
    int64_t count = 0;
    int64_t features = 0;        ///< rows * cols of each image
    std::vector<uint8_t> pixels; ///< count * features
    std::vector<uint8_t> labels; ///< count
};

/// The default data directory (Debian's dataset-fashion-mnist).
constexpr const char* kDefaultDataDir = "/usr/share/datasets/fashion-mnist";

/// Reads the first `count` examples of `DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`
/// (gzip or plain; only what is needed is read). Throws UserError naming the file and what
/// is wrong with it: missing, not IDX, truncated, fewer examples than asked for.
Examples readExamples(const std::string& dir, bool train, int64_t count);

/// `count` examples drawn without replacement from `all` (a partial Fisher-Yates shuffle
/// driven by `seed`; the same seed gives the same batch everywhere).
Examples sample(const Examples& all, int64_t count, uint64_t seed);

/// A permutation of 0 .. n-1 drawn by `seed` (Fisher-Yates, the same generator as sample).
std::vector<int64_t> permutation(int64_t n, uint64_t seed);

/// How many examples the data set in `dir` holds.
int64_t exampleCount(const std::string& dir, bool train);

/// Pixels to model inputs: (p/255 - mean) / std, row-major [count, features].
std::vector<double> normalise(const Examples& e, double mean, double std);

} // namespace gradc
