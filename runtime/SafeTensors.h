// SafeTensors.h — parameters and gradients in the safetensors format, with PyTorch's names,
// so a PyTorch state_dict saved as safetensors loads directly.
#pragma once

#include "Graph.h"
#include "Interpreter.h"

#include <map>
#include <string>
#include <string_view>
#include <set>
#include <vector>

namespace gradc {

/// One tensor as a safetensors header describes it.
struct SafetensorsEntry {
    std::string name, dtype; ///< dtype: F64, F32, F16, BF16, I64, I32, I16, I8, U8 or BOOL
    Shape shape;
    uint64_t begin = 0, end = 0; ///< byte offsets in the data that follows the header
};

/// A safetensors file opened for reading. The constructor reads and checks the header only:
/// its length (at most 100 MiB, and within a regular file), every entry's dtype, shape and
/// offsets, and that the entries tile the data without holes or overlaps (for a regular
/// file or bytes in memory: exactly the data there). Tensor data is read when asked for,
/// one tensor at a time, so a file can be refused for its names and shapes before any of
/// its data is read. A pipe or a device is read in order and never past what the header
/// declares (`/dev/zero` is refused after 8 bytes). Throws UserError naming the file, and
/// the tensor where one is at fault.
class SafetensorsReader {
public:
    explicit SafetensorsReader(const std::string& path);
    /// Bytes in memory (tests, the fuzzer); they must outlive the reader.
    SafetensorsReader(std::string name, std::string_view bytes);
    ~SafetensorsReader();
    SafetensorsReader(const SafetensorsReader&) = delete;
    SafetensorsReader& operator=(const SafetensorsReader&) = delete;

    const std::string& path() const { return path_; }
    /// In the order of their data.
    const std::vector<SafetensorsEntry>& entries() const { return entries_; }
    const SafetensorsEntry* find(const std::string& name) const;
    /// One tensor's data as doubles (from a pipe: in the order of entries()).
    Tensor read(const SafetensorsEntry& e);

private:
    void readHeader();
    size_t raw(char* out, size_t n); ///< up to n bytes of the stream; fewer only at its end
    [[noreturn]] void fail(const std::string& msg) const;

    std::string path_;
    int fd_ = -1;
    bool seekable_ = false;      ///< a regular file (pread) or memory; else a stream read in order
    std::string_view mem_;
    bool inMemory_ = false;
    uint64_t size_ = 0;          ///< of a regular file or of the bytes in memory
    uint64_t dataStart_ = 0;     ///< 8 + the header's length
    uint64_t streamPos_ = 0;     ///< bytes of a stream consumed so far
    std::vector<SafetensorsEntry> entries_;
};

/// Every tensor of a safetensors file (F32, F64, F16 and BF16 are read), as doubles. Throws
/// UserError naming the file, and the tensor where one is at fault.
std::map<std::string, Tensor> readSafetensors(const std::string& path,
                                              std::map<std::string, std::string>* dtypes = nullptr);

/// The bytes of a safetensors file of the tensors as F32 (or F64; those named in `integers`
/// as I64), in the given order.
std::string encodeSafetensors(const std::vector<std::pair<std::string, Tensor>>& tensors, bool f64 = false,
                              const std::set<std::string>& integers = {});

/// Writes encodeSafetensors(...) to `path`, atomically.
void writeSafetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      bool f64 = false, const std::set<std::string>& integers = {});

/// Every tensor PyTorch's state_dict() of the twin module holds, in its order: each module's
/// parameters, then its buffers (batchnorm's running_mean and running_var, from `b` or as
/// initialised) and num_batches_tracked (from `b`, else 0; its name added to `integers`, to
/// be written as I64).
std::vector<std::pair<std::string, Tensor>> stateDict(const Graph& g, const Bindings& b,
                                                     std::set<std::string>* integers);

/// The model's parameters from a file: every parameter must be there with its shape; a
/// tensor the model does not have is an error. Batchnorm's running statistics (and its
/// num_batches_tracked) are read when present.
/// Every name, shape and dtype is checked against the model before any tensor data is read.
Bindings loadParameters(const Graph& g, const std::string& path);
Bindings loadParameters(const Graph& g, SafetensorsReader& file);

} // namespace gradc
