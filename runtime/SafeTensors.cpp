// SafeTensors.cpp — the format: an 8-byte little-endian header length, a JSON header
// {"NAME": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
// data, row-major, little-endian. The reader checks the whole header before it reads any
// data, and reads a tensor's data only when asked, in bounded chunks.
#include "SafeTensors.h"

#include "Files.h"
#include "Json.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <set>
#include <sys/stat.h>
#include <tuple>
#include <unistd.h>

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

size_t widthOf(const std::string& dtype) {
    static const std::map<std::string, size_t> widths = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2},
                                                         {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
                                                         {"U8", 1},  {"BOOL", 1}};
    auto w = widths.find(dtype);
    return w == widths.end() ? 0 : w->second;
}

constexpr uint64_t kMaxHeaderBytes = 100u << 20; // as the safetensors library's own limit
constexpr int kMaxHeaderDepth = 8;
constexpr int64_t kMaxTensors = 1000000; // a model of 100,000 layers has a few hundred thousand
constexpr size_t kMaxRank = 32;

} // namespace

namespace {

/// The header's JSON as SAX events: the top object's members are tensors (objects with
/// dtype, shape and data_offsets) or __metadata__ (skipped). Every tensor is checked when
/// its object closes, in the order of the messages below.
class HeaderParser : public nlohmann::json_sax<nlohmann::json> {
public:
    HeaderParser(const SafetensorsReader& file, uint64_t available, std::vector<SafetensorsEntry>& out)
        : file_(file), available_(available), out_(out) {}

    std::string error; ///< a syntax error's message

    bool null() override { return scalar(Scalar::Other); }
    bool boolean(bool) override { return scalar(Scalar::Other); }
    bool number_integer(number_integer_t v) override { return number(v < 0 ? -1 : v, false); }
    bool number_unsigned(number_unsigned_t v) override {
        return number(v > uint64_t(INT64_MAX) ? -1 : int64_t(v), true, v);
    }
    bool number_float(number_float_t, const string_t&) override { return scalar(Scalar::Other); }
    bool string(string_t& v) override {
        if (depth_ == 2 && inTensor_ && field_ == Field::Dtype) t_.dtype = v, t_.dtypeString = true;
        return scalar(Scalar::String);
    }
    bool binary(binary_t&) override { return scalar(Scalar::Other); }
    bool start_object(std::size_t) override { return open(false); }
    bool start_array(std::size_t) override { return open(true); }
    bool key(string_t& k) override {
        if (depth_ == 1) {
            name_ = k;
            if (++members_ > kMaxTensors)
                bad(fmt::format("not a safetensors file: the header holds more than {} tensors", kMaxTensors));
        } else if (depth_ == 2 && inTensor_) {
            field_ = k == "dtype" ? Field::Dtype : k == "shape" ? Field::Shape : k == "data_offsets" ? Field::Offsets : Field::Other;
            if (field_ == Field::Dtype) t_.hasDtype = true, t_.dtypeString = false;
            if (field_ == Field::Shape) t_.hasShape = true, t_.shapeList = false, t_.shapeBad = false, t_.shape.clear();
            if (field_ == Field::Offsets) t_.hasOffsets = true, t_.offsetsBad = false, t_.offsets.clear();
        }
        return true;
    }
    bool end_object() override {
        if (depth_ == 2 && inTensor_) finish();
        if (depth_ == 2) inTensor_ = false;
        --depth_;
        return true;
    }
    bool end_array() override {
        --depth_;
        return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
        error = e.what();
        return false;
    }

private:
    enum class Field { Dtype, Shape, Offsets, Other };
    enum class Scalar { String, Number, Other };
    struct Facts { // what one tensor's entry said, checked when it closes
        bool hasDtype = false, dtypeString = false, hasShape = false, shapeList = false, shapeBad = false;
        bool hasOffsets = false, offsetsBad = false;
        std::string dtype;
        std::vector<int64_t> shape; ///< -1: not a size
        std::vector<uint64_t> offsets;
    };

    [[noreturn]] void bad(const std::string& msg) const { gradc::fail(file_.path(), msg); }
    [[noreturn]] void badTensor(const std::string& why) const { bad(fmt::format("tensor '{}': {}", name_, why)); }

    bool open(bool array) {
        if (++depth_ > kMaxHeaderDepth)
            bad(fmt::format("not a safetensors file: the header nests deeper than {} levels", kMaxHeaderDepth));
        if (depth_ == 1 && array) bad("not a safetensors file: the header is not a JSON object");
        if (depth_ == 2) {
            inTensor_ = name_ != "__metadata__";
            if (inTensor_ && array) badTensor("needs dtype, shape and data_offsets");
            t_ = Facts{};
            field_ = Field::Other;
        }
        if (depth_ == 3 && inTensor_) {
            if (field_ == Field::Shape) t_.shapeList = array;
            if (field_ == Field::Offsets) t_.offsetsBad = !array;
            if (field_ == Field::Dtype) t_.dtypeString = false;
        }
        if (depth_ == 4 && inTensor_) { // a list or object inside shape or data_offsets
            if (field_ == Field::Shape) t_.shapeBad = true;
            if (field_ == Field::Offsets) t_.offsetsBad = true;
        }
        return true;
    }

    bool scalar(Scalar kind) {
        if (depth_ == 0) bad("not a safetensors file: the header is not a JSON object");
        if (depth_ == 1 && name_ != "__metadata__") badTensor("needs dtype, shape and data_offsets");
        if (depth_ == 2 && inTensor_) {
            if (field_ == Field::Dtype && kind != Scalar::String) t_.dtypeString = false;
            if (field_ == Field::Shape) t_.shapeList = false;
            if (field_ == Field::Offsets) t_.offsetsBad = true;
        }
        if (depth_ == 3 && inTensor_) {
            if (field_ == Field::Shape) t_.shapeBad = true;
            if (field_ == Field::Offsets) t_.offsetsBad = true;
        }
        return true;
    }

    /// An integer (`v` < 0: negative or too large), or an unsigned one (`u`).
    bool number(int64_t v, bool isUnsigned, uint64_t u = 0) {
        if (depth_ == 3 && inTensor_ && field_ == Field::Shape) {
            if (t_.shape.size() >= kMaxRank) t_.shapeBad = true;
            else t_.shape.push_back(v >= 0 && v <= (int64_t(1) << 31) ? v : -1);
            return true;
        }
        if (depth_ == 3 && inTensor_ && field_ == Field::Offsets) {
            if (!isUnsigned || t_.offsets.size() >= 2) t_.offsetsBad = true;
            else t_.offsets.push_back(u);
            return true;
        }
        return scalar(Scalar::Number);
    }

    void finish() {
        if (!t_.hasDtype || !t_.hasShape || !t_.hasOffsets) badTensor("needs dtype, shape and data_offsets");
        if (!t_.dtypeString) badTensor("dtype is not a string");
        SafetensorsEntry e;
        e.name = name_;
        e.dtype = t_.dtype;
        const size_t width = widthOf(e.dtype);
        if (width == 0) badTensor(fmt::format("dtype {} is not one gradc reads", e.dtype));
        if (!t_.shapeList) badTensor("shape is not a list");
        int64_t count = 1;
        for (int64_t d : t_.shape) {
            if (d < 0) badTensor("shape holds something other than sizes");
            e.shape.push_back(d);
            count *= d;
            if (count > (int64_t(1) << 31)) badTensor("more than 2^31 elements");
        }
        if (t_.shapeBad) badTensor(t_.shape.size() >= kMaxRank ? fmt::format("shape has more than {} dimensions", kMaxRank)
                                                                : "shape holds something other than sizes");
        if (t_.offsetsBad || t_.offsets.size() != 2) badTensor("data_offsets is not [begin, end]");
        e.begin = t_.offsets[0], e.end = t_.offsets[1];
        if (e.begin > e.end || e.end > available_)
            badTensor(fmt::format("data_offsets [{}, {}] lie outside the {} bytes of data", e.begin, e.end, available_));
        if (e.end - e.begin != uint64_t(count) * width)
            badTensor(fmt::format("{} bytes of data for {} elements of {}", e.end - e.begin, count, e.dtype));
        if (!names_.insert(e.name).second) badTensor("appears twice in the header");
        out_.push_back(std::move(e));
    }

    const SafetensorsReader& file_;
    const uint64_t available_;
    std::vector<SafetensorsEntry>& out_;
    int depth_ = 0;
    bool inTensor_ = false;
    std::string name_;
    Field field_ = Field::Other;
    Facts t_;
    int64_t members_ = 0;
    std::set<std::string> names_;
};

} // namespace

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
    // O_NONBLOCK: opening a FIFO that has no writer returns at once (and reads then end).
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) fail(fmt::format("cannot open parameter file: {}", std::strerror(errno)));
    try {
        struct stat st {};
        if (::fstat(fd_, &st) != 0) fail(fmt::format("cannot read parameter file: {}", std::strerror(errno)));
        if (S_ISDIR(st.st_mode)) fail("cannot read parameter file: it is a directory");
        const int flags = ::fcntl(fd_, F_GETFL);
        if (flags < 0 || ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK) != 0)
            fail(fmt::format("cannot read parameter file: {}", std::strerror(errno)));
        seekable_ = S_ISREG(st.st_mode);
        size_ = seekable_ ? uint64_t(st.st_size) : 0;
        readHeader();
    } catch (...) {
        ::close(fd_);
        throw;
    }
}

SafetensorsReader::SafetensorsReader(std::string name, std::string_view bytes)
    : path_(std::move(name)), seekable_(true), mem_(bytes), inMemory_(true), size_(bytes.size()) {
    readHeader();
}

SafetensorsReader::~SafetensorsReader() {
    if (fd_ >= 0) ::close(fd_);
}

void SafetensorsReader::fail(const std::string& msg) const { gradc::fail(path_, msg); }

size_t SafetensorsReader::raw(char* out, size_t n) {
    size_t done = 0;
    if (inMemory_) {
        done = size_t(std::min<uint64_t>(n, size_ - std::min(size_, streamPos_)));
        std::memcpy(out, mem_.data() + streamPos_, done);
    }
    while (!inMemory_ && done < n) {
        ssize_t got = ::read(fd_, out + done, std::min<size_t>(n - done, 1u << 30));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) fail(fmt::format("cannot read parameter file: {}", std::strerror(errno)));
        if (got == 0) break;
        done += size_t(got);
    }
    streamPos_ += done;
    return done;
}

const SafetensorsEntry* SafetensorsReader::find(const std::string& name) const {
    for (auto& e : entries_)
        if (e.name == name) return &e;
    return nullptr;
}

void SafetensorsReader::readHeader() {
    char len[8];
    const size_t got = raw(len, 8);
    if (got < 8) fail(fmt::format("not a safetensors file: {} bytes, too short for a header", got));
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = n << 8 | uint8_t(len[i]);
    if (seekable_ && n > size_ - 8)
        fail(fmt::format("not a safetensors file: header length {} exceeds the file", n));
    if (n > kMaxHeaderBytes)
        fail(fmt::format("not a safetensors file: header length {} is over the limit of {} bytes", n, kMaxHeaderBytes));
    if (n < 2) fail(fmt::format("not a safetensors file: header length {} is too short for a JSON object", n));
    std::string text; // grows with the bytes that arrive, not with the length claimed
    if (seekable_) text.reserve(size_t(n)); // the file holds them
    while (text.size() < n) {
        const size_t old = text.size(), chunk = size_t(std::min<uint64_t>(n - old, 1u << 20));
        text.resize(old + chunk);
        const size_t k = raw(text.data() + old, chunk);
        if (k < chunk)
            fail(fmt::format("not a safetensors file: it ends after {} bytes of its {}-byte header", old + k, n));
    }
    dataStart_ = 8 + n;
    // Parsed as events, never as a document: memory stays near the entries' own size, and
    // each tensor is checked (and a bad one refused) as soon as its entry closes.
    HeaderParser parser(*this, seekable_ ? size_ - dataStart_ : UINT64_MAX, entries_);
    try {
        if (!nlohmann::json::sax_parse(text, &parser) && !parser.error.empty())
            fail(fmt::format("not a safetensors file: the header is not valid JSON ({})", parser.error));
    } catch (const nlohmann::json::exception& e) {
        fail(fmt::format("not a safetensors file: the header is not valid JSON ({})", e.what()));
    }
    const uint64_t available = seekable_ ? size_ - dataStart_ : UINT64_MAX;
    // The format's rule: the tensors tile the data, without holes or overlaps.
    std::sort(entries_.begin(), entries_.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
        return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
    });
    uint64_t pos = 0;
    for (auto& e : entries_) {
        if (e.begin != pos)
            fail(fmt::format("tensor '{}': data_offsets [{}, {}] do not begin where the data before them ends "
                             "(byte {}): the data has a hole or an overlap", e.name, e.begin, e.end, pos));
        pos = e.end;
    }
    if (seekable_ && pos != available)
        fail(fmt::format("the tensors take {} bytes of data, but the file holds {} after the header", pos, available));
}

Tensor SafetensorsReader::read(const SafetensorsEntry& e) {
    const size_t width = widthOf(e.dtype);
    internal_assert(width > 0 && e.end >= e.begin, "an entry that was not checked");
    Tensor t;
    t.shape = e.shape;
    const uint64_t bytes = e.end - e.begin;
    if (seekable_) t.data.reserve(size_t(bytes / width)); // the size was checked against the file's
    if (!seekable_ && dataStart_ + e.begin != streamPos_)
        fail(fmt::format("tensor '{}': a pipe is read in order, and this tensor's data is behind", e.name));
    std::vector<char> buf(size_t(std::min<uint64_t>(bytes, 1u << 20)));
    for (uint64_t done = 0; done < bytes;) {
        const size_t want = size_t(std::min<uint64_t>(bytes - done, buf.size()));
        size_t got = 0;
        if (inMemory_) {
            got = want;
            std::memcpy(buf.data(), mem_.data() + dataStart_ + e.begin + done, want);
        } else if (seekable_) {
            while (got < want) {
                ssize_t k = ::pread(fd_, buf.data() + got, want - got, off_t(dataStart_ + e.begin + done + got));
                if (k < 0 && errno == EINTR) continue;
                if (k < 0) fail(fmt::format("cannot read parameter file: {}", std::strerror(errno)));
                if (k == 0) break;
                got += size_t(k);
            }
        } else {
            got = raw(buf.data(), want);
        }
        if (got < want)
            fail(fmt::format("tensor '{}': the file ends after {} of its {} bytes", e.name, done + got, bytes));
        for (size_t i = 0; i < want; i += width) t.data.push_back(element(e.dtype, buf.data() + i));
        done += want;
    }
    return t;
}

std::map<std::string, Tensor> readSafetensors(const std::string& path, std::map<std::string, std::string>* dtypes) {
    SafetensorsReader file(path);
    std::map<std::string, Tensor> out;
    for (auto& e : file.entries()) {
        out[e.name] = file.read(e);
        if (dtypes) (*dtypes)[e.name] = e.dtype;
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
    std::string json = jsonLine(header);
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
    SafetensorsReader file(path);
    return loadParameters(g, file);
}

Bindings loadParameters(const Graph& g, SafetensorsReader& file) {
    const std::string& path = file.path();
    auto floating = [](const SafetensorsEntry& e) { return e.dtype[0] == 'F' || e.dtype == "BF16"; };
    // Names, dtypes and shapes first: a file that does not fit is refused before its data is read.
    std::set<std::string> batchnorms, known, variances;
    for (auto& l : g.layers)
        if (l.what.rfind("batchnorm", 0) == 0) batchnorms.insert(l.name);
    for (auto& p : g.params) {
        const SafetensorsEntry* e = file.find(p.name);
        if (!e) fail(path, fmt::format("tensor '{}' of the model is missing", p.name));
        if (!floating(*e))
            fail(path, fmt::format("tensor '{}' has dtype {}; parameters are floating point", p.name, e->dtype));
        const Shape& want = g[p.node].shape;
        if (e->shape != want)
            fail(path, fmt::format("tensor '{}' has shape {}, the model needs {} (PyTorch's [out, in] layout)",
                                   p.name, shapeString(e->shape), shapeString(want)));
        known.insert(p.name);
    }
    for (auto& buf : g.buffers) { // running statistics: optional (gradc's older files lack them)
        const SafetensorsEntry* e = file.find(buf.name);
        if (!e) continue;
        if (!floating(*e))
            fail(path, fmt::format("tensor '{}' has dtype {}; running statistics are floating point", buf.name,
                                   e->dtype));
        if (e->shape != Shape{buf.size})
            fail(path, fmt::format("tensor '{}' has shape {}, the model needs [{}]", buf.name,
                                   shapeString(e->shape), buf.size));
        known.insert(buf.name);
        if (buf.initial == 1) variances.insert(buf.name);
    }
    for (auto& e : file.entries()) {
        if (known.count(e.name)) continue;
        // PyTorch's BatchNorm1d also counts its batches (an integer gradc keeps too).
        auto dot = e.name.rfind('.');
        std::string module = dot == std::string::npos ? "" : e.name.substr(0, dot), field = e.name.substr(dot + 1);
        if (batchnorms.count(module) && field == "num_batches_tracked" && elementCount(e.shape) == 1) continue;
        fail(path, fmt::format("tensor '{}' is not a parameter of model {}", e.name, g.model));
    }
    // Then the data, tensor by tensor, in the file's order.
    Bindings out;
    for (auto& e : file.entries()) {
        Tensor t = file.read(e);
        if (variances.count(e.name))
            for (double v : t.data)
                if (!(v >= 0)) fail(path, fmt::format("tensor '{}' holds {}; a variance is not negative", e.name, v));
        out[e.name] = std::move(t);
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
