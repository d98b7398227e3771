// SafeTensors.h — parameters and gradients in the safetensors format, with PyTorch's names,
// so a PyTorch state_dict saved as safetensors loads directly.
#pragma once

#include "Graph.h"
#include "Interpreter.h"

#include <map>
#include <string>
#include <set>
#include <vector>

namespace gradc {

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
Bindings loadParameters(const Graph& g, const std::string& path);

} // namespace gradc
