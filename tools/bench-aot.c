/* tools/bench-aot.c — times one ahead-of-time object's backward step (tools/bench-aot builds
 * it against each object it compares).
 *   bench-aot-timer STEPS [LEVEL]
 * Runs model_backward STEPS times (after two untimed calls) on fixed parameters and a fixed
 * batch and prints "isa LEVEL NAME", "ms PER_STEP" (wall time) and "cpu_ms PER_STEP" (the
 * thread's CPU time). With LEVEL, runs that instruction set
 * level's code (model_select_isa); exits 3 if the object refuses it. */
#define _POSIX_C_SOURCE 200112L
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Wall time, and the time this thread ran: on a machine that others share, the second leaves
   out the time the thread waited for a core. */
static double now_ms(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

int main(int argc, char** argv) {
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: bench-aot-timer STEPS [LEVEL]\n");
        return 2;
    }
    const int steps = atoi(argv[1]);
    if (argc == 3 && model_select_isa(atoi(argv[2])) != 0) {
        printf("level %s refused\n", argv[2]);
        return 3;
    }
    model_real* params = malloc(sizeof(model_real) * MODEL_PARAMETERS);
    model_real* grads = malloc(sizeof(model_real) * MODEL_PARAMETERS);
    model_real* acts = malloc(sizeof(model_real) * (MODEL_ACTIVATIONS + 1));
    model_real* x = malloc(sizeof(model_real) * MODEL_BATCH * MODEL_INPUTS);
    void* target = malloc(MODEL_LABELS ? sizeof(int32_t) * MODEL_BATCH : sizeof(model_real) * MODEL_BATCH * MODEL_OUTPUTS);
    void* workspace = aligned_alloc(64, (MODEL_WORKSPACE_BYTES + 63) / 64 * 64 + 64);
    if (!params || !grads || !acts || !x || !target || !workspace) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    /* Small weights (as a fresh network has them), inputs in [-1, 1), labels cycling. */
    unsigned s = 12345;
    for (long i = 0; i < MODEL_PARAMETERS; ++i) {
        s = s * 1103515245u + 12345u;
        params[i] = (model_real)((double)(s >> 8) / 16777216.0 - 0.5) * (model_real)0.1;
    }
    for (long i = 0; i < (long)MODEL_BATCH * MODEL_INPUTS; ++i) x[i] = (model_real)((i * 37) % 255) / (model_real)127.5 - 1;
    for (long i = 0; i < (MODEL_LABELS ? MODEL_BATCH : (long)MODEL_BATCH * MODEL_OUTPUTS); ++i) {
        if (MODEL_LABELS) ((int32_t*)target)[i] = (int32_t)(i % MODEL_OUTPUTS);
        else ((model_real*)target)[i] = (model_real)(i % 2);
    }
    model_real loss = 0;
    for (int i = 0; i < 2; ++i) model_backward(params, x, target, &loss, grads, acts, workspace);
    const double start = now_ms(CLOCK_MONOTONIC), startCpu = now_ms(CLOCK_THREAD_CPUTIME_ID);
    for (int i = 0; i < steps; ++i) model_backward(params, x, target, &loss, grads, acts, workspace);
    const double ms = (now_ms(CLOCK_MONOTONIC) - start) / steps;
    const double cpuMs = (now_ms(CLOCK_THREAD_CPUTIME_ID) - startCpu) / steps;
    printf("isa %d %s\nloss %.6f\nms %.4f\ncpu_ms %.4f\n", model_isa(), model_isa_name(), (double)loss, ms, cpuMs);
    return 0;
}
