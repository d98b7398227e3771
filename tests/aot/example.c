/* example.c - a C program that links a model compiled ahead of time by `gradc compile`.
 *   example PARAMS.safetensors GRADS.out [LEVEL]
 * Loads the parameters (a safetensors file that gradc wrote: float32 tensors, found by name),
 * runs the backward function on a deterministic batch, and writes the gradients, then the
 * loss, then acts, as raw float32 for the test to compare with the JIT's. Built with plain `cc`: no LLVM.
 * With LEVEL, runs the code of that instruction set level (model_select_isa), and exits with
 * status 3 if the object refuses it. Prints the level that ran: "isa LEVEL NAME". */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char** argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: example PARAMS.safetensors GRADS.out [LEVEL]\n");
        return 2;
    }
    if (model_abi_version() != MODEL_ABI_VERSION || MODEL_ABI_VERSION != 3) {
        fprintf(stderr, "object and header disagree: ABI %u vs %u\n", model_abi_version(), MODEL_ABI_VERSION);
        return 1;
    }
    if (argc == 4) {
        const int level = atoi(argv[3]);
        if (model_select_isa(level) != 0) {
            printf("level %d refused; isa %d %s\n", level, model_isa(), model_isa_name());
            return 3;
        }
        if (level != 0 && model_isa() != level) {
            fprintf(stderr, "level %d selected, but model_isa() says %d\n", level, model_isa());
            return 1;
        }
    }
    /* The variant that runs is one of the object's. */
    int known = 0;
    for (int i = 0; i < MODEL_ISA_VARIANTS; ++i) known |= model_isa_levels[i] == model_isa();
    if (!known) {
        fprintf(stderr, "model_isa() says %d, not a level of the object\n", model_isa());
        return 1;
    }
    printf("isa %d %s\n", model_isa(), model_isa_name());
    static float params[MODEL_PARAMETERS], grads[MODEL_PARAMETERS], acts[MODEL_ACTIVATIONS];
    static float x[MODEL_BATCH * MODEL_INPUTS];
    static int32_t labels[MODEL_BATCH];
    FILE* f = fopen(argv[1], "rb");
    unsigned char len[8];
    if (!f || fread(len, 1, 8, f) != 8) {
        fprintf(stderr, "%s: cannot read\n", argv[1]);
        return 1;
    }
    long header = 0;
    for (int i = 7; i >= 0; --i) header = header * 256 + len[i];
    char* json = header > 0 && header < (1L << 24) ? malloc((size_t)header + 1) : NULL;
    if (!json || fread(json, 1, (size_t)header, f) != (size_t)header) {
        fprintf(stderr, "%s: cannot read the header\n", argv[1]);
        return 1;
    }
    json[header] = '\0';
    /* Each parameter by its name: the file holds batchnorm's running statistics too, as
       PyTorch's state_dict does: "NAME":{..., "data_offsets":[BEGIN,END]} in the header. */
    for (int p = 0; p < (int)(sizeof model_parameters / sizeof model_parameters[0]); ++p) {
        char key[300];
        snprintf(key, sizeof key, "\"%s\":{", model_parameters[p].name);
        const char* at = strstr(json, key);
        const char* close = at ? strchr(at + strlen(key), '}') : NULL;
        /* The header's rank and shape are the file's: "shape":[D0,D1,...]. */
        char shape[300] = "\"shape\":[";
        long count = 1;
        for (int d = 0; d < model_parameters[p].rank; ++d) {
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", d ? "," : "",
                     (long long)model_parameters[p].shape[d]);
            count *= (long)model_parameters[p].shape[d];
        }
        strcat(shape, "]");
        const char* s = at ? strstr(at, shape) : NULL;
        if (model_parameters[p].rank < 1 || model_parameters[p].rank > MODEL_MAX_RANK || count != model_parameters[p].count ||
            !s || s > close) {
            fprintf(stderr, "%s: tensor %s does not have the header's shape %s\n", argv[1], model_parameters[p].name, shape);
            return 1;
        }
        at = at ? strstr(at, "\"data_offsets\":[") : NULL;
        long begin = 0, end = 0;
        if (!at || at > close || sscanf(at + strlen("\"data_offsets\":["), "%ld,%ld", &begin, &end) != 2 ||
            end - begin != model_parameters[p].count * (long)sizeof(float) ||
            fseek(f, 8 + header + begin, SEEK_SET) != 0 ||
            fread(params + model_parameters[p].offset, sizeof(float), (size_t)model_parameters[p].count, f) !=
                (size_t)model_parameters[p].count) {
            fprintf(stderr, "%s: no float32 tensor %s\n", argv[1], model_parameters[p].name);
            return 1;
        }
    }
    free(json);
    fclose(f);
    /* The kept activations tile acts: values [batch, ...] (rank 2 or more), batch statistics
       [width]. */
    long kept = 0;
    for (int a = 0; a < MODEL_ACTIVATION_TENSORS; ++a) {
        const model_tensor* t = &model_activations[a];
        /* Per channel or per step: batch statistics, a recurrent layer's norms of dL/dh_t. */
        const int statistic = strcmp(t->role, "norm_mean") == 0 || strcmp(t->role, "norm_var") == 0 ||
                              strcmp(t->role, "through_time") == 0;
        long count = 1;
        for (int d = 0; d < t->rank; ++d) count *= (long)t->shape[d];
        if (t->offset != kept || (statistic ? t->rank != 1 : t->rank < 2) || (!statistic && t->shape[0] != MODEL_BATCH) ||
            count != t->count) {
            fprintf(stderr, "activation %s: inconsistent place or shape\n", model_activations[a].name);
            return 1;
        }
        kept += (long)model_activations[a].count;
    }
    if (kept != MODEL_ACTIVATIONS) {
        fprintf(stderr, "the activation tensors hold %ld values, acts %d\n", kept, MODEL_ACTIVATIONS);
        return 1;
    }
    /* x, target, logits and loss: named, in order, of the batch's shapes. */
    const char* roles[4] = {"input", "target", "logits", "loss"};
    const long counts[4] = {(long)MODEL_BATCH * MODEL_INPUTS, MODEL_LABELS ? MODEL_BATCH : (long)MODEL_BATCH * MODEL_OUTPUTS,
                            (long)MODEL_BATCH * MODEL_OUTPUTS, 1};
    for (int a = 0; a < 4; ++a) {
        const model_tensor* t = &model_arguments[a];
        long count = 1;
        for (int d = 0; d < t->rank; ++d) count *= (long)t->shape[d];
        if (strcmp(t->role, roles[a]) != 0 || t->count != counts[a] || count != t->count ||
            (a < 3 && t->shape[0] != MODEL_BATCH)) {
            fprintf(stderr, "argument %d (%s): inconsistent role or shape\n", a, t->role);
            return 1;
        }
    }
    /* x's shape in the macros is the table's: [batch][784], [batch][28][28], [batch][1][28][28]. */
    const int64_t input_shape[] = MODEL_INPUT_SHAPE;
    if ((int)(sizeof input_shape / sizeof input_shape[0]) != MODEL_INPUT_RANK || model_arguments[0].rank != MODEL_INPUT_RANK ||
        input_shape[0] != MODEL_BATCH) {
        fprintf(stderr, "MODEL_INPUT_SHAPE has %d dimensions, MODEL_INPUT_RANK %d, x %d\n",
                (int)(sizeof input_shape / sizeof input_shape[0]), MODEL_INPUT_RANK, model_arguments[0].rank);
        return 1;
    }
    for (int d = 0; d < MODEL_INPUT_RANK; ++d)
        if (input_shape[d] != model_arguments[0].shape[d]) {
            fprintf(stderr, "MODEL_INPUT_SHAPE's dimension %d is %lld, x's %lld\n", d, (long long)input_shape[d],
                    (long long)model_arguments[0].shape[d]);
            return 1;
        }
    printf("input");
    for (int d = 0; d < MODEL_INPUT_RANK; ++d) printf("%s%lld", d ? "x" : " ", (long long)input_shape[d]);
    printf("\n");
#ifdef MODEL_INPUT_STEPS
    /* A sequence: x [batch][steps][features]. */
    if (MODEL_INPUT_RANK != 3 || input_shape[1] != MODEL_INPUT_STEPS || input_shape[2] != MODEL_INPUT_FEATURES ||
        MODEL_INPUT_STEPS * MODEL_INPUT_FEATURES != MODEL_INPUTS) {
        fprintf(stderr, "MODEL_INPUT_STEPS %d and MODEL_INPUT_FEATURES %d do not fit x\n", MODEL_INPUT_STEPS,
                MODEL_INPUT_FEATURES);
        return 1;
    }
    printf("sequence: %d steps of %d features\n", MODEL_INPUT_STEPS, MODEL_INPUT_FEATURES);
#endif
#ifdef MODEL_RECURRENT_LAYERS
    /* Each recurrent layer's norms are its through_time row of the activations, one per step. */
    for (int l = 0; l < MODEL_RECURRENT_LAYERS; ++l) {
        const model_recurrent_layer* r = &model_recurrent[l];
        int found = 0;
        for (int a = 0; a < MODEL_ACTIVATION_TENSORS; ++a) {
            const model_tensor* t = &model_activations[a];
            found |= strcmp(t->role, "through_time") == 0 && strcmp(t->name, r->layer) == 0 && t->offset == r->norms &&
                     t->count == r->steps;
        }
        if (!found || r->steps < 1 || r->inputs < 1 || r->hidden < 1 ||
            (strcmp(r->cell, "rnn_tanh") != 0 && strcmp(r->cell, "rnn_relu") != 0 && strcmp(r->cell, "lstm") != 0 &&
             strcmp(r->cell, "gru") != 0)) {
            fprintf(stderr, "recurrent layer %s: not in the activations' table as its through_time row\n", r->layer);
            return 1;
        }
        printf("recurrent %s %s: %lld steps of %lld -> %lld, norms at acts[%lld]\n", r->layer, r->cell,
               (long long)r->steps, (long long)r->inputs, (long long)r->hidden, (long long)r->norms);
    }
#endif
    /* The same batch the test's reference computes: inputs in [-1, 1), labels cycling. */
    for (long i = 0; i < MODEL_BATCH * MODEL_INPUTS; ++i) x[i] = (float)((i * 37) % 255) / 127.5f - 1.0f;
    for (int b = 0; b < MODEL_BATCH; ++b) labels[b] = b % MODEL_OUTPUTS;
    void* workspace = aligned_alloc(64, (MODEL_WORKSPACE_BYTES + 63) / 64 * 64);
    float loss = 0;
    model_backward(params, x, labels, &loss, grads, acts, workspace);
    free(workspace);
    printf("loss %.6f\n", loss);
    for (int p = 0; p < (int)(sizeof model_parameters / sizeof model_parameters[0]); ++p) {
        double s = 0;
        for (long i = 0; i < model_parameters[p].count; ++i) {
            double g = grads[model_parameters[p].offset + i];
            s += g < 0 ? -g : g;
        }
        printf("  %-16s abs_mean %.4e\n", model_parameters[p].name, s / (double)model_parameters[p].count);
    }
    /* One SGD step (hyper: 12 values since ABI 3) with the gradients halved, as
       gradient-norm clipping does: hyper[11] is the gradient scale, 1 without clipping. The
       step on a copy of the parameters must move each by lr * 0.5 * g. */
    static float stepped[MODEL_PARAMETERS], m[MODEL_PARAMETERS], v[MODEL_PARAMETERS];
    memcpy(stepped, params, sizeof params);
    double hyper[12] = {0, 0.5, 0, 0, 0, 0, 0.9, 0.999, 1e-8, 1, 1, 1};
    hyper[11] = 0.5;
    model_update(stepped, grads, m, v, hyper, 0, MODEL_PARAMETERS);
    for (long i = 0; i < MODEL_PARAMETERS; ++i) {
        const double want = (double)params[i] - 0.5 * 0.5 * (double)grads[i];
        const double err = stepped[i] - want, tol = 1e-6 * (1 + (want < 0 ? -want : want));
        if (err > tol || err < -tol) {
            fprintf(stderr, "update with gradient scale 0.5: parameter %ld is %.9g, not %.9g\n", i, stepped[i], want);
            return 1;
        }
    }
    hyper[11] = 1; /* no clipping: the plain step */
    memcpy(stepped, params, sizeof params);
    model_update(stepped, grads, m, v, hyper, 0, MODEL_PARAMETERS);
    for (long i = 0; i < MODEL_PARAMETERS; ++i) {
        const double want = (double)params[i] - 0.5 * (double)grads[i];
        const double err = stepped[i] - want, tol = 1e-6 * (1 + (want < 0 ? -want : want));
        if (err > tol || err < -tol) {
            fprintf(stderr, "update with gradient scale 1: parameter %ld is %.9g, not %.9g\n", i, stepped[i], want);
            return 1;
        }
    }
    printf("update: gradient scale 0.5 and 1 as hyper[11] says\n");
    FILE* out = fopen(argv[2], "wb");
    if (!out || fwrite(grads, sizeof(float), MODEL_PARAMETERS, out) != MODEL_PARAMETERS ||
        fwrite(&loss, sizeof(float), 1, out) != 1 || fwrite(acts, sizeof(float), MODEL_ACTIVATIONS, out) != MODEL_ACTIVATIONS ||
        fclose(out) != 0) {
        fprintf(stderr, "%s: cannot write\n", argv[2]);
        return 1;
    }
    return 0;
}
