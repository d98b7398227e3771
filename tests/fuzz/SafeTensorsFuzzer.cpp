// SafeTensorsFuzzer.cpp — libFuzzer target: any bytes as a parameter file must load (every
// tensor read, or the parameters of a small batchnorm model bound) or give a diagnostic
// naming the file, never a crash, a hang, a huge allocation or a sanitizer report. Built by
// tools/fuzz with clang; its seeds are tests/fuzz/corpus/safetensors/ (make-seeds.py).
#include "Pipeline.h"
#include "SafeTensors.h"

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const gradc::Graph model =
        gradc::compileSource("small.nn", "input 3\ndense 4 relu\nbatchnorm\ndense 2\nloss cross_entropy\n", {4}).graph;
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    try {
        gradc::SafetensorsReader file("fuzz.safetensors", bytes);
        for (auto& e : file.entries()) {
            gradc::Tensor t = file.read(e);
            if (int64_t(t.data.size()) != gradc::elementCount(t.shape)) __builtin_trap();
        }
        gradc::SafetensorsReader again("fuzz.safetensors", bytes);
        gradc::Bindings b = gradc::loadParameters(model, again);
        for (auto& p : model.params)
            if (b.at(p.name).shape != model[p.node].shape) __builtin_trap();
    } catch (const gradc::UserError& e) {
        if (e.format().rfind("fuzz.safetensors: error: ", 0) != 0) __builtin_trap(); // names the file
    }
    return 0;
}
