// llama.cpp's KV cache block types as ggml quantizes and reads them: the reference for
// longctx's `kvquant` row formats. Built and run by scripts/ggml_kv_types_reference.sh
// against the ggml that scripts/llamacpp.sh's source provides.
//
// Prints JSON on stdout: the input rows, then for each type (q8_0, q4_0, q4_1, iq4_nl) the
// bytes ggml_quantize_chunk writes for each row (hex) and the values its to_float reads
// back. Rows of 64 values: seeded Gaussian-like rows at several scales, one with an outlier,
// a constant row, an all-zero row, and one whose values sit on rounding ties.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml.h"

#define WIDTH 64
#define ROWS 10

static uint64_t state = 0x9e3779b97f4a7c15ull;

static double uniform(void) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return ((state >> 11) + 0.5) / 9007199254740992.0;
}

static float gaussian(void) {
    return (float)(sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()));
}

int main(void) {
    static float rows[ROWS][WIDTH];
    const float scales[] = {1.0f, 0.01f, 30.0f, 3.0f, 1.0f, 0.5f, 7.0f};
    for (int r = 0; r < 7; r++) {
        for (int j = 0; j < WIDTH; j++) rows[r][j] = scales[r] * gaussian();
    }
    rows[4][17] = 40.0f; // an outlier channel
    for (int j = 0; j < WIDTH; j++) {
        rows[7][j] = 0.75f;                      // constant
        rows[8][j] = 0.0f;                       // zero
        rows[9][j] = (float)((j % 16) - 8) / 2;  // halves: ties under several scales
    }
    printf("{\"width\": %d, \"rows\": [", WIDTH);
    for (int r = 0; r < ROWS; r++) {
        printf(r ? ", [" : "[");
        for (int j = 0; j < WIDTH; j++) printf(j ? ", %.9g" : "%.9g", rows[r][j]);
        printf("]");
    }
    printf("], \"types\": {");
    const enum ggml_type types[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_IQ4_NL};
    for (int t = 0; t < 4; t++) {
        const struct ggml_type_traits *traits = ggml_get_type_traits(types[t]);
        size_t row_bytes = ggml_row_size(types[t], WIDTH);
        uint8_t *q = malloc(row_bytes);
        float back[WIDTH];
        printf(t ? ", \"%s\": {\"bytes\": [" : "\"%s\": {\"bytes\": [", traits->type_name);
        for (int r = 0; r < ROWS; r++) {
            ggml_quantize_chunk(types[t], rows[r], q, 0, 1, WIDTH, NULL);
            printf(r ? ", \"" : "\"");
            for (size_t b = 0; b < row_bytes; b++) printf("%02x", q[b]);
            printf("\"");
        }
        printf("], \"values\": [");
        for (int r = 0; r < ROWS; r++) {
            ggml_quantize_chunk(types[t], rows[r], q, 0, 1, WIDTH, NULL);
            traits->to_float(q, back, WIDTH);
            printf(r ? ", [" : "[");
            for (int j = 0; j < WIDTH; j++) printf(j ? ", %.9g" : "%.9g", back[j]);
            printf("]");
        }
        printf("]}");
        free(q);
    }
    printf("}}\n");
    return 0;
}
