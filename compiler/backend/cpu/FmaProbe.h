// FmaProbe.h — the CPU's measured fused multiply-add peak, the yardstick `gradc bench`
// reports its speed against. No LLVM types appear here.
#pragma once

#include "Kernels.h"

#include <string>
#include <vector>

namespace gradc {

/// The CPU's fused multiply-add peak on one thread, in GFLOP/s, measured by a small JIT'd
/// probe: independent vector FMAs in registers, as many as the register tile of the
/// matrix-product micro-kernel (blockingFor) holds, in the instruction set `isa` (resolveIsa's,
/// Codegen.h). Takes a few tenths of a second.
double measureFmaPeak(bool f64, const std::string& isa);

/// A register tile (MR rows by NV vectors) and its measured speed in GFLOP/s.
using TileSpeed = GemmBlocking::Speed;

/// Times each candidate tile of the micro-kernel on this CPU (JIT'd, in registers, B in
/// L1/L2, K = 256): one module for all, each candidate's best of seven runs of a few
/// milliseconds, taken in rounds of one run of every candidate.
std::vector<TileSpeed> measureTiles(bool f64, const std::vector<TileSpeed>& candidates,
                                    const std::string& isa);

} // namespace gradc
