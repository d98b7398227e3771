// IdxFuzzer.cpp — libFuzzer target: any bytes as an IDX image file and its label file (plain
// or gzip) must give examples that fit their headers, or a diagnostic naming the file at
// fault, never a crash, a hang, an allocation a header asked for or a sanitizer report.
// The input is [length of the image file, 2 bytes little-endian][image file][label file].
// Built by tools/fuzz with clang; its seeds are tests/fuzz/corpus/idx/ (make-seeds.py).
#include "Data.h"
#include "Source.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view all(reinterpret_cast<const char*>(data), size);
    const size_t split = size < 2 ? 0 : std::min<size_t>(size - 2, size_t(data[0]) | size_t(data[1]) << 8);
    const std::string_view images = all.substr(std::min<size_t>(size, 2), split), labels = all.substr(std::min<size_t>(size, 2) + split);
    for (int64_t count : {int64_t(-1), int64_t(1)}) {
        try {
            gradc::Examples e = gradc::readExamples({"images", images}, {"labels", labels}, count);
            if (e.pixels.size() != size_t(e.count * e.features) || e.labels.size() != size_t(e.count)) __builtin_trap();
            gradc::checkExamples(e, e.features, 10);
            if (e.count > 0) {
                gradc::Examples s = gradc::sample(e, std::min<int64_t>(e.count, 4), 42);
                if (s.pixels.size() != size_t(s.count * s.features)) __builtin_trap();
            }
        } catch (const gradc::UserError& err) {
            const std::string text = err.format();
            if (text.rfind("images: error: ", 0) != 0 && text.rfind("labels: error: ", 0) != 0) __builtin_trap();
        }
    }
    return 0;
}
