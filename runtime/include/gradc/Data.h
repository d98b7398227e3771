// gradc/Data.h — the images gradc's commands train on, read for a program of one's own: IDX
// files (FashionMNIST's layout, gzip or plain), normalised as the commands normalise them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gradc {

/// The default folder of the images (Debian's dataset-fashion-mnist).
std::string defaultDataDir();

/// `count` images of `features` pixels each (28 x 28 = 784 for FashionMNIST), row-major in
/// `pixels` ([count, features], ready for Session::forward's x), and their class labels.
struct ImageSet {
    int64_t count = 0, features = 0;
    std::vector<float> pixels;
    std::vector<int32_t> labels;
};

/// The training split (`train`, DIR/train-images-idx3-ubyte[.gz] and its labels) or the test
/// split (t10k-...) of the IDX files in `dir`: its first `limit` images (0: all), each pixel
/// p as (p / 255 - mean) / std, as gradc's commands read them (--normalize 0.5,0.5). A
/// missing or malformed file is a gradc::Error naming it.
ImageSet readImages(const std::string& dir, bool train, int64_t limit = 0, double mean = 0.5, double std = 0.5);

} // namespace gradc
