// Cluster.h — the processes of a data-parallel run. When gradc is started by an MPI launcher
// (mpirun, mpiexec, Slurm's srun) and was built with MPI, they are MPI's world; otherwise
// there is one process and every collective below returns at once, its data unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace gradc::cluster {

/// Whether this build has MPI (CMake found it).
bool built();
/// Whether an MPI launcher started this process (its environment says so).
bool launched();
/// Starts MPI when launched() (and built()), with MPI_THREAD_FUNNELED: only the thread that
/// called init() communicates. Returns the world's size. Throws UserError when launched by
/// mpirun in a build without MPI, which would run N unconnected copies.
int init(int* argc, char*** argv);
/// Ends MPI, if init() started it.
void finalize();

int rank();
int size();
inline bool root() { return rank() == 0; }
/// "rank R of N: " on a run of several processes, else "".
std::string prefix();

/// Sums over every process, in place: each ends with the same sums.
void sum(double* data, size_t n);
void sum(float* data, size_t n);
/// Norms of the processes' parts of vectors, made the whole vectors' in place: each value
/// becomes the root of the sum of every process's squares of it.
void normSum(double* norms, size_t n);
/// The largest of every process's values, in place.
void max(double* data, size_t n);
/// Every process's `n` values, in rank order, into all[0, n * size()) on every process.
void gather(const double* data, size_t n, double* all);
/// Rank 0's bytes on every process.
void broadcast(void* data, size_t bytes);
/// Waits until every process has come here.
void barrier();

/// A sum started now and finished by wait(): communication while the caller computes.
class PendingSum {
public:
    PendingSum() = default;
    PendingSum(PendingSum&&) noexcept;
    PendingSum& operator=(PendingSum&&) noexcept;
    ~PendingSum(); // waits
    /// Starts summing `n` values at `data` (double when `f64`) in place.
    static PendingSum start(void* data, size_t n, bool f64);
    /// Lets MPI progress the transfer; true once it is done.
    bool test();
    void wait();

private:
    struct Impl;
    Impl* impl_ = nullptr;
};

/// Ends every process of the run at once with `code` (MPI_Abort); a lone process exits.
[[noreturn]] void abort(int code);

} // namespace gradc::cluster
