// DataApi.cpp — the public gradc/Data.h over the runtime's IDX reader (Data.h).
#include "Data.h"
#include "ModelImpl.h"

#include <gradc/Data.h>

#include <fmt/format.h>

#include <cmath>

namespace gradc {

std::string defaultDataDir() { return kDefaultDataDir; }

ImageSet readImages(const std::string& dir, bool train, int64_t limit, double mean, double std) {
    return publicCall([&] {
        if (limit < 0) throw UserError({}, fmt::format("readImages: a limit of {} images: must not be negative", limit));
        if (!std::isfinite(mean) || !std::isnormal(std) || !(std > 0))
            throw UserError({}, fmt::format("readImages: mean {} and std {} do not normalise: a finite mean and a "
                                            "normal std > 0",
                                            mean, std));
        const Examples e = readExamples(dir, train, limit > 0 ? std::min(limit, exampleCount(dir, train)) : -1);
        ImageSet s;
        s.count = e.count, s.features = e.features;
        s.pixels.resize(e.pixels.size());
        for (size_t i = 0; i < e.pixels.size(); ++i) s.pixels[i] = float((e.pixels[i] / 255.0 - mean) / std);
        s.labels.assign(e.labels.begin(), e.labels.end());
        return s;
    });
}

} // namespace gradc
