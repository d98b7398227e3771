// Events.cpp — TensorBoard event files (see Events.h). Message layouts, from TensorFlow's
// event.proto and summary.proto:
//   Event            { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary          { repeated Value value = 1; }
//   Summary.Value    { string tag = 1; float simple_value = 2; HistogramProto histo = 5; }
//   HistogramProto   { double min = 1, max = 2, num = 3, sum = 4, sum_squares = 5;
//                      repeated double bucket_limit = 6 [packed]; repeated double bucket = 7 [packed]; }
// The HParams dashboard's summaries are values with no data whose metadata (Summary.Value's
// field 9) names the plugin, as TensorBoard's plugins/hparams/plugin_data.proto and api.proto
// define them:
//   SummaryMetadata  { PluginData plugin_data = 1; }  PluginData { string plugin_name = 1; bytes content = 2; }
//   HParamsPluginData { int32 version = 1; oneof { Experiment experiment = 2;
//                       SessionStartInfo session_start_info = 3; SessionEndInfo session_end_info = 4; } }
//   Experiment       { repeated HParamInfo hparam_infos = 4; repeated MetricInfo metric_infos = 5; }
//   HParamInfo       { string name = 1; DataType type = 4; }  (STRING 1, FLOAT64 3)
//   MetricInfo       { MetricName name = 1; }  MetricName { string group = 1; string tag = 2; }
//   SessionStartInfo { map<string, google.protobuf.Value> hparams = 1; double start_time_secs = 5; }
//   SessionEndInfo   { Status status = 1; double end_time_secs = 2; }  (SUCCESS 1, FAILURE 2)
//   google.protobuf.Value { double number_value = 2; string string_value = 3; }
#include "Events.h"

#include "Source.h"

#include <fmt/format.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <unistd.h>

namespace gradc {

uint32_t crc32c(const void* data, size_t n) {
    static const std::array<uint32_t, 256> table = [] {
        std::array<uint32_t, 256> t{};
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    uint32_t c = 0xFFFFFFFFu;
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

uint32_t maskedCrc32c(const void* data, size_t n) {
    uint32_t c = crc32c(data, n);
    return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

namespace proto {
std::string varint(uint64_t v) {
    std::string out;
    do {
        uint8_t byte = v & 0x7F;
        v >>= 7;
        out += char(v ? byte | 0x80 : byte);
    } while (v);
    return out;
}
std::string field(int number, int wireType) { return varint(uint64_t(number) << 3 | uint64_t(wireType)); }
std::string bytes(int number, const std::string& payload) { return field(number, 2) + varint(payload.size()) + payload; }
std::string float64(int number, double v) {
    char b[8];
    std::memcpy(b, &v, 8);
    return field(number, 1) + std::string(b, 8);
}
std::string float32(int number, float v) {
    char b[4];
    std::memcpy(b, &v, 4);
    return field(number, 5) + std::string(b, 4);
}
std::string int64(int number, int64_t v) { return field(number, 0) + varint(uint64_t(v)); }
} // namespace proto

namespace {
double now() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
std::string event(int64_t step, const std::string& summaryValue) {
    return proto::float64(1, now()) + proto::int64(2, step) + proto::bytes(5, proto::bytes(1, summaryValue));
}
} // namespace

EventWriter::EventWriter(const std::string& dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw UserError({makeSourceFile(dir, ""), 0, 0}, fmt::format("cannot create the log directory: {}", ec.message()));
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0 || !host[0]) std::strcpy(host, "localhost");
    for (char* c = host; *c; ++c)
        if (*c == '/') *c = '_';
    static std::atomic<unsigned> counter{0};
    for (int attempt = 0;; ++attempt) {
        path_ = fmt::format("{}/events.out.tfevents.{:010d}.{}.{}.{}", dir, int64_t(now()), host, ::getpid(), counter++);
        const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 && (file_ = ::fdopen(fd, "wb"))) break;
        const int err = errno;
        if (fd >= 0) ::close(fd);
        if (err != EEXIST || attempt == 100) throw UserError({makeSourceFile(path_, ""), 0, 0}, fmt::format("cannot write: {}", std::strerror(err)));
    }
    record(proto::float64(1, now()) + proto::bytes(3, "brain.Event:2"));
}

EventWriter::~EventWriter() {
    if (file_) std::fclose(file_);
}

void EventWriter::fail() const {
    throw UserError({makeSourceFile(path_, ""), 0, 0}, fmt::format("cannot write: {}", std::strerror(errno ? errno : EIO)));
}

void EventWriter::record(const std::string& e) {
    uint64_t n = e.size();
    char header[12];
    std::memcpy(header, &n, 8);
    uint32_t lengthCrc = maskedCrc32c(header, 8), dataCrc = maskedCrc32c(e.data(), e.size());
    std::memcpy(header + 8, &lengthCrc, 4);
    errno = 0;
    if (std::fwrite(header, 1, 12, file_) != 12 || std::fwrite(e.data(), 1, e.size(), file_) != e.size() ||
        std::fwrite(&dataCrc, 1, 4, file_) != 4 || std::fflush(file_) != 0)
        fail(); // each record whole in the file at once: a run that is killed leaves a readable file
}

void EventWriter::scalar(const std::string& tag, int64_t step, double value) {
    record(event(step, proto::bytes(1, tag) + proto::float32(2, float(value))));
}

namespace {
/// A Summary.Value of the HParams plugin: `tag` and the HParamsPluginData field `field`.
std::string hparamsValue(const char* tag, int field, const std::string& message) {
    const std::string pluginData = proto::bytes(1, "hparams") + proto::bytes(2, proto::bytes(field, message));
    return proto::bytes(1, tag) + proto::bytes(9, proto::bytes(1, pluginData));
}
} // namespace

void EventWriter::hparams(const std::vector<HParam>& values, const std::vector<std::string>& metrics) {
    std::string experiment, start;
    for (const HParam& h : values) {
        const bool text = std::holds_alternative<std::string>(h.value);
        experiment += proto::bytes(4, proto::bytes(1, h.name) + proto::int64(4, text ? 1 : 3));
        const std::string value = text ? proto::bytes(3, std::get<std::string>(h.value))
                                       : proto::float64(2, std::get<double>(h.value));
        start += proto::bytes(1, proto::bytes(1, h.name) + proto::bytes(2, value));
    }
    for (const std::string& m : metrics) experiment += proto::bytes(5, proto::bytes(1, proto::bytes(2, m)));
    start += proto::float64(5, now());
    record(event(0, hparamsValue("_hparams_/experiment", 2, experiment)));
    record(event(0, hparamsValue("_hparams_/session_start_info", 3, start)));
}

void EventWriter::sessionEnd(bool success) {
    record(event(0, hparamsValue("_hparams_/session_end_info", 4,
                                 proto::int64(1, success ? 1 : 2) + proto::float64(2, now()))));
}

void EventWriter::histogram(const std::string& tag, int64_t step, const TensorStats& s) {
    if (s.counts.empty()) return; // no finite values
    const double finite = double(s.count - s.nan - s.inf);
    std::string limits, counts;
    for (size_t i = 0; i < s.counts.size(); ++i) {
        double limit = s.edges[i + 1], count = double(s.counts[i]);
        char b[8];
        std::memcpy(b, &limit, 8), limits.append(b, 8);
        std::memcpy(b, &count, 8), counts.append(b, 8);
    }
    std::string histo = proto::float64(1, s.min) + proto::float64(2, s.max) + proto::float64(3, finite) +
                        proto::float64(4, s.mean * finite) +
                        proto::float64(5, (s.std * s.std + s.mean * s.mean) * finite) + proto::bytes(6, limits) +
                        proto::bytes(7, counts);
    record(event(step, proto::bytes(1, tag) + proto::bytes(5, histo)));
}

void EventWriter::flush() {
    errno = 0;
    if (std::fflush(file_) != 0) fail();
}

void EventWriter::close() {
    std::FILE* f = file_;
    file_ = nullptr;
    errno = 0;
    if (f && std::fclose(f) != 0) fail();
}

} // namespace gradc
