// FrontEndFuzzer.cpp — libFuzzer target: any bytes as a model file must end in a verified
// graph (differentiated and fused into kernels without complaint) or a diagnostic, never a
// crash, a hang, an internal error or a sanitizer report. Built by tools/fuzz with clang.
#include "Autodiff.h"
#include "Kernels.h"
#include "Pipeline.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    try {
        gradc::FrontEnd fe = gradc::compileSource("fuzz.nn", std::move(text), {4});
        if (!gradc::verify(fe.graph).empty()) __builtin_trap();
        if (fe.graph.parameterCount() > 100000) return 0; // differentiation of huge models is slow, not wrong
        gradc::Graph grad = gradc::differentiate(fe.graph);
        gradc::buildKernels(grad, "backward", gradc::backwardOutputs(grad), gradc::computeLayout(fe.graph), 4,
                            gradc::GemmBlocking{});
    } catch (const gradc::UserError& e) {
        if (e.format().rfind("fuzz.nn:", 0) != 0) __builtin_trap(); // every diagnostic names the file
    }
    return 0;
}
