// llama.cpp's logits for given token ids, as JSON on stdout: an independent reference for
// models whose reference implementation is llama.cpp's graph (RWKV-6/7). Built and run by
// scripts/rwkv_reference.py against the llama.cpp that scripts/llamacpp.sh builds.
//
//   llamacpp_logits MODEL.gguf DECODE_FROM ID,ID,...
//
// prints {"prefill": [...], "decode": [...]}: every position's logits from one batch, then
// the logits of a fresh sequence fed DECODE_FROM ids as one batch (its last position) and the
// rest one token per batch. One thread, so sums run in one order.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void print_row(const float *row, int n, int *first) {
    for (int j = 0; j < n; j++) {
        printf(*first ? "%.9g" : ",%.9g", row[j]);
        *first = 0;
    }
}

static void feed(struct llama_context *ctx, const int *ids, int from, int count, int all) {
    struct llama_batch batch = llama_batch_init(count, 0, 1);
    for (int i = 0; i < count; i++) {
        batch.token[i] = ids[from + i];
        batch.pos[i] = from + i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = all || i == count - 1;
    }
    batch.n_tokens = count;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        exit(1);
    }
    llama_batch_free(batch);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf DECODE_FROM ID,ID,...\n", argv[0]);
        return 2;
    }
    int ids[4096], n = 0;
    for (char *p = strtok(argv[3], ","); p && n < 4096; p = strtok(NULL, ",")) ids[n++] = atoi(p);
    int decode_from = atoi(argv[2]);
    if (decode_from < 1 || decode_from > n) {
        fprintf(stderr, "DECODE_FROM must be between 1 and the number of ids\n");
        return 2;
    }
    llama_backend_init();
    struct llama_model *model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) return 1;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = n;
    cp.n_threads = cp.n_threads_batch = 1;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    int first = 1;
    printf("{\"prefill\": [");
    feed(ctx, ids, 0, n, 1);
    for (int i = 0; i < n; i++) print_row(llama_get_logits_ith(ctx, i), vocab, &first);
    printf("], \"decode\": [");
    llama_memory_clear(llama_get_memory(ctx), 1);
    first = 1;
    feed(ctx, ids, 0, decode_from, 0);
    print_row(llama_get_logits_ith(ctx, -1), vocab, &first);
    for (int t = decode_from; t < n - 1; t++) {
        feed(ctx, ids, t, 1, 0);
        print_row(llama_get_logits_ith(ctx, -1), vocab, &first);
    }
    printf("]}\n");
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
