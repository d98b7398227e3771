// SafeTensors.cpp — the format: an 8-byte little-endian header length, a JSON header
// {"NAME": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
// data, row-major, little-endian.
#include "SafeTensors.h"

#include "Files.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <map>
#include <set>

namespace gradc {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
    throw UserError({makeSourceFile(path, ""), 0, 0}, msg);
}

double halfToDouble(uint16_t h) {
    int exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double sign = (h & 0x8000) ? -1 : 1;
    if (exp == 0) return sign * std::ldexp(mant, -24);
    if (exp == 31) return mant ? std::nan("") : sign * INFINITY;
    return sign * std::ldexp(mant + 1024, exp - 25);
}

template <typename T> double as(const char* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return double(v);
}

double element(const std::string& dtype, const char* p) {
    if (dtype == "F32") return as<float>(p);
    if (dtype == "F64") return as<double>(p);
    if (dtype == "F16") return halfToDouble(uint16_t(as<uint16_t>(p)));
    if (dtype == "BF16") {
        uint32_t bits = uint32_t(as<uint16_t>(p)) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
    }
    if (dtype == "I64") return as<int64_t>(p);
    if (dtype == "I32") return as<int32_t>(p);
    if (dtype == "I16") return as<int16_t>(p);
    if (dtype == "I8") return as<int8_t>(p);
    return as<uint8_t>(p); // U8, BOOL
}

} // namespace

std::map<std::string, Tensor> readSafetensors(const std::string& path, std::map<std::string, std::string>* dtypes) {
    const std::string data = readWholeFile(path, "parameter file");
    if (data.size() < 8) fail(path, fmt::format("not a safetensors file: {} bytes, too short for a header", data.size()));
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = n << 8 | uint8_t(data[size_t(i)]);
    if (n > data.size() - 8 || n > (100u << 20))
        fail(path, fmt::format("not a safetensors file: header length {} exceeds the file", n));
    nlohmann::json header;
    try {
        header = nlohmann::json::parse(data.substr(8, n));
    } catch (const nlohmann::json::exception& e) {
        fail(path, fmt::format("not a safetensors file: the header is not valid JSON ({})", e.what()));
    }
    if (!header.is_object()) fail(path, "not a safetensors file: the header is not a JSON object");
    const size_t base = 8 + size_t(n), available = data.size() - base;
    std::map<std::string, Tensor> out;
    for (auto& [name, info] : header.items()) {
        if (name == "__metadata__") continue;
        auto bad = [&](const std::string& why) { fail(path, fmt::format("tensor '{}': {}", name, why)); };
        if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
            bad("needs dtype, shape and data_offsets");
        if (!info["dtype"].is_string()) bad("dtype is not a string");
        const std::string dtype = info["dtype"];
        static const std::map<std::string, size_t> widths = {
            {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
            {"I8", 1},  {"U8", 1},  {"BOOL", 1}};
        auto w = widths.find(dtype);
        if (w == widths.end()) bad(fmt::format("dtype {} is not one gradc reads", dtype));
        const size_t width = w->second;
        Tensor t;
        if (!info["shape"].is_array()) bad("shape is not a list");
        int64_t count = 1;
        for (auto& d : info["shape"]) {
            if (!d.is_number_integer() || d.get<int64_t>() < 0 || d.get<int64_t>() > (int64_t(1) << 31))
                bad("shape holds something other than sizes");
            t.shape.push_back(d.get<int64_t>());
            count *= t.shape.back();
            if (count > (int64_t(1) << 31)) bad("more than 2^31 elements");
        }
        auto& off = info["data_offsets"];
        if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
            bad("data_offsets is not [begin, end]");
        uint64_t begin = off[0], end = off[1];
        if (begin > end || end > available)
            bad(fmt::format("data_offsets [{}, {}] lie outside the {} bytes of data", begin, end, available));
        if (end - begin != uint64_t(count) * width)
            bad(fmt::format("{} bytes of data for {} elements of {}", end - begin, count, dtype));
        t.data.resize(size_t(count));
        const char* p = data.data() + base + begin;
        for (size_t i = 0; i < size_t(count); ++i, p += width) t.data[i] = element(dtype, p);
        out[name] = std::move(t);
        if (dtypes) (*dtypes)[name] = dtype;
    }
    return out;
}

std::string encodeSafetensors(const std::vector<std::pair<std::string, Tensor>>& tensors, bool f64,
                              const std::set<std::string>& integers) {
    nlohmann::ordered_json header;
    header["__metadata__"] = {{"format", "pt"}, {"writer", "gradc"}};
    std::string body;
    for (auto& [name, t] : tensors) {
        size_t begin = body.size();
        const bool integer = integers.count(name) > 0;
        for (double v : t.data) {
            if (integer) {
                int64_t i = int64_t(v);
                body.append(reinterpret_cast<const char*>(&i), 8);
            } else if (f64) {
                body.append(reinterpret_cast<const char*>(&v), 8);
            } else {
                float f = float(v);
                body.append(reinterpret_cast<const char*>(&f), 4);
            }
        }
        header[name] = {{"dtype", integer ? "I64" : f64 ? "F64" : "F32"}, {"shape", t.shape}, {"data_offsets", {begin, body.size()}}};
    }
    std::string json = header.dump();
    while ((8 + json.size()) % 8) json += ' '; // keeps the data aligned
    std::string out(8, '\0');
    uint64_t n = json.size();
    for (int i = 0; i < 8; ++i) out[size_t(i)] = char(n >> (8 * i));
    return out + json + body;
}

void writeSafetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors, bool f64,
                      const std::set<std::string>& integers) {
    writeFileAtomically(path, encodeSafetensors(tensors, f64, integers));
}

Bindings loadParameters(const Graph& g, const std::string& path) {
    std::map<std::string, std::string> dtypes;
    std::map<std::string, Tensor> file = readSafetensors(path, &dtypes);
    Bindings out;
    std::set<std::string> batchnorms;
    for (auto& l : g.layers)
        if (l.what.rfind("batchnorm", 0) == 0) batchnorms.insert(l.name);
    for (auto& p : g.params) {
        auto it = file.find(p.name);
        if (it == file.end()) fail(path, fmt::format("tensor '{}' of the model is missing", p.name));
        if (dtypes[p.name][0] != 'F' && dtypes[p.name] != "BF16")
            fail(path, fmt::format("tensor '{}' has dtype {}; parameters are floating point", p.name, dtypes[p.name]));
        const Shape& want = g[p.node].shape;
        if (it->second.shape != want)
            fail(path, fmt::format("tensor '{}' has shape {}, the model needs {} (PyTorch's [out, in] layout)",
                                   p.name, shapeString(it->second.shape), shapeString(want)));
        out[p.name] = std::move(it->second);
        file.erase(it);
    }
    for (auto& buf : g.buffers) { // running statistics: optional (gradc's older files lack them)
        auto it = file.find(buf.name);
        if (it == file.end()) continue;
        if (dtypes[buf.name][0] != 'F' && dtypes[buf.name] != "BF16")
            fail(path, fmt::format("tensor '{}' has dtype {}; running statistics are floating point", buf.name,
                                   dtypes[buf.name]));
        if (it->second.shape != Shape{buf.size})
            fail(path, fmt::format("tensor '{}' has shape {}, the model needs [{}]", buf.name,
                                   shapeString(it->second.shape), buf.size));
        for (double v : it->second.data)
            if (buf.initial == 1 && !(v >= 0))
                fail(path, fmt::format("tensor '{}' holds {}; a variance is not negative", buf.name, v));
        out[buf.name] = std::move(it->second);
        file.erase(it);
    }
    for (auto& [name, t] : file) {
        // PyTorch's BatchNorm1d also counts its batches (an integer gradc keeps too).
        auto dot = name.rfind('.');
        std::string module = dot == std::string::npos ? "" : name.substr(0, dot), field = name.substr(dot + 1);
        if (batchnorms.count(module) && field == "num_batches_tracked" && t.data.size() == 1) {
            out[name] = t;
            continue;
        }
        fail(path, fmt::format("tensor '{}' is not a parameter of model {}", name, g.model));
    }
    return out;
}

std::vector<std::pair<std::string, Tensor>> stateDict(const Graph& g, const Bindings& b,
                                                     std::set<std::string>* integers) {
    // PyTorch's order: a module's parameters, then its buffers (running_mean, running_var),
    // then its num_batches_tracked, module after module.
    std::map<std::string, size_t> lastParam; // module -> index of its last parameter
    for (size_t i = 0; i < g.params.size(); ++i)
        for (auto& buf : g.buffers)
            if (g.params[i].name.rfind(buf.layer + ".", 0) == 0) lastParam[buf.layer] = i;
    std::vector<std::pair<std::string, Tensor>> out;
    auto buffersOf = [&](const std::string& layer) {
        for (auto& buf : g.buffers) {
            if (buf.layer != layer) continue;
            auto it = b.find(buf.name);
            out.emplace_back(buf.name, it != b.end() ? it->second
                                                     : Tensor{{buf.size}, std::vector<double>(size_t(buf.size), buf.initial)});
        }
        const std::string n = layer + ".num_batches_tracked";
        auto it = b.find(n);
        out.emplace_back(n, Tensor{{}, {it != b.end() && !it->second.data.empty() ? it->second.data[0] : 0.0}});
        if (integers) integers->insert(n);
    };
    std::set<std::string> done;
    for (size_t i = 0; i < g.params.size(); ++i) {
        out.emplace_back(g.params[i].name, b.at(g.params[i].name));
        for (auto& [layer, last] : lastParam)
            if (last == i && done.insert(layer).second) buffersOf(layer);
    }
    for (auto& buf : g.buffers) // a module with buffers but no parameters
        if (done.insert(buf.layer).second) buffersOf(buf.layer);
    return out;
}

} // namespace gradc
