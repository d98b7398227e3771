// FmaProbe.h — the CPU's measured fused multiply-add peak, the yardstick `gradc bench`
// reports its speed against. No LLVM types appear here.
#pragma once

namespace gradc {

/// The CPU's fused multiply-add peak on one thread, in GFLOP/s, measured by a small JIT'd
/// probe: independent vector FMAs in registers, as many as the register tile of the
/// matrix-product micro-kernel (blockingFor) holds. Takes a few tenths of a second.
double measureFmaPeak(bool f64);

} // namespace gradc
