// Events.h — TensorBoard event files, written directly: TFRecord framing (length, masked
// CRC-32C) around hand-encoded Event protocol buffers with scalar and histogram summaries.
// The file grows as training runs, one record at a time, so TensorBoard can follow it.
#pragma once

#include "Stats.h"

#include <cstdint>
#include <cstdio>
#include <string>
#include <variant>
#include <vector>

namespace gradc {

/// A hyperparameter of a run, as TensorBoard's HParams dashboard tabulates it: text or a number.
struct HParam {
    std::string name;
    std::variant<std::string, double> value;
};

/// CRC-32C (Castagnoli), and TFRecord's masked form of it.
uint32_t crc32c(const void* data, size_t n);
uint32_t maskedCrc32c(const void* data, size_t n);

class EventWriter {
public:
    /// Creates DIR (and parents) and a new file in it named as PyTorch's SummaryWriter names
    /// its files, events.out.tfevents.TIME.HOSTNAME.PID.N (N counts the files this process
    /// made), opened exclusively: an existing file is never overwritten. Throws UserError.
    explicit EventWriter(const std::string& dir);
    ~EventWriter();
    EventWriter(const EventWriter&) = delete;
    EventWriter& operator=(const EventWriter&) = delete;

    void scalar(const std::string& tag, int64_t step, double value);
    /// The statistics' histogram (its bins become TensorBoard's buckets).
    void histogram(const std::string& tag, int64_t step, const TensorStats& s);
    /// The HParams dashboard's summaries at the start of a run: the experiment (the names of
    /// `values` and the scalar tags `metrics` its table shows) and this run's values.
    void hparams(const std::vector<HParam>& values, const std::vector<std::string>& metrics);
    /// The end of the run for the HParams dashboard: finished, or failed (interrupted).
    void sessionEnd(bool success);
    /// Every write is checked: these throw UserError naming the file.
    void flush();
    void close();
    const std::string& path() const { return path_; }

private:
    void record(const std::string& event);
    [[noreturn]] void fail() const;
    std::string path_;
    std::FILE* file_ = nullptr;
};

/// Protocol-buffer encoding, as much as the event files need (exposed for tests).
namespace proto {
std::string varint(uint64_t v);
std::string field(int number, int wireType);
std::string bytes(int number, const std::string& payload);   // wire type 2
std::string float64(int number, double v);                    // wire type 1
std::string float32(int number, float v);                     // wire type 5
std::string int64(int number, int64_t v);                     // wire type 0
} // namespace proto

} // namespace gradc
