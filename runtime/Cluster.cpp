// Cluster.cpp — MPI's world for a data-parallel run, or one process (Cluster.h). MPI is
// started only under a launcher, so gradc run on its own never touches it.
#include "Cluster.h"

#include "Source.h"
#include "ThreadPool.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

#if GRADC_MPI
#define OMPI_SKIP_MPICXX 1 // the C API only: Open MPI's and MPICH's C++ bindings are not linked
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace gradc::cluster {
namespace {
int gRank = 0, gSize = 1;
bool gStarted = false;
#if GRADC_MPI
MPI_Comm gComm = MPI_COMM_NULL; // a duplicate of the world: gradc's traffic apart from any other

void check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(rc, text, &n);
    throw UserError({}, fmt::format("{}{} failed: {}", prefix(), what, std::string(text, size_t(n))));
}
#endif

enum class Reduction { Sum, Max };

/// `n` values at `data` (double or float) reduced in place over the processes; MPI counts
/// in int, so in parts of at most 2^30.
void reduce(void* data, size_t n, bool f64, Reduction op) {
#if GRADC_MPI
    if (gSize == 1) return;
    constexpr size_t kPart = size_t(1) << 30;
    const size_t bytes = f64 ? 8 : 4;
    for (size_t at = 0; at < n; at += kPart)
        check(MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(data) + at * bytes, int(std::min(kPart, n - at)),
                            f64 ? MPI_DOUBLE : MPI_FLOAT, op == Reduction::Sum ? MPI_SUM : MPI_MAX, gComm),
              "MPI_Allreduce");
#else
    (void)data, (void)n, (void)f64, (void)op;
#endif
}

#if GRADC_MPI
/// What compiled code's gradc_allreduce_sum does on a run of several processes: batchnorm's
/// per-channel sums.
void allreduceHook(void* data, int64_t n, bool f64) { reduce(data, size_t(n), f64, Reduction::Sum); }
#endif
} // namespace

bool built() { return GRADC_MPI != 0; }

bool launched() {
    // Open MPI's mpirun, MPICH's and Intel's mpiexec (PMI), PMIx launchers and Slurm's srun.
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"})
        if (std::getenv(v)) return true;
    return false;
}

int init(int* argc, char*** argv) {
    if (!launched()) return 1;
#if GRADC_MPI
    int provided = 0;
    check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    gStarted = true;
    check(MPI_Comm_dup(MPI_COMM_WORLD, &gComm), "MPI_Comm_dup");
    MPI_Comm_rank(gComm, &gRank);
    MPI_Comm_size(gComm, &gSize);
    if (gSize > 1) setAllreduce(allreduceHook);
    return gSize;
#else
    (void)argc, (void)argv;
    const char* n = std::getenv("OMPI_COMM_WORLD_SIZE");
    if (n && std::atoi(n) > 1)
        throw UserError({}, "this gradc was built without MPI: under mpirun each process would train alone (install "
                            "libopenmpi-dev and build again: tools/setup)");
    return 1;
#endif
}

void finalize() {
#if GRADC_MPI
    if (!gStarted) return;
    setAllreduce(nullptr);
    MPI_Comm_free(&gComm);
    MPI_Finalize();
    gStarted = false;
#endif
}

int rank() { return gRank; }
int size() { return gSize; }
std::string prefix() { return gSize > 1 ? fmt::format("rank {} of {}: ", gRank, gSize) : ""; }

void sum(double* data, size_t n) { reduce(data, n, /*f64=*/true, Reduction::Sum); }
void sum(float* data, size_t n) { reduce(data, n, /*f64=*/false, Reduction::Sum); }
void max(double* data, size_t n) { reduce(data, n, /*f64=*/true, Reduction::Max); }

void normSum(double* norms, size_t n) {
    for (size_t i = 0; i < n; ++i) norms[i] *= norms[i];
    sum(norms, n);
    for (size_t i = 0; i < n; ++i) norms[i] = std::sqrt(norms[i]);
}

void gather(const double* data, size_t n, double* all) {
#if GRADC_MPI
    if (gSize > 1) {
        internal_assert(n <= size_t(1) << 30, "a gather of more than 2^30 values from each process");
        check(MPI_Allgather(data, int(n), MPI_DOUBLE, all, int(n), MPI_DOUBLE, gComm), "MPI_Allgather");
        return;
    }
#endif
    std::copy(data, data + n, all);
}

void broadcast(void* data, size_t bytes) {
#if GRADC_MPI
    if (gSize > 1) check(MPI_Bcast(data, int(bytes), MPI_BYTE, 0, gComm), "MPI_Bcast");
#else
    (void)data, (void)bytes;
#endif
}

void barrier() {
#if GRADC_MPI
    if (gSize > 1) check(MPI_Barrier(gComm), "MPI_Barrier");
#endif
}

struct PendingSum::Impl {
#if GRADC_MPI
    MPI_Request request = MPI_REQUEST_NULL;
#endif
};

PendingSum::PendingSum(PendingSum&& o) noexcept : impl_(std::exchange(o.impl_, nullptr)) {}
PendingSum& PendingSum::operator=(PendingSum&& o) noexcept {
    if (this != &o) {
        try {
            wait();
        } catch (...) {
        }
        impl_ = std::exchange(o.impl_, nullptr);
    }
    return *this;
}
PendingSum::~PendingSum() {
    try {
        wait();
    } catch (...) {
    }
}

PendingSum PendingSum::start(void* data, size_t n, bool f64) {
    PendingSum p;
#if GRADC_MPI
    if (gSize > 1) {
        internal_assert(n <= size_t(1) << 30, "a non-blocking sum of more than 2^30 values");
        p.impl_ = new Impl;
        check(MPI_Iallreduce(MPI_IN_PLACE, data, int(n), f64 ? MPI_DOUBLE : MPI_FLOAT, MPI_SUM, gComm,
                             &p.impl_->request),
              "MPI_Iallreduce");
    }
#else
    (void)data, (void)n, (void)f64;
#endif
    return p;
}

bool PendingSum::test() {
    if (!impl_) return true;
#if GRADC_MPI
    int done = 0;
    check(MPI_Test(&impl_->request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    return done != 0;
#else
    return true;
#endif
}

void PendingSum::wait() {
    if (!impl_) return;
    Impl* impl = std::exchange(impl_, nullptr);
#if GRADC_MPI
    const int rc = MPI_Wait(&impl->request, MPI_STATUS_IGNORE);
    delete impl;
    check(rc, "MPI_Wait");
#else
    delete impl;
#endif
}

void abort(int code) {
#if GRADC_MPI
    if (gStarted && gSize > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    std::_Exit(code);
}

} // namespace gradc::cluster
