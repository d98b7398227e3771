// Events.cpp — TensorBoard event files (see Events.h). Message layouts, from TensorFlow's
// event.proto and summary.proto:
//   Event            { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary          { repeated Value value = 1; }
//   Summary.Value    { string tag = 1; float simple_value = 2; HistogramProto histo = 5; }
//   HistogramProto   { double min = 1, max = 2, num = 3, sum = 4, sum_squares = 5;
//                      repeated double bucket_limit = 6 [packed]; repeated double bucket = 7 [packed]; }
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
        std::fwrite(&dataCrc, 1, 4, file_) != 4)
        fail();
}

void EventWriter::scalar(const std::string& tag, int64_t step, double value) {
    record(event(step, proto::bytes(1, tag) + proto::float32(2, float(value))));
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
