// RunLog.h — a training run as `gradc train --log` wrote it (JSON lines: one per epoch, then
// the end), read back for `gradc plot`.
#pragma once

#include <string>
#include <vector>

namespace gradc {

struct RunLog {
    std::string name;                 ///< the file's name without its folder and extension
    std::vector<double> steps;        ///< the optimiser step at the end of each epoch
    std::vector<double> trainLoss, valLoss, valAccuracy; ///< per epoch (NaN where the log has null)
    std::vector<std::string> layers;  ///< the weight tensors, input to output
    /// The steps whose gradients the log holds: those of its {"kind": "step"} lines (train
    /// --log-every), else each epoch's last.
    std::vector<double> gradSteps;
    /// meanAbs[l][i]: layer l's mean |gradient| at gradSteps[i] (NaN where the log has null).
    std::vector<std::vector<double>> meanAbs;
    double testAccuracy = -1;         ///< from the end line; -1 when the run has none (interrupted)
};

/// Reads a log `gradc train --log` wrote. A file that cannot be read, a line that is not a
/// JSON object, an epoch line without its fields, or a log without any epoch is a UserError
/// naming the file (and the line).
RunLog readRunLog(const std::string& path);

} // namespace gradc
